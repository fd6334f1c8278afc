"""Calibration batches for int8 quantization: a few preprocessed batches from a folder or the digits.

The images come through the shared data layer (:func:`backbones.data.datasets.open_dataset`), so
they are preprocessed exactly as fine-tuning, evaluation and extraction preprocess them for the
model: its mean, std, sizes and interpolation, eval transforms (no augmentation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from backbones.data.datasets import BUILTIN_DATASETS, open_dataset

__all__ = ["calibration_batches"]


def calibration_batches(
    model: nn.Module | str | dict[str, Any],
    data: str | Path = "digits",
    *,
    batches: int = 4,
    batch_size: int = 8,
    split: str | None = None,
    image_size: int | None = None,
    seed: int = 0,
) -> list[Tensor]:
    """``batches`` batches of ``batch_size`` images, preprocessed for ``model``, chosen at random (seeded).

    Args:
        model: The model (or ``arch[.tag]`` name, or ``pretrained_cfg`` dict) whose preprocessing to use.
        data: ``"digits"`` (the built-in handwritten digits) or an image folder.
        batches: How many batches.
        batch_size: Images per batch; the last batch is smaller when the data runs out.
        split: Which part of ``data`` to draw from; default ``"train"`` for the digits (their
            ``"val"`` split stays unseen for evaluation) and ``"all"`` for a folder.
        image_size: Height and width; default as :func:`~backbones.data.datasets.open_dataset`
            (the model's crop size for folders, ``max(32, min_input_size)`` for the digits).
        seed: Seed of the random choice of images (not of the train/val split).

    Returns:
        A list of float32 tensors ``[N, C, H, W]``, ready for ``optimize(..., calibration=...)``.

    Raises:
        ValueError: ``batches`` or ``batch_size`` below 1, or anything :func:`open_dataset` rejects.
        FileNotFoundError: The folder does not exist.

    Example:
        >>> model = backbones.create_model("resnet50", pretrained=True)
        >>> fast = backbones.optimize(model, dtype="int8", calibration=calibration_batches(model, "photos/"))
    """
    if batches < 1 or batch_size < 1:
        raise ValueError(f"batches and batch_size must be at least 1, got batches={batches}, batch_size={batch_size}")
    split = split or ("train" if str(data) in BUILTIN_DATASETS else "all")
    # The split keeps open_dataset's default seed, so the digits' "val" images stay the ones
    # fine-tuning and evaluation hold out; ``seed`` only picks the images.
    dataset = open_dataset(data, split, model=model, training=False, image_size=image_size)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[: batches * batch_size]
    chosen = order.tolist()
    return [
        torch.stack([dataset[i][0] for i in chosen[start : start + batch_size]])
        for start in range(0, len(chosen), batch_size)
    ]
