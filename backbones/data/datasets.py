"""``open_dataset``: a name or a folder in, a torch ``Dataset`` of preprocessed images and labels out.

One entry point for fine-tuning, evaluation, feature extraction and int8 calibration. The data is
either the built-in ``"digits"`` (scikit-learn's real handwritten digits) or an image folder; the
preprocessing is the model's own (``pretrained_cfg``: mean, std, sizes, interpolation). Image files
are decoded in ``__getitem__``, i.e. in DataLoader workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.data import Dataset

from backbones.data.digits import DIGITS_CLASSES, DIGITS_DEFAULT_SIZE, load_digits_arrays, preprocess_digits
from backbones.data.folders import FolderScan, scan_image_folder
from backbones.data.images import MAX_IMAGE_PIXELS, SKIP_HINT, BadImageError, decode_image
from backbones.data.splits import stratified_split
from backbones.data.transforms import resolve_pretrained_cfg, transforms_for

__all__ = ["BUILTIN_DATASETS", "SPLITS", "DigitsDataset", "ImageFolderDataset", "open_dataset"]

BUILTIN_DATASETS = ("digits",)
SPLITS = ("train", "val", "all")
# Training shift of the digits, as a share of the image size: 1/8 is one original 8x8 pixel.
_DIGITS_SHIFT_SHARE = 8


class DigitsDataset(Dataset):
    """The 8x8 digits, upsampled and normalised for a model (see :func:`open_dataset`).

    Attributes:
        classes: ``["0", ..., "9"]``.
        samples: ``("digits/<index>", label)`` per item, the index into scikit-learn's 1,797.
        image_size: Height and width of each item.
        source: ``"digits"``.
        skipped: Always empty (kept for the same interface as image folders).
        preprocessing: What is done to each image (size, mean, std...), for records such as a manifest.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, indices: list[int], *, size: int, in_chans: int, cfg: dict, shift: int
    ) -> None:
        self.images = images[indices]
        self.labels = labels[indices]
        self.classes = list(DIGITS_CLASSES)
        self.samples = [(f"digits/{i}", int(labels[i])) for i in indices]
        self.image_size = size
        self.source = "digits"
        self.skipped: list[str] = []
        self.preprocessing = {
            "resize": f"8x8 bilinear to {size}x{size}",
            "image_size": size,
            "mean": list(cfg["mean"]),
            "std": list(cfg["std"]),
            "in_chans": in_chans,
        }
        self._in_chans, self._mean, self._std, self._shift = in_chans, cfg["mean"], cfg["std"], shift

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = preprocess_digits(
            self.images[index : index + 1], self.image_size, self._in_chans, self._mean, self._std, shift=self._shift
        )
        return image[0], int(self.labels[index])


class ImageFolderDataset(Dataset):
    """Images of a folder, decoded and transformed on access (see :func:`open_dataset`).

    Attributes:
        root: The folder.
        classes: Class names (empty when the folder is unlabelled).
        samples: ``(path relative to root, label)`` per item; label -1 when unlabelled.
        image_size: The crop size of the transforms.
        source: The folder, as a string.
        skipped: Relative paths of unreadable images left out (with ``skip_bad_images``).
        preprocessing: What is done to each image (resize, crop, interpolation, mean, std), for records.
    """

    def __init__(
        self, scan: FolderScan, samples: list[tuple[str, int]], transform: Any, *, size: int, max_pixels: int
    ) -> None:
        self.root = scan.root
        self.classes = list(scan.classes)
        self.samples = samples
        self.image_size = size
        self.source = str(scan.root)
        self.skipped: list[str] = []
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        relative, label = self.samples[index]
        image = decode_image(self.root / relative, max_pixels=self.max_pixels, fix_hint=SKIP_HINT)
        return self.transform(image), label


