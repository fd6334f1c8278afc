"""Reading weight files and loading them into a model: verification, conversion, caching, fitting.

A spec's file is fetched (:mod:`backbones.hub.download`), read without unpickling (safetensors, or
``torch.load(weights_only=True)``), converted to our key layout, cached as safetensors when it
was not already, and loaded with ``strict=True`` after the differences a user can act on (class
count, input channels, heads the model chose not to build) are resolved or explained.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import pickle
import warnings
from pathlib import Path

import torch.nn as nn
from torch import Tensor

from backbones.core.files import save_safetensors_atomic
from backbones.core.references import WEIGHTS_NAME
from backbones.hub.convert import convert_state_dict, detect_layout
from backbones.hub.download import (
    WeightsError,
    WeightsIntegrityError,
    WeightsUnavailableError,
    cache_dir,
    fetch_hub_file,
    fetch_url_file,
)
from backbones.hub.integrity import digest_path, file_sha256, read_digest_beside, write_digest_beside
from backbones.hub.manifest import WeightSpec
from backbones.hub.weight_source import WeightSource

__all__ = [
    "ClassCountMismatchError",
    "WeightsFileError",
    "WeightsMismatchError",
    "adapt_input_conv",
    "architectures_fitting",
    "check_weight_values",
    "converted_cache_path",
    "load_fitting_state_dict",
    "load_local_state_dict",
    "load_pretrained",
    "load_spec_state_dict",
    "read_state_dict",
]


class WeightsMismatchError(WeightsError):
    """The weights do not fit the model as built (keys, shapes or class count differ)."""


class ClassCountMismatchError(WeightsMismatchError):
    """Only the classifier differs: the checkpoint is for another number of classes."""


class WeightsFileError(WeightsError, ValueError):
    """A local file is not a weights file we can read: missing, a folder, unreadable, another format, or a
    pickle holding Python objects; the message says which."""


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"  # every pickle protocol >= 2 starts with PROTO; torch.save's legacy format too


def _file_kind(path: Path) -> str:
    """``"safetensors"``, ``"zip"`` (torch.save since 1.6), ``"legacy"`` (older torch.save) or ``"other"``."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1:
        return "safetensors"
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_PICKLE_MAGIC):
        return "legacy"
    return "other"


def _check_readable(path: Path, what: str) -> None:
    if not path.exists():
        raise WeightsFileError(f"{what}: there is no file {path}")
    if path.is_dir():
        raise WeightsFileError(
            f"{what}: {path} is a folder without model.safetensors, not a weights file; give a .safetensors / "
            f".pth file or a folder written by save_pretrained"
        )
    if not os.access(path, os.R_OK):
        raise WeightsFileError(f"{what}: {path} cannot be read (permission denied); check its owner and mode")


def read_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    """Read a safetensors file (memory-mapped) or a ``torch.save`` file (``weights_only``, never unpickled).

    Both ``torch.save`` formats load: the zip format of torch >= 1.6 (memory-mapped) and the
    legacy format of older files (read whole, as ``mmap`` refuses it).

    Raises:
        WeightsFileError: The file is missing, a folder, unreadable, not a weights format, or a
            pickle of Python objects that ``weights_only`` refuses.
        WeightsIntegrityError: A weights file that is truncated or corrupt.
    """
    path = Path(path)
    _check_readable(path, what)
    kind = _file_kind(path)
    if kind == "other":
        raise WeightsFileError(
            f"{what}: {path} is not a weights file (neither safetensors nor a torch.save checkpoint); give a "
            f".safetensors or .pth file"
        )
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            import torch

            state = torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip")
    except pickle.UnpicklingError:
        raise WeightsFileError(
            f"{what}: {path} holds Python objects besides tensors, which are never unpickled here (unpickling "
            f"can run code). If you trust it, load it with torch.load(weights_only=False) and save its state_dict "
            f"with safetensors"
        ) from None
    except Exception as err:  # safetensors, zipfile and pickle all raise their own kinds
        raise WeightsIntegrityError(
            f"{what}: cannot read {path} ({type(err).__name__}: {err}); the file is truncated or corrupt"
        ) from None
    state = _unwrapped(state)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        keys = f" (its keys: {', '.join(map(repr, list(state)[:8]))})" if isinstance(state, dict) else ""
        raise WeightsFileError(
            f"{what}: {path} does not hold a state dict of tensors{keys}; save model.state_dict() alone, or "
            f"under one of the keys {', '.join(map(repr, _CHECKPOINT_KEYS))}"
        )
    return dict(state)


