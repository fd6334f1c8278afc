"""Scanning an image folder: which files, in which order, with which labels.

The torchvision ``ImageFolder`` layout, one subfolder per class (images may sit deeper inside a
class folder), gives class labels; a folder with images outside any class folder gives every
image the label -1 (unlabelled, fine for feature extraction, not for training). Hidden files
and folders are ignored. The order is sorted, so every process and every run sees the same list.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from backbones.data.images import IMAGE_EXTENSIONS, is_image_file

__all__ = ["UNLABELLED", "FolderScan", "scan_image_folder"]

UNLABELLED = -1


@dataclass(frozen=True)
class FolderScan:
    """What :func:`scan_image_folder` found.

    Attributes:
        root: The folder.
        classes: Class names (top-level subfolders holding images), sorted; empty when unlabelled.
        samples: ``(path relative to root, label)`` per image, sorted by path; label -1 when unlabelled.
    """

    root: Path
    classes: list[str]
    samples: list[tuple[str, int]]

    @property
    def labelled(self) -> bool:
        """True when every image sits in a class subfolder."""
        return bool(self.classes)


def scan_image_folder(root: str | Path, *, classes: list[str] | None = None) -> FolderScan:
    """List the images under ``root`` (any depth) and label them by their top-level subfolder.

    Args:
        root: The folder.
        classes: Use these class names and indices (a validation folder takes the training
            folder's); its subfolders must be among them.

    Returns:
        A :class:`FolderScan`.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a folder.
        ValueError: No image is found, or a subfolder is not among ``classes``.

    Example:
        >>> scan = scan_image_folder("pets")          # pets/cat/1.jpg, pets/dog/2.jpg
        >>> scan.classes, scan.samples
        (['cat', 'dog'], [('cat/1.jpg', 0), ('dog/2.jpg', 1)])
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist; pass an existing folder (or data='digits')")
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; pass a folder of images, one subfolder per class")
    paths: list[str] = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders[:] = [s for s in subfolders if not s.startswith(".")]
        paths += [os.path.relpath(os.path.join(folder, f), root) for f in files if is_image_file(Path(f))]
    if not paths:
        raise ValueError(
            f"no images in {root} (looked for {', '.join(IMAGE_EXTENSIONS)} at any depth); "
            f"put the images in one subfolder per class"
        )
    paths.sort(key=lambda p: Path(p).parts)
    tops = [Path(p).parts[0] if len(Path(p).parts) > 1 else None for p in paths]
    if any(top is None for top in tops):
        return FolderScan(root, [], [(p, UNLABELLED) for p in paths])
    found = sorted(set(tops))  # type: ignore[arg-type]
    if classes is None:
        classes = found
    unknown = [name for name in found if name not in classes]
    if unknown:
        raise ValueError(
            f"{root} has class folders {unknown} that the training data does not have ({classes}); "
            f"use the same class subfolders in both"
        )
    index = {name: i for i, name in enumerate(classes)}
    return FolderScan(root, list(classes), [(p, index[top]) for p, top in zip(paths, tops, strict=True)])  # type: ignore[index]
