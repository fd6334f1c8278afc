"""What a fine-tuning run leaves in its folder: the model (save_pretrained), metrics.jsonl, curves.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch.nn as nn

from backbones.core.files import atomic_path, atomic_write_text

__all__ = ["CURVES_NAME", "METRICS_NAME", "save_model", "write_curves", "write_metrics"]

METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"


def write_metrics(folder: Path, records: list[dict[str, Any]]) -> Path:
    """Write every epoch's record as one JSON object per line (the whole file, atomically)."""
    return atomic_write_text(folder / METRICS_NAME, "".join(json.dumps(r) + "\n" for r in records))


def write_curves(folder: Path, records: list[dict[str, Any]]) -> Path | None:
    """Plot the losses and accuracies against epochs into ``curves.png``; ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = [r["epoch"] for r in records]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [r["train_loss"] for r in records], marker="o", label="train")
    loss_axis.plot(epochs, [r["val_loss"] for r in records], marker="o", label="validation")
    loss_axis.set(xlabel="epoch", ylabel="loss", title="loss")
    accuracy_axis.plot(epochs, [100 * r["val_top1"] for r in records], marker="o", label="top-1")
    accuracy_axis.plot(epochs, [100 * r["val_top5"] for r in records], marker="o", label="top-5")
    accuracy_axis.set(xlabel="epoch", ylabel="validation accuracy (%)", title="accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    path = folder / CURVES_NAME
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return path


def save_model(model: nn.Module, folder: Path, training: dict[str, Any], final: dict[str, Any]) -> Path:
    """``save_pretrained`` the fine-tuned model, its card saying how it was trained and how well it does.

    Args:
        model: The bare trained model (not the DDP wrapper).
        folder: The output folder.
        training: Dataset, epochs, command line and recipe, for the model card.
        final: The last epoch's validation figures (``val_top1``, ``val_top5``...).
    """
    model.pretrained_cfg = dict(
        model.pretrained_cfg,
        training=training,
        metrics={
            "dataset": f"{training['data']} validation split ({final['val_images']} images)",
            "top1": round(100 * final["val_top1"], 2),
            "top5": round(100 * final["val_top5"], 2),
            "reported_by": "backbones finetune",
        },
    )
    return model.save_pretrained(folder)
