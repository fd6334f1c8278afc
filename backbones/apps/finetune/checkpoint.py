"""Checkpoints that a killed run never leaves half-written, and ``--resume`` that trusts only complete ones.

Each epoch writes two files into ``OUT/checkpoints/``, each through a temporary name and a
rename: the weights (``epoch-NNNN.safetensors``) first, then the training state
(``epoch-NNNN.state.pt``: optimizer, schedule, epoch, every process's RNG states, the metrics so
far and the sha256 of the weights file written with it). The state file is the commit record: a
checkpoint exists only once it is there, and it is trusted only if the weights still hash to the
recorded digest. Everything in it loads with ``torch.load(weights_only=True)``. Older epochs are
removed once a newer one is complete, and a run that completes keeps only its last checkpoint
(:func:`remove_obsolete_checkpoints`): no older epoch that a kill spared, no temporary of one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from backbones.apps.parallel import DistributedContext
from backbones.core.files import atomic_path, save_safetensors_atomic
from backbones.hub.integrity import file_sha256

__all__ = [
    "CHECKPOINT_DIR",
    "CheckpointError",
    "ResumeState",
    "latest_checkpoint",
    "load_checkpoint",
    "remove_obsolete_checkpoints",
    "save_checkpoint",
]

CHECKPOINT_DIR = "checkpoints"
_STATE = re.compile(r"^epoch-(\d{4,})\.state\.pt$")
# A checkpoint file, and the temporary atomic_path writes it under (".epoch-0002.state.pt.ab12cd34.tmp").
_CHECKPOINT_FILE = re.compile(r"^epoch-(\d{4,})\.(?:safetensors|state\.pt)$")
_CHECKPOINT_TEMPORARY = re.compile(r"^\.epoch-\d{4,}\.(?:safetensors|state\.pt)\.[a-z0-9_]{8}\.tmp$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted (cut short, damaged, or from another run)."""


@dataclass
class ResumeState:
    """What a checkpoint restores.

    Attributes:
        epoch: Epochs completed.
        metrics: The ``metrics.jsonl`` records so far.
        best_top1: Best validation top-1 so far.
    """

    epoch: int
    metrics: list[dict[str, Any]]
    best_top1: float


def _paths(folder: Path, epoch: int) -> tuple[Path, Path]:
    stem = folder / CHECKPOINT_DIR / f"epoch-{epoch:04d}"
    return stem.with_suffix(".safetensors"), Path(f"{stem}.state.pt")


def _gather_rng_states(context: DistributedContext) -> dict[str, torch.Tensor]:
    # Every process's generators, stacked by rank: the augmentation and dropout of each continue.
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and context.device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(context.device)
    if not context.distributed:
        return {k: v[None] for k, v in states.items()}
    gathered = {}
    for key, state in states.items():
        parts = [torch.empty_like(state) for _ in range(context.world_size)]
        if context.backend == "nccl":
            parts_dev = [p.to(context.device) for p in parts]
            dist.all_gather(parts_dev, state.to(context.device))
            parts = [p.cpu() for p in parts_dev]
        else:
            dist.all_gather(parts, state)
        gathered[key] = torch.stack(parts)
    return gathered


