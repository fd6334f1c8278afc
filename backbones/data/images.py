"""Decoding one image file, safely: a clear error naming the file, and a guard against decompression bombs.

Only regular files are opened (a FIFO would block the reader forever, a device never end); grey
images of more than 8 bits (16-bit PNG, TIFF and PGM, 32-bit integer and float images) are scaled
to 8 bits by their range rather than clipped, so they look as their 8-bit twins do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "SKIP_HINT",
    "BadImageError",
    "check_image",
    "decode_image",
    "is_image_file",
    "quiet_bomb_warning",
]

# torchvision's ImageFolder extensions.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Pillow's own default limit (about 89 megapixels): a larger picture is refused before it is decoded.
MAX_IMAGE_PIXELS = 89_478_485
# The fix every unreadable image's error offers (the command line says --skip-bad-images).
SKIP_HINT = "fix or remove it, or pass skip_bad_images=True to skip unreadable images"

_WORKER_PREFIX = "Caught BadImageError"
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # absent on Windows, where FIFOs do not appear in folders
_NOT_REGULAR = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)
# The nominal ranges a grey image of more than 8 bits is read in, smallest first (see _to_8bit).
_NOMINAL_RANGES = ((0.0, 1.0), (0.0, 255.0), (0.0, 65535.0))


class BadImageError(ValueError):
    """An image file that cannot be decoded (corrupt, truncated, not an image, not a regular file, or too large)."""

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


def _kind(mode: int) -> str | None:
    """What a file of this ``st_mode`` is, in words, when it is not a regular file; ``None`` for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _NOT_REGULAR if test(mode)), "not a regular file")


def _why_unreadable(path: Path, err: OSError) -> str:
    """Why ``path`` cannot be opened, in words; a broken link says where it points."""
    with contextlib.suppress(OSError):
        target = os.readlink(path)
        if isinstance(err, FileNotFoundError):
            return f"it is a link to {target}, which does not exist"
        if err.errno == errno.ELOOP:
            return f"it is a link to {target}, which leads back to itself"
    return str(err.strerror or err)


def _open_regular(path: Path, suffix: str) -> BinaryIO:
    """``path`` opened for reading, once it is known to be a regular file (a FIFO is never opened)."""
    try:
        kind = _kind(os.stat(path).st_mode)  # stat never blocks, whatever the file is
        if kind is None:
            # O_NONBLOCK: were the file swapped for a FIFO since the stat, opening it still returns at once.
            handle = open(path, "rb", opener=lambda name, flags: os.open(name, flags | _NONBLOCK))  # noqa: SIM115
            opened = os.fstat(handle.fileno())
            kind = _kind(opened.st_mode)
            if kind is None and opened.st_size == 0:
                handle.close()
                raise BadImageError(f"cannot read image {path}: the file is empty (0 bytes){suffix}")
            if kind is None:
                os.set_blocking(handle.fileno(), True)
                return handle
            handle.close()
    except OSError as err:
        raise BadImageError(f"cannot read image {path}: {_why_unreadable(path, err)}{suffix}") from None
    raise BadImageError(
        f"image {path} is not a regular file but {kind}, so it is not read (a FIFO would block the reader)"
        f"{suffix or '; give an image file'}"
    )


