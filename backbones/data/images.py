"""Decoding one image file, safely: a clear error naming the file, and a guard against decompression bombs."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "BadImageError",
    "decode_image",
    "is_image_file",
    "quiet_bomb_warning",
]

# torchvision's ImageFolder extensions.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Pillow's own default limit (about 89 megapixels): a larger picture is refused before it is decoded.
MAX_IMAGE_PIXELS = 89_478_485

_WORKER_PREFIX = "Caught BadImageError"


class BadImageError(ValueError):
    """An image file that cannot be decoded (corrupt, truncated, not an image, or too large)."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker re-raises this with the whole worker traceback as the message; keep
        # only our own one-line reason, which names the file and the fix.
        if message.startswith(_WORKER_PREFIX):
            tail = [line for line in message.strip().splitlines() if "BadImageError: " in line]
            if tail:
                message = tail[-1].split("BadImageError: ", 1)[1]
        super().__init__(message)


def is_image_file(path: Path) -> bool:
    """True for a visible file with one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


@contextlib.contextmanager
def quiet_bomb_warning() -> Iterator[None]:
    """Silence Pillow's DecompressionBombWarning (images between its limit and twice it) while opening.

    Our own pixel check refuses such images with one error naming the file; Pillow's warning
    before it would only repeat that, as a second message nobody can act on.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def decode_image(path: str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS, fix_hint: str = "") -> Any:
    """Open and fully decode an image as an RGB PIL image.

    Args:
        path: The image file.
        max_pixels: Refuse images with more pixels than this (decompression bombs), before decoding.
        fix_hint: Appended to the error message (e.g. how to skip bad images).

    Returns:
        A ``PIL.Image.Image`` in RGB mode.

    Raises:
        BadImageError: The file cannot be read or decoded, or it is larger than ``max_pixels``.
        ImportError: Pillow is not installed.
    """
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading image folders needs Pillow; install it with `pip install backbones[data]`") from None
    suffix = f"; {fix_hint}" if fix_hint else ""
    try:
        with quiet_bomb_warning(), Image.open(path) as image:
            if image.width * image.height > max_pixels:
                raise BadImageError(
                    f"image {path} has {image.width}x{image.height} pixels, more than the limit of {max_pixels:,} "
                    f"(a decompression-bomb guard); shrink it{suffix}"
                )
            return image.convert("RGB")  # convert() decodes every pixel: truncation fails here, not later
    except BadImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BadImageError(f"cannot read image {path}: {err}{suffix}") from None
