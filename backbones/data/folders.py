"""Scanning an image folder: which files, in which order, with which labels.

The torchvision ``ImageFolder`` layout, one subfolder per class (images may sit deeper inside a
class folder), gives class labels; a folder with images outside any class folder gives every
image the label -1 (unlabelled, fine for feature extraction, not for training). Hidden files
and folders are ignored. The order is sorted, so every process and every run sees the same list.

Links are followed, to files and to folders, but each real folder is walked once: a link to a
folder already walked (its parent, a loop, a second name for a class folder) is skipped and
counted, so no image is counted twice and no loop runs forever. Real folders inside ``root`` are
walked before any link, so a class keeps its own folder's name. Entries are not opened here; an
image name on a FIFO, a device or a broken link is listed and refused by name when it is decoded.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from backbones.data.images import IMAGE_EXTENSIONS, is_image_file

__all__ = ["UNLABELLED", "FolderScan", "FolderWalk", "scan_image_folder", "walk_image_files"]

UNLABELLED = -1


@dataclass(frozen=True)
class FolderScan:
    """What :func:`scan_image_folder` found.

    Attributes:
        root: The folder.
        classes: Class names (top-level subfolders holding images), sorted; empty when unlabelled.
        samples: ``(path relative to root, label)`` per image, sorted by path; label -1 when unlabelled.
        skipped_links: Links to folders already walked, relative to root, left out (see :func:`walk_image_files`).
    """

    root: Path
    classes: list[str]
    samples: list[tuple[str, int]]
    skipped_links: list[str] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        """True when every image sits in a class subfolder."""
        return bool(self.classes)


@dataclass(frozen=True)
class FolderWalk:
    """What :func:`walk_image_files` found.

    Attributes:
        files: Paths relative to the folder of every visible entry with an image suffix, sorted by
            their parts (not yet opened: one may be a FIFO or a broken link).
        skipped_links: Links to a folder already walked (relative paths), not entered again.
        unlisted: Folders that could not be listed (relative path and the reason), left out.
    """

    files: list[str]
    skipped_links: list[str]
    unlisted: list[tuple[str, str]]


def walk_image_files(root: str | Path) -> FolderWalk:
    """Every image-named entry under ``root``, following links but walking each real folder once.

    A folder is known by its ``(st_dev, st_ino)``: a link to one already walked is skipped (and
    listed in ``skipped_links``), so a link to the parent or any loop of links ends. Folders are
    taken breadth first, the real folders of ``root`` before any folder reached through a link,
    each folder's entries in sorted order: the same tree gives the same walk. Hidden entries are
    ignored. Skipped links and folders that cannot be listed are said in a warning.

    Args:
        root: An existing folder.

    Returns:
        A :class:`FolderWalk`.
    """
    root = Path(root)
    seen = {_identity(os.stat(root))}
    files: list[str] = []
    skipped: list[str] = []
    unlisted: list[tuple[str, str]] = []
    real: deque[str] = deque([""])  # relative paths of folders to walk; "" is root
    # Folders reached through a link, with their identity: taken once no real folder is left, so
    # that a link never claims a real folder of the tree that the walk has not reached yet.
    linked: deque[tuple[str, tuple[int, int]]] = deque()
    while real or linked:
        if real:
            relative = real.popleft()
        else:
            relative, identity = linked.popleft()
            if identity in seen:
                skipped.append(relative)
                continue
            seen.add(identity)
        try:
            with os.scandir(root / relative if relative else root) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as err:
            unlisted.append((relative or ".", str(err.strerror or err)))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = os.path.join(relative, entry.name)
            try:
                info = os.stat(entry.path)  # follows links; never opens, so a FIFO cannot block it
            except OSError:  # a broken link or a loop of links: decoding names it, if it is an image
                info = None
            if info is not None and stat.S_ISDIR(info.st_mode):
                if _identity(info) in seen:
                    skipped.append(path)
                elif entry.is_symlink():
                    linked.append((path, _identity(info)))
                else:
                    seen.add(_identity(info))
                    real.append(path)
            elif is_image_file(Path(entry.name)):
                files.append(path)
    files.sort(key=lambda p: Path(p).parts)
    walk = FolderWalk(files, sorted(skipped), unlisted)
    _warn_about(root, walk)
    return walk


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


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
    walk = walk_image_files(root)
    paths = walk.files
    if not paths:
        raise ValueError(
            f"no images in {root} (looked for {', '.join(IMAGE_EXTENSIONS)} at any depth); "
            f"put the images in one subfolder per class"
        )
    tops = [Path(p).parts[0] if len(Path(p).parts) > 1 else None for p in paths]
    if any(top is None for top in tops):
        return FolderScan(root, [], [(p, UNLABELLED) for p in paths], walk.skipped_links)
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
    samples = [(p, index[top]) for p, top in zip(paths, tops, strict=True)]  # type: ignore[index]
    return FolderScan(root, list(classes), samples, walk.skipped_links)


def _warn_about(root: Path, walk: FolderWalk) -> None:
    """Say what the walk left out, so that no image goes missing silently."""
    if walk.skipped_links:
        count = len(walk.skipped_links)
        warnings.warn(
            f"{root}: skipped {count} link{'s' if count > 1 else ''} to folders already scanned "
            f"(e.g. {walk.skipped_links[0]}), so that no image is counted twice and no loop runs forever",
            stacklevel=4,
        )
    if walk.unlisted:
        folder, reason = walk.unlisted[0]
        warnings.warn(
            f"{root}: skipped {len(walk.unlisted)} folder(s) that cannot be listed (e.g. {folder}: {reason}); "
            f"their images are left out",
            stacklevel=4,
        )
