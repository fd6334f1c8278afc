"""One training epoch and one evaluation pass, the same in one process and under DistributedDataParallel."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from backbones.apps.parallel import DistributedContext, all_reduce_sum, main_process_progress
from backbones.models.inception import AUX_LOSS_WEIGHT, GoogLeNetOutputs, InceptionOutputs

__all__ = [
    "INCEPTION_AUX_WEIGHT",
    "DivergenceError",
    "EpochStats",
    "EvalResult",
    "check_epoch_finite",
    "compute_loss",
    "evaluate",
    "train_one_epoch",
]

# torchvision's reference training scripts weight Inception v3's auxiliary loss by 0.4.
INCEPTION_AUX_WEIGHT = 0.4


def compute_loss(outputs: Tensor | tuple, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy, plus the weighted auxiliary losses when the model returned auxiliary logits.

    GoogLeNet: ``CE(logits) + 0.3 * (CE(aux1) + CE(aux2))`` (its ``googlenet_loss``); Inception
    v2/v3: ``CE(logits) + 0.4 * CE(aux)``. Without label smoothing this is exactly
    ``googlenet_loss`` for GoogLeNet.
    """
    if isinstance(outputs, Tensor):
        return F.cross_entropy(outputs, target, label_smoothing=label_smoothing)
    if isinstance(outputs, GoogLeNetOutputs):
        weight, (logits, *aux) = AUX_LOSS_WEIGHT, outputs
    elif isinstance(outputs, InceptionOutputs):
        weight, (logits, *aux) = INCEPTION_AUX_WEIGHT, outputs
    else:
        raise TypeError(f"unexpected model output {type(outputs).__name__}")
    main = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    return main + weight * sum(F.cross_entropy(a, target, label_smoothing=label_smoothing) for a in aux)


class DivergenceError(ValueError):
    """Training diverged: a loss, a figure or a weight became NaN or infinite, so the run stopped unsaved."""


def _divergence(
    what: str, *, epoch: int, step: int, steps: int, optimizer: torch.optim.Optimizer, clip_grad_norm: float | None
) -> DivergenceError:
    # LambdaLR records the peak (the lr option) as initial_lr: the figure to lower, not the scheduled one.
    peak = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
    clip = f"clip_grad_norm={clip_grad_norm:g}" if clip_grad_norm is not None else "pass clip_grad_norm=1.0"
    kept = (
        "nothing was saved"
        if epoch <= 1
        else f"the checkpoint of epoch {epoch - 1} is kept, but it continues these settings only: start the new "
        f"run in another output folder"
    )
    return DivergenceError(
        f"training diverged at epoch {epoch}, step {step} of {steps}: {what}; lower lr={peak:g} or {clip} "
        f"and start again ({kept})"
    )


def _anywhere(problem: bool, context: DistributedContext) -> bool:
    """Whether ``problem`` holds in any process: every process takes the same branch, none waits in a collective."""
    return bool(all_reduce_sum([float(problem)], context)[0])


