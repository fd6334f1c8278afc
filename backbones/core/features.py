"""Multi-scale features: the shape contract of every stage, and how a trunk is cut into stages."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch.fx
import torch.nn as nn
from torch import Tensor

__all__ = [
    "FeatureInfo",
    "FeatureInfoList",
    "freeze_stages",
    "module_stages",
    "ordered_features",
    "select_feature_info",
    "trace_trunk",
]


class FeatureInfo(NamedTuple):
    """The contract of one stage output: what it is called, its channels and its stride.

    Attributes:
        name: The key of this stage in a feature extractor's output (``"layer2"``, ``"pool3"``).
        channels: Channels of the feature map.
        stride: Input pixels per feature-map pixel: an input of ``H x W`` gives about
            ``ceil(H / stride) x ceil(W / stride)``.
        module: Qualified name of the submodule whose output this is.
    """

    name: str
    channels: int
    stride: int
    module: str


class FeatureInfoList(list):
    """A model's ``feature_info``: a plain list of :class:`FeatureInfo` that also answers timm's questions.

    timm users call ``model.feature_info.channels()`` and ``.reduction()``; both work here, plus
    ``.stride()`` (the same numbers as ``reduction``, under this package's name) and ``.names()``.
    Each takes an optional index (an int, or a sequence of ints) and returns one value or a list.

    Example:
        >>> info = backbones.create_model("resnet50").feature_info
        >>> info.channels(), info.reduction(-1)
        ([64, 256, 512, 1024, 2048], 32)
    """

    def _get(self, field: str, index: int | Iterable[int] | None) -> Any:
        if index is None:
            return [getattr(f, field) for f in self]
        if isinstance(index, int):
            return getattr(self[index], field)
        return [getattr(self[i], field) for i in index]

    def channels(self, index: int | Iterable[int] | None = None) -> Any:
        """Channels of every stage (or of the stages at ``index``)."""
        return self._get("channels", index)

    def reduction(self, index: int | Iterable[int] | None = None) -> Any:
        """Stride of every stage in input pixels (timm's name for it)."""
        return self._get("stride", index)

    def stride(self, index: int | Iterable[int] | None = None) -> Any:
        """Stride of every stage in input pixels (the same as :meth:`reduction`)."""
        return self._get("stride", index)

    def names(self, index: int | Iterable[int] | None = None) -> Any:
        """The output key of every stage (``"layer1"``, ``"pool3"``, ``"0"``...)."""
        return self._get("name", index)

    def modules(self, index: int | Iterable[int] | None = None) -> Any:
        """The qualified name of the submodule each stage is read from."""
        return self._get("module", index)


def select_feature_info(feature_info: list[FeatureInfo], out_indices: Iterable[int] | None) -> FeatureInfoList:
    """Pick stages by index; ``None`` picks all of them.

    Raises:
        ValueError: An index is out of range or repeated; the message lists the valid stages.

    Example:
        >>> [f.name for f in select_feature_info(resnet.feature_info, (1, -1))]
        ['layer1', 'layer4']
    """
    count = len(feature_info)
    if out_indices is None:
        return FeatureInfoList(feature_info)
    indices = list(out_indices)
    valid = ", ".join(f"{i}: {f.name} (stride {f.stride})" for i, f in enumerate(feature_info))
    if not indices:
        raise ValueError(f"out_indices is empty; choose among {valid}")
    normalised = []
    for index in indices:
        if not isinstance(index, int) or not -count <= index < count:
            raise ValueError(f"out_indices entry {index!r} is out of range; valid stages are {valid}")
        normalised.append(index % count)
    if len(set(normalised)) != len(normalised):
        raise ValueError(f"out_indices {tuple(indices)} names a stage twice; valid stages are {valid}")
    return FeatureInfoList(feature_info[i] for i in sorted(normalised))


def ordered_features(names: list[str], values: list[Tensor]) -> dict[str, Tensor]:
    """Pair stage names with their feature maps in an ``OrderedDict`` (TorchScript-friendly)."""
    out: dict[str, Tensor] = OrderedDict()
    for name, value in zip(names, values):  # noqa: B905 - TorchScript lacks strict
        out[name] = value
    return out


class _StageTracer(torch.fx.Tracer):
    """Traces a model's forward keeping stage modules, and everything not containing one, opaque.

    Opaque (leaf) modules are called as they are, so the extractor shares the model's own
    submodules under their own names: its state-dict keys are the model's.
    """

    def __init__(self, stage_modules: set[str]) -> None:
        super().__init__()
        self.stage_modules = stage_modules
        self.containers = {m.rsplit(".", i)[0] for m in stage_modules for i in range(1, m.count(".") + 1)}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name not in self.containers


def trace_trunk(model: nn.Module, stage_modules: set[str]) -> torch.fx.Graph:
    # In eval mode: training-only branches (auxiliary heads) are not part of the trunk.
    was_training = model.training
    model.eval()
    try:
        return _StageTracer(stage_modules).trace(model)
    finally:
        model.train(was_training)


def module_stages(model: nn.Module) -> dict[str, int]:
    """Map each module the trunk runs to the index of the ``feature_info`` stage it belongs to.

    A stage owns the modules that run after the previous stage's output up to its own; this
    is what "train only the last k stages" freezes by (:func:`freeze_stages`).

    Example:
        >>> module_stages(backbones.create_model("resnet50"))
        {'conv1': 0, 'bn1': 0, 'relu': 0, 'maxpool': 1, 'layer1': 1, 'layer2': 2, 'layer3': 3, 'layer4': 4}
    """
    taps = [f.module for f in model.feature_info]
    stages: dict[str, int] = {}
    stage = 0
    for node in trace_trunk(model, set(taps)).nodes:
        if node.op != "call_module" or stage >= len(taps):
            continue
        stages[node.target] = stage
        if node.target == taps[stage]:
            stage += 1
    return stages


def freeze_stages(model: nn.Module, trainable_layers: int) -> None:
    """Stop gradients to every parameter but those of the last ``trainable_layers`` stages.

    The stages are those of ``model.feature_info`` (:func:`module_stages` says which module
    belongs to which); parameters outside every stage, such as a classifier head, are left as they are.

    Args:
        model: A model with ``feature_info``.
        trainable_layers: How many of the last stages keep training: 0 freezes every stage,
            ``len(model.feature_info)`` none.

    Raises:
        ValueError: ``trainable_layers`` is below 0 or above the number of stages.

    Example:
        >>> model = backbones.create_model("resnet50")
        >>> freeze_stages(model, 3)
        >>> model.conv1.weight.requires_grad, model.layer2[0].conv1.weight.requires_grad
        (False, True)
    """
    stages = len(model.feature_info)
    if not 0 <= trainable_layers <= stages:
        raise ValueError(f"trainable_layers must be between 0 and {stages} for this backbone, got {trainable_layers}")
    first_trainable = stages - trainable_layers
    owner = module_stages(model)
    for name, parameter in model.named_parameters():
        module = next((m for m in owner if name.startswith(m + ".")), None)
        if module is not None and owner[module] < first_trainable:
            parameter.requires_grad_(False)
