"""Feature Pyramid Network (Lin et al., 2017) on top of any registered classification backbone.

The bottom-up path is the backbone's stages C2..C5 (a :class:`~backbones.models.extractor.FeatureExtractor`).
The top-down path starts from a 1x1 lateral on C5 (M5), upsamples it by nearest neighbour to
the exact size of the next lateral (so odd input sizes work), adds it element-wise to the 1x1
lateral of C4, and so on down to C2; a 3x3 convolution smooths each merged map into P2..P5.
Extra levels follow: a stride-2 max-pool of P5 (``"pool"``, Faster R-CNN) or P6/P7 (RetinaNet).

``resnet50_fpn`` is torchvision's ``resnet_fpn_backbone("resnet50")``: the same keys
(``body.*``, ``fpn.*``), options, frozen BatchNorm and outputs, so it drops into
``torchvision.models.detection.FasterRCNN`` and loads the COCO detector's backbone weights.
"""

# No `from __future__ import annotations`: TorchScript reads these annotations.
from collections.abc import Sequence
from typing import Any

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from backbones.core.features import FeatureInfo, FeatureInfoList, freeze_stages, ordered_features
from backbones.core.layers import NormLayer, freeze_batch_norm
from backbones.core.registry import get_model_entry, split_model_name
from backbones.hub.weight_source import resolve_weight_source
from backbones.models.extractor import FeatureExtractor
from backbones.models.factory import create_model, register_model
from backbones.models.pretrained import HubMixin

__all__ = [
    "PRETRAINED_BODY_OPTIONS",
    "BackboneWithFPN",
    "ExtraFPNBlock",
    "FeaturePyramidNetwork",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "fpn_backbone",
    "googlenet_v1_fpn",
    "inception_v3_fpn",
    "resnet18_fpn",
    "resnet34_fpn",
    "resnet50_fpn",
    "resnet101_fpn",
    "resnet152_fpn",
    "vgg16_fpn",
    "vgg19_fpn",
]


class ExtraFPNBlock(nn.Module):
    """Adds pyramid levels after P5: ``forward(results, inputs, names) -> (results, names)``.

    Attributes:
        names: Names of the levels it adds.
        strides: Each added level's stride as a multiple of the last level's stride.
    """

    names: list[str] = []
    strides: list[int] = []

    def forward(self, results: list[Tensor], inputs: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        raise NotImplementedError


class LastLevelMaxPool(ExtraFPNBlock):
    """The ``"pool"`` level of Faster R-CNN: P5 max-pooled with kernel 1 and stride 2."""

    names = ["pool"]
    strides = [2]

    def forward(self, results: list[Tensor], inputs: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        names.append("pool")
        results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0))
        return results, names


class LastLevelP6P7(ExtraFPNBlock):
    """RetinaNet's P6 (3x3/2 conv) and P7 (ReLU, 3x3/2 conv), from P5 or, if widths differ, C5."""

    names = ["p6", "p7"]
    strides = [2, 4]

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for conv in (self.p6, self.p7):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)
        self.use_P5 = in_channels == out_channels

    def forward(self, results: list[Tensor], inputs: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        p6 = self.p6(results[-1] if self.use_P5 else inputs[-1])
        p7 = self.p7(F.relu(p6))
        results.extend([p6, p7])
        names.extend(["p6", "p7"])
        return results, names


def _conv_norm(in_channels: int, out_channels: int, kernel_size: int, norm_layer: NormLayer | None) -> nn.Sequential:
    # Sequential(conv[, norm]): torchvision's Conv2dNormActivation keys (inner_blocks.0.0.weight).
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm_layer is None)
    return nn.Sequential(conv) if norm_layer is None else nn.Sequential(conv, norm_layer(out_channels))


