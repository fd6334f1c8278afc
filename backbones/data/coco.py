"""COCO-format detection datasets: an instances JSON and a folder of images, checked when opened.

The format every detection tool reads: ``images`` (id, file_name, width, height),
``annotations`` (id, image_id, category_id, bbox ``[x, y, width, height]`` in pixels, optional
area and iscrowd) and ``categories`` (id, name). Category ids need not be contiguous: the
categories, sorted by id, become labels ``1..K`` (0 is torchvision's background), and
:attr:`CocoDetection.label_to_category_id` maps them back for COCO's evaluation. An image without
annotations is a valid negative (its target has no boxes).

Everything that would otherwise fail later, inside a training step or as torchvision's assertion
from inside the model, is refused when the dataset is opened, in one line naming the file and the
annotation: a box outside the image or without area (or dropped, with ``invalid_boxes="drop"``),
an unknown category or image id, a missing image file, a JSON that is not COCO, an empty dataset.

Example:
    >>> data = CocoDetection("scenes/val/images", "scenes/val/annotations.json")
    >>> image, target = data[0]
    >>> image.shape, target["boxes"].shape, data.class_names[target["labels"][0]]
    (torch.Size([3, 256, 256]), torch.Size([4, 4]), '7')
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["INVALID_BOX_POLICIES", "CocoDetection", "DatasetError", "collate_detection"]

INVALID_BOX_POLICIES = ("refuse", "drop")
# A box may pass the image's edge by this much (pixels) and is clipped to it: COCO's own
# annotations reach half a pixel past the edge where a polygon was traced to it.
EDGE_TOLERANCE = 1.0
_TOP_LEVEL = ("images", "annotations", "categories")

Target = dict[str, Any]


class DatasetError(ValueError):
    """A dataset that cannot be used as it is: the message names the file, the entry and the fix."""


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"there is no annotations file {path}; give a COCO instances JSON")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path} is not valid JSON ({err}); give a COCO instances JSON") from None
    except RecursionError:
        raise DatasetError(f"{path} is nested too deeply to be a COCO instances JSON") from None


def _field(entry: Any, key: str, kinds: tuple[type, ...], where: str) -> Any:
    """``entry[key]``, checked to be present and of ``kinds`` (never a bool for numbers)."""
    if not isinstance(entry, dict) or key not in entry:
        raise DatasetError(f"{where} has no {key!r}; this is not a COCO instances JSON")
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise DatasetError(f"{where}: {key!r} must be {names}, got {json.dumps(value)[:60]}")
    return value


class CocoDetection(Dataset):
    """A COCO instances JSON and its images as a torch ``Dataset`` of ``(image, target)``.

    Args:
        images_dir: The folder the ``file_name`` of each image is relative to.
        annotations: The instances JSON.
        transforms: ``transforms(image, target) -> (image, target)``, given a
            ``tv_tensors.Image`` and a target whose ``"boxes"`` are ``tv_tensors.BoundingBoxes``
            (see :func:`~backbones.data.detection_transforms.detection_transforms`).
        invalid_boxes: ``"refuse"`` (the default): a box outside the image (beyond
            :data:`EDGE_TOLERANCE` pixels) or with zero or negative width or height is an error;
            ``"drop"``: such annotations are left out, and one warning says how many.

    Items:
        ``image``: float32 ``[3, H, W]`` in [0, 1]. ``target``: ``"boxes"`` float32 ``[N, 4]``
        (x1, y1, x2, y2 in pixels), ``"labels"`` int64 ``[N]`` in 1..K, ``"image_id"`` (int),
        ``"area"`` float32 ``[N]``, ``"iscrowd"`` int64 ``[N]``.

    Attributes:
        class_names: Names indexed by label: ``class_names[0]`` is ``"__background__"``, then the
            categories in id order (so ``len(class_names) == num_classes``, like torchvision's COCO names).
        label_to_category_id: Label (1..K) -> the JSON's category id.
        num_classes: K + 1 (the background included), what a detector is built with.
        annotations_path: The JSON.
        image_ids: The images' ids, in item order (the JSON's order).
        dropped: ``(annotation id, reason)`` of each annotation left out by ``invalid_boxes="drop"``.

    Raises:
        DatasetError: The JSON is missing, not JSON or not COCO (the missing key named), an
            annotation names an unknown image or category, has a bad box (with ``"refuse"``), an
            image file is missing, or there are no images; each in one line naming the file and
            the annotation or image id.
        ValueError: ``invalid_boxes`` is neither ``"refuse"`` nor ``"drop"``.
    """

    def __init__(
        self,
        images_dir: str | Path,
        annotations: str | Path,
        *,
        transforms: Callable[[Any, Target], tuple[Any, Target]] | None = None,
        invalid_boxes: str = "refuse",
    ) -> None:
        if invalid_boxes not in INVALID_BOX_POLICIES:
            raise ValueError(f"invalid_boxes must be 'refuse' or 'drop', got {invalid_boxes!r}")
        self.images_dir = Path(images_dir).expanduser()
        self.annotations_path = Path(annotations).expanduser()
        self.transforms = transforms
        self.invalid_boxes = invalid_boxes
        if not self.images_dir.is_dir():
            raise DatasetError(
                f"there is no image folder {self.images_dir}; give the folder the JSON's file_names are in"
            )
        content = _load_json(self.annotations_path)
        where = str(self.annotations_path)
        if not isinstance(content, dict):
            raise DatasetError(f"{where} holds a JSON {type(content).__name__}, not a COCO object with {_TOP_LEVEL}")
        for key in _TOP_LEVEL:
            if not isinstance(content.get(key), list):
                raise DatasetError(
                    f"{where} has no {key!r} list; this is not a COCO instances JSON (it needs "
                    f"{', '.join(map(repr, _TOP_LEVEL))})"
                )
        self._read_categories(content["categories"], where)
        self._read_images(content["images"], where)
        self._read_annotations(content["annotations"], where)

    # ------------------------------------------------------------------ reading the JSON

    def _read_categories(self, categories: list[Any], where: str) -> None:
        by_id: dict[int, str] = {}
        for index, category in enumerate(categories):
            at = f"{where}: categories[{index}]"
            category_id = _field(category, "id", (int,), at)
            name = _field(category, "name", (str,), at)
            if category_id in by_id:
                raise DatasetError(f"{where}: category id {category_id} appears twice; give each category its own id")
            by_id[category_id] = name
        if not by_id:
            raise DatasetError(f"{where} has no categories; a detection dataset needs at least one")
        ordered = sorted(by_id)
        self.class_names = ["__background__", *(by_id[i] for i in ordered)]
        self.label_to_category_id = {label: category_id for label, category_id in enumerate(ordered, start=1)}
        self._category_to_label = {category_id: label for label, category_id in self.label_to_category_id.items()}
        self.num_classes = len(ordered) + 1

    def _read_images(self, images: list[Any], where: str) -> None:
        if not images:
            raise DatasetError(f"{where} lists no images: the dataset is empty; give a JSON with at least one image")
        self._images: dict[int, dict[str, Any]] = {}
        for index, image in enumerate(images):
            at = f"{where}: images[{index}]"
            image_id = _field(image, "id", (int,), at)
            at = f"{where}: image {image_id}"
            file_name = _field(image, "file_name", (str,), at)
            width = _field(image, "width", (int,), at)
            height = _field(image, "height", (int,), at)
            if image_id in self._images:
                raise DatasetError(f"{where}: image id {image_id} appears twice; give each image its own id")
            if width < 1 or height < 1:
                raise DatasetError(f"{at} ({file_name}) has size {width}x{height}; width and height must be positive")
            path = self.images_dir / file_name
            if not path.is_file():
                raise DatasetError(
                    f"{at}: its file {path} does not exist; put the image there or remove image {image_id} "
                    "from the JSON"
                )
            self._images[image_id] = {"path": path, "width": width, "height": height, "annotations": []}
        self.image_ids = list(self._images)

    def _read_annotations(self, annotations: list[Any], where: str) -> None:
        self.dropped: list[tuple[int, str]] = []
        seen: set[int] = set()
        for index, annotation in enumerate(annotations):
            annotation_id = _field(annotation, "id", (int,), f"{where}: annotations[{index}]")
            at = f"{where}: annotation {annotation_id}"
            if annotation_id in seen:
                raise DatasetError(f"{where}: annotation id {annotation_id} appears twice; give each its own id")
            seen.add(annotation_id)
            image_id = _field(annotation, "image_id", (int,), at)
            category_id = _field(annotation, "category_id", (int,), at)
            bbox = _field(annotation, "bbox", (list,), at)
            if image_id not in self._images:
                raise DatasetError(f"{at} names image {image_id}, which the JSON's 'images' does not list")
            if category_id not in self._category_to_label:
                known = ", ".join(map(str, sorted(self._category_to_label)))
                raise DatasetError(
                    f"{at} has category_id {category_id}, which 'categories' does not define (known ids: {known})"
                )
            image = self._images[image_id]
            box = self._check_box(bbox, image, at, annotation_id)
            if box is None:
                continue
            crowd = annotation.get("iscrowd", 0)
            area = annotation.get("area")
            if isinstance(area, bool) or not isinstance(area, (int, float)):
                area = (box[2] - box[0]) * (box[3] - box[1])
            image["annotations"].append((box, self._category_to_label[category_id], float(area), int(bool(crowd))))
        if self.dropped:
            first_id, first_reason = self.dropped[0]
            warnings.warn(
                f"{where}: dropped {len(self.dropped)} annotation(s) with invalid boxes (invalid_boxes='drop'); "
                f"the first, annotation {first_id}: {first_reason}",
                stacklevel=3,
            )

    def _check_box(self, bbox: list[Any], image: dict[str, Any], at: str, annotation_id: int) -> list[float] | None:
        """The box as clipped ``[x1, y1, x2, y2]``; ``None`` when dropped; raises when refused."""
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
            raise DatasetError(f"{at}: 'bbox' must be 4 numbers [x, y, width, height], got {json.dumps(bbox)[:60]}")
        x, y, w, h = (float(v) for v in bbox)
        width, height = image["width"], image["height"]
        reason = None
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            reason = f"box {bbox} is not finite"
        elif w <= 0 or h <= 0:
            reason = f"box {bbox} has zero or negative {'width' if w <= 0 else 'height'}"
        elif (
            x < -EDGE_TOLERANCE
            or y < -EDGE_TOLERANCE
            or x + w > width + EDGE_TOLERANCE
            or y + h > height + EDGE_TOLERANCE
        ):
            reason = f"box {bbox} lies outside its {width}x{height} image {image['path'].name}"
        if reason is None:
            x1, y1 = max(x, 0.0), max(y, 0.0)
            x2, y2 = min(x + w, float(width)), min(y + h, float(height))
            if x2 > x1 and y2 > y1:
                return [x1, y1, x2, y2]
            reason = f"box {bbox} has no area inside its {width}x{height} image {image['path'].name}"
        if self.invalid_boxes == "drop":
            self.dropped.append((annotation_id, reason))
            return None
        raise DatasetError(f"{at}: {reason}; it is refused (fix it, or pass invalid_boxes='drop' to drop such boxes)")

    # ------------------------------------------------------------------ items

    def __len__(self) -> int:
        return len(self.image_ids)

    def target(self, index: int) -> Target:
        """Item ``index``'s target, without reading its image (what the sizes and labels need)."""
        image_id = self.image_ids[index]
        rows = self._images[image_id]["annotations"]
        return {
            "boxes": torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([r[1] for r in rows], dtype=torch.int64),
            "image_id": image_id,
            "area": torch.tensor([r[2] for r in rows], dtype=torch.float32),
            "iscrowd": torch.tensor([r[3] for r in rows], dtype=torch.int64),
        }

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        from torchvision.transforms.v2 import functional as TF

        from backbones.data.images import decode_image

        image_id = self.image_ids[index]
        info = self._images[image_id]
        picture = decode_image(info["path"])
        if picture.size != (info["width"], info["height"]):
            raise DatasetError(
                f"{self.annotations_path}: image {image_id} ({info['path']}) is {picture.size[0]}x{picture.size[1]}, "
                f"but the JSON says {info['width']}x{info['height']}; fix its width and height"
            )
        image = TF.to_dtype(TF.to_image(picture), torch.float32, scale=True)
        target = self.target(index)
        if self.transforms is not None:
            image, target = self._transform(image, target)
        return image, target

    def _transform(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        from torchvision import tv_tensors

        height, width = image.shape[-2:]
        boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(height, width))
        assert self.transforms is not None
        image, target = self.transforms(tv_tensors.Image(image), {**target, "boxes": boxes})
        boxes = target["boxes"].as_subclass(Tensor).reshape(-1, 4).float()
        # The box areas COCO's size ranges read change with the scale: recomputed from the boxes.
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).float()
        return image.as_subclass(Tensor), {**target, "boxes": boxes, "area": area}


def collate_detection(batch: list[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """A DataLoader ``collate_fn`` for detection: images of any size stay a list, as the detectors take them.

    Example:
        >>> loader = DataLoader(CocoDetection(images, annotations), batch_size=4, collate_fn=collate_detection)
    """
    return [image for image, _ in batch], [target for _, target in batch]
