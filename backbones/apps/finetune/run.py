"""``finetune``: the whole run, alone or as one process of a ``torchrun`` job."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from backbones.apps.finetune.checkpoint import (
    load_checkpoint,
    remove_obsolete_checkpoints,
    resume_decision,
    save_checkpoint,
)
from backbones.apps.finetune.config import RESUME_FIELDS, FinetuneConfig
from backbones.apps.finetune.loop import check_epoch_finite, evaluate, train_one_epoch
from backbones.apps.finetune.model_setup import (
    build_training_model,
    describe_start,
    freeze_parts,
    resolve_training_model,
    set_train_mode,
)
from backbones.apps.finetune.optim import build_optimizer, build_schedule
from backbones.apps.finetune.output import remove_leftover_temporaries, save_model, write_curves, write_metrics
from backbones.apps.output_lock import output_lock
from backbones.apps.parallel import (
    DistributedContext,
    barrier,
    broadcast_buffers,
    distributed_session,
    wrap_for_training,
)
from backbones.data.datasets import open_dataset
from backbones.data.loaders import make_loader, set_loader_epoch

__all__ = ["FinetuneResult", "finetune", "run_finetune"]


@dataclass
class FinetuneResult:
    """What a run produced.

    Attributes:
        out: The output folder (a ``save_pretrained`` folder plus metrics, curves, checkpoints).
        metrics: One record per epoch (what ``metrics.jsonl`` holds).
        val_top1: Final validation top-1 accuracy (0..1).
        val_top5: Final validation top-5 accuracy (0..1).
        skipped: Unreadable images left out (with ``skip_bad_images``).
        world_size: Processes that trained.
    """

    out: Path
    metrics: list[dict[str, Any]]
    val_top1: float
    val_top5: float
    skipped: list[str]
    world_size: int


def finetune(model: str, data: str, out: str | Path, **options: Any) -> FinetuneResult:
    """Fine-tune a classification model on an image folder or the built-in digits.

    Runs alone, or as one process of ``torchrun --nproc_per_node N ...`` (DistributedDataParallel,
    gloo on CPU, nccl on CUDA; ``batch_size`` is per process). Only rank 0 writes files.

    Args:
        model: A registered architecture (``"resnet18"``, ``"resnet50.tv2_in1k"``) or a folder
            written by ``save_pretrained``.
        data: ``"digits"`` or an image folder with one subfolder per class.
        out: The output folder: ``config.json``, ``model.safetensors``, ``README.md`` (model card),
            ``metrics.jsonl``, ``curves.png`` and ``checkpoints/``.
        **options: Any field of :class:`~backbones.apps.finetune.config.FinetuneConfig`
            (``epochs``, ``batch_size``, ``lr``, ``optimizer``, ``pretrained``, ``trainable_stages``,
            ``dtype``, ``seed``, ``resume``...).

    Returns:
        A :class:`FinetuneResult`.

    Raises:
        ValueError: A bad option or bad data (the message names the problem and the fix).
        FileNotFoundError: The data folder does not exist.

    Example:
        >>> result = backbones.finetune("resnet18", "digits", "runs/digits", epochs=5)
        >>> round(result.val_top1, 3)
        0.986
        >>> model = backbones.from_pretrained("runs/digits")
    """
    return run_finetune(FinetuneConfig(model=model, data=str(data), out=str(out), **options))


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        # cuBLAS is deterministic only with a fixed workspace, which must be set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def _check_sync_bn(config: FinetuneConfig, context: DistributedContext) -> None:
    if config.sync_bn and context.device.type != "cuda":
        raise ValueError(
            "sync_bn=True needs CUDA: torch's SyncBatchNorm only works with GPU modules (DDP refuses it on CPU); "
            "drop sync_bn=True on CPU (each process then normalises with its own batch, and rank 0's statistics are "
            "saved)"
        )


# What to do when a process of the group is lost (every complete epoch is a checkpoint).
_RECOVERY = (
    "Rerun the same command with resume=True to continue from the last complete checkpoint, or launch it with "
    "torchrun --max-restarts N to restart by itself"
)


def run_finetune(config: FinetuneConfig) -> FinetuneResult:
    """Run the fine-tuning described by ``config`` (see :func:`finetune`)."""
    session = distributed_session(device=config.device, timeout=config.timeout, recovery=_RECOVERY)
    with session as context, _deterministic(config.deterministic):
        _check_sync_bn(config, context)
        return _run(config, context)


def _say(context: DistributedContext, config: FinetuneConfig, text: str) -> None:
    if context.is_main and config.progress:
        print(text, flush=True)


@dataclass
class _PreparedRun:
    """A run ready for its next epoch: data, model, optimizer, and the epochs done so far.

    Attributes:
        folder: The output folder.
        train_set: The training data.
        val_set: The validation data.
        model: The model itself (what is evaluated and saved).
        trained: What the steps run through: ``model``, or its DistributedDataParallel wrapper.
        train_loader: Batches of ``train_set``.
        val_loader: Batches of ``val_set``.
        optimizer: The optimizer over ``model``'s trainable parameters.
        schedule: The learning-rate schedule, stepped every batch.
        run: The options a checkpoint must match to be resumed (``RESUME_FIELDS`` and the world size).
        records: One ``metrics.jsonl`` record per epoch done.
        start: Epochs done (from the checkpoint when resuming).
        skipped: The unreadable images left out of both splits.
        started: ``time.time()`` when this run began: what killed attempts left is older.
        started_from: The weights the run started from, in words (for the model card).
    """

    folder: Path
    train_set: Any
    val_set: Any
    model: nn.Module
    trained: nn.Module
    train_loader: Any
    val_loader: Any
    optimizer: torch.optim.Optimizer
    schedule: Any
    run: dict[str, Any]
    records: list[dict[str, Any]]
    start: int
    skipped: list[str]
    started: float
    started_from: str


def _run(config: FinetuneConfig, context: DistributedContext) -> FinetuneResult:
    # Held from before the first read of the folder to after the model is saved: one writer per --out.
    with output_lock(config.out, context, command=config.command or _api_call(config)):
        prepared = _prepare(config, context)
        for epoch in range(prepared.start, config.epochs):
            _run_epoch(config, context, prepared, epoch)
        return _finish(config, context, prepared)


def _prepare(config: FinetuneConfig, context: DistributedContext) -> _PreparedRun:
    """Open the data, build the model and its optimizer, and restore a checkpoint when resuming."""
    started = time.time()
    folder = Path(config.out).expanduser()
    resume, restarted = resume_decision(folder, config.resume, context)
    # Resolved once: a Hub repo's config is fetched, a weights file read, a single time per run.
    source = resolve_training_model(config.model, config.pretrained)
    # The data is opened with the network's structure (meta device) before the real model exists,
    # whose head depends on the data's classes.
    reference = source.skeleton()
    data_options = {
        "val_data": config.val_data,
        "val_fraction": config.val_fraction,
        "seed": config.seed,
        "skip_bad_images": config.skip_bad_images,
        "image_size": config.image_size,
    }
    augment = config.augment if config.augment is not None else config.data != "digits"
    train_set = open_dataset(config.data, "train", model=reference, training=augment, **data_options)
    val_set = open_dataset(config.data, "val", model=reference, **data_options)
    # Without val_data both splits come from one scan, and each lists its skipped images.
    skipped = [*train_set.skipped, *(val_set.skipped if config.val_data is not None else [])]
    if skipped:
        _say(context, config, f"skipped {len(skipped)} unreadable images: {', '.join(skipped)}")
    torch.manual_seed(config.seed)  # the training's random draws (dropout) start alike in every process
    model = build_training_model(
        source,
        len(train_set.classes),
        image_size=train_set.image_size,
        progress=config.progress and context.is_main,
        seed=config.seed,  # the same initialisation in every process
    )
    _record_preprocessing(model, train_set, val_set)
    freeze_parts(model, config.trainable_stages, freeze_norm=config.freeze_norm)
    if config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(context.device)
    train_loader = make_loader(train_set, config.batch_size, training=True, seed=config.seed, workers=config.workers)
    val_loader = make_loader(val_set, config.batch_size, training=False, workers=config.workers)
    optimizer = build_optimizer(model, config)
    schedule = build_schedule(optimizer, config, len(train_loader))
    trained = wrap_for_training(model, context)
    run = {k: v for k, v in config.as_dict().items() if k in RESUME_FIELDS} | {"world_size": context.world_size}
    records: list[dict[str, Any]] = []
    start = 0
    restart = "torchrun restarted the group: " if restarted else ""
    if resume:
        state = load_checkpoint(folder, model, optimizer, schedule, context, run=run)
        start, records = state.epoch, state.metrics
        _say(context, config, f"{restart}resuming {folder} after epoch {start} of {config.epochs}")
    elif restarted:
        _say(context, config, f"{restart}no complete checkpoint in {folder} yet, starting again from epoch 1")
    _say(
        context,
        config,
        f"fine-tuning {config.model} on {train_set.source}: {len(train_set)} training / {len(val_set)} validation "
        f"images, {len(train_set.classes)} classes, {train_set.image_size}x{train_set.image_size}, "
        f"{context.world_size} process(es) x batch {config.batch_size} ({context.backend or 'no'} backend)",
    )
    return _PreparedRun(
        folder,
        train_set,
        val_set,
        model,
        trained,
        train_loader,
        val_loader,
        optimizer,
        schedule,
        run,
        records,
        start,
        skipped,
        started,
        describe_start(source, len(train_set.classes), seed=config.seed),
    )


def _run_epoch(config: FinetuneConfig, context: DistributedContext, prepared: _PreparedRun, epoch: int) -> None:
    """Train one epoch, evaluate, record the metrics and write the epoch's checkpoint."""
    set_loader_epoch(prepared.train_loader, epoch)
    set_train_mode(prepared.trained)
    stats = train_one_epoch(
        prepared.trained,
        prepared.train_loader,
        prepared.optimizer,
        prepared.schedule,
        context,
        label_smoothing=config.label_smoothing,
        clip_grad_norm=config.clip_grad_norm,
        dtype=config.dtype,
        description=f"epoch {epoch + 1}/{config.epochs}",
        progress=config.progress,
        epoch=epoch + 1,
    )
    model = prepared.model
    broadcast_buffers(model, context)  # evaluate (and save) rank 0's BatchNorm statistics everywhere
    result = evaluate(model, prepared.val_loader, context, len(prepared.train_set.classes), dtype=config.dtype)
    # Nothing of a diverged epoch is recorded or saved: the last checkpoint stays the last good one.
    check_epoch_finite(
        model,
        {"the training loss": stats.loss, "the validation loss": result.loss},
        context,
        epoch=epoch + 1,
        steps=len(prepared.train_loader),
        optimizer=prepared.optimizer,
        clip_grad_norm=config.clip_grad_norm,
    )
    records = prepared.records
    records.append(
        {
            "epoch": epoch + 1,
            "train_loss": stats.loss,
            "val_loss": result.loss,
            "val_top1": result.top1,
            "val_top5": result.top5,
            **stats.throughput_record(context.world_size),
        }
    )
    _say(
        context,
        config,
        f"epoch {epoch + 1}/{config.epochs}: train loss {stats.loss:.4f}, val loss {result.loss:.4f}, "
        f"top-1 {100 * result.top1:.2f}%, top-5 {100 * result.top5:.2f}%, lr {stats.lr:.4g}, "
        f"{stats.images_per_s:.0f} images/s, {stats.seconds:.1f} s",
    )
    if context.is_main:
        write_metrics(prepared.folder, records)
        write_curves(prepared.folder, records)
    save_checkpoint(
        prepared.folder,
        epoch + 1,
        model,
        prepared.optimizer,
        prepared.schedule,
        context,
        run=prepared.run,
        metrics=records,
        best_top1=result.top1,
    )


