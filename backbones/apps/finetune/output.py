"""What a fine-tuning run leaves in its folder: the model (save_pretrained), metrics.jsonl, curves.png."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import torch.nn as nn

from backbones.core.files import TEMP_SUFFIX, atomic_path, atomic_write_text, is_temporary

__all__ = [
    "CLASSIFICATION_PANELS",
    "CURVES_NAME",
    "METRICS_NAME",
    "remove_leftover_temporaries",
    "save_model",
    "temporary_name_pattern",
    "write_curves",
    "write_metrics",
]

METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"


def write_metrics(folder: Path, records: list[dict[str, Any]]) -> Path:
    """Write every epoch's record as one JSON object per line (the whole file, atomically).

    Always valid JSON: a figure that is not finite (which JSON cannot hold; Python would write
    ``NaN``) is written as ``null``. A run stops before recording a diverged epoch, so this is a
    last guard.
    """
    lines = (json.dumps({k: _finite_or_none(v) for k, v in r.items()}, allow_nan=False) + "\n" for r in records)
    return atomic_write_text(folder / METRICS_NAME, "".join(lines))


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


# A panel of curves.png: (title, y-axis label, [(record key, line label, scale)]).
Panel = tuple[str, str, list[tuple[str, str, float]]]
CLASSIFICATION_PANELS: tuple[Panel, ...] = (
    ("loss", "loss", [("train_loss", "train", 1.0), ("val_loss", "validation", 1.0)]),
    ("accuracy", "validation accuracy (%)", [("val_top1", "top-1", 100.0), ("val_top5", "top-5", 100.0)]),
)


def write_curves(
    folder: Path, records: list[dict[str, Any]], panels: tuple[Panel, ...] = CLASSIFICATION_PANELS
) -> Path | None:
    """Plot the losses and accuracies against epochs into ``curves.png``; ``None`` without matplotlib.

    ``panels`` says what each plot shows (default: fine-tuning's losses and top-1 / top-5).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = [r["epoch"] for r in records]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for axis, (title, ylabel, lines) in zip(axes[0], panels, strict=True):
        for key, label, scale in lines:
            values = [None if r.get(key) is None else scale * r[key] for r in records]
            axis.plot(epochs, values, marker="o", label=label)
        axis.set(xlabel="epoch", ylabel=ylabel, title=title)
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


def temporary_name_pattern(target: str) -> re.Pattern[str]:
    """The names :mod:`backbones.core.files` gives the temporaries of ``target`` (a file or folder name).

    ``.NAME.XXXXXXXX.tmp`` (tempfile's eight random characters), and ``.NAME.old.XXXXXXXX.tmp`` where
    an old folder was moved aside: exactly these, so ``.NAME.v2.XXXXXXXX.tmp``, a temporary of another
    target ``NAME.v2``, never matches.
    """
    return re.compile(rf"^\.{re.escape(target)}\.(?:old\.)?[a-z0-9_]{{8}}{re.escape(TEMP_SUFFIX)}$")


def remove_leftover_temporaries(folder: Path, written_before: float) -> list[Path]:
    """Delete what killed writers of this run's folder left: temporaries inside it and beside it.

    Inside ``folder`` every target is the run's own (metrics, curves, the model files); beside it,
    only the temporaries of ``folder`` itself (the ``save_pretrained`` folder being built), never
    those of other targets of the parent folder. Only entries last modified before
    ``written_before`` (when this run started) go: an earlier attempt's, never one that a process
    running now is writing.

    Args:
        folder: The run's output folder.
        written_before: A ``time.time()`` taken when this run started.

    Returns:
        The removed paths.
    """
    folder = Path(folder)
    beside = temporary_name_pattern(folder.name)
    candidates = [p for p in folder.iterdir() if is_temporary(p)] if folder.is_dir() else []
    candidates += [p for p in folder.parent.iterdir() if beside.match(p.name) and _is_ours_beside(p, folder.name)]
    return [p for p in candidates if _remove_if_older(p, written_before)]


def _is_ours_beside(path: Path, name: str) -> bool:
    # ".NAME.old.XXXXXXXX.tmp" is also the name a temporary of a target "NAME.old" would get; the
    # folder atomic_directory moves aside holds only the old NAME (or nothing, once partly removed).
    if not path.name.startswith(f".{name}.old."):
        return True
    try:
        return path.is_dir() and not path.is_symlink() and {e.name for e in path.iterdir()} <= {name}
    except OSError:
        return False


def _remove_if_older(path: Path, written_before: float) -> bool:
    try:
        if path.lstat().st_mtime >= written_before:
            return False
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:  # gone already: another process's cleanup got there first
        return False
    return True
