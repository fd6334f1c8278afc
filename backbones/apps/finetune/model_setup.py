"""The network a fine-tuning run trains: built or loaded, a head for the data's classes, frozen parts."""

from __future__ import annotations

import warnings
from typing import Any

import torch.nn as nn

from backbones.core.features import freeze_stages
from backbones.models.backbone import Backbone
from backbones.models.reference import ModelSource, resolve_model

__all__ = ["build_training_model", "freeze_parts", "resolve_training_model", "set_train_mode"]


def resolve_training_model(model: str, pretrained: str | None) -> ModelSource:
    """The model a run fine-tunes: any model reference, random weights for a bare architecture.

    Raises:
        ValueError: ``model`` is an FPN or saved without a classifier, or ``pretrained`` is given
            with a reference that carries its own weights.
    """
    source = resolve_model(model, pretrained, default=False)
    if source.entry.kind != "classifier":
        arch = source.architecture
        raise ValueError(
            f"{arch!r} is a feature pyramid, not a classifier; fine-tune a classification model such as "
            f"{arch.removesuffix('_fpn')!r}"
        )
    return source


def build_training_model(source: ModelSource, num_classes: int, *, image_size: int | None, progress: bool) -> nn.Module:
    """Build (or load) the model ``source`` names with a classifier of ``num_classes`` outputs.

    Args:
        source: From :func:`resolve_training_model` (the run resolves its model once).
        num_classes: Classes of the data.
        image_size: The training input size: auxiliary heads that need larger inputs (Inception
            v3's, 299) are left out below it, with a warning.
        progress: Show download progress.

    Returns:
        The model (training mode); the head is freshly initialised when the classes differ.

    Raises:
        WeightsError: The weights cannot be obtained, are corrupt, or do not fit.
    """
    options: dict[str, Any] = {"num_classes": num_classes}
    aux_min = int(getattr(source.skeleton(), "aux_min_input_size", 0) or 0)
    if aux_min and image_size is not None and image_size < aux_min:
        warnings.warn(
            f"{source.architecture}'s auxiliary classifier needs inputs of at least {aux_min}x{aux_min}; training "
            f"at {image_size}x{image_size} without it",
            stacklevel=2,
        )
        options["aux_logits"] = False
    # A new head wherever the weights' classes are not the data's (a tag's 1000, a folder's own).
    reinit_head = source.weights.loads_weights and source.saved_num_classes != num_classes
    return source.build(progress=progress, reinit_head=reinit_head, **options)


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
        freeze_stages(model, trainable_stages)
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
