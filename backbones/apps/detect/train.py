"""``detect train``: torchvision's detector on one of our FPNs, trained alone or as one process of torchrun.

The fine-tuning machinery, with a detection head: the same epoch loop
(:func:`~backbones.apps.finetune.loop.train_one_epoch` with a detection ``batch_loss``), the same
optimizer and schedule, atomic checkpoints and exact ``resume``, ``metrics.jsonl`` and
``curves.png``, DDP under torchrun with rank 0 writing. Each epoch ends with COCO's metric on the
validation split, every process's predictions gathered and scored once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from backbones.apps.detect.config import COCO_METRICS, DIGIT_SCENES, RESUME_FIELDS, DetectConfig, coco_percent
from backbones.apps.detect.data import open_split, scene_options, split_folder
from backbones.apps.detect.evaluate import evaluate_split
from backbones.apps.detect.loop import DetectionLoss
from backbones.apps.detect.output import detection_panels, write_card
from backbones.apps.finetune.checkpoint import (
    load_checkpoint,
    remove_obsolete_checkpoints,
    resume_decision,
    save_checkpoint,
)
from backbones.apps.finetune.loop import check_epoch_finite, train_one_epoch
from backbones.apps.finetune.model_setup import set_train_mode
from backbones.apps.finetune.optim import build_optimizer, build_schedule
from backbones.apps.finetune.output import remove_leftover_temporaries, write_curves, write_metrics
from backbones.apps.output_lock import output_lock
from backbones.apps.parallel import (
    DistributedContext,
    barrier,
    broadcast_buffers,
    distributed_session,
    wrap_for_training,
)
from backbones.data.loaders import make_loader, set_loader_epoch

__all__ = ["DetectResult", "detect_train", "run_detect_train"]

# torchvision's detectors resize the shorter side to min_size, the longer one to at most max_size: 800 and 1333.
_MAX_PER_MIN = 1333 / 800
_DEFAULT_COCO_SIZE = 800
_RECOVERY = (
    "Rerun the same command with resume=True to continue from the last complete checkpoint, or launch it with "
    "torchrun --max-restarts N to restart by itself"
)


@dataclass
class DetectResult:
    """What a training run produced.

    Attributes:
        out: The detector folder (``backbones.detector(out)`` loads it), with metrics, curves, checkpoints.
        metrics: One record per epoch (what ``metrics.jsonl`` holds).
        final: The last epoch's COCO figures (:data:`~backbones.apps.detect.evaluate.COCO_METRICS`).
        world_size: Processes that trained.
    """

    out: Path
    metrics: list[dict[str, Any]]
    final: dict[str, Any]
    world_size: int


def detect_train(model: str, data: str, out: str | Path, **options: Any) -> DetectResult:
    """Train torchvision's detector on one of our FPNs, on the digit scenes or a COCO folder.

    Runs alone, or as one process of ``torchrun --nproc_per_node N`` (DistributedDataParallel,
    gloo on CPU, nccl on CUDA; ``batch_size`` is per process). Only rank 0 writes files.

    Args:
        model: An FPN architecture (``"resnet18_fpn"``).
        data: ``"digit-scenes"`` or a COCO folder (``train/`` and ``val/``, each ``images/`` +
            ``annotations.json``).
        out: The output folder: ``config.json``, ``model.safetensors``, ``README.md`` (model card),
            ``metrics.jsonl``, ``curves.png`` and ``checkpoints/``.
        **options: Any field of :class:`~backbones.apps.detect.config.DetectConfig` (``kind``,
            ``epochs``, ``batch_size``, ``image_size``, ``lr``, ``dtype``, ``seed``, ``resume``...).

    Returns:
        A :class:`DetectResult`.

    Example:
        >>> result = detect_train("resnet18_fpn", "digit-scenes", "runs/scenes", epochs=12)
        >>> model = backbones.detector("runs/scenes").eval()
    """
    return run_detect_train(DetectConfig(model=model, data=str(data), out=str(out), **options))


def run_detect_train(config: DetectConfig) -> DetectResult:
    """Run the training ``config`` describes (see :func:`detect_train`)."""
    with distributed_session(device=config.device, timeout=config.timeout, recovery=_RECOVERY) as context:
        return _run(config, context)


def _say(context: DistributedContext, config: DetectConfig, text: str) -> None:
    if context.is_main and config.progress:
        print(text, flush=True)


def _sizes(config: DetectConfig, canvas: int | None) -> tuple[int, int]:
    """The detector's min_size and max_size: the option, else the canvas or torchvision's 800."""
    if config.image_size is None and canvas is not None:
        return canvas, canvas  # the square scenes at their own size: no resize
    size = config.image_size or _DEFAULT_COCO_SIZE
    return size, max(size, round(size * _MAX_PER_MIN))


@dataclass
class _Prepared:
    folder: Path
    train_set: Any
    val_set: Any
    model: nn.Module
    trained: nn.Module
    train_loader: Any
    optimizer: torch.optim.Optimizer
    schedule: Any
    run: dict[str, Any]
    records: list[dict[str, Any]]
    start: int
    started: float
    label_to_category_id: dict[int, int]
    loss: DetectionLoss


def _run(config: DetectConfig, context: DistributedContext) -> DetectResult:
    # One writer per --out, from before the first read of the folder to after the detector is saved.
    with output_lock(config.out, context, command=config.command or None):
        prepared = _prepare(config, context)
        for epoch in range(prepared.start, config.epochs):
            _run_epoch(config, context, prepared, epoch)
        return _finish(config, context, prepared)


def _prepare(config: DetectConfig, context: DistributedContext) -> _Prepared:
    from backbones.data.coco import collate_detection
    from backbones.models.detection import detector

    started = time.time()
    folder = Path(config.out).expanduser()
    resume, _ = resume_decision(folder, config.resume, context)
    sizes = scene_options(config.canvas, config.train_scenes, config.val_scenes) if config.data == DIGIT_SCENES else {}
    folders = {s: split_folder(config.data, s, sizes=sizes, context=context) for s in ("train", "val")}
    train_set = open_split(folders["train"], augment=config.augment, invalid_boxes=config.invalid_boxes)
    val_set = open_split(folders["val"], augment=False, invalid_boxes=config.invalid_boxes)
    if list(train_set.class_names) != list(val_set.class_names):
        raise ValueError(
            f"{folders['val']} has other categories than {folders['train']}; give both splits the same categories"
        )
    min_size, max_size = _sizes(config, sizes.get("canvas"))
    torch.manual_seed(config.seed)  # every process builds the same network
    options: dict[str, Any] = {"pretrained_backbone": config.pretrained_backbone, **(config.detector_options or {})}
    if config.trainable_layers is not None:
        options["trainable_layers"] = config.trainable_layers
    model = detector(
        config.model, config.kind, num_classes=train_set.num_classes, min_size=min_size, max_size=max_size, **options
    )
    model.detector_config["class_names"] = list(train_set.class_names)  # by label, "__background__" first
    model.to(context.device)
    train_loader = make_loader(
        train_set,
        config.batch_size,
        training=True,
        seed=config.seed,
        workers=config.workers,
        collate_fn=collate_detection,
    )
    optimizer = build_optimizer(model, config)  # type: ignore[arg-type]
    schedule = build_schedule(optimizer, config, len(train_loader))  # type: ignore[arg-type]
    trained = wrap_for_training(model, context)
    run = {k: v for k, v in config.as_dict().items() if k in RESUME_FIELDS} | {"world_size": context.world_size}
    records: list[dict[str, Any]] = []
    start = 0
    if resume:
        state = load_checkpoint(folder, model, optimizer, schedule, context, run=run)
        start, records = state.epoch, state.metrics
        _say(context, config, f"resuming {folder} after epoch {start} of {config.epochs}")
    _say(
        context,
        config,
        f"training {config.kind} on {config.model} with {config.data}: {len(train_set)} training / {len(val_set)} "
        f"validation images, {train_set.num_classes - 1} classes, min_size {min_size}, {context.world_size} "
        f"process(es) x batch {config.batch_size} ({context.backend or 'no'} backend)",
    )
    mapping = {int(k): int(v) for k, v in train_set.label_to_category_id.items()}
    return _Prepared(
        folder, train_set, val_set, model, trained, train_loader, optimizer, schedule, run, records, start, started,
        mapping, DetectionLoss(context),
    )  # fmt: skip


def _run_epoch(config: DetectConfig, context: DistributedContext, prepared: _Prepared, epoch: int) -> None:
    """Train one epoch, score the validation split, record the metrics and write the epoch's checkpoint."""
    set_loader_epoch(prepared.train_loader, epoch)
    set_train_mode(prepared.trained)
    stats = train_one_epoch(
        prepared.trained,
        prepared.train_loader,
        prepared.optimizer,
        prepared.schedule,
        context,
        label_smoothing=0.0,
        clip_grad_norm=config.clip_grad_norm,
        dtype=config.dtype,
        description=f"epoch {epoch + 1}/{config.epochs}",
        progress=config.progress,
        epoch=epoch + 1,
        batch_loss=prepared.loss,
    )
    parts = prepared.loss.epoch_parts()
    model = prepared.model
    broadcast_buffers(model, context)  # evaluate (and save) rank 0's BatchNorm statistics everywhere
    metrics = evaluate_split(
        model,
        prepared.val_set,
        context,
        batch_size=config.batch_size,
        label_to_category_id=prepared.label_to_category_id,
        dtype=config.dtype,
        workers=config.workers,
    )
    check_epoch_finite(
        model,
        {"the training loss": stats.loss},
        context,
        epoch=epoch + 1,
        steps=len(prepared.train_loader),
        optimizer=prepared.optimizer,
        clip_grad_norm=config.clip_grad_norm,
    )
    record = {
        "epoch": epoch + 1,
        "train_loss": stats.loss,
        **{f"train_{name.removeprefix('loss_')}": value for name, value in parts.items()},
        **metrics,
        **stats.throughput_record(context.world_size),
    }
    prepared.records.append(record)
    _say(
        context,
        config,
        f"epoch {epoch + 1}/{config.epochs}: train loss {stats.loss:.4f}, AP {coco_percent(metrics['AP'])}, "
        f"AP50 {coco_percent(metrics['AP50'])}, AP_s {coco_percent(metrics['AP_s'])}, lr {stats.lr:.4g}, "
        f"{stats.images_per_s:.1f} images/s, {stats.seconds:.1f} s",
    )
    if context.is_main:
        write_metrics(prepared.folder, prepared.records)
        write_curves(prepared.folder, prepared.records, detection_panels(prepared.records))
    save_checkpoint(
        prepared.folder,
        epoch + 1,
        model,
        prepared.optimizer,
        prepared.schedule,
        context,
        run=prepared.run,
        metrics=prepared.records,
        best_top1=float(metrics["AP"] or 0.0),
    )


