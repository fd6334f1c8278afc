"""One training epoch and one evaluation pass, the same in one process and under DistributedDataParallel."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from backbones.apps.parallel import DistributedContext, all_reduce_sum, main_process_progress
from backbones.models.inception import AUX_LOSS_WEIGHT, GoogLeNetOutputs, InceptionOutputs

__all__ = ["INCEPTION_AUX_WEIGHT", "EpochStats", "EvalResult", "compute_loss", "evaluate", "train_one_epoch"]

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
) -> EpochStats:
    """Run one pass over ``loader`` (the model already in training mode), one schedule step per batch."""
    total_loss, seen, lr = 0.0, 0, 0.0
    start = time.perf_counter()
    batches = main_process_progress(loader, context, desc=description, leave=False, disable=None if progress else True)
    for images, target in batches:
        images, target = images.to(context.device, non_blocking=True), target.to(context.device, non_blocking=True)
        with _autocast(context.device, dtype):
            loss = compute_loss(model(images), target, label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        schedule.step()
        total_loss += float(loss.detach()) * len(target)
        seen += len(target)
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