# Where training checkpoints keep the weights: Lightning and most scripts "state_dict", torchvision's
# reference scripts "model", PyTorch's tutorials "model_state_dict".
_CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict")


def _unwrapped(state: object) -> object:
    """The state dict inside a training checkpoint (``{'model': sd, 'epoch': 3}``), else ``state``."""
    if isinstance(state, dict) and not all(isinstance(v, Tensor) for v in state.values()):
        for key in _CHECKPOINT_KEYS:
            inner = state.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                return inner
    return state


def _fetch(spec: WeightSpec, progress: bool) -> Path:
    if spec.hf_hub_id:
        return fetch_hub_file(
            spec.hf_hub_id,
            spec.hf_hub_filename or "model.safetensors",
            revision=spec.revision,
            what=spec.name,
            progress=progress,
            sha256=spec.sha256,
        )
    if spec.url:
        return fetch_url_file(spec.url, sha256=spec.sha256, what=spec.name, progress=progress)
    raise WeightsUnavailableError(f"{spec.name}: the manifest gives no Hub repo or URL for it")


def converted_cache_path(spec: WeightSpec) -> Path:
    """Where ``spec``'s converted safetensors live; the name carries a digest of where the source comes
    from, so another source (a new manifest entry, a new converter) gets a file of its own."""
    from backbones.core.version import __version__

    identity = [spec.hf_hub_id, spec.hf_hub_filename, spec.revision, spec.url, spec.sha256, spec.layout, __version__]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    return cache_dir() / "converted" / f"{spec.name}-{key}.safetensors"


def _read_verified_converted(path: Path, what: str) -> dict[str, Tensor] | None:
    """The converted file's weights when its digest matches the one kept beside it; ``None`` (and the file
    removed) when it is missing, has no digest, or was changed since it was written."""
    record = read_digest_beside(path)
    if record is None or not path.is_file():
        remove_converted(path)
        return None
    if file_sha256(path) != record["sha256"]:
        warnings.warn(
            f"{what}: the converted file {path} was changed since it was written; converting afresh",
            stacklevel=3,
        )
        remove_converted(path)
        return None
    return read_state_dict(path, what)


def remove_converted(path: Path) -> None:
    """Delete a converted cache file and the digest kept beside it."""
    for stale in (path, digest_path(path)):
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.remove(stale)


def load_spec_state_dict(spec: WeightSpec, progress: bool = True) -> dict[str, Tensor]:
    """Fetch, verify and read ``spec``'s file, converted to our native key layout.

    A file that is not already native safetensors (a ``.pth`` pickle, timm's VGG layout, a
    detection checkpoint) is converted once and cached as safetensors with its sha256 beside it.
    Later loads hash the converted file against that digest and read it without the source, so
    they work offline after the source has left its cache; a changed file is converted afresh.
    """
    return _load_spec_state_dict(spec, progress)[0]


def _load_spec_state_dict(spec: WeightSpec, progress: bool) -> tuple[dict[str, Tensor], Path | None]:
    """The weights, and the converted cache file they came from (``None`` when read from the source)."""
    source_name = (spec.hf_hub_filename or "model.safetensors") if spec.hf_hub_id else (spec.url or "")
    native = spec.layout == "torchvision" and Path(source_name).suffix == ".safetensors"
    if native:
        return _read_or_remove(_fetch(spec, progress), spec.name), None
    converted = converted_cache_path(spec)
    state = _read_verified_converted(converted, spec.name)
    if state is not None:
        return state, converted
    source = _fetch(spec, progress)
    state = convert_state_dict(_read_or_remove(source, spec.name), spec.arch, source=spec.layout)
    save_safetensors_atomic(state, converted)
    write_digest_beside(converted, file_sha256(converted), source=str(source))
    return state, None


def _read_or_remove(path: Path, what: str) -> dict[str, Tensor]:
    # A downloaded file that cannot be read is removed, so the next run downloads it afresh.
    try:
        return read_state_dict(path, what)
    except WeightsIntegrityError as err:
        for stale in {Path(os.path.realpath(path)), path}:
            with contextlib.suppress(FileNotFoundError):
                os.remove(stale)
        raise WeightsIntegrityError(
            f"{err}. It has been removed from the cache: run again to download it afresh"
        ) from None


def load_local_state_dict(path: str | Path, arch: str) -> dict[str, Tensor]:
    """Read a local weights file, or a folder made by ``save_pretrained``, in our native layout.

    Raises:
        WeightsFileError: No such file, a folder without ``model.safetensors``, an unreadable file,
            or a file that holds no weights; the message says which.
        WeightsIntegrityError: The file is truncated or corrupt.
    """
    path = Path(path).expanduser()
    if path.is_dir() and (path / WEIGHTS_NAME).exists():
        path = path / WEIGHTS_NAME
    state = read_state_dict(path, arch)
    return convert_state_dict(state, arch, source=detect_layout(state))


