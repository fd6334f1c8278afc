"""The on-disk form of extracted features: safetensors shards, an index and a manifest.

An output folder holds:

* ``shard-00000.safetensors``, ``shard-00001.safetensors``, ...: shard ``k`` holds the images
  ``k * shard_size`` to ``(k + 1) * shard_size - 1`` of the file list (fewer if some were skipped as
  unreadable). One tensor per stored layer, ``[rows, ...]``, plus ``_sample`` (each row's position
  in the file list) and ``_label``. Each is written to a hidden temporary name and renamed when
  complete, so a file with a shard's name is a complete shard.
* ``index.csv``: ``path,label,shard,row`` for every stored image (path relative to DATA), UTF-8.
  A file or folder name that is not valid UTF-8 (on Linux, Python holds it as a str with
  surrogate escapes, ``b"caf\\xe9"`` -> ``"caf\\udce9"``) is written as its original bytes
  (``errors="surrogateescape"``), so the index stays complete and :func:`load_features` reads
  back the very path string that opens the file. Read it elsewhere with the same error handler
  (``manifest.json`` holds such names as JSON escapes, ``"caf\\udce9"``, which ``json.loads`` reads back).
* ``manifest.json``: the model, weights, preprocessing, layers with their shapes and dtype, the
  data, shard size and count, skipped images and ``"complete"``. Written first with
  ``"complete": false`` (what a resumed run compares itself with), and again at the end.

Nothing here needs backbones to be read back: ``safetensors.torch.load_file`` (or
``safetensors.numpy`` for float32) and the csv module are enough.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from backbones.core.files import atomic_path, atomic_write_text, is_temporary, save_safetensors_atomic

__all__ = [
    "FORMAT",
    "INDEX_NAME",
    "MANIFEST_NAME",
    "ExtractedFeatures",
    "IndexRow",
    "check_output_folder",
    "complete_shards",
    "load_features",
    "plan_fingerprint",
    "prepare_output_folder",
    "read_manifest",
    "shard_path",
    "shard_ranges",
    "skipped_in_shard",
    "state_dict_sha256",
    "write_index_and_manifest",
    "write_shard",
]

FORMAT = "backbones-features/1"
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.csv"
SAMPLE_KEY = "_sample"
LABEL_KEY = "_label"
_SHARD_PREFIX, _SHARD_SUFFIX = "shard-", ".safetensors"
# Names that are not UTF-8 arrive as surrogate escapes; this handler writes and reads back their bytes.
_INDEX_ERRORS = "surrogateescape"
# What the refusal message names when an output folder holds other features.
_COMPARED = {
    "model": "model",
    "state_dict_sha256": "weights",
    "preprocessing": "preprocessing",
    "layers": "layers",
    "dtype": "dtype",
    "data": "data",
    "split": "split",
    "files_sha256": "file list",
    "shard_size": "shard size",
}


class IndexRow(NamedTuple):
    """One stored image: its path relative to DATA (or digits id), label (-1 unlabelled), shard and row."""

    path: str
    label: int
    shard: int
    row: int


@dataclass
class ExtractedFeatures:
    """What :func:`load_features` returns.

    Attributes:
        features: Stored layer name -> tensor ``[images, ...]``, rows in index order.
        index: One :class:`IndexRow` per image, in the same order.
        manifest: The parsed ``manifest.json``.
    """

    features: dict[str, Tensor]
    index: list[IndexRow]
    manifest: dict[str, Any] = field(repr=False)

    @property
    def labels(self) -> Tensor:
        """The labels as an int64 tensor (``-1`` for unlabelled images)."""
        return torch.tensor([row.label for row in self.index], dtype=torch.int64)

    @property
    def paths(self) -> list[str]:
        """Each image's path relative to DATA (``digits/<i>`` for the digits)."""
        return [row.path for row in self.index]


def shard_path(out: Path, shard: int) -> Path:
    """The file of shard number ``shard``."""
    return out / f"{_SHARD_PREFIX}{shard:05d}{_SHARD_SUFFIX}"


