"""What ``--data`` names for detection: the built-in digit scenes, or a COCO folder, split by split.

A COCO folder holds one folder per split, each an ``images/`` folder and the instances file
``annotations.json`` beside it (the layout ``backbones detect make-data`` writes)::

    DATA/train/images/*.png   DATA/train/annotations.json
    DATA/val/images/*.png     DATA/val/annotations.json

``digit-scenes`` is generated once per set of sizes into the cache (``$BACKBONES_CACHE``), by
rank 0 under torchrun, and read from there as any COCO folder.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

from backbones.apps.detect.config import DIGIT_SCENES
from backbones.apps.parallel import DistributedContext, barrier
from backbones.core.files import atomic_directory

__all__ = ["ANNOTATIONS_NAME", "IMAGES_NAME", "SPLITS", "open_split", "scene_options", "split_folder", "write_scenes"]

SPLITS = ("train", "val")
IMAGES_NAME = "images"
ANNOTATIONS_NAME = "annotations.json"
_LAYOUT = f"a COCO folder holds train/ and val/, each with {IMAGES_NAME}/ and {ANNOTATIONS_NAME}"


def scene_options(canvas: int | None, train_scenes: int | None, val_scenes: int | None) -> dict[str, int]:
    """The digit scenes' sizes: those given, the data set's defaults for the others."""
    from backbones.data.digit_scenes import make_digit_scenes

    defaults = {k: p.default for k, p in inspect.signature(make_digit_scenes).parameters.items()}
    given = {"canvas": canvas, "train_scenes": train_scenes, "val_scenes": val_scenes}
    return {k: int(defaults[k] if v is None else v) for k, v in given.items()}


def write_scenes(out: str | Path, *, seed: int = 0, **sizes: int) -> Path:
    """Write the digit scenes as a COCO folder (``train/``, ``val/``) in one atomic step.

    Args:
        out: The folder to write (replaced whole when it exists).
        seed: The scenes' seed.
        **sizes: ``canvas``, ``train_scenes``, ``val_scenes`` (default: the data set's).

    Returns:
        ``out``.
    """
    from backbones.data.digit_scenes import make_digit_scenes

    out = Path(out).expanduser()
    with atomic_directory(out) as tmp:
        make_digit_scenes(tmp, seed=seed, **sizes)
    return out


def _scenes_cache(sizes: dict[str, int], context: DistributedContext | None) -> Path:
    from backbones.data import digit_scenes
    from backbones.hub.download import cache_dir

    # The generator's own source is in the name: a changed generator never reads old scenes.
    version = hashlib.sha256(Path(digit_scenes.__file__).read_bytes()).hexdigest()[:12]
    name = "-".join(f"{k}{v}" for k, v in sorted(sizes.items()))
    folder = cache_dir() / "digit-scenes" / f"{name}-seed0-{version}"
    complete = all((folder / s / ANNOTATIONS_NAME).is_file() for s in SPLITS)
    if (context is None or context.is_main) and not complete:
        write_scenes(folder, seed=0, **sizes)
    if context is not None:
        barrier(context)  # the other processes read what rank 0 wrote
    return folder


def split_folder(
    data: str, split: str, *, sizes: dict[str, int] | None = None, context: DistributedContext | None = None
) -> Path:
    """The folder of one split (``images/`` + ``annotations.json``) that ``data`` names.

    Args:
        data: ``"digit-scenes"``, a COCO folder (``train/``, ``val/``), or, for one split alone,
            a folder holding ``images/`` and ``annotations.json`` itself.
        split: ``"train"`` or ``"val"``.
        sizes: The digit scenes' sizes (:func:`scene_options`).
        context: Under torchrun: rank 0 writes the digit scenes, the others wait.

    Raises:
        FileNotFoundError: The folder or the split is missing (the message gives the layout).
    """
    if data == DIGIT_SCENES:
        return _scenes_cache(sizes or scene_options(None, None, None), context) / split
    root = Path(data).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--data {data}: no such folder; give 'digit-scenes' or a COCO folder ({_LAYOUT})")
    for folder in (root / split, root):
        if (folder / ANNOTATIONS_NAME).is_file() and (folder / IMAGES_NAME).is_dir():
            return folder
    raise FileNotFoundError(f"--data {data}: no {split}/{ANNOTATIONS_NAME} and {split}/{IMAGES_NAME}/ in it; {_LAYOUT}")


def open_split(folder: Path, *, augment: bool, invalid_boxes: str = "refuse") -> Any:
    """The :class:`~backbones.data.coco.CocoDetection` of a split folder, with box-aware transforms.

    Args:
        folder: A split folder (:func:`split_folder`).
        augment: Training augmentation (flips, scale jitter); evaluation transforms otherwise.
        invalid_boxes: ``"refuse"`` or ``"drop"`` a box outside its image or without area.
    """
    from backbones.data.coco import CocoDetection
    from backbones.data.detection_transforms import detection_transforms

    return CocoDetection(
        folder / IMAGES_NAME,
        folder / ANNOTATIONS_NAME,
        transforms=detection_transforms(train=augment),
        invalid_boxes=invalid_boxes,
    )
