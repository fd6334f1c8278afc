"""The model an extraction runs: a registered name, a ``save_pretrained`` / ``finetune`` folder, or a module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from backbones.models.factory import create_model
from backbones.models.pretrained import CONFIG_NAME, from_pretrained

__all__ = ["ModelSource", "resolve_model"]


@dataclass(frozen=True)
class ModelSource:
    """A loaded model and what the manifest says about where it came from.

    Attributes:
        model: The model, in eval mode.
        name: What the caller gave (a name, a folder, or the module's class name).
        architecture: The registered architecture.
        weights: The weights: an ``arch.tag``, a file or folder, ``"random"`` or ``"in-memory module"``.
    """

    model: nn.Module
    name: str
    architecture: str
    weights: str


def _architecture(model: nn.Module) -> str:
    return str(getattr(model, "model_config", {}).get("architecture", type(model).__name__))


def resolve_model(model: str | Path | nn.Module, pretrained: bool | str | Path = True) -> ModelSource:
    """Load the model to extract with.

    Args:
        model: ``"arch"`` / ``"arch.tag"``, a folder written by ``save_pretrained`` or ``finetune``,
            or a module (used as it is).
        pretrained: For a name: ``True`` (the tag in the name, else the default weights), a weight
            tag, a weights file or folder, or ``False`` for random weights. A folder or module
            carries its own weights and takes only the default.

    Returns:
        A :class:`ModelSource`.

    Raises:
        ValueError: ``pretrained`` given with a folder or module.
        UnknownModelError: An unknown name or weight tag.
    """
    if isinstance(model, nn.Module):
        if pretrained is not True:
            raise ValueError("a model object carries its own weights; leave pretrained at its default")
        return ModelSource(model.eval(), type(model).__name__, _architecture(model), "in-memory module")
    folder = Path(model).expanduser()
    if folder.is_dir():
        if pretrained is not True:
            raise ValueError(f"{folder} carries its own weights; drop --pretrained (it is for registered names)")
        if not (folder / CONFIG_NAME).exists():
            raise FileNotFoundError(
                f"{folder} has no {CONFIG_NAME}: MODEL must be a registered name or a folder written by "
                f"save_pretrained or `backbones finetune`"
            )
        loaded = from_pretrained(folder, progress=False)
        return ModelSource(loaded.eval(), str(model), _architecture(loaded), str(folder.resolve()))
    loaded = create_model(str(model), pretrained=pretrained)
    if pretrained is False:
        weights = "random"
    else:  # a tag names itself; a file or folder of weights is named by its path
        weights = loaded.pretrained_cfg.get("weights") or str(Path(str(pretrained)).expanduser().resolve())
    return ModelSource(loaded.eval(), str(model), _architecture(loaded), str(weights))
