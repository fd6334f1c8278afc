"""The network a fine-tuning run trains: built or loaded, a head for the data's classes, frozen parts."""

from __future__ import annotations

import warnings
from typing import Any

import torch.nn as nn

from backbones.core.features import freeze_stages
from backbones.hub.integrity import file_sha256
from backbones.models.backbone import Backbone
from backbones.models.reference import ModelSource, resolve_model

__all__ = ["build_training_model", "describe_start", "freeze_parts", "resolve_training_model", "set_train_mode"]


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


def build_training_model(
    source: ModelSource, num_classes: int, *, image_size: int | None, progress: bool, seed: int | None = None
) -> nn.Module:
    """Build (or load) the model ``source`` names with a classifier of ``num_classes`` outputs.

    Args:
        source: From :func:`resolve_training_model` (the run resolves its model once).
        num_classes: Classes of the data.
        image_size: The training input size: auxiliary heads that need larger inputs (Inception
            v3's, 299) are left out below it, with a warning.
        progress: Show download progress.
        seed: Seed of the random initialisation (random weights, a new head): the same network in
            every process (see :meth:`~backbones.models.reference.ModelSource.build`).

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
    return source.build(progress=progress, reinit_head=_new_head(source, num_classes), seed=seed, **options)


def _new_head(source: ModelSource, num_classes: int) -> bool:
    # A new head wherever the weights' classes are not the data's (a tag's 1000, a folder's own).
    return source.weights.loads_weights and source.saved_num_classes != num_classes


def describe_start(source: ModelSource, num_classes: int, *, seed: int) -> str:
    """What a run starts from, in words for the model card, read from the resolved source (never guessed).

    Args:
        source: From :func:`resolve_training_model`.
        num_classes: Classes of the data (a head of another size is new).
        seed: The run's seed (what a random initialisation is drawn with).

    Returns:
        ``"random initialisation (seed 0)"``, ``"the resnet50.tv2_in1k weights, with a new
        10-class classifier"``, ``"the weights file /abs/w.pth (sha256 ...)"``, ``"the saved
        model /abs/run"``, ``"the Hub repo owner/name"``.
    """
    weights = source.weights
    if weights.kind == "none":
        # A tag in the name without its weights still chose the preprocessing.
        chosen = f"; {weights.spec.name}'s preprocessing, not its weights" if weights.spec is not None else ""
        return f"random initialisation (seed {seed}{chosen})"
    where = source.describe_weights()
    if weights.kind == "file":
        start = f"the weights file {where} (sha256 {file_sha256(where)})"
    else:
        start = {"tag": f"the {where} weights", "folder": f"the saved model {where}", "hub": f"the Hub repo {where}"}[
            weights.kind
        ]
    # The head is new only where the weights' own class count (a tag's 1000, a file's or folder's) is not the data's.
    weights_classes = getattr(source.skeleton(), "num_classes", None)
    return f"{start}, with a new {num_classes}-class classifier" if weights_classes != num_classes else start


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
