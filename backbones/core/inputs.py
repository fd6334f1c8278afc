"""The input contract at every model's boundary, and the default preprocessing config."""

# No `from __future__ import annotations`: torch.fx copies forward's annotations into generated
# code, which TorchScript must be able to read.
import numbers
from typing import Any

from torch import Tensor

__all__ = ["IMAGENET_DEFAULT_CFG", "check_image_batch", "check_normalization"]

IMAGENET_DEFAULT_CFG: dict[str, Any] = {
    "input_size": (3, 224, 224),
    "resize_size": 256,
    "crop_size": 224,
    "interpolation": "bilinear",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "num_classes": 1000,
    "class_names": None,
}


def check_image_batch(x: Tensor, in_chans: int, min_size: int, weight: Tensor | None = None) -> Tensor:
    """Check that ``x`` is a float batch ``[N, in_chans, H, W]`` with H, W >= ``min_size``.

    With ``weight`` (a floating-point weight of the model), a float input of another precision
    (float64 or float16 into a float32 model), or on another device (a meta or CUDA tensor into a
    CPU model), is refused with the cast or move that fixes it, instead of an error from inside
    the first convolution. The weight itself is passed, not its dtype,
    so a graph traced once (torch.fx) checks against the dtype the model has when it runs.

    Models call this first, so a wrong input fails with a message that names the problem and
    the fix instead of an error from deep inside a convolution.

    Raises:
        TypeError: Not a tensor (a numpy array, a list); the message says how to convert it.
        ValueError: Wrong rank, an integer dtype, another float dtype or device than ``weight``'s,
            the wrong channel count, or an image too small.

    Example:
        >>> check_image_batch(torch.zeros(3, 224, 224), in_chans=3, min_size=32)
        Traceback (most recent call last):
        ...
        ValueError: expected a batch of images [N, 3, H, W], got a 3-D tensor of shape [3, 224, 224]; ...
    """
    if not isinstance(x, Tensor):
        raise TypeError(
            f"expected a torch.Tensor batch [N, {in_chans}, H, W], got {type(x).__name__}; convert it with "
            f"torch.as_tensor(x, dtype=torch.float32) (images as float, channels first, normalised)"
        )
    if x.dim() != 4:
        raise ValueError(
            f"expected a batch of images [N, {in_chans}, H, W], got a {x.dim()}-D tensor of shape "
            f"{list(x.shape)}; a single image needs a batch dimension: x.unsqueeze(0)"
        )
    if not x.is_floating_point():
        raise ValueError(
            f"expected a floating-point tensor, got {x.dtype}; convert images with x.float() / 255 "
            f"and normalise them with the mean and std in model.pretrained_cfg"
        )
    if weight is not None and x.dtype != weight.dtype:
        raise ValueError(
            f"the input is {x.dtype} but the model's weights are {weight.dtype}; cast the input with "
            f"x.to({weight.dtype}) (or the model with model.to({x.dtype}))"
        )
    if weight is not None and x.device != weight.device:
        raise ValueError(
            f"the input is on {x.device} but the model's weights are on {weight.device}; move the input with "
            f"x.to('{weight.device}') (or the model with model.to('{x.device}'))"
        )
    if x.shape[1] != in_chans and x.shape[3] == in_chans:
        raise ValueError(
            f"expected {in_chans} input channels, got {x.shape[1]} (input shape {list(x.shape)}); the batch looks "
            f"channels-last (N, H, W, C): put the channels first with x.permute(0, 3, 1, 2)"
        )
    if x.shape[1] != in_chans:
        raise ValueError(
            f"expected {in_chans} input channels, got {x.shape[1]} (input shape {list(x.shape)}); "
            f"images are channels-first [N, C, H, W]. Repeat a grayscale image to 3 channels or "
            f"build the model with in_chans={x.shape[1]}"
        )
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            f"input of {x.shape[2]}x{x.shape[3]} pixels is too small for this network, which needs "
            f"at least {min_size}x{min_size}; resize or pad the image"
        )
    return x


def check_normalization(cfg: dict[str, Any], where: str = "") -> None:
    """Check the ``mean`` and ``std`` of a ``pretrained_cfg``: one number per input channel, std above 0.

    What normalises every image must be numbers before it reaches a transform: a ``"abc"`` in a
    config.json or set on a model would otherwise normalise with characters, or fail deep inside
    torchvision.

    Args:
        cfg: A ``pretrained_cfg`` (its absent fields are not checked).
        where: Prefixed to the message (the file the cfg came from), e.g. ``".../config.json: "``.

    Raises:
        ValueError: The field is named, with the count of numbers wanted and the value found.
    """
    input_size = cfg.get("input_size")
    channels = input_size[0] if isinstance(input_size, (list, tuple)) and input_size else None
    channels = channels if isinstance(channels, int) and not isinstance(channels, bool) else None
    for field in ("mean", "std"):
        if field not in cfg:
            continue
        value = cfg[field]
        numbers_ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value
        )
        count_ok = numbers_ok and (len(value) == channels if channels else len(value) > 0)
        if not count_ok or (field == "std" and any(v <= 0 for v in value)):
            wanted = f"{channels} numbers (one per input channel)" if channels else "a list of numbers"
            positive = ", each above 0" if field == "std" else ""
            raise ValueError(f"{where}pretrained_cfg.{field} must be {wanted}{positive}, got {value!r}")