def save_checkpoint(
    folder: Path,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    context: DistributedContext,
    *,
    run: dict[str, Any],
    metrics: list[dict[str, Any]],
    best_top1: float,
) -> None:
    """Write the checkpoint after ``epoch`` epochs (collective: every process calls it, rank 0 writes).

    Args:
        folder: The run's output folder.
        epoch: Epochs completed.
        model: The bare model (not the DDP wrapper).
        optimizer: The optimizer.
        schedule: The learning-rate schedule.
        context: This process.
        run: The options that define the run (compared on resume).
        metrics: The per-epoch records so far.
        best_top1: Best validation top-1 so far.
    """
    rng = _gather_rng_states(context)
    if not context.is_main:
        return
    weights, state_path = _paths(folder, epoch)
    save_safetensors_atomic({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
    state = {
        "epoch": epoch,
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "rng": rng,
        "threads": torch.get_num_threads(),
        "run": json.dumps(run, sort_keys=True),
        "metrics": json.dumps(metrics),
        "best_top1": best_top1,
        "weights_sha256": file_sha256(weights),
    }
    with atomic_path(state_path) as tmp:
        torch.save(state, tmp)
    for older in (folder / CHECKPOINT_DIR).glob("epoch-*"):
        match = re.match(r"^epoch-(\d+)\.", older.name)
        if match and int(match.group(1)) < epoch:
            older.unlink(missing_ok=True)


def remove_obsolete_checkpoints(folder: Path, epoch: int, written_before: float) -> list[Path]:
    """Keep only the checkpoint of ``epoch`` in ``folder``'s checkpoints, once the run has completed it.

    Removed: every other epoch's files (an older epoch that a kill between the commit of a newer
    one and the clean-up spared, a weights file whose state was never written), and the
    temporaries of checkpoint files last modified before ``written_before``, which killed
    attempts left (a newer one may belong to a process writing now, so it stays).

    Args:
        folder: The run's output folder.
        epoch: The epoch of the complete checkpoint to keep.
        written_before: A ``time.time()`` taken when this run started.

    Returns:
        The removed files.
    """
    removed = []
    for path in sorted((folder / CHECKPOINT_DIR).glob("*")):
        match = _CHECKPOINT_FILE.match(path.name)
        obsolete = (match is not None and int(match.group(1)) != epoch) or (
            _CHECKPOINT_TEMPORARY.match(path.name) is not None and path.stat().st_mtime < written_before
        )
        if obsolete and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def latest_checkpoint(folder: Path) -> int | None:
    """The epoch of the newest checkpoint state in ``folder`` (``None`` when there is none)."""
    epochs = [int(m.group(1)) for p in (folder / CHECKPOINT_DIR).glob("*.state.pt") if (m := _STATE.match(p.name))]
    return max(epochs) if epochs else None


def load_checkpoint(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    context: DistributedContext,
    *,
    run: dict[str, Any],
) -> ResumeState:
    """Restore the newest checkpoint of ``folder`` into the model, optimizer, schedule and RNGs.

    Raises:
        CheckpointError: No checkpoint; its state file cannot be read (cut short); the weights do
            not match the digest recorded with them; the run's options or process count differ.
    """
    epoch = latest_checkpoint(folder)
    if epoch is None:
        raise CheckpointError(f"resume=True: {folder / CHECKPOINT_DIR} holds no checkpoint; run without resume=True")
    weights, state_path = _paths(folder, epoch)
    fix = f"delete {folder / CHECKPOINT_DIR} (or the output folder) and start again without resume=True"
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle opcode, anything: the file is not usable
        raise CheckpointError(f"checkpoint {state_path} is cut short or damaged ({err}); {fix}") from None
    if not weights.exists() or file_sha256(weights) != state.get("weights_sha256"):
        raise CheckpointError(
            f"checkpoint weights {weights} are missing, cut short or changed (their sha256 differs from the one "
            f"recorded at epoch {epoch}); {fix}"
        )
    saved_run = json.loads(state["run"])
    changed = sorted(k for k in run if saved_run.get(k) != run[k])
    if changed:
        details = ", ".join(f"{k}: {saved_run.get(k)!r} -> {run[k]!r}" for k in changed)
        raise CheckpointError(f"resume=True with other options than the checkpoint's ({details}); use the same ones")
    if state["threads"] != torch.get_num_threads() and context.is_main:
        import warnings

        warnings.warn(
            f"the checkpoint was written with {state['threads']} threads per process and this run uses "
            f"{torch.get_num_threads()}: the result will not be bitwise the uninterrupted one",
            stacklevel=2,
        )
    from safetensors.torch import load_file

    model.load_state_dict(load_file(weights))
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["rng"]["cpu"][context.rank])
    if "cuda" in state["rng"] and context.device.type == "cuda":
        torch.cuda.set_rng_state(state["rng"]["cuda"][context.rank], context.device)
    return ResumeState(epoch=epoch, metrics=json.loads(state["metrics"]), best_top1=float(state["best_top1"]))
