"""Pretrained weights: the manifest of ``arch.tag`` specs and the preprocessing config they imply."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch.nn as nn
from torch import Tensor

from ._registry import ModelEntry, UnknownModelError, _unknown_name_message
from .base import IMAGENET_DEFAULT_CFG
from .convert import convert_state_dict, detect_layout
from .download import (
    WeightsError,
    WeightsIntegrityError,
    WeightsUnavailableError,
    cache_dir,
    fetch_hub_file,
    fetch_url_file,
    verify_sha256,
)

__all__ = [
    "WeightSpec",
    "WeightsError",
    "WeightsIntegrityError",
    "WeightsMismatchError",
    "WeightsUnavailableError",
    "get_weight_spec",
    "load_pretrained",
    "pretrained_cfg_for",
    "register_weights",
    "weight_names",
]


class WeightsMismatchError(WeightsError):
    """The weights do not fit the model as built (keys, shapes or class count differ)."""


_PREPROCESSING_KEYS = ("input_size", "resize_size", "crop_size", "interpolation", "mean", "std")


@dataclass(frozen=True)
class WeightSpec:
    """One entry of the weight manifest (``backbones/data/weights.json``).

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


@functools.cache
def _manifest() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("data", "weights.json").read_text(encoding="utf-8")
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


# Weights added at run time by register_weights, on top of the shipped manifest.
_REGISTERED: dict[str, WeightSpec] = {}
_REGISTERED_DEFAULTS: dict[str, str] = {}


def weight_names() -> list[str]:
    """All ``arch.tag`` names: the shipped manifest and those added with :func:`register_weights`."""
    shipped = [f"{arch}.{tag}" for arch, entry in _manifest()["models"].items() for tag in entry["weights"]]
    return shipped + [name for name in _REGISTERED if name not in shipped]


def get_weight_spec(arch: str, tag: str | None = None) -> WeightSpec:
    """Return the spec of ``arch.tag``; without a tag, the architecture's default weights.

    Raises:
        UnknownModelError: No weights are published under that name; the message lists the tags.
    """
    entry = _manifest()["models"].get(arch, {"default": None, "weights": {}})
    tags = [*entry["weights"], *(n.partition(".")[2] for n in _REGISTERED if n.partition(".")[0] == arch)]
    if not tags:
        raise UnknownModelError(
            f"no pretrained weights are published for {arch!r}; build it with pretrained=False, or "
            f"load your own file with pretrained='path/to/weights.safetensors'. Architectures with "
            f"weights: {', '.join(sorted(_manifest()['models']))}"
        )
    tag = tag or _REGISTERED_DEFAULTS.get(arch) or entry["default"] or tags[0]
    if f"{arch}.{tag}" in _REGISTERED:
        return _REGISTERED[f"{arch}.{tag}"]
    if tag not in entry["weights"]:
        raise UnknownModelError(_unknown_name_message(f"weight tag for {arch}", tag, tags))
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


def read_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    """Read a ``.safetensors`` file (memory-mapped) or a ``.pth`` file (``weights_only``, never unpickled)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # safetensors, zipfile and pickle all raise their own kinds
        raise WeightsIntegrityError(
            f"{what}: cannot read {path} ({type(err).__name__}: {err}); the file is truncated or corrupt. Delete "
            f"it and run again to download it afresh"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # training checkpoints wrap the weights
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsIntegrityError(f"{what}: {path} does not hold a state dict of tensors")
    return dict(state)


def _fetch(spec: WeightSpec, progress: bool) -> Path:
    if spec.hf_hub_id:
        return fetch_hub_file(
            spec.hf_hub_id,
            spec.hf_hub_filename or "model.safetensors",
            revision=spec.revision,
            what=spec.name,
            progress=progress,
        )
    if spec.url:
        return fetch_url_file(spec.url, sha256=spec.sha256, what=spec.name, progress=progress)
    raise WeightsUnavailableError(f"{spec.name}: the manifest gives no Hub repo or URL for it")


def _converted_cache_path(spec: WeightSpec, source: Path) -> Path:
    digest = verify_sha256(source, spec.sha256 or "", what=spec.name)
    return cache_dir() / "converted" / f"{spec.name}-{digest[:16]}.safetensors"


def load_spec_state_dict(spec: WeightSpec, progress: bool = True) -> dict[str, Tensor]:
    """Fetch, verify and read ``spec``'s file, converted to our native key layout.

    A file that is not already native safetensors (a ``.pth`` pickle, timm's VGG layout, a
    detection checkpoint) is converted once and cached as safetensors next to a record of the
    source's digest, so later loads are a memory-mapped read.
    """
    source = _fetch(spec, progress)
    if source.suffix == ".safetensors" and spec.layout == "torchvision":
        return _read_or_remove(source, spec.name)
    converted = _converted_cache_path(spec, source)
    if converted.exists():
        return _read_or_remove(converted, spec.name)
    state = convert_state_dict(_read_or_remove(source, spec.name), spec.arch, source=spec.layout)
    save_safetensors_atomic(state, converted)
    return state


def _read_or_remove(path: Path, what: str) -> dict[str, Tensor]:
    # A cached file that cannot be read is removed, so the next run downloads it afresh.
    try:
        return read_state_dict(path, what)
    except WeightsIntegrityError as err:
        for stale in {Path(os.path.realpath(path)), path}:
            with contextlib.suppress(FileNotFoundError):
                os.remove(stale)
        raise WeightsIntegrityError(f"{err} (it has been removed from the cache)") from None


def save_safetensors_atomic(state: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``state`` as safetensors through a temporary file, so a crash never leaves half a file."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def weights_obtainable(spec: WeightSpec, timeout: float = 3.0) -> tuple[bool, str]:
    """Whether ``spec``'s file is cached or its host answers within ``timeout``, and in words why (not).

    Lets a caller (the demo) fall back to random weights at once instead of waiting on a network
    that is not there.
    """
    from huggingface_hub import constants

    from .download import host_reachable, hub_file_cached, is_offline, url_cache_path

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


def load_local_state_dict(path: str | Path, arch: str) -> dict[str, Tensor]:
    """Read a local weights file, or a folder made by ``save_pretrained``, in our native layout."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.exists():
        raise WeightsUnavailableError(f"{arch}: no weights file at {path}")
    state = read_state_dict(path, str(path))
    return convert_state_dict(state, arch, source=detect_layout(state))


