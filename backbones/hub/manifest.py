"""Pretrained weights: the manifest of ``arch.tag`` specs and the preprocessing config they imply.

Fetching lives in :mod:`backbones.hub.download`, reading and loading into a model in
:mod:`backbones.hub.loading`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import urlparse

from backbones.core.inputs import IMAGENET_DEFAULT_CFG
from backbones.core.registry import ModelEntry, UnknownModelError, unknown_name_message

__all__ = [
    "WeightSpec",
    "get_weight_spec",
    "head_consistent_cfg",
    "pretrained_cfg_for",
    "register_weights",
    "weight_names",
    "weights_obtainable",
]


_PREPROCESSING_KEYS = ("input_size", "resize_size", "crop_size", "interpolation", "mean", "std")


@dataclass(frozen=True)
class WeightSpec:
    """One entry of the weight manifest (``backbones/hub/weights.json``).

    Attributes:
        name: ``arch.tag``, e.g. ``"resnet50.tv2_in1k"``.
        hf_hub_id: Hugging Face Hub repo holding the file, e.g. ``"timm/resnet50.tv_in1k"``.
        hf_hub_filename: The file in that repo, e.g. ``"model.safetensors"``.
        url: A direct download URL (torchvision's), used when there is no Hub repo.
        revision: A Hub revision (branch, tag or commit) to pin; ``None`` is the default branch.
        layout: Key layout of the file: ``"torchvision"`` (our native layout) or ``"timm"``.
        sha256: Hex digest of the file, or its known prefix (torchvision file names carry 8+
            hex digits of it); ``None`` when unknown.
        preprocessing: input_size, resize_size, crop_size, interpolation, mean, std.
        classes: Label set: ``"imagenet-1k"`` or ``"coco"``.
        metrics: What the source reports: dataset, top1/top5 (or box_map), input size, who reported it.
        license: Licence of the weights.
        model_kwargs: Constructor options the weights need.
        source: Where the weights come from, in words.
        num_params: Parameter count of the model the weights are for.
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
    num_params: int | None = None
    revision: str | None = None

    @property
    def arch(self) -> str:
        return self.name.partition(".")[0]

    @property
    def tag(self) -> str:
        return self.name.partition(".")[2]


# Weights added at run time by register_weights, on top of the shipped manifest.
_REGISTERED: dict[str, WeightSpec] = {}
_REGISTERED_DEFAULTS: dict[str, str] = {}


@functools.cache
def _manifest() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("weights.json").read_text(encoding="utf-8")
    manifest = json.loads(text)
    if manifest.get("format") != 1:
        raise RuntimeError(f"unsupported weight manifest format {manifest.get('format')!r}")
    return manifest


def register_weights(name: str, *, default: bool = False, **fields: Any) -> WeightSpec:
    """Add weights under ``arch.tag`` for this process (a private mirror, your own checkpoints).

    Args:
        name: ``"arch.tag"``.
        default: Make it the architecture's default weights.
        **fields: :class:`WeightSpec` fields (``hf_hub_id`` + ``hf_hub_filename``, or ``url``;
            ``layout``, ``sha256``, ``preprocessing``, ``classes``, ...).

    Example:
        >>> register_weights("resnet50.mine", hf_hub_id="me/resnet50-mine", hf_hub_filename="model.safetensors")
    """
    arch, _, tag = name.partition(".")
    if not tag:
        raise ValueError(f"weights are named 'arch.tag', got {name!r}")
    spec = WeightSpec(name=name, **fields)
    _REGISTERED[name] = spec
    if default:
        _REGISTERED_DEFAULTS[arch] = tag
    return spec


def weight_names() -> list[str]:
    """All ``arch.tag`` names: the shipped manifest and those added with :func:`register_weights`."""
    shipped = [f"{arch}.{tag}" for arch, entry in _manifest()["models"].items() for tag in entry["weights"]]
    return shipped + [name for name in _REGISTERED if name not in shipped]


def get_weight_spec(arch: str, tag: str | None = None) -> WeightSpec:
    """Return the spec of ``arch.tag``; without a tag, the architecture's default weights.

    Raises:
        UnknownModelError: ``arch`` is not a registered architecture (the message names the closest),
            or no weights are published under that name (the message lists the tags).
    """
    from backbones.core.registry import get_model_entry, model_entries

    entry = _manifest()["models"].get(arch, {"default": None, "weights": {}})
    tags = [*entry["weights"], *(n.partition(".")[2] for n in _REGISTERED if n.partition(".")[0] == arch)]
    if not tags:
        # A name that is no architecture at all is a typo to correct, not a model to build without
        # weights. With nothing registered yet (the models layer not imported) it cannot be judged.
        if model_entries():
            get_model_entry(arch)
        raise UnknownModelError(
            f"no pretrained weights are published for {arch!r}; build it with pretrained=False, or "
            f"load your own file with pretrained='path/to/weights.safetensors'. Architectures with "
            f"weights: {', '.join(sorted(_manifest()['models']))}"
        )
    tag = tag or _REGISTERED_DEFAULTS.get(arch) or entry["default"] or tags[0]
    if f"{arch}.{tag}" in _REGISTERED:
        return _REGISTERED[f"{arch}.{tag}"]
    if tag not in entry["weights"]:
        raise UnknownModelError(unknown_name_message(f"weight tag for {arch}", tag, tags))
    return WeightSpec(name=f"{arch}.{tag}", **entry["weights"][tag])


def head_consistent_cfg(cfg: dict[str, Any], num_classes: int | None) -> dict[str, Any]:
    """``cfg`` with class names, class count and reported metrics that agree with a head of ``num_classes``.

    After ``reinit_head`` or any other class count, the weights' ImageNet class names and top-1
    no longer describe the model: they are dropped (class names ``None``, metrics empty), and
    ``head`` records that the classifier is new. ``None`` (a model without a classifier, such as an
    FPN) leaves ``cfg`` as it is.
    """
    if num_classes is None:
        return cfg
    names = cfg.get("class_names")
    # Reported metrics belong to a head with named classes; a head without names (reset_classifier
    # clears them) cannot carry the weights' top-1.
    agrees = len(names) == num_classes if names is not None else not cfg.get("metrics")
    if cfg.get("num_classes") == num_classes and agrees:
        return cfg
    new_head = {"head": f"new {num_classes}-class classifier"} if cfg.get("weights") else {}
    return {**cfg, "num_classes": num_classes, "class_names": None, "metrics": {}, **new_head}


@functools.cache
def class_names(label_set: str) -> tuple[str, ...]:
    """The class names of a label set (``"imagenet-1k"`` or ``"coco"``), index-aligned with logits."""
    filename = {"imagenet-1k": "imagenet_classes.txt", "coco": "coco_classes.txt"}[label_set]
    text = resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")
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
        # The size the source evaluated at, when it is not the training size (timm's key).
        tested_at = spec.metrics.get("input_size")
        if tested_at and tested_at != cfg["input_size"][-1]:
            cfg["test_input_size"] = (cfg["input_size"][0], tested_at, tested_at)
    if cfg.get("crop_size") and cfg.get("resize_size"):
        # timm's name for the same preprocessing: resize to floor(crop_size / crop_pct), then crop.
        cfg["crop_pct"] = cfg["crop_size"] / cfg["resize_size"]
    return cfg


def weights_obtainable(spec: WeightSpec, timeout: float = 3.0) -> tuple[bool, str]:
    """Whether ``spec``'s file is cached or its host answers within ``timeout``, and in words why (not).

    Lets a caller (the demo) fall back to random weights at once instead of waiting on a network
    that is not there.
    """
    from huggingface_hub import constants

    from backbones.hub.download import host_reachable, hub_file_cached, is_offline, url_cache_path

    if spec.hf_hub_id:
        filename = spec.hf_hub_filename or "model.safetensors"
        if hub_file_cached(spec.hf_hub_id, filename, spec.revision):
            return True, f"{spec.name} is in the Hugging Face cache"
        host = constants.ENDPOINT
    elif spec.url:
        if url_cache_path(spec.url).exists():
            return True, f"{spec.name} is in the torch.hub cache"
        host = spec.url
    else:
        return False, f"{spec.name} has no source"
    if is_offline():
        return False, f"{spec.name} is not cached and offline mode is on"
    if not host_reachable(host, timeout):
        return False, f"{spec.name} is not cached and {urlparse(host).hostname} cannot be reached"
    return True, f"{spec.name} can be downloaded from {urlparse(host).hostname}"