def _finish(config: FinetuneConfig, context: DistributedContext, prepared: _PreparedRun) -> FinetuneResult:
    """Save the trained model folder (rank 0) and say what the run reached."""
    folder, records = prepared.folder, prepared.records
    if not records:
        raise ValueError(f"{folder}: the checkpoint has no epoch record; start again without resume=True")
    final = dict(records[-1], val_images=len(prepared.val_set))
    if context.is_main:
        card = _training_card(config, prepared, context, records)
        save_model(prepared.model, folder, card, final)
        # The run is complete: what earlier, killed attempts left is obsolete now.
        remove_obsolete_checkpoints(folder, records[-1]["epoch"], prepared.started)
        remove_leftover_temporaries(folder, prepared.started)
        _say(context, config, f"saved {folder} (validation top-1 {100 * final['val_top1']:.2f}%)")
    barrier(context)  # no process leaves (and a caller reads the folder) before rank 0 has written it
    return FinetuneResult(folder, records, final["val_top1"], final["val_top5"], prepared.skipped, context.world_size)


def _record_preprocessing(model: nn.Module, train_set: Any, val_set: Any) -> None:
    """Make the saved ``pretrained_cfg`` describe the input the model was trained on and its classes."""
    size = val_set.image_size
    cfg = dict(model.pretrained_cfg)
    cfg.update(
        input_size=(cfg["input_size"][0], size, size),
        crop_size=size,
        num_classes=len(train_set.classes),
        class_names=list(train_set.classes),
    )
    transform = getattr(val_set, "transform", None)
    cfg["resize_size"] = _resize_of(transform, size)
    model.pretrained_cfg = cfg


