"""Pretrained weights: the manifest of ``arch.tag`` specs and the preprocessing config they imply."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch.nn as nn

from ._registry import ModelEntry, UnknownModelError, _unknown_name_message
from .base import IMAGENET_DEFAULT_CFG

__all__ = ["WeightSpec", "get_weight_spec", "load_pretrained", "pretrained_cfg_for", "weight_names"]

_PREPROCESSING_KEYS = ("input_size", "resize_size", "crop_size", "interpolation", "mean", "std")


@dataclass(frozen=True)
class WeightSpec:
    """One entry of the weight manifest (``backbones/data/weights.json``).

    Attributes:
        name: ``arch.tag``, e.g. ``"resnet50.tv2_in1k"``.
        hf_hub_id: Hugging Face Hub repo holding the file, e.g. ``"timm/resnet50.tv_in1k"``.
        hf_hub_filename: The file in that repo, e.g. ``"model.safetensors"``.
        url: A direct download URL (torchvision's), used when there is no Hub repo.
        layout: Key layout of the file: ``"torchvision"`` (our native layout) or ``"timm"``.
        sha256: Hex digest of the file, or its known prefix (torchvision file names carry 8+
            hex digits of it); ``None`` when unknown.
        preprocessing: input_size, resize_size, crop_size, interpolation, mean, std.
        classes: Label set: ``"imagenet-1k"`` or ``"coco"``.
        metrics: What the source reports, e.g. ``{"imagenet-1k": {"top1": 80.858, "top5": 95.434}}``.
        license: Licence of the weights.
        model_kwargs: Constructor options the weights need (e.g. ``aux_logits``).
    """

    name: str
    hf_hub_id: str | None = None
    hf_hub_filename: str | None = None
    url: str | None = None
    layout: str = "torchvision"
    sha256: str | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    classes: str = "imagenet-1k"
    metrics: dict[str, Any] = field(default_factory=dict)
    license: str = ""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def arch(self) -> str:
        return self.name.partition(".")[0]

    @property
    def tag(self) -> str:
        return self.name.partition(".")[2]


@functools.cache
def _manifest() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("data", "weights.json").read_text(encoding="utf-8")
    return json.loads(text)


def weight_names() -> list[str]:
    """All ``arch.tag`` names in the manifest."""
    return [f"{arch}.{tag}" for arch, entry in _manifest()["models"].items() for tag in entry["weights"]]


def _default_tag(arch: str) -> str | None:
    entry = _manifest()["models"].get(arch)
    return entry["default"] if entry else None


def get_weight_spec(arch: str, tag: str | None = None) -> WeightSpec:
    """Return the spec of ``arch.tag``; without a tag, the architecture's default weights.

    Raises:
        UnknownModelError: No weights are published under that name; the message lists the tags.
    """
    entry = _manifest()["models"].get(arch)
    if entry is None:
        raise UnknownModelError(
            f"no pretrained weights are published for {arch!r}; build it with pretrained=False, or "
            f"load your own file with pretrained='path/to/weights.safetensors'. Architectures with "
            f"weights: {', '.join(sorted(_manifest()['models']))}"
        )
    tag = tag or entry["default"]
    if tag not in entry["weights"]:
        raise UnknownModelError(_unknown_name_message(f"weight tag for {arch}", tag, entry["weights"]))
    return WeightSpec(name=f"{arch}.{tag}", **entry["weights"][tag])


def resolve_weight_spec(arch: str, tag: str | None, pretrained: bool | str | Path | None) -> WeightSpec | None:
    """The spec that ``create_model(arch[.tag], pretrained=...)`` uses, or ``None`` for none.

    A tag in the name or ``pretrained="tag"`` selects that spec; ``pretrained=True`` alone selects
    the default tag; a path selects no spec (the file speaks for itself).
    """
    if isinstance(pretrained, str) and not _looks_like_path(pretrained):
        if tag is not None and tag != pretrained:
            raise ValueError(f"the name asks for weights {tag!r} but pretrained={pretrained!r}; give one")
        tag = pretrained
    if tag is not None:
        return get_weight_spec(arch, tag)
    if pretrained is True:
        return get_weight_spec(arch)
    return None


def _looks_like_path(value: str) -> bool:
    return any(sep in value for sep in ("/", "\\")) or value.endswith((".safetensors", ".pth", ".pt", ".bin"))


@functools.cache
def class_names(label_set: str) -> tuple[str, ...]:
    """The class names of a label set (``"imagenet-1k"`` or ``"coco"``), index-aligned with logits."""
    filename = {"imagenet-1k": "imagenet_classes.txt", "coco": "coco_classes.txt"}[label_set]
    text = resources.files(__package__).joinpath("data", filename).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def pretrained_cfg_for(entry: ModelEntry, spec: WeightSpec | None) -> dict[str, Any]:
    """The model's ``pretrained_cfg``: family defaults, then the weight's preprocessing and labels."""
    cfg = dict(IMAGENET_DEFAULT_CFG, **entry.default_cfg)
    if spec is not None:
        cfg.update({k: v for k, v in spec.preprocessing.items() if k in _PREPROCESSING_KEYS})
        cfg["input_size"] = tuple(cfg["input_size"])
        cfg.update(
            weights=spec.name,
            class_names=class_names(spec.classes),
            num_classes=len(class_names(spec.classes)),
            metrics=spec.metrics,
            license=spec.license,
        )
    return cfg


def load_pretrained(
    model: nn.Module, arch: str, spec: WeightSpec | None, pretrained: bool | str | Path, progress: bool = True
) -> None:
    """Download (or find in the cache), verify, convert and load weights into ``model``."""
    raise NotImplementedError("loading pretrained weights lands with the weights issue")
