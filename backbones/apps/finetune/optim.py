"""Optimizer and learning-rate schedule: SGD or AdamW, no decay on norms and biases, warmup then cosine."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

from backbones.apps.finetune.config import FinetuneConfig

__all__ = ["build_optimizer", "build_schedule", "warmup_cosine"]


def build_optimizer(model: nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    """The optimizer over the trainable parameters, weight decay on weights only.

    One-dimensional parameters (biases, BatchNorm scales and shifts) get no decay: shrinking
    them toward 0 does not regularise, it only changes the normalisation.
    """
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    if not decay and not no_decay:
        raise ValueError("nothing to train: every parameter is frozen; raise trainable_stages or drop freeze_norm")
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    return torch.optim.AdamW(groups, lr=config.lr)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """The learning-rate factor at ``step``: linear from 1/warmup to 1, then a cosine toward 0.

    Example:
        >>> [round(warmup_cosine(s, 10, 2), 3) for s in (0, 1, 2, 6, 9)]
        [0.5, 1.0, 1.0, 0.5, 0.038]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class _WarmupCosine:
    # A class, not a closure: LambdaLR saves a callable object's __dict__ with its state.
    def __init__(self, total_steps: int, warmup_steps: int) -> None:
        self.total_steps, self.warmup_steps = total_steps, warmup_steps

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.total_steps, self.warmup_steps)


def build_schedule(optimizer: torch.optim.Optimizer, config: FinetuneConfig, steps_per_epoch: int) -> LambdaLR:
    """Per-step schedule: ``warmup_epochs`` of linear warmup, then a cosine that ends near 0 at the last step.

    The config keeps the warmup shorter than the run; rounded to steps it still ends a step before
    the last, so the cosine always starts.
    """
    total = config.epochs * steps_per_epoch
    warmup = max(0, min(total - 1, round(config.warmup_epochs * steps_per_epoch)))
    return LambdaLR(optimizer, _WarmupCosine(total, warmup))
