"""Pictures of feature maps, for people who would rather look than read (needs Pillow)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["feature_picture", "load_image", "network_view", "save_feature_picture"]

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


def load_image(path: str | Path, max_pixels: int | None = None) -> Tensor:
    """Read an image file as a float RGB tensor ``[3, H, W]`` in ``[0, 1]``.

    Args:
        path: The image file.
        max_pixels: Refuse larger images before decoding them (decompression bombs); default
            :data:`backbones.data.images.MAX_IMAGE_PIXELS`, Pillow's own limit.

    Raises:
        ValueError: The file is missing, is not a regular file (a FIFO would block forever),
            is too large, or is not an image Pillow can read.

    Example:
        >>> load_image("cat.jpg").shape
        torch.Size([3, 480, 640])
    """
    from backbones.data.images import MAX_IMAGE_PIXELS, decode_image

    path = Path(path)
    if not path.exists():
        raise ValueError(f"no image file at {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a regular file (a folder, FIFO or device); give an image file")
    _pil()  # this module's own message when Pillow is missing
    rgb = decode_image(path, max_pixels=max_pixels or MAX_IMAGE_PIXELS)  # it silences Pillow's bomb warning
    data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return data.reshape(rgb.height, rgb.width, 3).permute(2, 0, 1).float() / 255


def network_view(x: Tensor, pretrained_cfg: Mapping[str, Any]) -> Tensor:
    """Undo the normalisation of a preprocessed image ``[C, H, W]``: what the network saw, in [0, 1].

    Example:
        >>> shown = network_view(transforms_for(model)(image), model.pretrained_cfg)
    """
    mean = torch.tensor(pretrained_cfg["mean"], dtype=x.dtype).view(-1, 1, 1)
    std = torch.tensor(pretrained_cfg["std"], dtype=x.dtype).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1)


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
        label = f"{name}  |  {fmap.shape[0]} ch  |  stride {stride}  |  {fmap.shape[1]}x{fmap.shape[2]}"
        tiles.append((label, _colourise(_activation_map(fmap)).permute(2, 0, 1).float() / 255))
    width = max(1, round(tile * image.shape[2] / image.shape[1]))
    columns = min(len(tiles), 3)
    rows = -(-len(tiles) // columns)
    canvas = image_module.new("RGB", (columns * width, rows * (tile + caption)), "white")
    draw = draw_module.Draw(canvas)
    font = _caption_font(draw, [label for label, _ in tiles], width - 8, caption)
    for index, (label, picture) in enumerate(tiles):
        resized = torch.nn.functional.interpolate(picture[None], size=(tile, width), mode="nearest")[0]
        pixels = (resized.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
        tile_image = image_module.frombytes("RGB", (width, tile), bytes(pixels.flatten().tolist()))
        x, y = (index % columns) * width, (index // columns) * (tile + caption)
        canvas.paste(tile_image, (x, y + caption))
        draw.text((x + 4, y + 2), label, fill="black", font=font)
    return canvas


def _caption_font(draw: Any, labels: Sequence[str], width: int, height: int) -> Any:
    """Pillow's scalable font at the largest size (up to 12) at which every caption fits its tile.

    Pillow's older bitmap font, its default, draws a space one pixel wide, so that "layer1 64ch"
    read "layer164ch"; the scalable one spaces words. Without FreeType, the bitmap font it is.
    """
    from PIL import ImageFont

    try:
        for size in range(min(12, height - 3), 5, -1):
            font = ImageFont.load_default(size=size)
            if max(draw.textlength(label, font=font) for label in labels) <= width:
                return font
        return font
    except (ImportError, TypeError, OSError):  # Pillow without FreeType, or older than 10.1
        return ImageFont.load_default()


def save_feature_picture(
    path: str | Path,
    image: Tensor,
    features: Mapping[str, Tensor],
    strides: Sequence[int],
    tile: int = 224,
    image_format: str = "PNG",
) -> Path:
    """Render :func:`feature_picture` and save it (parent folders are created; written atomically).

    Args:
        path: The file to write.
        image: What the network saw, ``[3, H, W]`` in [0, 1] (see :func:`network_view`).
        features: Level name -> feature map ``[C, h, w]``.
        strides: Each level's stride.
        tile: Height of each tile in pixels.
        image_format: ``"PNG"`` or ``"JPEG"``: the bytes written, whatever the file is called.
    """
    from backbones.core.files import atomic_path

    if image_format not in {"PNG", "JPEG"}:
        raise ValueError(f"image_format must be 'PNG' or 'JPEG', got {image_format!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"optimize": True} if image_format == "PNG" else {"quality": 92}
    with atomic_path(path) as tmp:
        feature_picture(image, features, strides, tile).save(tmp, format=image_format, **options)
    return path