def check_epoch_finite(
    model: nn.Module,
    figures: dict[str, float],
    context: DistributedContext,
    *,
    epoch: int,
    steps: int,
    optimizer: torch.optim.Optimizer,
    clip_grad_norm: float | None,
) -> None:
    """Stop before an epoch is recorded or saved if its figures or the model's weights are not finite.

    The last step's loss can be finite while its update was not: the weights are checked too.

    Args:
        model: The bare model about to be checkpointed.
        figures: The epoch's figures by name (``{"validation loss": 0.31}``).
        context: This process (the verdict is reduced over every process).
        epoch: The epoch (1-based).
        steps: Steps in an epoch.
        optimizer: The run's optimizer (its peak learning rate is named).
        clip_grad_norm: The run's clipping (``None``: none).

    Raises:
        DivergenceError: Something is NaN or infinite, in any process.
    """
    bad = [name for name, value in figures.items() if not math.isfinite(value)]
    weights = all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())
    if not weights:
        bad.append("the weights")
    if _anywhere(bool(bad), context):
        what = (
            f"{' and '.join(bad)} {'is' if len(bad) == 1 else 'are'} not finite"
            if bad
            else "another process's weights or figures are not finite"
        )
        raise _divergence(
            what, epoch=epoch, step=steps, steps=steps, optimizer=optimizer, clip_grad_norm=clip_grad_norm
        )


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class EpochStats:
    """What one training epoch measured (averaged over every process)."""

    loss: float
    images: int
    seconds: float
    lr: float  # of the epoch's last step

    @property
    def images_per_s(self) -> float:
        """Training images per second, all processes together."""
        return self.images / max(self.seconds, 1e-9)

    def throughput_record(self, world_size: int) -> dict[str, float | int]:
        """The fields every epoch's metrics.jsonl record ends with: lr and speed, per run and per process."""
        return {
            "lr": self.lr,
            "images_per_s": self.images_per_s,
            "images_per_s_per_process": self.images_per_s / world_size,
            "seconds": self.seconds,
            "processes": world_size,
        }


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    context: DistributedContext,
    *,
    label_smoothing: float,
    clip_grad_norm: float | None,
    dtype: str,
    description: str,
    progress: bool,
    epoch: int = 1,
    batch_loss: Callable[[nn.Module, Any], tuple[Tensor, int]] | None = None,
) -> EpochStats:
    """Run one pass over ``loader`` (the model already in training mode), one schedule step per batch.

    A loss that is not finite in any process stops every process at that step, before its update.
    ``batch_loss(model, batch) -> (loss, images)`` replaces the classification loss of an
    ``(images, labels)`` batch: the detection head trains through this same loop (it is called
    under the ``dtype`` autocast).

    Raises:
        DivergenceError: The loss became NaN or infinite (the message names the epoch and step).
    """
    total_loss, seen, lr = 0.0, 0, 0.0
    start = time.perf_counter()
    batches = main_process_progress(loader, context, desc=description, leave=False, disable=None if progress else True)
    for step, batch in enumerate(batches, 1):
        with _autocast(context.device, dtype):
            if batch_loss is None:
                images, target = (t.to(context.device, non_blocking=True) for t in batch)
                loss, images_in_batch = compute_loss(model(images), target, label_smoothing), len(target)
            else:
                loss, images_in_batch = batch_loss(model, batch)
        value = float(loss.detach())
        if _anywhere(not math.isfinite(value), context):
            what = f"the loss is {value}" if not math.isfinite(value) else "the loss is not finite in another process"
            raise _divergence(
                what, epoch=epoch, step=step, steps=len(loader), optimizer=optimizer, clip_grad_norm=clip_grad_norm
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        schedule.step()
        total_loss += value * images_in_batch
        seen += images_in_batch
    seconds = time.perf_counter() - start
    loss_sum, count = all_reduce_sum([total_loss, seen], context)
    if not count:
        raise ValueError("the training loader gave no batch; use a smaller batch size or more images")
    return EpochStats(loss=loss_sum / count, images=int(count), seconds=seconds, lr=lr)


@dataclass
class EvalResult:
    """Loss, top-1 / top-5 accuracy and the confusion matrix over a whole dataset (every process)."""

    loss: float
    top1: float
    top5: float
    count: int
    confusion: Tensor  # [true class, predicted class] counts


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, context: DistributedContext, num_classes: int, *, dtype: str = "fp32"
) -> EvalResult:
    """Evaluate ``model`` (put in eval mode here) on every sample of ``loader``'s dataset.

    Each process sees its share (see :func:`backbones.data.loaders.make_loader`); the sums are
    reduced across processes, so every process returns the whole dataset's figures.
    """
    model.eval()
    loss_sum = 0.0
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    top5 = 0.0
    for images, target in loader:
        images, target = images.to(context.device), target.to(context.device)
        with _autocast(context.device, dtype):
            logits = model(images).float()
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        k = min(5, num_classes)
        top5 += float((logits.topk(k, dim=1).indices == target[:, None]).any(dim=1).sum())
        predicted = logits.argmax(dim=1)
        confusion.index_put_(
            (target.cpu(), predicted.cpu()), torch.ones(len(target), dtype=torch.float64), accumulate=True
        )
    sums = all_reduce_sum([loss_sum, top5, *confusion.flatten().tolist()], context)
    confusion = torch.tensor(sums[2:], dtype=torch.float64).view(num_classes, num_classes)
    count = float(confusion.sum())
    if not count:
        raise ValueError("the validation data is empty; use more images or a larger val_fraction")
    return EvalResult(
        loss=sums[0] / count,
        top1=float(confusion.diag().sum()) / count,
        top5=sums[1] / count,
        count=int(count),
        confusion=confusion.long(),
    )
