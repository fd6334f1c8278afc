"""Reading weight files and loading them into a model: verification, conversion, caching, fitting.

A spec's file is fetched (:mod:`backbones.download`), read without unpickling (safetensors, or
``torch.load(weights_only=True)``), converted to our key layout, cached as safetensors when it
was not already, and loaded with ``strict=True`` after the differences a user can act on (class
count, input channels, heads the model chose not to build) are resolved or explained.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import torch.nn as nn
from torch import Tensor

from backbones.core.files import save_safetensors_atomic
from backbones.hub.convert import convert_state_dict, detect_layout
from backbones.hub.download import (
    WeightsError,
    WeightsIntegrityError,
    WeightsUnavailableError,
    cache_dir,
    fetch_hub_file,
    fetch_url_file,
    verify_sha256,
)
from backbones.hub.manifest import WeightSpec

__all__ = [
    "WeightsMismatchError",
    "adapt_input_conv",
    "load_fitting_state_dict",
    "load_local_state_dict",
    "load_pretrained",
    "load_spec_state_dict",
    "read_state_dict",
]


class WeightsMismatchError(WeightsError):
    """The weights do not fit the model as built (keys, shapes or class count differ)."""


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
