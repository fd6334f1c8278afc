"""The built-in detection set: scikit-learn's real handwritten digits pasted at many scales onto canvases.

Offline and real: the 1,797 8x8 digits shipped in scikit-learn's wheel (the data of the
classification ``digits``), each upscaled with an antialiased bilinear resize to its drawn size,
tinted, and pasted onto a canvas with a little clutter (faint noise and thin lines, which are
not objects). Boxes are the tight boxes of each digit's ink; the categories are ``"0"``..``"9"``
(ids 1..10). Training and validation scenes are drawn from disjoint halves of the digits (a seeded
80/20 split of the images), so validation digits are handwriting the detector never saw.

Sizes follow COCO's object sizes, scaled to the canvas: COCO calls a box small below 32^2
pixels of area and large above 96^2 on images of about 640 pixels, so on a canvas of ``canvas``
pixels the thresholds are ``(32 * canvas / 640)^2`` and ``(96 * canvas / 640)^2`` (12.8^2 and
38.4^2 on the default 256). Each digit's size class (small, medium, large) is drawn with equal
probability, then its side within that class; :func:`area_thresholds` gives the two areas, which
``annotations.json`` records under ``info`` for an evaluation to use as its area ranges.

Example:
    >>> train_dir, val_dir = make_digit_scenes(Path("scenes"), train_scenes=200, val_scenes=50)
    >>> data = CocoDetection(val_dir / "images", val_dir / "annotations.json")
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["COCO_IMAGE_SIDE", "DIGIT_SCENE_CLASSES", "area_thresholds", "make_digit_scenes"]

DIGIT_SCENE_CLASSES = [str(d) for d in range(10)]
# The side of a typical COCO image, which COCO's area thresholds (32^2, 96^2) are relative to.
COCO_IMAGE_SIDE = 640
_COCO_SMALL_SIDE, _COCO_LARGE_SIDE = 32, 96
_VAL_FRACTION = 0.2
_MAX_PLACEMENT_TRIES = 30
_MAX_OVERLAP_IOU = 0.1
_INK_THRESHOLD = 0.2  # of a digit's peak value: the pixels its tight box covers


def area_thresholds(canvas: int) -> tuple[float, float]:
    """COCO's small/large area thresholds (32^2, 96^2 on ~640-pixel images) scaled to a ``canvas``-pixel side.

    Returns:
        ``(small_below, large_above)`` in square pixels: a box is small below the first, large
        above the second, medium between.
    """
    scale = canvas / COCO_IMAGE_SIDE
    return (_COCO_SMALL_SIDE * scale) ** 2, (_COCO_LARGE_SIDE * scale) ** 2


def _digit_split(seed: int) -> tuple[Any, Any, Any, Any]:
    """The digits' images (numpy ``[N, 8, 8]`` in [0, 1]) and labels, split into disjoint train/val index sets."""
    import numpy as np

    from backbones.data.digits import load_digits_arrays

    images, labels = load_digits_arrays()
    order = np.random.default_rng([seed, 7]).permutation(len(labels))
    cut = round(len(labels) * (1 - _VAL_FRACTION))
    return images.numpy(), labels.numpy(), np.sort(order[:cut]), np.sort(order[cut:])


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _resized(digit: Any, height: int, width: int) -> Any:
    """An 8x8 digit resized smoothly (bilinear, antialiased when shrinking) to ``height x width``."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(digit).float()[None, None]
    y = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return y[0, 0].clamp(0, 1).numpy()


def _side_ranges(canvas: int) -> list[tuple[float, float]]:
    """The digit's pasted side for each size class, so that its ink box falls in that class."""
    small, large = (math.sqrt(a) for a in area_thresholds(canvas))
    # The ink of an 8x8 digit covers about 3/4 of its square: sides are drawn for the ink box.
    lowest, highest = max(4.0, canvas / 40), canvas / 2.5
    return [(lowest, small * 0.95), (small * 1.05, large * 0.95), (large * 1.05, highest)]