def load_pretrained(model: nn.Module, source: WeightSource, progress: bool = True, reinit_head: bool = False) -> None:
    """Load the weights ``source`` names into ``model`` (nothing for ``kind="none"``).

    Args:
        model: A freshly built model of architecture ``source.arch``.
        source: What :func:`~backbones.hub.weight_source.resolve_weight_source` decided.
        progress: Show download progress.
        reinit_head: When the model's classifier differs from the checkpoint's (another
            ``num_classes``), keep the model's freshly initialised classifier instead of failing.

    Raises:
        WeightsError: The file is unavailable or corrupt, or does not fit the model.
    """
    if source.kind == "none":
        return
    if source.kind == "tag":
        assert source.spec is not None
        _load_spec(model, source.spec, progress, reinit_head)
        return
    if source.kind == "hub":
        path = fetch_hub_file(str(source.repo_id), WEIGHTS_NAME, what=str(source.repo_id), progress=progress)
    else:
        path = Path(str(source.path))
    state = load_local_state_dict(path, source.arch)
    load_fitting_state_dict(model, state, what=source.describe(), reinit_head=reinit_head)


def _load_spec(model: nn.Module, spec: WeightSpec, progress: bool, reinit_head: bool) -> None:
    state, converted = _load_spec_state_dict(spec, progress)
    try:
        load_fitting_state_dict(model, state, what=spec.name, reinit_head=reinit_head, explain=converted is None)
    except ClassCountMismatchError:
        raise
    except WeightsMismatchError:
        if converted is None:
            raise
        # A converted file that passed its digest but does not fit was made by other code (an older
        # converter): replace it once from the source, and name it if even that does not fit.
        remove_converted(converted)
        state, _ = _load_spec_state_dict(spec, progress)
        try:
            load_fitting_state_dict(model, state, what=spec.name, reinit_head=reinit_head)
        except WeightsMismatchError as err:
            raise WeightsMismatchError(f"{err} (converted from the source into {converted})") from None


def _head_keys(model: nn.Module) -> set[str]:
    names = model.head_layer_names() if hasattr(model, "head_layer_names") else []
    return {f"{name}.{param}" for name in names for param in ("weight", "bias")}


