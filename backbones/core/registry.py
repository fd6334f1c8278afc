"""The registry: architecture names to their entries (builder, family, kind, default config).

The lowest layer knows names and builders only. Building a model with weights, or as a feature
extractor, is :func:`backbones.models.factory.create_model`, which composes this registry with
the weights layer.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

__all__ = [
    "MODEL_KINDS",
    "ModelEntry",
    "UnknownModelError",
    "add_entry",
    "get_model_entry",
    "model_entries",
    "split_model_name",
    "unknown_name_message",
]

MODEL_KINDS = ("classifier", "fpn")


class UnknownModelError(ValueError):
    """Raised for a model or weight tag name that is not registered."""


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture.

    Attributes:
        name: The architecture name, e.g. ``"resnet50"``.
        builder: Builds the bare network from keyword arguments (no weights).
        family: ``"resnet"``, ``"vgg"``, ``"inception"``; FPN models carry their body's family.
        kind: ``"classifier"`` (image -> logits) or ``"fpn"`` (image -> feature pyramid).
        default_cfg: Preprocessing and input defaults used when no weight tag says otherwise.
        pretrained_kwargs: Constructor options whenever published weights (a manifest tag) are
            loaded: the FPN's torchvision policy of frozen BatchNorm and the last stages trainable.
    """

    name: str
    builder: Callable[..., nn.Module]
    family: str
    kind: str
    default_cfg: dict[str, Any] = field(default_factory=dict)
    pretrained_kwargs: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def add_entry(entry: ModelEntry) -> None:
    """Record an architecture; a name can be registered once.

    Raises:
        ValueError: The name is taken, or ``entry.kind`` is not one of :data:`MODEL_KINDS`.
    """
    if entry.kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {entry.kind!r}")
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry


def model_entries() -> list[ModelEntry]:
    """Every registered architecture, in registration order."""
    return list(_REGISTRY.values())


def split_model_name(name: str) -> tuple[str, str | None]:
    """Split ``"arch.tag"`` into ``("arch", "tag")``; a bare ``"arch"`` gives ``("arch", None)``.

    Example:
        >>> split_model_name("resnet50.tv2_in1k")
        ('resnet50', 'tv2_in1k')
    """
    arch, _, tag = name.partition(".")
    return arch, (tag or None)


def get_model_entry(name: str) -> ModelEntry:
    """Return the registry entry of an architecture (an ``arch.tag`` name is accepted).

    Raises:
        UnknownModelError: The architecture is not registered (the message lists the closest names),
            or the name is not a string, empty, a path, or ends in an empty tag (``"resnet18."``).
    """
    if not isinstance(name, str) or not name:
        raise UnknownModelError(f"a model name is a non-empty string such as 'resnet50', got {name!r}")
    if any(mark in name for mark in ("/", "\\")) or name.startswith((".", "~")):
        raise UnknownModelError(
            f"{name!r} is not a model name but looks like a path: load a saved folder with "
            f"backbones.from_pretrained({name!r}), or a weights file with create_model('<arch>', pretrained={name!r})"
        )
    arch, dot, tag = name.partition(".")
    entry = _REGISTRY.get(arch)
    if entry is None:
        raise UnknownModelError(unknown_name_message("model", arch, list(_REGISTRY)))
    if dot and not tag:
        raise UnknownModelError(
            f"{name!r} has an empty weight tag: name the architecture alone ({arch!r}, its default weights) or "
            f"with a tag such as '{arch}.<tag>' (backbones.list_models(pretrained=True) lists them)"
        )
    return entry


def unknown_name_message(what: str, name: str, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"registered: {', '.join(known)}"
    return f"unknown {what} {name!r}: {hint} (backbones.list_models() lists them all)"
