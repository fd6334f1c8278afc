"""The detection head of the fine-tuning loop: a batch's summed losses, and their parts per epoch.

torchvision's detectors return their losses as a dict in training mode (Faster R-CNN: the
classifier, the box regression, the RPN's objectness and its boxes); their sum is what trains,
through :func:`backbones.apps.finetune.loop.train_one_epoch`'s ``batch_loss``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch.nn as nn
from torch import Tensor

from backbones.apps.parallel import DistributedContext, all_reduce_sum

__all__ = ["DetectionLoss"]


class DetectionLoss:
    """``batch_loss(model, batch)`` for detection batches, keeping each loss part's sum for the epoch.

    Args:
        context: This process (its device, and the reduction of the parts).
    """

    def __init__(self, context: DistributedContext) -> None:
        self.context = context
        self.sums: dict[str, float] = defaultdict(float)
        self.images = 0

    def __call__(self, model: nn.Module, batch: tuple[Any, Any]) -> tuple[Tensor, int]:
        """The batch's total loss and its number of images."""
        images, targets = batch
        device = self.context.device
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [{k: v.to(device) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        for name, value in losses.items():
            self.sums[name] += float(value.detach()) * len(images)
        self.images += len(images)
        return sum(losses.values()), len(images)  # type: ignore[return-value]

    def epoch_parts(self) -> dict[str, float]:
        """Each loss part's mean over the epoch, every process together; the sums start again."""
        names = sorted(self.sums)
        totals = all_reduce_sum([*(self.sums[n] for n in names), self.images], self.context)
        count = max(totals[-1], 1.0)
        self.sums.clear()
        self.images = 0
        return {name: total / count for name, total in zip(names, totals, strict=False)}
