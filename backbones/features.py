"""Multi-scale features: the shape contract of every stage, and the ``features_only`` extractor."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch.fx
import torch.nn as nn
from torch import Tensor

from .hub import HubMixin

__all__ = ["FeatureExtractor", "FeatureInfo", "module_stages", "select_feature_info"]


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


def select_feature_info(feature_info: list[FeatureInfo], out_indices: Iterable[int] | None) -> list[FeatureInfo]:
    """Pick stages by index; ``None`` picks all of them.

    Raises:
        ValueError: An index is out of range or repeated; the message lists the valid stages.

    Example:
        >>> [f.name for f in select_feature_info(resnet.feature_info, (1, -1))]
        ['layer1', 'layer4']
    """
    count = len(feature_info)
    if out_indices is None:
        return list(feature_info)
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
    return [feature_info[i] for i in sorted(normalised)]


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


def _trace_trunk(model: nn.Module, stage_modules: set[str]) -> torch.fx.Graph:
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
    is what "train only the last k stages" freezes by (see ``backbones.fpn.fpn_backbone``).

    Example:
        >>> module_stages(backbones.create_model("resnet50"))
        {'conv1': 0, 'bn1': 0, 'relu': 0, 'maxpool': 1, 'layer1': 1, 'layer2': 2, 'layer3': 3, 'layer4': 4}
    """
    taps = [f.module for f in model.feature_info]
    stages: dict[str, int] = {}
    stage = 0
    for node in _trace_trunk(model, set(taps)).nodes:
        if node.op != "call_module" or stage >= len(taps):
            continue
        stages[node.target] = stage
        if node.target == taps[stage]:
            stage += 1
    return stages


class FeatureExtractor(torch.fx.GraphModule, HubMixin):
    """A classification model cut after its last selected stage, returning stage outputs.

    Built by ``create_model(name, features_only=True, out_indices=...)``. Its forward returns an
    ``OrderedDict`` ``{stage name: feature map}``; ``feature_info`` lists exactly those stages.
    Nothing after the last selected stage is computed or kept, and the remaining weights keep
    the classification model's state-dict keys. It is an ``torch.fx.GraphModule`` (like
    torchvision's ``create_feature_extractor``), so it scripts and exports.

    Args:
        model: A classification model with ``feature_info`` (any registered one).
        out_indices: Indices into ``model.feature_info``; ``None`` keeps every stage.

    Example:
        >>> extractor = backbones.create_model("resnet18", features_only=True, out_indices=(2, 4))
        >>> {k: tuple(v.shape) for k, v in extractor(torch.randn(1, 3, 224, 224)).items()}
        {'layer2': (1, 128, 28, 28), 'layer4': (1, 512, 7, 7)}
    """

    _copied_attributes = ("feature_info", "in_chans", "min_input_size", "pretrained_cfg", "model_config")

    def __init__(self, model: nn.Module, out_indices: Iterable[int] | None = None) -> None:
        if not hasattr(model, "feature_info"):
            raise TypeError(f"{type(model).__name__} has no feature_info; it cannot be cut into stages")
        selected = select_feature_info(model.feature_info, out_indices)
        was_training = model.training
        graph = _trace_trunk(model, {f.module for f in selected})
        stage_nodes = {n.target: n for n in graph.nodes if n.op == "call_module"}
        output = next(n for n in graph.nodes if n.op == "output")
        with graph.inserting_before(output):
            features = graph.call_function(
                ordered_features, ([f.name for f in selected], [stage_nodes[f.module] for f in selected])
            )
        output.args = (features,)
        output.type = dict[str, Tensor]
        super().__init__(model, graph, class_name=f"{type(model).__name__}Features")
        # Drop everything past the last selected stage: the head, later stages, auxiliary heads.
        self.graph.eliminate_dead_code()
        self.delete_all_unused_submodules()
        self.recompile()
        self.train(was_training)
        self.feature_info = selected
        self.out_indices = tuple(model.feature_info.index(f) for f in selected)
        self.in_chans = model.in_chans
        self.min_input_size = model.min_input_size
        self.pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}))
        if hasattr(model, "model_config"):
            self.model_config = dict(model.model_config, features_only=True, out_indices=list(self.out_indices))

    def __deepcopy__(self, memo: dict[int, Any]) -> FeatureExtractor:
        # GraphModule's deepcopy rebuilds the module from its graph and drops plain attributes.
        result = super().__deepcopy__(memo)
        for name in ("out_indices", *self._copied_attributes):
            if name in self.__dict__:
                setattr(result, name, copy.deepcopy(self.__dict__[name], memo))
        return result