def _resize_of(transform: Any, default: int) -> int:
    # The evaluation transforms' Resize size (folders); digits are upsampled straight to the size.
    for step in getattr(transform, "transforms", []):
        if type(step).__name__ == "Resize":
            size = step.size
            return int(size[0] if isinstance(size, (list, tuple)) else size)
    return default


def _training_card(
    config: FinetuneConfig, prepared: _PreparedRun, context: DistributedContext, records: list[dict[str, Any]]
) -> dict[str, Any]:
    train_set, val_set = prepared.train_set, prepared.val_set
    source = "scikit-learn's handwritten digits (8x8, upsampled)" if train_set.source == "digits" else train_set.source
    return {
        "data": train_set.source,
        "dataset": f"{source}: {len(train_set)} training / {len(val_set)} validation images, "
        f"{len(train_set.classes)} classes",
        "epochs": len(records),
        "input_size": f"{train_set.image_size}x{train_set.image_size}",
        "started_from": prepared.started_from,
        "recipe": f"{config.optimizer} lr {config.lr} (warmup {config.warmup_epochs} epochs, cosine), batch "
        f"{config.batch_size} x {context.world_size} process(es), weight decay {config.weight_decay}, "
        f"label smoothing {config.label_smoothing}, {config.dtype}, trainable stages "
        f"{_stages(config.trainable_stages)}, seed {config.seed}",
        "final_validation_top1": f"{100 * records[-1]['val_top1']:.2f}%",
        "command": config.command or _api_call(config),
    }


def _api_call(config: FinetuneConfig) -> str:
    # Called from Python, not the CLI: the call that repeats the run, with the options that differ.
    defaults = FinetuneConfig(model=config.model, data=config.data, out=config.out).as_dict()
    options = [f"{k}={v!r}" for k, v in config.as_dict().items() if v != defaults[k] and k != "command"]
    return f"backbones.finetune({', '.join([repr(config.model), repr(config.data), repr(config.out), *options])})"


def _stages(trainable_stages: int | None) -> str:
    return "all" if trainable_stages is None else str(trainable_stages)
