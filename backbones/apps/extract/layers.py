"""Which tensors an extraction stores: ``--layers pooled``, stage names (optionally pooled) or ``fpn``.

A layer spec is a comma-separated list:

* ``pooled``: the pre-logits embedding, ``forward_head(forward_features(x), pre_logits=True)``.
  For ResNet, GoogLeNet and Inception that is the global-average-pooled last stage; for VGG it is
  the 4096-wide output of the second fully connected layer (the pooled last stage is
  ``pool5:pooled``).
* a stage name from the model's ``feature_info`` (``layer3``): the whole feature map ``[C, H, W]``;
  ``layer3:pooled``: that map averaged over height and width, ``[C]``.
* ``fpn`` (``_fpn`` models): every pyramid level; ``fpn:pooled`` every level averaged. Single
  levels are stage names too (``0``, ``pool``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn as nn
from torch import Tensor

from backbones.models.fpn import BackboneWithFPN

__all__ = ["FPN", "POOLED", "POOLED_SUFFIX", "LayerSelection", "extraction_network", "parse_layers", "select_outputs"]

POOLED = "pooled"
FPN = "fpn"
POOLED_SUFFIX = ":pooled"


@dataclass(frozen=True)
class LayerSelection:
    """A parsed layer spec.

    Attributes:
        outputs: The stored tensors' names, in spec order (``"pooled"``, ``"layer3"``, ``"layer4:pooled"``).
        stages: The stage maps the network must return, in ``feature_info`` order.
        prelogits: Whether the network must also return the pre-logits embedding.
    """

    outputs: tuple[str, ...]
    stages: tuple[str, ...]
    prelogits: bool


def _stage_names(model: nn.Module) -> list[str]:
    return [f.name for f in getattr(model, "feature_info", [])]


def _is_classifier(model: nn.Module) -> bool:
    return hasattr(model, "forward_head") and hasattr(model, "feature_extractor")


def _valid_names(model: nn.Module) -> str:
    stages = _stage_names(model)
    first = [FPN] if isinstance(model, BackboneWithFPN) else [POOLED] if _is_classifier(model) else []
    return ", ".join([*first, *stages]) + f" (a stage also as NAME{POOLED_SUFFIX})"


def parse_layers(spec: str | Sequence[str], model: nn.Module) -> LayerSelection:
    """Parse ``--layers`` for ``model``.

    Args:
        spec: ``"pooled"``, ``"layer3,layer4:pooled"``, ``"fpn"``... or a list of such items.
        model: The model the layers are taken from (a classifier, a ``features_only`` extractor or an FPN).

    Returns:
        The :class:`LayerSelection`.

    Raises:
        ValueError: An empty spec, an unknown or repeated name (the message lists the valid ones),
            ``fpn`` on a model without a pyramid, or ``pooled`` on a model without a classifier head.

    Example:
        >>> parse_layers("pooled,layer3:pooled", backbones.create_model("resnet18")).outputs
        ('pooled', 'layer3:pooled')
    """
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    if not items or not all(items):
        raise ValueError(f"layers needs one or more comma-separated names, got {spec!r}; valid: {_valid_names(model)}")
    stages = _stage_names(model)
    outputs: list[str] = []
    for item in items:
        base, pooled = (item.removesuffix(POOLED_SUFFIX), True) if item.endswith(POOLED_SUFFIX) else (item, False)
        suffix = POOLED_SUFFIX if pooled else ""
        if base == FPN:
            if not isinstance(model, BackboneWithFPN):
                raise ValueError(
                    f"layers='{FPN}' needs an FPN model such as resnet50_fpn; this {type(model).__name__} has "
                    f"{_valid_names(model)}"
                )
            outputs += [name + suffix for name in stages]
        elif base == POOLED and not pooled and _is_classifier(model):
            outputs.append(POOLED)
        elif base in stages:
            outputs.append(item)
        else:
            raise ValueError(f"unknown layer {item!r} for this {type(model).__name__}; valid: {_valid_names(model)}")
    repeated = sorted({name for name in outputs if outputs.count(name) > 1})
    if repeated:
        raise ValueError(f"layers names {', '.join(repeated)} twice; give each layer once")
    needed = {name.removesuffix(POOLED_SUFFIX) for name in outputs if name != POOLED}
    return LayerSelection(tuple(outputs), tuple(s for s in stages if s in needed), POOLED in outputs)


class _ClassifierTaps(nn.Module):
    """A classifier's selected stage maps and, if asked, its pre-logits embedding, in one pass.

    The stage maps come from the model's own ``features_only`` extractor; the embedding from the
    model's own head applied to the last stage (which is ``forward_features``' output in every family).
    """

    def __init__(self, model: nn.Module, selection: LayerSelection) -> None:
        super().__init__()
        stages = _stage_names(model)
        needed = set(selection.stages) | ({stages[-1]} if selection.prelogits else set())
        self.model = model
        self.trunk = model.feature_extractor([i for i, s in enumerate(stages) if s in needed]) if needed else None
        self.stage_names = list(selection.stages)
        self.last = stages[-1]
        self.prelogits = selection.prelogits

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = OrderedDict()
        if self.trunk is None:  # only the embedding: the plain forward, no stage taps
            out[POOLED] = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
            return out
        features = self.trunk(x)
        for name in self.stage_names:
            out[name] = features[name]
        if self.prelogits:
            out[POOLED] = self.model.forward_head(features[self.last], pre_logits=True)
        return out


def extraction_network(model: nn.Module, selection: LayerSelection) -> nn.Module:
    """The module whose forward returns what ``selection`` needs, as a dict (before any ``:pooled``).

    A classifier is wrapped (stage taps and its head); an FPN or a ``features_only`` extractor
    already returns a dict of its stages and is used as it is.

    Args:
        model: The model :func:`parse_layers` parsed ``selection`` for.
        selection: What to return.

    Returns:
        An eval-mode module (``backbones.optimize`` takes it as it takes the model).
    """
    if _is_classifier(model):
        return _ClassifierTaps(model, selection).eval()
    return model.eval()


def select_outputs(raw: dict[str, Tensor], selection: LayerSelection) -> dict[str, Tensor]:
    """Pick and pool the network's outputs into the stored tensors.

    Args:
        raw: The output of :func:`extraction_network`'s module (or of its optimized copy).
        selection: The parsed layer spec.

    Returns:
        Stored name -> tensor, in ``selection.outputs`` order; ``NAME:pooled`` is the map averaged
        over height and width.
    """
    out: dict[str, Tensor] = {}
    for name in selection.outputs:
        if name.endswith(POOLED_SUFFIX):
            out[name] = raw[name.removesuffix(POOLED_SUFFIX)].mean(dim=(2, 3))
        else:
            out[name] = raw[name]
    return out