class FeaturePyramidNetwork(nn.Module):
    """The top-down pathway with lateral connections over a list of bottom-up feature maps.

    Args:
        in_channels_list: Channels of each input level, finest first.
        out_channels: Channels of every output level.
        extra_blocks: Adds levels after the last (``LastLevelMaxPool``, ``LastLevelP6P7``).
        norm_layer: Optional norm after each lateral and smoothing convolution.

    Returns (forward):
        An ``OrderedDict`` ``'0', '1', ...`` (finest first) plus the extra levels' names.
    """

    def __init__(
        self,
        in_channels_list: Sequence[int],
        out_channels: int,
        extra_blocks: ExtraFPNBlock | None = None,
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        if not in_channels_list or any(c <= 0 for c in in_channels_list):
            raise ValueError(f"in_channels_list needs positive channel counts, got {list(in_channels_list)}")
        self.inner_blocks = nn.ModuleList(_conv_norm(c, out_channels, 1, norm_layer) for c in in_channels_list)
        self.layer_blocks = nn.ModuleList(
            _conv_norm(out_channels, out_channels, 3, norm_layer) for _ in in_channels_list
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.extra_blocks = extra_blocks
        self.names = [str(i) for i in range(len(in_channels_list))]

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        laterals: list[Tensor] = []
        for index, inner in enumerate(self.inner_blocks):
            laterals.append(inner(features[index]))
        # Top-down: upsample the coarser merged map to the lateral's exact size and add.
        top = laterals[-1]
        merged = [top]
        for index in range(len(laterals) - 2, -1, -1):
            lateral = laterals[index]
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
            merged.insert(0, top)
        results: list[Tensor] = []
        for index, smooth in enumerate(self.layer_blocks):
            results.append(smooth(merged[index]))
        names = list(self.names)
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, features, names)
        return ordered_features(names, results)


class BackboneWithFPN(nn.Module, HubMixin):
    """A feature extractor (``body``) followed by a :class:`FeaturePyramidNetwork` (``fpn``).

    A drop-in backbone for torchvision's detection models: ``forward`` returns an
    ``OrderedDict`` of maps that all have ``out_channels`` channels, and ``feature_info`` lists
    each level's name, channels and stride.

    Args:
        body: The bottom-up feature extractor.
        out_channels: Channels of every pyramid level (256 in Faster R-CNN).
        extra_blocks: Levels added after the last, or ``None``.
        norm_layer: Optional norm in the FPN's convolutions.
    """

    def __init__(
        self,
        body: FeatureExtractor,
        out_channels: int = 256,
        extra_blocks: ExtraFPNBlock | None = None,
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        self.body = body
        in_channels = [f.channels for f in body.feature_info]
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks, norm_layer)
        self.out_channels = out_channels
        self.in_chans = body.in_chans
        self.min_input_size = body.min_input_size
        levels = [
            FeatureInfo(str(i), out_channels, f.stride, f"fpn.layer_blocks.{i}")
            for i, f in enumerate(body.feature_info)
        ]
        last_stride = levels[-1].stride
        if extra_blocks is not None:
            levels += [
                FeatureInfo(name, out_channels, last_stride * factor, "fpn.extra_blocks")
                for name, factor in zip(extra_blocks.names, extra_blocks.strides, strict=True)
            ]
        self.feature_info = FeatureInfoList(levels)
        self.pretrained_cfg = dict(body.pretrained_cfg)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Image batch ``[N, C, H, W]`` -> ``OrderedDict`` of ``[N, out_channels, H/s, W/s]`` maps."""
        return self.fpn(list(self.body(x).values()))


# The body torchvision's detectors build around trained weights: trained BatchNorm statistics are
# worth keeping fixed (detection batches are small), and only the last three stages train. Without
# trained weights every stage trains with ordinary BatchNorm: frozen initial statistics (mean 0,
# variance 1) would be an identity that never learns. The tv_coco manifest entry is generated from
# this (weights/make_manifest.py), so the COCO weights are built into the same network.
PRETRAINED_BODY_OPTIONS: dict[str, Any] = {"norm_layer": "frozen_batchnorm", "trainable_layers": 3}


def _make_extra_blocks(
    extra_blocks: str | ExtraFPNBlock | None, out_channels: int, last_in_channels: int
) -> ExtraFPNBlock | None:
    if isinstance(extra_blocks, ExtraFPNBlock) or extra_blocks is None:
        return extra_blocks
    if extra_blocks == "pool":
        return LastLevelMaxPool()
    if extra_blocks == "p6p7":
        return LastLevelP6P7(out_channels, out_channels)
    if extra_blocks == "p6p7_c5":
        return LastLevelP6P7(last_in_channels, out_channels)
    raise ValueError(f"extra_blocks must be 'pool', 'p6p7', 'p6p7_c5', None or an ExtraFPNBlock, got {extra_blocks!r}")


def fpn_backbone(
    arch: str,
    *,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    trainable_layers: int | None = None,
    norm_layer: str | NormLayer | None = None,
    extra_blocks: str | ExtraFPNBlock | None = "pool",
    out_channels: int = 256,
    fpn_norm_layer: NormLayer | None = None,
    backbone_pretrained: bool | str = False,
    **backbone_kwargs: Any,
) -> BackboneWithFPN:
    """Build an FPN on any registered classification architecture (torchvision's recipe).

    Args:
        arch: The body, e.g. ``"resnet50"`` or ``"vgg16_bn"``.
        returned_layers: Stages of ``feature_info`` that feed the pyramid (1..4 = strides 4..32).
        trainable_layers: How many of the last stages train (0..5); earlier ones are frozen
            (3: the last three stages; 5: everything). Default: as torchvision's detectors,
            :data:`PRETRAINED_BODY_OPTIONS`'s with ``backbone_pretrained``, everything without.
        norm_layer: The body's norm: ``"frozen_batchnorm"`` (BatchNorm layers become fixed affine
            maps, for small detection batches), ``"batchnorm"`` or a callable. Default: as
            torchvision's detectors, :data:`PRETRAINED_BODY_OPTIONS`'s with ``backbone_pretrained``,
            the body's own (trainable BatchNorm) without.
        extra_blocks: ``"pool"`` (Faster R-CNN), ``"p6p7"`` (RetinaNet, from P5), ``"p6p7_c5"``
            (from C5), ``None`` or an :class:`ExtraFPNBlock`.
        out_channels: Channels of every pyramid level.
        fpn_norm_layer: Norm in the FPN's own convolutions (none by default).
        backbone_pretrained: Weights for the body before the FPN is added (``True``, a tag such
            as ``"tv_in1k"`` or a path), like torchvision's ``weights_backbone``.
        **backbone_kwargs: Passed to the body (``in_chans``, ``replace_stride_with_dilation``, ...).

    Example:
        >>> model = fpn_backbone("resnet18", trainable_layers=5)
        >>> {k: tuple(v.shape) for k, v in model(torch.randn(1, 3, 256, 256)).items()}["pool"]
        (1, 256, 4, 4)
    """
    if get_model_entry(arch).kind != "classifier":
        raise ValueError(f"an FPN needs a classification backbone, got {arch!r}")
    arch_name, tag = split_model_name(arch)
    trained = resolve_weight_source(arch_name, tag, backbone_pretrained).loads_weights
    if norm_layer is None and trained:
        norm_layer = PRETRAINED_BODY_OPTIONS["norm_layer"]
    if norm_layer is None:  # the body's own norm (VGG without _bn has none)
        body = create_model(arch, pretrained=backbone_pretrained, **backbone_kwargs)
    elif norm_layer == "frozen_batchnorm":
        # Freeze after building: works for every family, including those without BatchNorm.
        body = freeze_batch_norm(create_model(arch, pretrained=backbone_pretrained, **backbone_kwargs))
    else:
        body = create_model(arch, pretrained=backbone_pretrained, norm_layer=norm_layer, **backbone_kwargs)
    if trainable_layers is None:
        trainable_layers = PRETRAINED_BODY_OPTIONS["trainable_layers"] if trained else len(body.feature_info)
    freeze_stages(body, trainable_layers)
    extractor = FeatureExtractor(body, out_indices=tuple(returned_layers))
    extra = _make_extra_blocks(extra_blocks, out_channels, extractor.feature_info[-1].channels)
    return BackboneWithFPN(extractor, out_channels, extra, fpn_norm_layer)


def register_fpn(family: str, **options: Any) -> Any:
    """:func:`~backbones.models.factory.register_model` for an FPN: published weights bring the body policy."""
    return register_model(family=family, kind="fpn", pretrained_kwargs=PRETRAINED_BODY_OPTIONS, **options)


@register_fpn(family="resnet")
def resnet18_fpn(**kwargs: Any) -> BackboneWithFPN:
    """ResNet-18 + FPN: pyramid levels '0'..'3' (strides 4..32) and 'pool' (64), 256 channels."""
    return fpn_backbone("resnet18", **kwargs)


@register_fpn(family="resnet")
def resnet34_fpn(**kwargs: Any) -> BackboneWithFPN:
    """ResNet-34 + FPN: pyramid levels '0'..'3' (strides 4..32) and 'pool' (64), 256 channels."""
    return fpn_backbone("resnet34", **kwargs)


@register_fpn(family="resnet")
def resnet50_fpn(**kwargs: Any) -> BackboneWithFPN:
    """ResNet-50 + FPN, torchvision's ``resnet_fpn_backbone("resnet50")``: the Faster R-CNN backbone.

    Levels '0'..'3' (strides 4..32) and 'pool' (64), 256 channels each. With pretrained weights
    (``tv_coco``, or ``backbone_pretrained``): the body of :data:`PRETRAINED_BODY_OPTIONS` (frozen
    BatchNorm, the last stages trainable); without: trainable BatchNorm and every stage, as
    torchvision's ``fasterrcnn_resnet50_fpn(weights=None)``. Drops into ``torchvision.models.detection.FasterRCNN``.
    """
    return fpn_backbone("resnet50", **kwargs)


@register_fpn(family="resnet")
def resnet101_fpn(**kwargs: Any) -> BackboneWithFPN:
    """ResNet-101 + FPN: pyramid levels '0'..'3' (strides 4..32) and 'pool' (64), 256 channels."""
    return fpn_backbone("resnet101", **kwargs)


@register_fpn(family="resnet")
def resnet152_fpn(**kwargs: Any) -> BackboneWithFPN:
    """ResNet-152 + FPN: pyramid levels '0'..'3' (strides 4..32) and 'pool' (64), 256 channels."""
    return fpn_backbone("resnet152", **kwargs)


@register_fpn(family="vgg")
def vgg16_fpn(**kwargs: Any) -> BackboneWithFPN:
    """VGG-16 + FPN on pool2..pool5 (strides 4..32) and 'pool' (64), 256 channels."""
    return fpn_backbone("vgg16", **kwargs)


@register_fpn(family="vgg")
def vgg19_fpn(**kwargs: Any) -> BackboneWithFPN:
    """VGG-19 + FPN on pool2..pool5 (strides 4..32) and 'pool' (64), 256 channels."""
    return fpn_backbone("vgg19", **kwargs)


@register_fpn(family="inception")
def googlenet_v1_fpn(**kwargs: Any) -> BackboneWithFPN:
    """GoogLeNet + FPN on conv3, inception3b, 4e, 5b (strides 4..32) and 'pool' (64), 256 channels."""
    return fpn_backbone("googlenet_v1", **kwargs)


@register_fpn(family="inception", default_cfg={"input_size": (3, 299, 299)})
def inception_v3_fpn(**kwargs: Any) -> BackboneWithFPN:
    """Inception v3 + FPN on Conv2d_4a, Mixed_5d, 6e, 7c (strides 4..32) and 'pool' (64), 256 channels."""
    return fpn_backbone("inception_v3", **kwargs)
