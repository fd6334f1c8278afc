"""Preprocessing for users: the torchvision transforms that match a model's pretrained weights."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from backbones.core.inputs import check_normalization

__all__ = ["resolve_pretrained_cfg", "transforms_for"]


def resolve_pretrained_cfg(model_or_name: nn.Module | str | dict[str, Any]) -> dict[str, Any]:
    """The ``pretrained_cfg`` of a model, of a registered ``arch[.tag]`` name, or a cfg dict itself."""
    if isinstance(model_or_name, dict):
        return model_or_name
    if isinstance(model_or_name, str):
        import backbones.models  # noqa: F401 - registers the families get_model_entry looks up
        from backbones.core.registry import get_model_entry, split_model_name
        from backbones.hub.manifest import get_weight_spec, pretrained_cfg_for

        arch, tag = split_model_name(model_or_name)
        entry = get_model_entry(arch)
        spec = get_weight_spec(arch, tag) if tag else None
        return pretrained_cfg_for(entry, spec)
    cfg = getattr(model_or_name, "pretrained_cfg", None)
    if cfg is None:
        raise TypeError(f"{type(model_or_name).__name__} has no pretrained_cfg; pass a backbones model or name")
    return cfg


def transforms_for(model_or_name: nn.Module | str | dict[str, Any], *, training: bool = False) -> Any:
    """Evaluation transforms (resize, center crop, to float, normalise) for a model's weights.

    Accepts PIL images and uint8 tensors ``[C, H, W]``; returns normalised float tensors.
    torchvision is needed for this helper only (``pip install backbones[tools]``).

    Args:
        model_or_name: A model, a registered ``arch[.tag]`` name or a ``pretrained_cfg`` dict.
        training: Fine-tuning augmentation instead: a random resized crop to the crop size and a
            random horizontal flip, then the same float conversion and normalisation.

    Raises:
        ValueError: The cfg's ``mean`` or ``std`` is not one number per channel (the field is named).
        ImportError: torchvision is not installed.

    Example:
        >>> transform = transforms_for("resnet50.tv2_in1k")
        >>> batch = transform(pil_image).unsqueeze(0)
    """
    cfg = resolve_pretrained_cfg(model_or_name)
    check_normalization(cfg)
    try:
        import torch
        from torchvision.transforms import InterpolationMode, v2
    except ImportError:
        raise ImportError(
            "transforms_for needs torchvision, which backbones does not require; install it with "
            "`pip install torchvision` (or `pip install backbones[tools]`)"
        ) from None
    interpolation = InterpolationMode(cfg.get("interpolation", "bilinear"))
    steps: list[Any] = [v2.ToImage()]
    if training:
        crop = cfg.get("crop_size") or cfg["input_size"][-1]
        steps += [v2.RandomResizedCrop(crop, interpolation=interpolation, antialias=True), v2.RandomHorizontalFlip()]
    elif cfg.get("resize_size"):
        steps.append(v2.Resize(cfg["resize_size"], interpolation=interpolation, antialias=True))
    if cfg.get("crop_size") and not training:
        steps.append(v2.CenterCrop(cfg["crop_size"]))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(cfg["mean"]), std=list(cfg["std"]))]
    return v2.Compose(steps)
