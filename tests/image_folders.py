"""Tiny image folders for the data and fine-tuning tests: real PNG files in the ImageFolder layout."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

# One colour per class, so that a network can tell them apart in a step or two.
_COLOURS = {"blue": (30, 40, 200), "red": (210, 30, 30), "green": (30, 190, 40)}


def make_image_folder(
    root: Path, classes: tuple[str, ...] = ("blue", "red"), per_class: int = 4, seed: int = 0
) -> Path:
    """Write ``per_class`` noisy 12x12 PNGs of each class colour into ``root/<class>/<i>.png``."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        colour = torch.tensor(_COLOURS[name]).view(1, 1, 3)
        for index in range(per_class):
            noise = torch.randint(-25, 26, (12, 12, 3), generator=generator)
            pixels = (colour + noise).clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"{index}.png")
    return root


def write_corrupt_image(path: Path) -> Path:
    """A file with an image suffix whose content is not an image (a PNG cut after its header)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    return path


def write_declared_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` 1-bit pixels, with no pixel data: what a
    decompression bomb shows the size check, written in microseconds whatever the size."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


@contextlib.contextmanager
def watched_fifo(path: Path) -> Iterator[threading.Event]:
    """A FIFO at ``path``, and an event set when anything opens it for reading.

    A watcher keeps trying to open the write end without blocking, which succeeds only while a
    reader has it open; it then closes it, so that the reader sees end-of-file at once: a test of
    "never opened" fails in a fraction of a second instead of hanging.
    """
    os.mkfifo(path)
    opened, stop = threading.Event(), threading.Event()

    def watch() -> None:
        while not stop.wait(0.01):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # ENXIO: no reader
                continue
            opened.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield opened
    finally:
        stop.set()
        watcher.join(timeout=5)