def open_dataset(
    data: str | Path,
    split: str = "all",
    *,
    model: nn.Module | str | dict[str, Any],
    training: bool | None = None,
    val_data: str | Path | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    skip_bad_images: bool = False,
    image_size: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> ImageFolderDataset | DigitsDataset:
    """Open the built-in digits or an image folder as a dataset preprocessed for ``model``.

    Args:
        data: ``"digits"`` or a folder (ImageFolder layout: one subfolder per class; for
            ``split="all"`` any layout, unlabelled images get label -1).
        split: ``"train"``, ``"val"`` (a seeded stratified split, or ``val_data``) or ``"all"``.
        model: The model (or ``arch[.tag]`` name, or ``pretrained_cfg`` dict) whose preprocessing
            to use: mean, std, sizes, interpolation, input channels and minimum input size.
        training: Training augmentation (folders: random resized crop and flip; digits: a random
            shift of up to one original pixel). Default: ``split == "train"``.
        val_data: A separate validation folder (same class subfolders); then ``"train"`` is all of
            ``data`` and ``"val"`` all of ``val_data``.
        val_fraction: Share of ``data`` held out as ``"val"`` when there is no ``val_data``.
        seed: Seed of the split.
        skip_bad_images: Decode every image once now and leave out the unreadable ones (listed
            in ``dataset.skipped``) instead of failing when one is reached.
        image_size: Input height and width; default: the model's crop size for folders,
            ``max(32, model.min_input_size)`` for the digits. Folders scale the resize with it.
        max_pixels: Refuse larger images (decompression bombs) before decoding them.

    Returns:
        A dataset of ``(float tensor [C, H, W], int label)`` with ``classes``, ``samples``
        (``(relative path or id, label)``), ``image_size``, ``source`` and ``skipped``.

    Raises:
        FileNotFoundError: The folder does not exist.
        ValueError: Unknown split; no images; a split of an unlabelled folder or of one class;
            ``image_size`` below the model's minimum; a split leaving one side empty.
        BadImageError: With ``skip_bad_images``, when no image of the folder can be read.
        ImportError: scikit-learn (digits) or torchvision / Pillow (folders) is missing.

    Example:
        >>> model = backbones.create_model("resnet18", num_classes=10)
        >>> train = open_dataset("digits", "train", model=model)
        >>> len(train), train[0][0].shape
        (1437, torch.Size([3, 32, 32]))
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    training = split == "train" if training is None else training
    cfg = resolve_pretrained_cfg(model)
    in_chans = int(getattr(model, "in_chans", cfg["input_size"][0]))
    minimum = _min_input_size(model)
    if image_size is not None and image_size < minimum:
        raise ValueError(
            f"image size {image_size} is below the model's minimum input of {minimum}x{minimum}; "
            f"use an image size of {minimum} or more"
        )
    if str(data) in BUILTIN_DATASETS:
        return _open_digits(
            split, cfg, in_chans, training, val_fraction, seed, image_size or max(DIGITS_DEFAULT_SIZE, minimum)
        )
    return _open_folder(
        Path(data), split, cfg, training, val_data, val_fraction, seed, skip_bad_images, image_size, max_pixels
    )


def _min_input_size(model: nn.Module | str | dict[str, Any]) -> int:
    if isinstance(model, str):
        from backbones.models.factory import create_model

        with torch.device("meta"):  # structure only: no weights are allocated
            model = create_model(model)
    return int(getattr(model, "min_input_size", 1))


def _open_digits(
    split: str, cfg: dict, in_chans: int, training: bool, val_fraction: float, seed: int, size: int
) -> DigitsDataset:
    images, labels = load_digits_arrays()
    if split == "all":
        indices = list(range(len(labels)))
    else:
        train, val = stratified_split(labels.tolist(), val_fraction, seed)
        indices = train if split == "train" else val
    shift = size // _DIGITS_SHIFT_SHARE if training else 0
    return DigitsDataset(images, labels, indices, size=size, in_chans=in_chans, cfg=cfg, shift=shift)


def _open_folder(
    root: Path,
    split: str,
    cfg: dict,
    training: bool,
    val_data: str | Path | None,
    val_fraction: float,
    seed: int,
    skip_bad_images: bool,
    image_size: int | None,
    max_pixels: int,
) -> ImageFolderDataset:
    scan = scan_image_folder(root)
    if split != "all":
        _require_classes(scan)
    if split == "val" and val_data is not None:
        scan = scan_image_folder(val_data, classes=scan.classes)
    samples, skipped = _readable(scan, scan.samples, max_pixels) if skip_bad_images else (scan.samples, [])
    if split != "all" and val_data is None:
        train, val = stratified_split([label for _, label in samples], val_fraction, seed)
        samples = [samples[i] for i in (train if split == "train" else val)]
    cfg = _cfg_at_size(cfg, image_size)
    transform = transforms_for(cfg, training=training)
    dataset = ImageFolderDataset(scan, samples, transform, size=int(cfg["crop_size"]), max_pixels=max_pixels)
    dataset.skipped = skipped
    keys = ("resize_size", "crop_size", "interpolation", "mean", "std")
    dataset.preprocessing = {**{k: cfg.get(k) for k in keys}, "image_size": dataset.image_size, "training": training}
    return dataset


def _require_classes(scan: FolderScan) -> None:
    if not scan.labelled:
        loose = next(p for p, _ in scan.samples if len(Path(p).parts) == 1)
        raise ValueError(
            f"{scan.root} has images outside any class subfolder (e.g. {loose}); training needs the "
            f"ImageFolder layout, one subfolder per class"
        )
    if len(scan.classes) < 2:
        raise ValueError(
            f"{scan.root} has one class only ({scan.classes[0]!r}); classification needs at least two class subfolders"
        )


def _readable(scan: FolderScan, samples: list[tuple[str, int]], max_pixels: int) -> tuple[list, list[str]]:
    kept, skipped = [], []
    for relative, label in samples:
        try:
            decode_image(scan.root / relative, max_pixels=max_pixels)
        except BadImageError:
            skipped.append(relative)
            continue
        kept.append((relative, label))
    if not kept:
        raise BadImageError(f"no image in {scan.root} can be read ({len(skipped)} tried); check the files")
    return kept, skipped


def _cfg_at_size(cfg: dict[str, Any], image_size: int | None) -> dict[str, Any]:
    crop = int(cfg.get("crop_size") or cfg["input_size"][-1])
    if image_size is None or image_size == crop:
        return dict(cfg, crop_size=crop)
    # Keep the weights' crop ratio: resize to image_size / (crop / resize).
    resize = cfg.get("resize_size")
    scaled = round(image_size * int(resize) / crop) if resize else None
    return dict(
        cfg, crop_size=image_size, resize_size=scaled, input_size=(cfg["input_size"][0], image_size, image_size)
    )