def load_fitting_state_dict(
    model: nn.Module, state: dict[str, Tensor], *, what: str, reinit_head: bool = False, explain: bool = True
) -> None:
    """``load_state_dict(strict=True)`` with the differences a user can act on explained.

    Checkpoint layers the model chose not to build (auxiliary heads with ``aux_logits=False``,
    a classifier with ``num_classes=0``) are skipped; a classifier of another size is kept
    freshly initialised only with ``reinit_head``; a first convolution for another number of
    input channels is adapted (summed for 1 channel, repeated and rescaled otherwise). Values no
    trained network has (see :func:`check_weight_values`) are refused. With ``explain``, a
    mismatch names the registered architecture the weights fit (see :func:`architectures_fitting`).

    Raises:
        WeightsIntegrityError: A tensor that is not floating point where the model's is, or holds
            NaN/inf, or a negative BatchNorm variance; the message names the tensor.
        ClassCountMismatchError: Only the classifier differs, and ``reinit_head`` is off.
        WeightsMismatchError: Keys are missing or unexpected, or shapes differ (the message says
            which architecture the weights fit when it is a registered one).
    """
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in _skipped_prefixes(model))}
    check_weight_values(state, own, what)
    head = _head_keys(model)
    mismatched = sorted(k for k in state.keys() & own.keys() if state[k].shape != own[k].shape)
    head_mismatch = [k for k in mismatched if k in head]
    if head_mismatch and _only_class_count_differs(state, own, head, head_mismatch, getattr(model, "first_conv", None)):
        if not reinit_head:
            classes = state[head_mismatch[0]].shape[0]
            raise ClassCountMismatchError(
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
    if first_conv in mismatched and first_conv not in head and _differs_in_dim(state[first_conv], own[first_conv], 1):
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
        raise WeightsMismatchError(_mismatch_message(model, state, what, missing, unexpected, mismatched, explain))
    model.load_state_dict(state, strict=True)


def _differs_in_dim(a: Tensor, b: Tensor, dim: int) -> bool:
    """Same rank, and the shapes differ in ``dim`` only."""
    return a.dim() == b.dim() and all(
        (x == y) != (i == dim) for i, (x, y) in enumerate(zip(a.shape, b.shape, strict=True))
    )


def _only_class_count_differs(
    state: dict[str, Tensor], own: dict[str, Tensor], head: set[str], head_mismatch: list[str], first_conv: str | None
) -> bool:
    """Whether the checkpoint is this architecture with a classifier for another number of classes."""
    if (state.keys() - head) != (own.keys() - head):
        return False
    body_differs = [
        k
        for k in state.keys() - head
        if state[k].shape != own[k].shape and not (k == first_conv and _differs_in_dim(state[k], own[k], 1))
    ]
    classifier_outputs = [k for k in head_mismatch if _differs_in_dim(state[k], own[k], 0)]
    return not body_differs and len(classifier_outputs) == len(head_mismatch)


def _mismatch_message(
    model: nn.Module,
    state: dict[str, Tensor],
    what: str,
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
    explain: bool,
) -> str:
    own = model.state_dict()
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
    arch = (getattr(model, "model_config", None) or {}).get("architecture")
    fitting = [name for name in architectures_fitting(state, like=arch) if name != arch] if arch and explain else []
    built = f"{type(model).__name__} ({arch})" if arch else type(model).__name__
    if fitting:
        return (
            f"{what} does not fit {built} as built: it holds weights of another architecture "
            f"({' or '.join(fitting)}) ({'; '.join(parts)}). Build {fitting[0]} to use them, or give weights "
            f"made for {arch}"
        )
    return (
        f"{what} does not fit {built} as built ({'; '.join(parts)}). Check the architecture name and options such "
        f"as num_classes, aux_logits or norm_layer"
    )


def architectures_fitting(state: dict[str, Tensor], like: str | None = None) -> list[str]:
    """Registered architectures whose layers (classifier aside) have exactly the keys and shapes of ``state``.

    Args:
        state: The checkpoint's weights.
        like: Compare only with architectures of this one's family and kind (building every
            registered model costs seconds; one family, well under one).

    Each candidate is built once per process on the meta device (no memory, no initialisation).
    This runs only to explain a mismatch.
    """
    from backbones.core.registry import get_model_entry, model_entries

    wanted = {k: tuple(v.shape) for k, v in state.items()}
    entries = model_entries()
    if like is not None:
        family, kind = get_model_entry(like).family, get_model_entry(like).kind
        entries = [e for e in entries if e.family == family and e.kind == kind]
    names = []
    for entry in entries:
        shapes, head = _layer_shapes(entry.name)
        if shapes and shapes == {k: v for k, v in wanted.items() if k not in head}:
            names.append(entry.name)
    return names


@functools.cache
def _layer_shapes(arch: str) -> tuple[dict[str, tuple[int, ...]], frozenset[str]]:
    """``arch``'s state-dict shapes without its classifier, and the classifier keys (empty when it cannot be built)."""
    import torch

    from backbones.core.registry import get_model_entry

    try:
        with torch.device("meta"):
            candidate = get_model_entry(arch).builder()
    except Exception:  # an architecture that needs arguments cannot be a guess
        return {}, frozenset()
    head = _head_keys(candidate)
    return {k: tuple(v.shape) for k, v in candidate.state_dict().items() if k not in head}, frozenset(head)


def check_weight_values(state: dict[str, Tensor], own: dict[str, Tensor], what: str) -> None:
    """Refuse values that no trained network has: a non-float tensor where the model's is floating point,
    NaN or infinity, or a negative BatchNorm running variance.

    The finiteness test sums each tensor first (memory speed) and looks element by element only
    when the sum is not finite; ``benchmarks/integrity_cost.py`` measures the cost per load.

    Raises:
        WeightsIntegrityError: The message names the tensor and what is wrong with it.
    """
    import torch

    for key, value in state.items():
        target = own.get(key)
        if target is not None and target.is_floating_point() and not value.is_floating_point():
            raise WeightsIntegrityError(
                f"{what}: tensor {key} is {value.dtype}, where the model has {target.dtype}; these are not "
                f"floating-point weights (a quantised or broken file) and are refused rather than cast"
            )
        if value.is_floating_point() and value.numel():
            total = value.sum(dtype=torch.float64 if value.dtype == torch.float64 else torch.float32)
            if not bool(torch.isfinite(total)) and not bool(torch.isfinite(value).all()):
                raise WeightsIntegrityError(f"{what}: tensor {key} holds NaN or infinite values; the file is broken")
        if key.endswith("running_var") and value.numel() and bool((value < 0).any()):
            raise WeightsIntegrityError(
                f"{what}: tensor {key} holds negative BatchNorm variances (min {value.min().item():.3g}); a "
                f"variance cannot be negative, so the file is broken"
            )


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
