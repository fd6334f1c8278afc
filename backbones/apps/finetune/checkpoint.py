"""Checkpoints that a killed run never leaves half-written, and ``--resume`` that trusts only complete ones.

Each epoch writes three files into ``OUT/checkpoints/``, each through a temporary name and a
rename: the weights (``epoch-NNNN.safetensors``), then the training state (``epoch-NNNN.state.pt``:
optimizer, schedule, epoch, every process's RNG states, the metrics so far and the sha256 of the
weights written with it), and last the index (``epoch-NNNN.json``: the sha256 of both). The index
is the commit record: a checkpoint exists only once it is there, and it is trusted only if both
files still hash to the digests it holds, checked before the state is unpickled (by
``torch.load(weights_only=True)``). A digest kept in the index alone could be rewritten with its
file; the weights' digest is also inside the state, so the pair cannot be swapped for another
pair unnoticed. A checkpoint without an index (a run killed before it was written, or one of a
backbones before 0.2.0, which recorded no digest of the state) is not resumed: its state cannot
be verified. Older epochs are removed once a newer one is complete, and a run that completes keeps
only its last checkpoint (:func:`remove_obsolete_checkpoints`): no older epoch that a kill spared,
no temporary of one.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from backbones.apps.parallel import DistributedContext
from backbones.core.files import atomic_path, atomic_write_text, save_safetensors_atomic
from backbones.hub.integrity import file_sha256

__all__ = [
    "CHECKPOINT_DIR",
    "CheckpointError",
    "ResumeState",
    "checkpoint_folder",
    "latest_checkpoint",
    "load_checkpoint",
    "remove_obsolete_checkpoints",
    "resume_decision",
    "save_checkpoint",
]

CHECKPOINT_DIR = "checkpoints"
INDEX_FORMAT = "backbones-checkpoint/1"
_INDEX = re.compile(r"^epoch-(\d{4,})\.json$")
_STATE = re.compile(r"^epoch-(\d{4,})\.state\.pt$")
# A checkpoint file, and the temporary atomic_path writes it under (".epoch-0002.state.pt.ab12cd34.tmp").
_CHECKPOINT_FILE = re.compile(r"^epoch-(\d{4,})\.(?:safetensors|state\.pt|json)$")
_CHECKPOINT_TEMPORARY = re.compile(r"^\.epoch-\d{4,}\.(?:safetensors|state\.pt|json)\.[a-z0-9_]{8}\.tmp$")


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


def _paths(folder: Path, epoch: int) -> tuple[Path, Path, Path]:
    stem = folder / CHECKPOINT_DIR / f"epoch-{epoch:04d}"
    return stem.with_suffix(".safetensors"), Path(f"{stem}.state.pt"), stem.with_suffix(".json")


def _what_is(path: Path) -> str:
    """``path``'s kind in words: a file, a FIFO, a link to nothing..."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return f"a link to nothing ({os.readlink(path)})" if path.is_symlink() else "unreadable"
    kinds = {
        stat.S_ISREG: "a file",
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    return next((kind for test, kind in kinds.items() if test(mode)), "not a folder")


def checkpoint_folder(folder: Path) -> Path:
    """``folder``'s checkpoints folder, which need not exist yet.

    Raises:
        NotADirectoryError: Something else is in its place (a file, a FIFO, a dangling link): it is named.
    """
    path = folder / CHECKPOINT_DIR
    if os.path.lexists(path) and not path.is_dir():
        raise NotADirectoryError(
            f"{path} is {_what_is(path)}, not a folder: move it away (the run writes its checkpoints there)"
        )
    return path


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
    weights, state_path, index = _paths(folder, epoch)
    weights_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_safetensors_atomic(weights_state, weights, what=f"the epoch-{epoch} checkpoint's weights")
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
    with atomic_path(state_path, what=f"the epoch-{epoch} checkpoint's training state") as tmp:
        torch.save(state, tmp)
    record = {
        "format": INDEX_FORMAT,
        "epoch": epoch,
        "sha256": {weights.name: state["weights_sha256"], state_path.name: file_sha256(state_path)},
    }
    atomic_write_text(index, json.dumps(record, indent=1) + "\n", what=f"the epoch-{epoch} checkpoint's index")
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
    """The epoch of the newest complete checkpoint in ``folder``: the newest with its index (``None``: none).

    Raises:
        NotADirectoryError: ``folder/checkpoints`` is a file or another non-folder.
    """
    epochs = [int(m.group(1)) for p in checkpoint_folder(folder).glob("*.json") if (m := _INDEX.match(p.name))]
    return max(epochs) if epochs else None


def resume_decision(folder: Path, resume: bool, context: DistributedContext) -> tuple[bool, bool]:
    """Whether a run continues the checkpoints in ``folder``, and whether torchrun restarted its group.

    Under ``torchrun --max-restarts`` a restarted group continues from what the killed attempt
    completed without being asked to; a fresh run never writes over another run's checkpoints.

    Returns:
        ``(resume, restarted)``.

    Raises:
        ValueError: ``folder`` holds checkpoints, and this is neither a resume nor a restart.
    """
    from backbones.apps.parallel import restarted_by_torchrun

    restarted = restarted_by_torchrun(context)
    latest = latest_checkpoint(folder)
    resume = resume or (restarted and latest is not None)
    if not resume and latest is not None:
        raise ValueError(
            f"{folder} already holds checkpoints of a run; pass resume=True to continue it or use another output folder"
        )
    return resume, restarted


def _unindexed(folder: Path) -> str:
    """Why ``folder`` holds no complete checkpoint, when it holds a state file without its index ("" if none)."""
    states = sorted(p.name for p in checkpoint_folder(folder).glob("*.state.pt") if _STATE.match(p.name))
    if not states:
        return ""
    return (
        f": {states[-1]} has no index {states[-1].removesuffix('.state.pt')}.json, so its state cannot be verified (a "
        f"run killed before it was written, or a checkpoint of backbones before 0.2.0, which recorded no digest of "
        f"the state)"
    )


def _read_index(index: Path, fix: str) -> dict[str, str]:
    try:
        record = json.loads(index.read_text(encoding="utf-8"))
        digests = record["sha256"]
        if record.get("format") != INDEX_FORMAT or not isinstance(digests, dict):
            raise ValueError(f"not a {INDEX_FORMAT} index")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint index {index} is damaged ({err}); {fix}") from None
    return digests


def _verify(path: Path, digests: dict[str, str], index: Path, fix: str) -> None:
    """Refuse ``path`` unless it hashes to the digest ``index`` recorded for it."""
    expected = digests.get(path.name)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing (its index {index.name} names it); {fix}")
    actual = file_sha256(path)
    if actual != expected:
        raise CheckpointError(
            f"checkpoint {path} does not match its recorded sha256 ({index.name}: {str(expected)[:16]}..., the file: "
            f"{actual[:16]}...): it was cut short or changed; {fix}"
        )


def _fix(folder: Path, epoch: int, index: Path) -> str:
    earlier = [int(m.group(1)) for p in checkpoint_folder(folder).glob("*.json") if (m := _INDEX.match(p.name))]
    earlier = [e for e in earlier if e < epoch]
    start_again = f"delete {folder / CHECKPOINT_DIR} (or the output folder) and start again without resume=True"
    if earlier:
        return f"delete {index} to resume from epoch {max(earlier)} instead, or {start_again}"
    return start_again


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
        CheckpointError: No complete checkpoint (none has its index); its index, weights or state
            do not match (cut short, changed, from another pair); the run's options or process count differ.
        NotADirectoryError: ``folder/checkpoints`` is not a folder.
    """
    epoch = latest_checkpoint(folder)
    if epoch is None:
        raise CheckpointError(
            f"resume=True: {folder / CHECKPOINT_DIR} holds no complete checkpoint{_unindexed(folder)}; run without "
            f"resume=True"
        )
    weights, state_path, index = _paths(folder, epoch)
    fix = _fix(folder, epoch, index)
    digests = _read_index(index, fix)
    # Verified before torch.load: the state is never unpickled, nor trusted, unless it is the one written.
    _verify(state_path, digests, index, fix)
    _verify(weights, digests, index, fix)
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as err:  # a state written damaged: nothing can use it
        raise CheckpointError(f"checkpoint {state_path} is cut short or damaged ({err}); {fix}") from None
    if state.get("weights_sha256") != digests.get(weights.name):
        raise CheckpointError(
            f"checkpoint {state_path} was written with other weights than {weights.name} (the digests its index and "
            f"its state record differ); {fix}"
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
    # A row of the stacked states is a view at a non-zero offset into the whole tensor: set_rng_state
    # reads the storage from its start, so rank 1's restore crashed (SIGSEGV). A copy is its own tensor.
    torch.set_rng_state(state["rng"]["cpu"][context.rank].clone())
    if "cuda" in state["rng"] and context.device.type == "cuda":
        torch.cuda.set_rng_state(state["rng"]["cuda"][context.rank].clone(), context.device)
    return ResumeState(epoch=epoch, metrics=json.loads(state["metrics"]), best_top1=float(state["best_top1"]))