def load_pretrained(
    model: nn.Module,
    arch: str,
    spec: WeightSpec | None,
    pretrained: bool | str | Path,
    progress: bool = True,
    reinit_head: bool = False,
) -> None:
    """Load weights into ``model``: the spec's published file, or a local file / folder.

    Args:
        model: A freshly built model of architecture ``arch``.
        arch: Its architecture name.
        spec: The weight spec (``None`` when ``pretrained`` is a path).
        pretrained: ``True``, a tag, or a path.
        progress: Show download progress.
        reinit_head: When the model's classifier differs from the checkpoint's (another
            ``num_classes``), keep the model's freshly initialised classifier instead of failing.

    Raises:
        WeightsError: The file is unavailable or corrupt, or does not fit the model.
    """
    if spec is not None:
        state = load_spec_state_dict(spec, progress)
        what = spec.name
    else:
        state = load_local_state_dict(pretrained, arch)  # type: ignore[arg-type]
        what = str(pretrained)
    load_fitting_state_dict(model, state, what=what, reinit_head=reinit_head)


def _head_keys(model: nn.Module) -> set[str]:
    names = model.head_layer_names() if hasattr(model, "head_layer_names") else []
    return {f"{name}.{param}" for name in names for param in ("weight", "bias")}


def load_fitting_state_dict(
    model: nn.Module, state: dict[str, Tensor], *, what: str, reinit_head: bool = False
) -> None:
    """``load_state_dict(strict=True)`` with the differences a user can act on explained.

    Checkpoint layers the model chose not to build (auxiliary heads with ``aux_logits=False``,
    a classifier with ``num_classes=0``) are skipped; a classifier of another size is kept
    freshly initialised only with ``reinit_head``; a first convolution for another number of
    input channels is adapted (summed for 1 channel, repeated and rescaled otherwise).

    Raises:
        WeightsMismatchError: Keys are missing or unexpected, or shapes differ; the message
            lists them.
    """
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in _skipped_prefixes(model))}
    head = _head_keys(model)
    mismatched = sorted(k for k in state.keys() & own.keys() if state[k].shape != own[k].shape)
    head_mismatch = [k for k in mismatched if k in head]
    if head_mismatch:
        if not reinit_head:
            classes = state[head_mismatch[0]].shape[0]
            raise WeightsMismatchError(
                f"{what}: the checkpoint's classifier has {classes} outputs but the model was built with "
                f"num_classes={model.num_classes}; pass reinit_head=True to load everything else and start a "
                f"freshly initialised classifier ({', '.join(head_mismatch)})"
            )
        warnings.warn(
            f"{what}: classifier layers {', '.join(sorted({k.rsplit('.', 1)[0] for k in head_mismatch}))} "
            f"re-initialised for num_classes={model.num_classes} (the checkpoint's are for another class count)",
            stacklevel=3,
        )
        state = {k: (own[k] if k in head_mismatch else v) for k, v in state.items()}
    first_conv = getattr(model, "first_conv", None)
    if first_conv in mismatched and first_conv not in head:
        checkpoint_channels = state[first_conv].shape[1]
        state[first_conv] = adapt_input_conv(state[first_conv], own[first_conv].shape[1])
        warnings.warn(
            f"{what}: the first convolution was adapted from {checkpoint_channels} to "
            f"{own[first_conv].shape[1]} input channels",
            stacklevel=3,
        )
    mismatched = sorted(k for k in state.keys() & own.keys() if state[k].shape != own[k].shape)
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    if mismatched or missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        if mismatched:
            parts.append(
                "shape mismatches: "
                + _listing([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched])
            )
        raise WeightsMismatchError(
            f"{what} does not fit {type(model).__name__} as built ({'; '.join(parts)}). Check the architecture "
            f"name and options such as num_classes, aux_logits or norm_layer"
        )
    model.load_state_dict(state, strict=True)


def _skipped_prefixes(model: nn.Module) -> list[str]:
    return model.unbuilt_checkpoint_prefixes() if hasattr(model, "unbuilt_checkpoint_prefixes") else []


def _listing(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """Adapt a first-layer conv weight ``[out, 3, k, k]`` to ``in_chans`` input channels (as timm).

    One channel: the sum over RGB (a grey image gives the same response as an RGB one with
    equal channels). More channels: RGB repeated and scaled by ``3 / in_chans``.
    """
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_chans // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)
