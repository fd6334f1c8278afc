"""Box-aware augmentation for detection, through torchvision.transforms.v2 and ``tv_tensors.BoundingBoxes``.

The transforms move the boxes with the pixels (a flip mirrors them, a rescale scales them), then
drop boxes left without area, with their labels. Resizing to the detector's input size is the
detector's own (torchvision's ``GeneralizedRCNNTransform``), so these only augment.

Example:
    >>> data = CocoDetection(images, annotations, transforms=detection_transforms(train=True))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["detection_transforms"]


def _labels_and_per_box_fields(inputs: Any) -> Any:
    # Everything per box that must leave with a dropped box (SanitizeBoundingBoxes removes these too).
    target = inputs[1]
    return tuple(target[key] for key in ("labels", "area", "iscrowd") if key in target)


def detection_transforms(
    train: bool, *, flip: bool = True, scale_jitter: tuple[float, float] | None = (0.8, 1.2)
) -> Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]]:
    """The augmentation of :class:`~backbones.data.coco.CocoDetection`'s ``transforms``.

    Args:
        train: Augment (flip, scale jitter); without, only the check that drops boxes without area.
        flip: Flip left-right with probability 0.5 (when training).
        scale_jitter: Rescale the image and its boxes by a factor drawn uniformly from this range
            (when training); ``None`` for none.

    Returns:
        ``transforms(image, target) -> (image, target)`` on a ``tv_tensors.Image`` and a target whose
        ``"boxes"`` are ``tv_tensors.BoundingBoxes``; randomness comes from torch's generator, so
        ``torch.manual_seed`` (and the DataLoader's per-worker seeds) make it repeatable.

    Raises:
        ValueError: ``scale_jitter`` is not two positive numbers, low to high.
        ImportError: torchvision is not installed.
    """
    try:
        from torchvision.transforms import v2
    except ImportError:
        raise ImportError("detection transforms need torchvision; install it with `pip install torchvision`") from None
    steps: list[Any] = []
    if train and scale_jitter is not None:
        if (
            len(scale_jitter) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale_jitter)
            or not 0 < scale_jitter[0] <= scale_jitter[1]
        ):
            raise ValueError(f"scale_jitter must be (low, high) with 0 < low <= high, got {scale_jitter!r}")
        steps.append(v2.RandomAffine(degrees=0.0, scale=tuple(float(v) for v in scale_jitter)))
    if train and flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    steps.append(v2.ClampBoundingBoxes())
    steps.append(v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_labels_and_per_box_fields))
    return v2.Compose(steps)