def _render_scene(rng: Any, canvas: int, pool: Any, images: Any, labels: Any) -> tuple[Any, list[dict[str, Any]]]:
    """One scene: an RGB uint8 canvas and its objects (box ``[x, y, w, h]`` of the ink, category id)."""
    import numpy as np

    picture = rng.uniform(0.0, 0.12, size=(canvas, canvas, 3))
    for _ in range(int(rng.integers(2, 6))):  # clutter: thin faint lines that are no digit
        x0, y0, x1, y1 = rng.uniform(0, canvas, size=4)
        steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        xs = np.linspace(x0, x1, steps).astype(int).clip(0, canvas - 1)
        ys = np.linspace(y0, y1, steps).astype(int).clip(0, canvas - 1)
        picture[ys, xs] = np.maximum(picture[ys, xs], rng.uniform(0.15, 0.35))
    ranges = _side_ranges(canvas)
    placed: list[tuple[float, float, float, float]] = []
    objects: list[dict[str, Any]] = []
    # Large digits first: they need the room that small ones can find anywhere.
    classes = sorted(rng.integers(0, 3, size=int(rng.integers(2, 8))).tolist(), reverse=True)
    for size_class in classes:
        index = int(pool[rng.integers(0, len(pool))])
        low, high = ranges[size_class]
        side = math.exp(rng.uniform(math.log(low), math.log(high))) / 0.75
        aspect = rng.uniform(0.8, 1.25)
        height = max(3, min(canvas, round(side * math.sqrt(aspect))))
        width = max(3, min(canvas, round(side / math.sqrt(aspect))))
        digit = _resized(images[index], height, width)
        rows = np.flatnonzero(digit.max(axis=1) >= _INK_THRESHOLD * digit.max())
        cols = np.flatnonzero(digit.max(axis=0) >= _INK_THRESHOLD * digit.max())
        for _ in range(_MAX_PLACEMENT_TRIES):
            top = int(rng.integers(0, canvas - height + 1))
            left = int(rng.integers(0, canvas - width + 1))
            box = (left + cols[0], top + rows[0], left + cols[-1] + 1.0, top + rows[-1] + 1.0)
            if all(_iou(box, other) <= _MAX_OVERLAP_IOU for other in placed):
                break
        else:
            continue  # no room left for it: the scene has one digit less
        tint = rng.uniform(0.6, 1.0, size=3)
        region = picture[top : top + height, left : left + width]
        np.maximum(region, digit[:, :, None] * tint, out=region)
        placed.append(box)
        x1, y1, x2, y2 = (float(v) for v in box)
        objects.append({"bbox": [x1, y1, x2 - x1, y2 - y1], "category_id": int(labels[index]) + 1, "digit": index})
    return (picture * 255).round().clip(0, 255).astype(np.uint8), objects


def _write_split(folder: Path, scenes: int, canvas: int, rng: Any, pool: Any, images: Any, labels: Any) -> None:
    from PIL import Image

    from backbones.core.files import atomic_directory

    thresholds = area_thresholds(canvas)
    content: dict[str, Any] = {
        "info": {
            "description": "digit scenes: scikit-learn's handwritten digits pasted at many scales (backbones)",
            "canvas": canvas,
            "area_thresholds": list(thresholds),
            "area_thresholds_note": "COCO's 32^2 and 96^2 scaled by canvas / 640",
        },
        "images": [],
        "annotations": [],
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "digit"} for i, name in enumerate(DIGIT_SCENE_CLASSES)
        ],
    }
    with atomic_directory(folder) as tmp:
        (tmp / "images").mkdir()
        for image_id in range(1, scenes + 1):
            picture, objects = _render_scene(rng, canvas, pool, images, labels)
            file_name = f"{image_id:06d}.png"
            Image.fromarray(picture, mode="RGB").save(tmp / "images" / file_name, format="PNG", optimize=False)
            content["images"].append({"id": image_id, "file_name": file_name, "width": canvas, "height": canvas})
            for item in objects:
                width, height = item["bbox"][2], item["bbox"][3]
                content["annotations"].append(
                    {
                        "id": len(content["annotations"]) + 1,
                        "image_id": image_id,
                        "category_id": item["category_id"],
                        "bbox": item["bbox"],
                        "area": width * height,
                        "iscrowd": 0,
                        "digit_index": item["digit"],  # which scikit-learn digit: the splits' disjointness is checkable
                    }
                )
        (tmp / "annotations.json").write_text(json.dumps(content) + "\n", encoding="utf-8")


def make_digit_scenes(
    out: Path, *, train_scenes: int = 200, val_scenes: int = 50, canvas: int = 256, seed: int = 0
) -> tuple[Path, Path]:
    """Write the digit scenes as COCO: ``out/train`` and ``out/val``, each ``images/*.png`` + ``annotations.json``.

    Each folder is written beside its place and swapped in whole, so a killed run leaves the
    old folder or the new one. The same arguments give the same bytes.

    Args:
        out: The folder to write into.
        train_scenes: Training scenes.
        val_scenes: Validation scenes.
        canvas: The scenes' side in pixels (at least 64); the size classes scale with it (see
            :func:`area_thresholds`).
        seed: Draws the split of the digits, the scenes' layout and the clutter.

    Returns:
        ``(train_dir, val_dir)``; each loads with ``CocoDetection(dir / "images", dir / "annotations.json")``.

    Raises:
        ValueError: A scene count below 1 or a canvas below 64 pixels.
        ImportError: scikit-learn or Pillow is missing.
    """
    import numpy as np

    for name, value, low in (("train_scenes", train_scenes, 1), ("val_scenes", val_scenes, 1), ("canvas", canvas, 64)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int of at least {low}, got {value!r}")
    out = Path(out).expanduser()
    images, labels, train_pool, val_pool = _digit_split(seed)
    train_dir, val_dir = out / "train", out / "val"
    _write_split(train_dir, train_scenes, canvas, np.random.default_rng([seed, 0]), train_pool, images, labels)
    _write_split(val_dir, val_scenes, canvas, np.random.default_rng([seed, 1]), val_pool, images, labels)
    return train_dir, val_dir
