"""The built-in real dataset: scikit-learn's 1,797 handwritten 8x8 digits, shipped inside its wheel.

No download: ``sklearn.datasets.load_digits`` reads a file installed with scikit-learn, which is
an optional dependency (``pip install backbones[data]``). The 8x8 pictures (values 0..16) are
upsampled to a size the network accepts, repeated to its input channels and normalised with its
preprocessing mean and std.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DIGITS_CLASSES", "DIGITS_DEFAULT_SIZE", "load_digits_arrays", "preprocess_digits"]

DIGITS_CLASSES = [str(digit) for digit in range(10)]
# 32 is the smallest size with a non-degenerate last stage in ResNet/VGG/GoogLeNet (stride 32).
DIGITS_DEFAULT_SIZE = 32
_DIGITS_MAX_VALUE = 16.0


@functools.lru_cache(maxsize=1)  # read once per process: the split and every dataset share it
def load_digits_arrays() -> tuple[Tensor, Tensor]:
    """The digits as tensors: images ``[1797, 8, 8]`` in [0, 1] (float32) and labels ``[1797]`` (int64).

    Raises:
        ImportError: scikit-learn is not installed; the message says how to install it.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "the built-in 'digits' dataset needs scikit-learn, which backbones does not require; "
            "install it with `pip install backbones[data]` (or `pip install scikit-learn`)"
        ) from None
    digits = load_digits()
    images = torch.from_numpy(digits.images).float() / _DIGITS_MAX_VALUE
    return images, torch.from_numpy(digits.target).long()


def preprocess_digits(
    images: Tensor, size: int, in_chans: int, mean: Sequence[float], std: Sequence[float], *, shift: int = 0
) -> Tensor:
    """Turn 8x8 digits ``[N, 8, 8]`` in [0, 1] into normalised network input ``[N, in_chans, size, size]``.

    Args:
        images: Digits in [0, 1].
        size: Output height and width (bilinear upsampling).
        in_chans: Channels of the output; the grey value is repeated on each.
        mean: Per-channel mean of the model's preprocessing (one value is repeated if needed).
        std: Per-channel std of the model's preprocessing.
        shift: Training augmentation: a random translation of up to ``shift`` pixels (after
            upsampling) in each direction, drawn from torch's global generator; 0 for none.

    Returns:
        The batch, float32.
    """
    x = F.interpolate(images[:, None], size=(size, size), mode="bilinear", align_corners=False)
    if shift:
        # Pad with the background (0) and crop back at a random offset: the digit moves, its size does not.
        padded = F.pad(x, (shift, shift, shift, shift))
        dy, dx = torch.randint(0, 2 * shift + 1, (2,)).tolist()
        x = padded[:, :, dy : dy + size, dx : dx + size]
    x = x.expand(-1, in_chans, -1, -1)
    mean_t = torch.tensor(_per_channel(mean, in_chans), dtype=x.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(_per_channel(std, in_chans), dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def _per_channel(values: Sequence[float], channels: int) -> list[float]:
    values = list(values)
    if len(values) == channels:
        return values
    # A grey model with an RGB config (or the reverse): the average stands for every channel.
    return [sum(values) / len(values)] * channels
