"""``backbones.extract``: a model over a folder of images (or the digits), into resumable feature shards.

The same call runs alone or under ``torchrun --nproc_per_node N``. The file list is cut into
shards of ``shard_size`` images; process ``r`` of ``N`` takes shards ``r, r + N, ...`` (disjoint and
fixed by the list alone), skips those already complete, decodes images in DataLoader workers and
runs the model on ``backbones.optimize``'s fast path. Rank 0 alone prepares the folder and, once
every process is done, writes the index and the final manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from backbones.apps.extract.batches import extraction_loader, shard_batches
from backbones.apps.extract.layers import LayerSelection, extraction_network, parse_layers, select_outputs
from backbones.apps.extract.store import (
    FORMAT,
    MANIFEST_NAME,
    check_output_folder,
    complete_shards,
    plan_fingerprint,
    prepare_output_folder,
    shard_ranges,
    skipped_in_shard,
    state_dict_sha256,
    write_index_and_manifest,
    write_shard,
)
from backbones.apps.output_lock import output_lock
from backbones.apps.parallel import DistributedContext, barrier, distributed_session, main_process_progress
from backbones.core.version import __version__
from backbones.core.vocabulary import dtype_name
from backbones.data.datasets import BUILTIN_DATASETS, open_dataset
from backbones.data.images import BadImageError
from backbones.models.reference import ModelSource, resolve_model
from backbones.runtime.optimize import optimize

__all__ = ["STORED_DTYPES", "extract"]

# What the shards store for each precision the network computes in (backbones.core.vocabulary's names).
STORED_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,  # bf16 outputs stored as they are computed: lossless, half the size
    "int8": torch.float32,  # int8 networks return float32
}
MAX_DEFAULT_WORKERS = 4
# int8: activation ranges observed on this many batches of DATA (seeded, the same in every process).
CALIBRATION = {"batches": 4, "batch_size": 8, "seed": 0}


# What to do when a process of the group is lost (complete shards are kept).
_RECOVERY = "Rerun the same command: the complete shards are kept and only the others are redone"


def _preprocessing(dataset: Any, model: nn.Module) -> dict[str, Any]:
    return {**dataset.preprocessing, "in_chans": int(getattr(model, "in_chans", 3))}


def _default_workers(context: DistributedContext) -> int:
    # Decoding and resizing cost a few percent of a forward: a few workers keep the model busy.
    return min(MAX_DEFAULT_WORKERS, max(1, (os.cpu_count() or 1) // context.world_size))


def _files_sha256(samples: Sequence[tuple[str, int]]) -> str:
    return hashlib.sha256(json.dumps([list(s) for s in samples]).encode()).hexdigest()


def _layer_shapes(network: nn.Module, selection: LayerSelection, example: Tensor, store: torch.dtype) -> dict[str, Any]:
    with torch.inference_mode():
        outputs = select_outputs(network(example), selection)
    return {
        name: {"shape": list(t.shape[1:]), "dtype": str(store).removeprefix("torch.")} for name, t in outputs.items()
    }


def _make_plan(
    source: ModelSource, model: nn.Module, dataset: Any, selection: LayerSelection, options: dict[str, Any]
) -> dict[str, Any]:
    plan = {
        "format": FORMAT,
        "model": source.reference,
        "architecture": source.architecture,
        "weights": source.describe_weights(),
        "state_dict_sha256": state_dict_sha256(model),
        "preprocessing": _preprocessing(dataset, model),
        "layers": list(selection.outputs),
        "data": dataset.source if dataset.source in BUILTIN_DATASETS else str(Path(dataset.source).resolve()),
        "classes": list(dataset.classes),
        "count": len(dataset),
        "files_sha256": _files_sha256(dataset.samples),
        **options,
    }
    plan["fingerprint"] = plan_fingerprint(plan)
    return plan


def _fast_network(
    network: nn.Module, dtype: Any, example: Tensor, model: nn.Module, data: str | Path, image_size: int
) -> nn.Module:
    """``optimize(network)`` in ``dtype``; int8 is calibrated on a few seeded batches of the data itself,
    preprocessed for ``model``."""
    if dtype != "int8":
        return optimize(network, dtype=dtype, example_input=example)
    from backbones.data.calibration import calibration_batches

    batches = calibration_batches(model, data, image_size=image_size, **CALIBRATION)
    return optimize(network, dtype="int8", calibration=batches)


def _progress(context: DistributedContext, total: int, enabled: bool) -> Any:
    desc = "extract" if context.world_size == 1 else f"extract (rank 0 of {context.world_size})"
    # A manual bar (updated per batch by its image count), so its rate reads in images per second.
    return main_process_progress(iter(()), context, total=total, unit="img", desc=desc, disable=not enabled)


def _run_shards(
    fast: nn.Module,
    selection: LayerSelection,
    dataset: Any,
    out: Path,
    plan: dict[str, Any],
    shards: list[int],
    *,
    batch_size: int,
    workers: int,
    store_dtype: torch.dtype,
    shapes: dict[str, Any],
    skip_bad_images: bool,
    context: DistributedContext,
    progress: bool,
) -> None:
    spans = shard_ranges(plan["count"], plan["shard_size"])
    batches = shard_batches(spans, shards, batch_size)
    bar = _progress(context, sum(len(spans[s]) for s in shards), progress)
    parts: dict[str, list[Tensor]] = {name: [] for name in selection.outputs}
    positions: list[int] = []
    labels: list[int] = []
    skipped: list[int] = []
    for planned, batch in zip(batches, extraction_loader(dataset, batches, workers), strict=True):
        if batch.failures and not skip_bad_images:
            raise BadImageError(batch.failures[0][1])
        skipped += [position for position, _ in batch.failures]
        if batch.images is not None:
            outputs = select_outputs(fast(batch.images.to(context.device)), selection)
            for name, tensor in outputs.items():
                parts[name].append(tensor.to("cpu", store_dtype))
            positions += batch.positions
            labels += batch.labels
        if hasattr(bar, "update"):
            bar.update(len(planned.positions))
        if planned.last:
            tensors = {
                name: torch.cat(chunks) if chunks else torch.empty((0, *shapes[name]["shape"]), dtype=store_dtype)
                for name, chunks in parts.items()
            }
            write_shard(
                out, planned.shard, tensors, positions, labels, fingerprint=plan["fingerprint"], skipped=skipped
            )
            parts = {name: [] for name in selection.outputs}
            positions, labels, skipped = [], [], []
    if hasattr(bar, "close"):
        bar.close()


def extract(
    model: str | Path | nn.Module,
    data: str | Path,
    out: str | Path,
    *,
    layers: str | Sequence[str] = "pooled",
    dtype: str = "fp32",
    batch_size: int = 64,
    workers: int | None = None,
    pretrained: bool | str | Path | None = None,
    shard_size: int = 1024,
    split: str = "all",
    image_size: int | None = None,
    skip_bad_images: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = True,
    seed: int = 0,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Extract features of every image of ``data`` with ``model`` into safetensors shards in ``out``.

    Runs alone or under ``torchrun`` (each process takes every N-th shard; together they write
    what one process writes). Rerunning the same call after a crash or kill skips complete
    shards and redoes the rest; the result equals an uninterrupted run.

    Args:
        model: A model reference (see :func:`backbones.models.reference.resolve_model`): ``"arch"`` /
            ``"arch.tag"``, a ``save_pretrained`` or ``finetune`` folder, a weights file, an
            ``owner/name`` Hub repo, or a module.
        data: An image folder (any depth; top-level class subfolders become labels, else -1) or ``"digits"``.
        out: The output folder (shards, ``index.csv``, ``manifest.json``).
        layers: ``"pooled"`` (pre-logits embedding), stage names from ``feature_info``
            (``"layer3,layer4"``; ``"layer4:pooled"`` averages a map), or ``"fpn"`` for an ``_fpn`` model.
        dtype: ``"fp32"``, ``"bf16"`` or ``"int8"`` (or their long names and torch dtypes, see
            :mod:`backbones.core.vocabulary`): what ``backbones.optimize`` computes in; bf16
            features are stored as bfloat16; int8 is calibrated on 4 seeded batches of 8 images of
            ``data`` (the digits' training split) and stores float32.
        batch_size: Images per forward.
        workers: DataLoader worker processes decoding images (default: the cores per process, at most 4;
            0 decodes in this process).
        pretrained: For a registered name: ``True`` (default weights), a tag, a weights file or
            folder, a Hub repo, or ``False`` (random weights); ``None``: the tag in the name, else
            the default weights.
        shard_size: Images per shard (the unit of resuming and of work sharing).
        split: ``"all"``, or ``"train"`` / ``"val"`` of the data layer's seeded split.
        image_size: Input height and width (default: the model's crop size; digits: 32 or the model's minimum).
        skip_bad_images: Leave out unreadable images (listed in the manifest) instead of stopping.
        overwrite: Replace features of another model or settings found in ``out``.
        device: ``"cpu"`` or ``"cuda"`` (default: CUDA when available).
        progress: Show a progress bar with images per second (rank 0).
        seed: Seed of the random initialisation when the weights are random (``pretrained=False``): every
            process, and every rerun, builds the same network; recorded in the manifest (``None`` there
            for loaded weights, which it does not change).
        timeout: Under torchrun, seconds a process waits for the others before it stops with an error
            naming the rank that is gone (default ``backbones.apps.parallel.DEFAULT_TIMEOUT``).

    Returns:
        The final manifest (as written to ``out/manifest.json``).

    Raises:
        ValueError: An unknown dtype or layer, a bad batch or shard size, an empty folder.
        FileExistsError: ``out`` holds another extraction's features and ``overwrite`` is off.
        BadImageError: An unreadable image (named) without ``skip_bad_images``.

    Example:
        >>> backbones.extract("resnet50", "photos/", "features/", layers="pooled,layer3:pooled", dtype="bf16")
        >>> result = backbones.load_features("features/")
    """
    dtype = dtype_name(dtype, what="extract's dtype")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    store_dtype = STORED_DTYPES[dtype]
    out = Path(out).expanduser()
    session = distributed_session(device=device, timeout=timeout, recovery=_RECOVERY)
    with session as context, output_lock(out, context):  # one writer per out folder, from the start
        source = resolve_model(model, pretrained, default=True)
        loaded = source.build(progress=progress, seed=seed).eval()
        selection = parse_layers(layers, loaded)  # before scanning a folder that may hold millions
        dataset = open_dataset(data, split, model=loaded, training=False, image_size=image_size)
        spans = shard_ranges(len(dataset), shard_size)
        network = extraction_network(loaded.to(context.device), selection)
        size = dataset.image_size
        example = torch.zeros(1, loaded.in_chans, size, size, device=context.device)
        options = {
            "dtype": dtype,
            "calibration": dict(CALIBRATION, data=dataset.source) if dtype == "int8" else None,
            "layer_shapes": _layer_shapes(network, selection, example, store_dtype),
            "split": split,
            "shard_size": shard_size,
            "shards": len(spans),
            "skip_bad_images": skip_bad_images,
            "seed": seed if source.random_weights else None,
        }
        plan = _make_plan(source, loaded, dataset, selection, options)
        fresh = check_output_folder(out, plan, overwrite=overwrite)  # every process decides alike
        barrier(context)
        if context.is_main:
            prepare_output_folder(out, plan, fresh=fresh)
        barrier(context)
        done = complete_shards(out, plan["fingerprint"], len(spans))
        if not skip_bad_images:  # as a run that never skipped: it reads those images again (or stops on them)
            done = {s for s in done if not skipped_in_shard(out, s)}
        mine = [s for s in range(len(spans)) if s % context.world_size == context.rank and s not in done]
        if mine:
            batch = example.expand(batch_size, -1, -1, -1)
            fast = _fast_network(network, dtype, batch, loaded, data, dataset.image_size)
            _run_shards(
                fast,
                selection,
                dataset,
                out,
                plan,
                mine,
                batch_size=batch_size,
                workers=_default_workers(context) if workers is None else workers,
                store_dtype=store_dtype,
                shapes=plan["layer_shapes"],
                skip_bad_images=skip_bad_images,
                context=context,
                progress=progress,
            )
        barrier(context)
        if context.is_main:
            paths = [path for path, _ in dataset.samples]
            write_index_and_manifest(out, {**plan, "backbones_version": __version__}, paths)
        barrier(context)
    return json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
