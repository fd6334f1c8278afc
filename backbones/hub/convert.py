"""State-dict conversion between our native layout and the torchvision / timm layouts.

Our native layout *is* torchvision's wherever torchvision has the model, so torchvision files
need no conversion. timm's ResNet and Inception-v3 keys are torchvision's too; timm's VGG keeps
its classifier as convolutions (``pre_logits.fc1`` is a 7x7 conv), which maps one-to-one onto
torchvision's linear classifier by a reshape. torchvision's detection checkpoints hold a
backbone+FPN under ``backbone.``, next to the RPN and box heads that an FPN backbone does not have.

Example:
    >>> timm_sd = timm.create_model("vgg16").state_dict()
    >>> ours = backbones.create_model("vgg16")
    >>> ours.load_state_dict(convert_state_dict(timm_sd, "vgg16", source="timm"))
    <All keys matched successfully>
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import Tensor

__all__ = ["LAYOUTS", "convert_state_dict", "detect_layout"]

StateDict = dict[str, Tensor]
Converter = Callable[[StateDict], StateDict]

LAYOUTS = ("torchvision", "timm", "torchvision_detection")

# timm's VGG head, as (timm key, our key, our 2-D shape is a flattening of timm's 4-D conv weight)
_TIMM_VGG_HEAD = (
    ("pre_logits.fc1.weight", "classifier.0.weight"),
    ("pre_logits.fc1.bias", "classifier.0.bias"),
    ("pre_logits.fc2.weight", "classifier.3.weight"),
    ("pre_logits.fc2.bias", "classifier.3.bias"),
    ("head.fc.weight", "classifier.6.weight"),
    ("head.fc.bias", "classifier.6.bias"),
)
_VGG_FC1_SPATIAL = 7


def _rename(state_dict: StateDict, pairs: tuple[tuple[str, str], ...]) -> StateDict:
    mapping = dict(pairs)
    return {mapping.get(key, key): value for key, value in state_dict.items()}


def _vgg_from_timm(state_dict: StateDict) -> StateDict:
    out = _rename(state_dict, _TIMM_VGG_HEAD)
    for key in ("classifier.0.weight", "classifier.3.weight"):
        if key in out:
            out[key] = out[key].reshape(out[key].shape[0], -1)
    return out


def _vgg_to_timm(state_dict: StateDict) -> StateDict:
    out = _rename(state_dict, tuple((ours, theirs) for theirs, ours in _TIMM_VGG_HEAD))
    fc1 = out.get("pre_logits.fc1.weight")
    if fc1 is not None:
        out["pre_logits.fc1.weight"] = fc1.reshape(fc1.shape[0], -1, _VGG_FC1_SPATIAL, _VGG_FC1_SPATIAL)
    fc2 = out.get("pre_logits.fc2.weight")
    if fc2 is not None:
        out["pre_logits.fc2.weight"] = fc2.reshape(*fc2.shape, 1, 1)
    return out


# torchvision's FPN convolutions moved into Sequential blocks in 0.13 (inner_blocks.0 ->
# inner_blocks.0.0); its 2019 COCO checkpoints still carry the old keys.
_LEGACY_FPN_KEY = re.compile(r"^(fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$")


def _fpn_from_detection(state_dict: StateDict) -> StateDict:
    prefix = "backbone."
    out = {}
    for key, value in state_dict.items():
        if key.startswith(prefix):
            out[_LEGACY_FPN_KEY.sub(r"\1.0.\2", key[len(prefix) :])] = value
    return out


def _identity(state_dict: StateDict) -> StateDict:
    return dict(state_dict)


def _family_of(arch: str) -> str:
    from backbones.core.registry import get_model_entry

    entry = get_model_entry(arch)
    return "fpn" if entry.kind == "fpn" else entry.family


# (family, layout) -> (to native, from native). Families absent here share torchvision's keys.
_CONVERTERS: dict[tuple[str, str], tuple[Converter, Converter]] = {
    ("vgg", "timm"): (_vgg_from_timm, _vgg_to_timm),
    ("fpn", "torchvision_detection"): (_fpn_from_detection, lambda sd: {f"backbone.{k}": v for k, v in sd.items()}),
}


def _converters(arch: str, layout: str) -> tuple[Converter, Converter]:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown state-dict layout {layout!r}; known layouts: {', '.join(LAYOUTS)}")
    if layout == "torchvision":
        return _identity, _identity
    family = _family_of(arch)
    if layout == "torchvision_detection" and family != "fpn":
        raise ValueError(f"a detection checkpoint holds an FPN backbone; {arch!r} is a classifier")
    return _CONVERTERS.get((family, layout), (_identity, _identity))


def convert_state_dict(state_dict: StateDict, arch: str, source: str, target: str = "torchvision") -> StateDict:
    """Convert a state dict of ``arch`` from one key layout to another.

    Args:
        state_dict: The weights to convert (left unchanged; a new dict is returned).
        arch: Our architecture name, e.g. ``"vgg16_bn"`` (it selects the key map).
        source: Layout of ``state_dict``: ``"torchvision"`` (native), ``"timm"`` or
            ``"torchvision_detection"`` (a torchvision Faster/Mask R-CNN checkpoint).
        target: Layout to produce; ``"torchvision"`` is ours.

    Returns:
        The converted state dict; tensors are shared with the input where no reshape is needed.
    """
    to_native, _ = _converters(arch, source)
    _, from_native = _converters(arch, target)
    return from_native(to_native(state_dict))


def detect_layout(state_dict: StateDict) -> str:
    """Guess the layout of a checkpoint from its keys (``"timm"`` VGG heads, detection prefixes)."""
    keys = state_dict.keys()
    if any(k.startswith("pre_logits.fc1.") for k in keys):
        return "timm"
    if any(k.startswith("backbone.body.") for k in keys):
        return "torchvision_detection"
    return "torchvision"
