"""Pictures of feature maps, for people who would rather look than read (needs Pillow)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["feature_picture", "load_image", "save_feature_picture"]

# Anchor colours of a perceptually ordered dark-blue -> green -> yellow map (viridis-like).
_COLOURS = torch.tensor(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=torch.float32
)


def _pil() -> Any:
    try:
        from PIL import Image, ImageDraw

        return Image, ImageDraw
    except ImportError:
        raise ImportError(
            "pictures and image files need Pillow; install it with `pip install pillow` "
            "(or `pip install backbones[tools]`)"
        ) from None


def load_image(path: str | Path) -> Tensor:
    """Read an image file as a float RGB tensor ``[3, H, W]`` in ``[0, 1]``.

    Raises:
        ValueError: The file is missing or is not an image Pillow can read.
    """
    image_module, _ = _pil()
    path = Path(path)
    try:
        with image_module.open(path) as image:
            rgb = image.convert("RGB")
            data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
            return data.reshape(rgb.height, rgb.width, 3).permute(2, 0, 1).float() / 255
    except FileNotFoundError:
        raise ValueError(f"no image file at {path}") from None
    except (OSError, SyntaxError) as err:
        raise ValueError(f"cannot read {path} as an image ({err})") from None


def _colourise(values: Tensor) -> Tensor:
    """Map ``[H, W]`` values in [0, 1] to ``[H, W, 3]`` uint8 colours."""
    position = values.clamp(0, 1) * (len(_COLOURS) - 1)
    low = position.floor().long().clamp(max=len(_COLOURS) - 2)
    frac = (position - low).unsqueeze(-1)
    return (_COLOURS[low] * (1 - frac) + _COLOURS[low + 1] * frac).round().to(torch.uint8)


def _activation_map(fmap: Tensor) -> Tensor:
    """One picture per level: the per-pixel L2 norm over channels, scaled to [0, 1]."""
    energy = fmap.float().pow(2).sum(dim=0).sqrt()
    low, high = energy.min(), energy.max()
    return (energy - low) / (high - low) if high > low else torch.zeros_like(energy)


def feature_picture(image: Tensor, features: Mapping[str, Tensor], strides: Sequence[int], tile: int = 224) -> Any:
    """A grid: the input image, then each level's activation energy upsampled to the same size.

    Args:
        image: The input ``[3, H, W]`` in [0, 1].
        features: Level name -> feature map ``[C, h, w]`` (one image of the batch).
        strides: Each level's stride, shown in its caption.
        tile: Height of each tile in pixels (the width follows the image's aspect ratio).

    Returns:
        A ``PIL.Image``.
    """
    image_module, draw_module = _pil()
    caption = 16
    tiles: list[tuple[str, Tensor]] = [("input", image)]
    for (name, fmap), stride in zip(features.items(), strides, strict=True):
        label = f"{name} {fmap.shape[0]}ch /{stride} {fmap.shape[1]}x{fmap.shape[2]}"
        tiles.append((label, _colourise(_activation_map(fmap)).permute(2, 0, 1).float() / 255))
    width = max(1, round(tile * image.shape[2] / image.shape[1]))
    columns = min(len(tiles), 3)
    rows = -(-len(tiles) // columns)
    canvas = image_module.new("RGB", (columns * width, rows * (tile + caption)), "white")
    draw = draw_module.Draw(canvas)
    for index, (label, picture) in enumerate(tiles):
        resized = torch.nn.functional.interpolate(picture[None], size=(tile, width), mode="nearest")[0]
        pixels = (resized.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
        tile_image = image_module.frombytes("RGB", (width, tile), bytes(pixels.flatten().tolist()))
        x, y = (index % columns) * width, (index // columns) * (tile + caption)
        canvas.paste(tile_image, (x, y + caption))
        draw.text((x + 4, y + 2), label, fill="black")
    return canvas


def save_feature_picture(
    path: str | Path, image: Tensor, features: Mapping[str, Tensor], strides: Sequence[int], tile: int = 224
) -> Path:
    """Render :func:`feature_picture` and save it as a PNG (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    feature_picture(image, features, strides, tile).save(path, format="PNG", optimize=True)
    return path
