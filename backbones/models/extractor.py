"""The ``features_only`` extractor: a classification model cut after its last selected stage."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch.fx
import torch.nn as nn
from torch import Tensor

from backbones.core.features import ordered_features, select_feature_info, trace_trunk
from backbones.models.pretrained import HubMixin

__all__ = ["FeatureExtractor"]


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
        graph = trace_trunk(model, {f.module for f in selected})
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
