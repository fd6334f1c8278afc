"""Tiny image folders for the data and fine-tuning tests: real PNG files in the ImageFolder layout."""

from __future__ import annotations

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