def _finish(config: DetectConfig, context: DistributedContext, prepared: _Prepared) -> DetectResult:
    """Save the detector folder and its card (rank 0) and say what the run reached."""
    from backbones.models.detection import save_detector

    folder, records = prepared.folder, prepared.records
    if not records:
        raise ValueError(f"{folder}: the checkpoint has no epoch record; start again without resume=True")
    final = {k: records[-1].get(k) for k in COCO_METRICS}
    if context.is_main:
        dataset = f"{config.data} validation split ({len(prepared.val_set)} images)"
        extra = {
            "detection": {
                "data": config.data,
                "scene_sizes": {k: config.as_dict()[k] for k in ("canvas", "train_scenes", "val_scenes")},
                "category_ids": {str(k): v for k, v in prepared.label_to_category_id.items()},
                "training": _training_card(config, prepared, context),
                "validation": {"dataset": dataset, **final},
            }
        }
        save_detector(prepared.model, folder, extra_config=extra)
        write_card(folder)
        remove_obsolete_checkpoints(folder, records[-1]["epoch"], prepared.started)
        remove_leftover_temporaries(folder, prepared.started)
        _say(
            context,
            config,
            f"saved {folder} (validation AP {coco_percent(final['AP'])}, AP50 {coco_percent(final['AP50'])})",
        )
    barrier(context)  # no process leaves (and a caller reads the folder) before rank 0 has written it
    return DetectResult(folder, records, final, context.world_size)


def _training_card(config: DetectConfig, prepared: _Prepared, context: DistributedContext) -> dict[str, Any]:
    detector_config = prepared.model.detector_config
    return {
        "data": config.data,
        "dataset": f"{len(prepared.train_set)} training / {len(prepared.val_set)} validation images, "
        f"{prepared.train_set.num_classes - 1} classes",
        "epochs": len(prepared.records),
        "input_size": f"min_size {detector_config['min_size']}, max_size {detector_config['max_size']}",
        "recipe": f"{config.optimizer} lr {config.lr} (warmup {config.warmup_epochs:g} epochs, cosine), batch "
        f"{config.batch_size} x {context.world_size} process(es), weight decay {config.weight_decay}, "
        f"{config.dtype}, augmentation {'on' if config.augment else 'off'}, pretrained backbone "
        f"{config.pretrained_backbone}, seed {config.seed}",
        "command": config.command or f"backbones.apps.detect.detect_train({config.model!r}, {config.data!r}, ...)",
    }
