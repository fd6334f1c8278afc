"""``evaluate``: top-1 / top-5 of a trained model on a dataset, and a picture of its confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn
from torch import Tensor

from backbones.apps.finetune.loop import evaluate
from backbones.apps.parallel import distributed_session
from backbones.core.files import atomic_path
from backbones.data.datasets import open_dataset
from backbones.data.loaders import make_loader

__all__ = ["PICTURE_FORMATS", "evaluate_model", "load_trained_model", "picture_format", "save_confusion_picture"]

# The confusion picture's format follows its suffix: these are the ones matplotlib writes without extras.
PICTURE_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def load_trained_model(model: str | Path | nn.Module, pretrained: bool | str | Path | None = None) -> nn.Module:
    """A model to evaluate: any model reference (see :func:`backbones.models.reference.resolve_model`) with
    its weights (``pretrained`` for an architecture; by default its default weights), or a model."""
    from backbones.models.reference import resolve_model

    return resolve_model(model, pretrained, default=True).build(progress=False)


def picture_format(path: str | Path) -> str:
    """The format the confusion picture ``path`` asks for by its suffix (``"png"``, ``"svg"`` or ``"pdf"``).

    Raises:
        ValueError: Another suffix (a ``.txt`` would be given PNG bytes), or ``path`` is a folder.
    """
    path = Path(path)
    known = ", ".join(PICTURE_FORMATS)
    if path.is_dir():
        raise ValueError(f"cannot write the confusion matrix to {path}: it is a folder; give a file ending in {known}")
    suffix = path.suffix.lower()
    if suffix not in PICTURE_FORMATS:
        raise ValueError(
            f"cannot write the confusion matrix to {path}: no picture format has the suffix "
            f"{suffix or '(none)'!r}; give a file ending in {known}"
        )
    return PICTURE_FORMATS[suffix]


def _check_classes(model: nn.Module, classes: list[str]) -> None:
    names = model.pretrained_cfg.get("class_names")
    outputs = getattr(model, "num_classes", None)
    if names and list(names) != list(classes):
        raise ValueError(
            f"the model's classes ({', '.join(map(str, names[:5]))}{', ...' if len(names) > 5 else ''}) are not the "
            f"data's ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}); evaluate on data with the "
            f"classes the model was trained on"
        )
    if outputs is not None and outputs != len(classes):
        raise ValueError(f"the model has {outputs} outputs but the data has {len(classes)} classes")


def evaluate_model(
    model: str | Path | nn.Module,
    data: str | Path,
    *,
    pretrained: bool | str | Path | None = None,
    split: str | None = None,
    batch_size: int = 64,
    image_size: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    workers: int = 0,
    skip_bad_images: bool = False,
    picture: str | Path | None = "confusion.png",
    device: str | None = "cpu",
) -> dict[str, Any]:
    """Score a model on ``data`` with the preprocessing it was trained with.

    Args:
        model: A model reference: a ``save_pretrained`` folder (e.g. ``backbones finetune``'s
            output), an ``arch.tag`` name, a weights file, a Hub repo, or a model.
        data: ``"digits"`` or an image folder (one subfolder per class, the model's classes).
        pretrained: For an architecture: its weights (a tag, a file or folder, a Hub repo); by
            default the tag in the name, else the default weights.
        split: ``"val"`` (the seeded held-out split), ``"train"`` or ``"all"``; default ``"val"``
            for the digits, ``"all"`` for a folder.
        batch_size: Images per batch.
        image_size: Input size; default the model's ``pretrained_cfg`` input size.
        val_fraction: With ``split`` train/val: the held-out share (as in training).
        seed: With ``split`` train/val: the split's seed (as in training).
        workers: DataLoader workers.
        skip_bad_images: Skip unreadable images instead of failing.
        picture: Where to write the confusion-matrix picture, in the format its suffix says
            (:data:`PICTURE_FORMATS`: ``.png``, ``.svg``, ``.pdf``; ``None``: no picture).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (``None``: CUDA when available).

    Returns:
        ``{"top1", "top5", "loss", "images", "split", "data", "confusion" (list of lists), "picture"}``.

    Example:
        >>> report = evaluate_model("runs/digits", "digits")
        >>> round(report["top1"], 3)
        0.986
    """
    if picture is not None:
        picture_format(picture)  # before any work: a wrong suffix would otherwise fail only at the end
    split = split or ("val" if str(data) == "digits" else "all")
    network = load_trained_model(model, pretrained).eval()
    size = image_size or int(network.pretrained_cfg["input_size"][-1])
    dataset = open_dataset(
        data,
        split,
        model=network,
        training=False,
        val_fraction=val_fraction,
        seed=seed,
        image_size=size,
        skip_bad_images=skip_bad_images,
    )
    if not dataset.classes:
        raise ValueError(f"{data} has no class subfolders, so there is nothing to score against")
    _check_classes(network, dataset.classes)
    with distributed_session(device=device) as context:
        loader = make_loader(dataset, batch_size, training=False, workers=workers)
        result = evaluate(network.to(context.device), loader, context, len(dataset.classes))
        written = None
        if picture is not None and context.is_main:
            written = save_confusion_picture(picture, result.confusion, dataset.classes)
    return {
        "top1": result.top1,
        "top5": result.top5,
        "loss": result.loss,
        "images": result.count,
        "split": split,
        "data": str(data),
        "confusion": result.confusion.tolist(),
        "picture": str(written) if written else None,
    }


def save_confusion_picture(path: str | Path, confusion: Tensor, classes: list[str]) -> Path:
    """Draw the confusion matrix (rows: true class, columns: predicted) with counts, as a PNG, SVG or PDF.

    Raises:
        ValueError: ``path``'s suffix is none of :data:`PICTURE_FORMATS`.
        ImportError: matplotlib is missing.
    """
    image_format = picture_format(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("the confusion-matrix picture needs matplotlib: `pip install backbones[tools]`") from None
    path = Path(path)
    size = min(4 + 0.45 * len(classes), 20)
    figure, axis = plt.subplots(figsize=(size, size))
    shares = confusion.double() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    axis.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 30:  # beyond that the labels and counts no longer fit
        axis.set_xticks(range(len(classes)), classes, rotation=90)
        axis.set_yticks(range(len(classes)), classes)
        for row in range(len(classes)):
            for column in range(len(classes)):
                count = int(confusion[row, column])
                if count:
                    colour = "white" if shares[row, column] > 0.5 else "black"
                    axis.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    accuracy = float(confusion.diag().sum()) / max(1, int(confusion.sum()))
    axis.set(xlabel="predicted", ylabel="true", title=f"confusion matrix (top-1 {100 * accuracy:.2f}%)")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=image_format, dpi=100)
    plt.close(figure)
    return path