def shard_ranges(count: int, shard_size: int) -> list[range]:
    """The file-list positions of each shard: consecutive runs of ``shard_size`` (the last may be shorter).

    Raises:
        ValueError: ``shard_size`` below 1.
    """
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1 image, got {shard_size}")
    return [range(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


def state_dict_sha256(model: torch.nn.Module) -> str:
    """sha256 over a model's state dict (names, dtypes, shapes, bytes): which weights made the features."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# Names for people, not identities: the same weights reached through another path are the same model.
_DESCRIPTIVE = ("model", "weights", "fingerprint", "backbones_version")
# How a run meets an unreadable image, not what its features are: a shard that left none out is the
# same either way, so a rerun with skip_bad_images=True (the hint of a run that stopped on one)
# resumes; a run without it redoes the shards that left images out (see skipped_in_shard).
_POLICY = ("skip_bad_images",)


def plan_fingerprint(plan: dict[str, Any]) -> str:
    """sha256 of the plan's JSON (sorted keys; names that only describe, and the bad-image policy,
    left out): equal fingerprints mean interchangeable shards."""
    identity = {k: v for k, v in plan.items() if k not in _DESCRIPTIVE and k not in _POLICY}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); remove it or pass overwrite=True") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} was not written by backbones extract ({FORMAT}); choose another output folder")
    return manifest


def _our_files(out: Path) -> list[Path]:
    if not out.is_dir():
        return []
    names = (MANIFEST_NAME, INDEX_NAME)
    return sorted(
        p
        for p in out.iterdir()
        if p.name in names
        or (p.name.startswith(_SHARD_PREFIX) and p.name.endswith(_SHARD_SUFFIX))
        or (is_temporary(p) and any(p.name.startswith(f".{prefix}") for prefix in (*names, _SHARD_PREFIX)))
    )


def _describe(plan: dict[str, Any]) -> str:
    return f"{plan['model']} (weights {plan['weights']}), layers {','.join(plan['layers'])}, {plan['dtype']}"


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from the manifest (tuples become lists), so equal settings compare equal."""
    return json.loads(json.dumps(value))


def check_output_folder(out: Path, plan: dict[str, Any], *, overwrite: bool) -> bool:
    """Decide, without writing, what to do with ``out``: True to start afresh, False to resume in it.

    Read-only, so every process can run it and reach the same decision.

    Raises:
        FileExistsError: ``out`` holds features of another plan (another model, weights, layers,
            dtype, preprocessing or data: the message names which) and ``overwrite`` is off.
        NotADirectoryError: ``out`` is a file.
    """
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out='{out}' is a file; give a folder for the features")
    existing = _read_manifest(out) if not overwrite else None
    if existing is None:
        if not overwrite and any(p.name != MANIFEST_NAME for p in _our_files(out) if not is_temporary(p)):
            raise FileExistsError(
                f"{out} holds feature shards but no manifest; pass overwrite=True to replace them or choose another "
                f"output folder"
            )
        return True
    if existing.get("fingerprint") == plan["fingerprint"]:
        return False
    if "weights_sha256" in existing and "state_dict_sha256" not in existing:
        # Before 'state_dict_sha256' the same digest was named 'weights_sha256', a name that elsewhere
        # means the sha256 of a weights file; the renamed field changes every fingerprint.
        raise FileExistsError(
            f"{out} holds features written by an older backbones (its manifest.json says 'weights_sha256', now "
            f"'state_dict_sha256'); pass overwrite=True to extract them again, or choose another output folder"
        )
    differing = [label for key, label in _COMPARED.items() if existing.get(key) != _as_json(plan.get(key))]
    differing = differing or ["settings"]
    raise FileExistsError(
        f"{out} holds other features ({_describe(existing)}; this run: {_describe(plan)}; differing: "
        f"{', '.join(differing)}); pass overwrite=True to replace them, or choose another output folder"
    )


def prepare_output_folder(out: Path, plan: dict[str, Any], *, fresh: bool) -> None:
    """Make ``out`` ready (one process only): clear it if ``fresh``, drop stray temporary files, write the plan."""
    out.mkdir(parents=True, exist_ok=True)
    for path in _our_files(out):
        if fresh or is_temporary(path):
            path.unlink(missing_ok=True)
    if fresh or not (out / MANIFEST_NAME).exists():
        atomic_write_text(out / MANIFEST_NAME, json.dumps({**plan, "complete": False}, indent=1) + "\n")


def _shard_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def complete_shards(out: Path, fingerprint: str, count: int) -> set[int]:
    """The shard numbers below ``count`` whose file exists and was written for ``fingerprint``.

    Temporary files of a killed writer are not shards; a shard of another plan is not counted.
    """
    done = set()
    for shard in range(count):
        path = shard_path(out, shard)
        if path.exists() and _shard_metadata(path).get("fingerprint") == fingerprint:
            done.add(shard)
    return done


def skipped_in_shard(out: Path, shard: int) -> list[int]:
    """File-list positions of the unreadable images that complete shard ``shard`` left out."""
    return json.loads(_shard_metadata(shard_path(out, shard)).get("skipped", "[]"))


def write_shard(
    out: Path,
    shard: int,
    tensors: dict[str, Tensor],
    samples: Sequence[int],
    labels: Sequence[int],
    *,
    fingerprint: str,
    skipped: Sequence[int] = (),
) -> Path:
    """Write one shard atomically: the layer tensors, each row's sample position and label.

    Args:
        out: The output folder.
        shard: The shard number.
        tensors: Layer name -> ``[rows, ...]``.
        samples: Each row's position in the file list.
        labels: Each row's label.
        fingerprint: The plan's fingerprint (a resumed run only trusts shards of its own plan).
        skipped: Positions of this shard's images left out as unreadable.

    Returns:
        The shard's path.
    """
    state = {
        **tensors,
        SAMPLE_KEY: torch.tensor(list(samples), dtype=torch.int64),
        LABEL_KEY: torch.tensor(list(labels), dtype=torch.int64),
    }
    metadata = {"format": FORMAT, "fingerprint": fingerprint, "shard": str(shard), "skipped": json.dumps(list(skipped))}
    path = shard_path(out, shard)
    save_safetensors_atomic(state, path, metadata=metadata)
    return path


def write_index_and_manifest(out: Path, plan: dict[str, Any], sample_paths: Sequence[str]) -> dict[str, Any]:
    """Assemble ``index.csv`` from the complete shards and write the final manifest (one process only).

    Args:
        out: The output folder, every shard of ``plan`` complete in it.
        plan: The plan (what the first manifest holds).
        sample_paths: The path (relative to DATA) of every file-list position.

    Returns:
        The final manifest.
    """
    from safetensors import safe_open

    rows: list[IndexRow] = []
    skipped: list[str] = []
    for shard in range(plan["shards"]):
        with safe_open(str(shard_path(out, shard)), framework="pt") as handle:
            samples = handle.get_tensor(SAMPLE_KEY).tolist()
            labels = handle.get_tensor(LABEL_KEY).tolist()
            skipped += [sample_paths[i] for i in json.loads((handle.metadata() or {}).get("skipped", "[]"))]
        rows += [
            IndexRow(sample_paths[s], label, shard, row)
            for row, (s, label) in enumerate(zip(samples, labels, strict=True))
        ]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(IndexRow._fields)
    writer.writerows(rows)
    with atomic_path(out / INDEX_NAME) as tmp:
        tmp.write_bytes(text.getvalue().encode("utf-8", errors=_INDEX_ERRORS))
    manifest = {**plan, "images": len(rows), "skipped_images": skipped, "complete": True}
    atomic_write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_manifest(out: str | Path) -> dict[str, Any]:
    """The ``manifest.json`` of an extraction folder (finished or not).

    Raises:
        FileNotFoundError: There is none.
    """
    manifest = _read_manifest(Path(out))
    if manifest is None:
        raise FileNotFoundError(f"{out} has no {MANIFEST_NAME}; write features there with `backbones extract`")
    return manifest


def _read_index(path: Path) -> list[IndexRow]:
    with path.open(newline="", encoding="utf-8", errors=_INDEX_ERRORS) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != list(IndexRow._fields):
            raise ValueError(f"{path} does not start with the header {','.join(IndexRow._fields)}")
        return [IndexRow(p, int(label), int(shard), int(row)) for p, label, shard, row in reader]


def load_features(out: str | Path, layers: Iterable[str] | None = None) -> ExtractedFeatures:
    """Read a finished extraction: every shard's tensors concatenated in index order, and the index.

    Args:
        out: The folder ``backbones extract`` wrote.
        layers: Stored layer names to load (default: all).

    Returns:
        An :class:`ExtractedFeatures` (``features``, ``index``, ``labels``, ``paths``, ``manifest``).
        A path whose name is not UTF-8 comes back as the str the folder scan gave (surrogate
        escapes, see the module docstring): ``Path(data) / path`` opens the same file.

    Raises:
        FileNotFoundError: No manifest in ``out``.
        ValueError: The extraction is unfinished (rerun the same command to complete it), an
            unknown layer name, or shards that disagree with the index.

    Example:
        >>> result = backbones.load_features("features/")
        >>> result.features["pooled"].shape, result.labels[:3], result.paths[0]
    """
    from safetensors import safe_open

    out = Path(out)
    manifest = read_manifest(out)
    if not manifest.get("complete"):
        done = len(complete_shards(out, manifest["fingerprint"], manifest["shards"]))
        raise ValueError(
            f"the extraction in {out} is unfinished ({done} of {manifest['shards']} shards); run the same "
            f"extract command again to complete it"
        )
    names = list(manifest["layers"]) if layers is None else list(layers)
    unknown = [n for n in names if n not in manifest["layers"]]
    if unknown:
        raise ValueError(f"{out} has no layer {', '.join(unknown)}; it holds {', '.join(manifest['layers'])}")
    index = _read_index(out / INDEX_NAME)
    parts: dict[str, list[Tensor]] = {name: [] for name in names}
    for shard in range(manifest["shards"]):
        with safe_open(str(shard_path(out, shard)), framework="pt") as handle:
            for name in names:
                parts[name].append(handle.get_tensor(name))
    features = {name: torch.cat(chunks) for name, chunks in parts.items()}
    for name, tensor in features.items():
        if tensor.shape[0] != len(index):
            raise ValueError(f"{out}: layer {name} has {tensor.shape[0]} rows but the index lists {len(index)} images")
    return ExtractedFeatures(features, index, manifest)
