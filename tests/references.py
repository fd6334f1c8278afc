"""The reference implementations each of our architectures must reproduce.

torchvision and timm are imported here only: they are references, never runtime dependencies.
A reference is built with its own random initialisation; its state dict is loaded into ours
(strict, through backbones.convert for layouts other than torchvision's), and both must then
compute the same function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

# Odd at every stride (49x65, 25x33, 13x17, 7x9 and 4x5 after the five stride-2 steps), and with a
# quarter of 224x224's pixels: the padding and pooling arithmetic of an uneven map, four times cheaper.
ODD_SIZE = (97, 129)


@dataclass(frozen=True, eq=False)  # hashed by identity: test caches key on it
class Reference:
    """One reference network for one of our architectures.

    Attributes:
        arch: Our architecture name.
        source: ``"torchvision"`` or ``"timm"``.
        build: Builds the reference with random weights.
        layout: Key layout of its state dict (what backbones.convert reads).
        our_kwargs: Options that make our model the same network as this reference.
        num_params: Canonical parameter count of our model built with ``our_kwargs``.
        sizes: Input sizes (height, width) to compare at; the first is the canonical one.
        batches: Batch sizes to compare at.
        outputs_in_our_order: Reorders the reference's outputs as ours (GoogLeNet's aux heads).
    """

    arch: str
    source: str
    build: Callable[[], nn.Module]
    layout: str
    our_kwargs: dict[str, Any] = field(default_factory=dict)
    num_params: int | None = None
    sizes: tuple[tuple[int, int], ...] = ((224, 224), ODD_SIZE)
    # One image, and a batch: two images are enough for training mode's batch statistics.
    batches: tuple[int, ...] = (1, 2)
    outputs_in_our_order: Callable[[Any], Any] = lambda outputs: outputs

    @property
    def id(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.our_kwargs.items())
        return f"{self.arch}-{self.source}" + (f"[{extra}]" if extra else "")


def _torchvision(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, **kwargs)

    return build


def _timm(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, **kwargs)

    return build


# Parameter counts as torchvision publishes them in its weight metadata.
RESNET_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}

# VGG is large: batch 1, and a small odd size (the adaptive pool then upsamples 3x4 to 7x7).
VGG_PARAMS = {
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
}

REFERENCES: list[Reference] = [
    *(Reference(a, "torchvision", _torchvision(a), "torchvision", num_params=n) for a, n in RESNET_PARAMS.items()),
    *(Reference(a, "timm", _timm(a), "timm") for a in RESNET_PARAMS),
    *(
        Reference(a, "torchvision", _torchvision(a), "torchvision", num_params=n, batches=(1,))
        for a, n in VGG_PARAMS.items()
    ),
    # timm's VGG head is a 7x7 convolution, the same function as ours only at 224x224. Its
    # dropout defaults to 0; at 0.5 it matches torchvision's classifier in training too.
    *(Reference(a, "timm", _timm(a, drop_rate=0.5), "timm", sizes=((224, 224),), batches=(1,)) for a in VGG_PARAMS),
]


def _googlenet_outputs(outputs: Any) -> Any:
    # torchvision returns (logits, aux_logits2, aux_logits1); ours is (logits, aux1, aux2).
    if isinstance(outputs, tuple):
        return outputs.logits, outputs.aux_logits1, outputs.aux_logits2
    return outputs


GOOGLENET_PARAMS = {True: 13_004_888, False: 6_624_904}  # with and without the auxiliary heads
INCEPTION_V3_PARAMS = 27_161_264
# Training with the auxiliary head needs 299x299 or more, and batches of 2 or more.
INCEPTION_AUX_SIZES = ((299, 299), (307, 331))

REFERENCES += [
    *(
        Reference(
            "googlenet_v1",
            "torchvision",
            _torchvision("googlenet", aux_logits=aux, transform_input=transform, init_weights=True),
            "torchvision",
            our_kwargs={"aux_logits": aux, "transform_input": transform},
            num_params=GOOGLENET_PARAMS[aux],
            outputs_in_our_order=_googlenet_outputs,
        )
        for aux in (True, False)
        for transform in (False, True)
    ),
    Reference(
        "inception_v3",
        "torchvision",
        _torchvision("inception_v3", aux_logits=True, init_weights=True),
        "torchvision",
        num_params=INCEPTION_V3_PARAMS,
        sizes=INCEPTION_AUX_SIZES,
        batches=(2,),
    ),
    Reference(
        "inception_v3",
        "torchvision",
        _torchvision("inception_v3", aux_logits=False, transform_input=True, init_weights=True),
        "torchvision",
        our_kwargs={"aux_logits": False, "transform_input": True},
        sizes=((299, 299), ODD_SIZE),
        batches=(1, 2),
    ),
    # timm's inception_v3 has no auxiliary head by default, and no dropout unless asked.
    Reference(
        "inception_v3",
        "timm",
        _timm("inception_v3", drop_rate=0.5),
        "timm",
        our_kwargs={"aux_logits": False},
        sizes=((299, 299), ODD_SIZE),
        batches=(1, 2),
    ),
]


def references(arch_prefix: str = "") -> list[Reference]:
    return [r for r in REFERENCES if r.arch.startswith(arch_prefix)]