@contextlib.contextmanager
def _opened(path: str | Path, max_pixels: int, fix_hint: str) -> Iterator[Any]:
    """The image's header read (not its pixels), refused by name when it is unreadable or over ``max_pixels``."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ImportError("reading image folders needs Pillow; install it with `pip install backbones[data]`") from None
    suffix = f"; {fix_hint}" if fix_hint else ""
    path = Path(path)
    with _open_regular(path, suffix) as handle:
        try:
            with quiet_bomb_warning(), Image.open(handle) as image:
                if image.width * image.height > max_pixels:
                    raise BadImageError(
                        f"image {path} has {image.width}x{image.height} pixels, more than the limit of "
                        f"{max_pixels:,} (a decompression-bomb guard); shrink it{suffix}"
                    )
                yield image
        except BadImageError:
            raise
        except UnidentifiedImageError:
            raise BadImageError(f"cannot read image {path}: not an image file Pillow can identify{suffix}") from None
        except Image.DecompressionBombError as err:  # over twice the limit: Pillow refuses it at open
            raise BadImageError(
                f"image {path} is over the decompression-bomb guard ({err}); shrink it{suffix}"
            ) from None
        except (OSError, ValueError, SyntaxError) as err:
            raise BadImageError(f"cannot read image {path}: {err}{suffix}") from None


def check_image(path: str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS, fix_hint: str = "") -> tuple[int, int]:
    """Read an image's header only (format and size), to refuse a bad file before any work starts.

    Args:
        path: The image file.
        max_pixels: Refuse images with more pixels than this (decompression bombs).
        fix_hint: Appended to the error message (e.g. how to skip bad images).

    Returns:
        ``(width, height)``.

    Raises:
        BadImageError: The file is not a regular file, cannot be opened, is not an image, or is too large.
            A file whose header reads but whose pixels are truncated passes: :func:`decode_image` finds that.
    """
    with _opened(path, max_pixels, fix_hint) as image:
        return image.size


def decode_image(path: str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS, fix_hint: str = "") -> Any:
    """Open and fully decode an image as an RGB PIL image.

    Grey images of more than 8 bits are scaled to 8 bits by their range, not clipped (see
    :func:`to_8bit_grey`); every other mode (palette, CMYK, RGBA, 16-bit RGB...) by Pillow's
    ``convert("RGB")``. An animated image gives its first frame.

    Args:
        path: The image file.
        max_pixels: Refuse images with more pixels than this (decompression bombs), before decoding.
        fix_hint: Appended to the error message (e.g. how to skip bad images).

    Returns:
        A ``PIL.Image.Image`` in RGB mode.

    Raises:
        BadImageError: The file is not a regular file (a FIFO, a device: never opened), cannot be
            read or decoded, or is larger than ``max_pixels``.
        ImportError: Pillow is not installed.
    """
    with _opened(path, max_pixels, fix_hint) as image:
        image.load()  # every pixel decoded here: truncation fails inside _opened, which names the file
        return to_8bit_grey(image).convert("RGB")


def to_8bit_grey(image: Any) -> Any:
    """A grey image of more than 8 bits (modes ``I;16*``, ``I``, ``F``) as 8-bit ``L``, scaled by its range.

    The range is, in this order: 0..65535 for ``I;16`` modes; the depth the file declares for
    ``I`` (16 bits for PNG and PGM, which Pillow widens to 16 bits, and TIFF up to 16 bits per
    sample); otherwise the smallest of 0..1, 0..255 and 0..65535 holding every value (a float
    image in 0..1 is read as 0..1), else the image's own minimum..maximum. Values are rounded,
    so a 16-bit image ``v * 257`` gives exactly the 8-bit ``v``. Other modes are returned unchanged.

    Args:
        image: A decoded ``PIL.Image.Image``.

    Returns:
        The image in mode ``L`` when it was a wide grey image, else ``image`` itself.
    """
    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    low, high = 0.0, 65535.0
    if image.mode == "I" or image.mode == "F":
        bits = _declared_bits(image) if image.mode == "I" else None
        if bits is not None:
            high = float(2**bits - 1)
        else:
            low, high = (float(v) for v in image.getextrema())
            low, high = next(((a, b) for a, b in _NOMINAL_RANGES if a <= low and high <= b), (low, high))
    wide = image.convert("I").convert("F") if image.mode != "F" else image
    scale = 255.0 / max(high - low, 1e-12)
    # convert("L") truncates (and clips to 0..255): the +0.5 makes it round.
    return wide.point(lambda v: v * scale + (0.5 - low * scale)).convert("L")


def _declared_bits(image: Any) -> int | None:
    if image.format in ("PNG", "PPM"):
        return 16
    if image.format == "TIFF":
        bits = getattr(image, "tag_v2", {}).get(258)
        depth = bits[0] if isinstance(bits, tuple) and bits else bits
        if isinstance(depth, int) and 8 < depth <= 16:
            return depth
    return None
