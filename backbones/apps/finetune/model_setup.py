"""The network a fine-tuning run trains: built or loaded, a head for the data's classes, frozen parts."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from backbones.core.registry import get_model_entry, split_model_name
from backbones.models.backbone import Backbone
from backbones.models.factory import create_model
from backbones.models.fpn import _freeze_stages
from backbones.models.pretrained import from_pretrained, load_config

__all__ = ["build_model", "freeze_parts", "preprocessing_model", "set_train_mode"]


def _is_saved_folder(model: str) -> bool:
    return Path(model).expanduser().is_dir()


def _architecture(model: str) -> str:
    arch = load_config(model)["architecture"] if _is_saved_folder(model) else split_model_name(model)[0]
    entry = get_model_entry(arch)
    if entry.kind != "classifier":
        raise ValueError(
            f"{arch!r} is a feature pyramid, not a classifier; fine-tune a classification model such as "
            f"{arch.removesuffix('_fpn')!r}"
        )
    return arch


def build_model(
    model: str,
    num_classes: int,
    *,
    pretrained: str | None,
    image_size: int | None,
    progress: bool,
) -> nn.Module:
    """Build (or load) ``model`` with a classifier of ``num_classes`` outputs.

    Args:
        model: An ``arch[.tag]`` name or a ``save_pretrained`` folder (its weights are loaded).
        num_classes: Classes of the data.
        pretrained: A weight tag or file to start from (``None``: random, or the folder's weights).
        image_size: The training input size: auxiliary heads that need larger inputs (Inception
            v3's, 299) are left out below it, with a warning.
        progress: Show download progress.

    Returns:
        The model (training mode); the head is freshly initialised when the classes differ.

    Raises:
        ValueError: ``model`` is an FPN, or ``pretrained`` is given with a saved folder.
    """
    arch = _architecture(model)
    options: dict[str, Any] = {"num_classes": num_classes}
    aux_min = _aux_min_input_size(arch)
    if aux_min and image_size is not None and image_size < aux_min:
        warnings.warn(
            f"{arch}'s auxiliary classifier needs inputs of at least {aux_min}x{aux_min}; training at "
            f"{image_size}x{image_size} without it",
            stacklevel=2,
        )
        options["aux_logits"] = False
    if _is_saved_folder(model):
        if pretrained:
            raise ValueError(f"{model} is a saved model folder: its weights are the start; drop --pretrained")
        saved_classes = load_config(model).get("model_kwargs", {}).get("num_classes")
        return from_pretrained(model, progress=progress, reinit_head=saved_classes != num_classes, **options)
    if pretrained:
        return create_model(model, pretrained=pretrained, progress=progress, reinit_head=True, **options)
    return create_model(model, **options)


def _aux_min_input_size(arch: str) -> int:
    with torch.device("meta"):
        probe = create_model(arch)
    return int(getattr(probe, "aux_min_input_size", 0) or 0)


def preprocessing_model(model: str, pretrained: str | None) -> nn.Module:
    """The network's structure on the meta device (no weights): its preprocessing config, channels, minimum size.

    The data is opened with it before the real model exists (whose head depends on the data's classes).
    """
    arch = _architecture(model)
    with torch.device("meta"):
        if _is_saved_folder(model):
            config = load_config(model)
            probe = create_model(arch, **config.get("model_kwargs", {}))
            probe.pretrained_cfg = config.get("pretrained_cfg") or probe.pretrained_cfg
            return probe
        tag = pretrained if pretrained and "." not in model and not Path(pretrained).exists() else None
        return create_model(f"{model}.{tag}" if tag else model)


def freeze_parts(model: nn.Module, trainable_stages: int | None, *, freeze_norm: bool) -> None:
    """Stop gradients to what does not train: all but the last stages, and BatchNorm with ``freeze_norm``.

    Args:
        model: The network.
        trainable_stages: Train only the last K stages of ``feature_info`` (the FPN's stage split,
            one piece of code for both) and the head; ``None`` trains every stage.
        freeze_norm: Keep every BatchNorm layer's affine parameters and statistics fixed.

    Raises:
        ValueError: More stages than the model has.
    """
    if trainable_stages is not None:
        if not isinstance(model, Backbone):
            raise ValueError(f"trainable_stages needs a backbones classification model, got {type(model).__name__}")
        _freeze_stages(model, trainable_stages)
    if freeze_norm:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.requires_grad_(False)


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, keeping BatchNorm layers that do not train in eval mode.

    A frozen layer must not drift: in training mode BatchNorm would still update its running
    statistics from the new data, though its weights never change.
    """
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in module.parameters(recurse=False)
        ):
            module.eval()
