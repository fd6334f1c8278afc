"""VGG (Simonyan & Zisserman, 2014): five stages of 3x3 convolutions, each closed by a 2x2 max-pool.

Only 3x3 kernels: two stacked 3x3 convolutions see what one 5x5 sees (three see a 7x7) with
fewer weights and an extra non-linearity between them. The stages are built by one loop from a
per-depth configuration; the network is three Sequential blocks, ``features`` (the
convolutions), ``avgpool`` (adaptive, to 7x7, so any input of at least 32x32 works) and
``classifier`` (three fully connected layers). Keys are torchvision's (``features.N``,
``classifier.N``); timm's layout (a convolutional head) converts through
:mod:`backbones.hub.convert`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from backbones.core.features import FeatureInfo
from backbones.core.layers import (
    AdaptiveAvgPool2d,
    NormLayer,
    conv2d,
    resolve_drop_rate,
    resolve_norm_layer,
    same_padding,
    uninitialised,
)
from backbones.models.backbone import Backbone
from backbones.models.factory import register_model

__all__ = [
    "VGG",
    "VGG_STAGE_DEPTHS",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
]

STAGE_WIDTHS = (64, 128, 256, 512, 512)
# Convolutions per stage; the paper's configurations A, B, D and E.
VGG_STAGE_DEPTHS: dict[str, tuple[int, ...]] = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
POOLED_SIZE = 7
HIDDEN_WIDTH = 4096


class VGG(Backbone):
    """A VGG network: ``features`` (3x3 conv stages), ``avgpool`` (to 7x7), ``classifier`` (3 FC).

    Args:
        stage_depths: Convolutions in each of the five stages, e.g. ``(2, 2, 3, 3, 3)`` for VGG-16.
        batch_norm: Put a norm layer after every convolution (the ``_bn`` variants).
        num_classes: Classifier outputs; 0 leaves the 4096-wide pre-logits as the output.
        in_chans: Input channels.
        dropout: Dropout probability after each of the two hidden fully connected layers.
        drop_rate: The same as ``dropout``, under the name timm and every family here use.
        norm_layer: With ``batch_norm``: ``"batchnorm"`` (default), ``"frozen_batchnorm"`` or a callable.

    Example:
        >>> model = VGG((2, 2, 3, 3, 3), num_classes=10)   # VGG-16: 13 conv + 3 FC
        >>> [sum(isinstance(m, kind) for m in model.modules()) for kind in (nn.Conv2d, nn.Linear)]
        [13, 3]
    """

    classifier_name = "classifier.6"
    first_conv = "features.0.weight"

    def __init__(
        self,
        stage_depths: tuple[int, ...],
        batch_norm: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.5,
        norm_layer: str | NormLayer | None = None,
        drop_rate: float | None = None,
    ) -> None:
        super().__init__(num_classes, in_chans)
        dropout = resolve_drop_rate(dropout, drop_rate)
        if len(stage_depths) != len(STAGE_WIDTHS):
            raise ValueError(f"stage_depths needs one count per stage (5), got {list(stage_depths)}")
        if norm_layer is not None and not batch_norm:
            raise ValueError("norm_layer applies to the batch-normalised variants (vgg*_bn) only")
        norm = resolve_norm_layer(norm_layer) if batch_norm else None

        layers: list[nn.Module] = []
        feature_info = []
        channels = in_chans
        for stage, (width, depth) in enumerate(zip(STAGE_WIDTHS, stage_depths, strict=True), start=1):
            for _ in range(depth):
                layers.append(conv2d(channels, width, kernel_size=3, padding=same_padding(3), init=False))
                if norm is not None:
                    layers.append(norm(width))
                layers.append(nn.ReLU(inplace=True))
                channels = width
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            feature_info.append(FeatureInfo(f"pool{stage}", width, 2**stage, f"features.{len(layers) - 1}"))
        self.features = nn.Sequential(*layers)
        self.avgpool = AdaptiveAvgPool2d((POOLED_SIZE, POOLED_SIZE))
        self.classifier = nn.Sequential(
            uninitialised(nn.Linear, channels * POOLED_SIZE * POOLED_SIZE, HIDDEN_WIDTH),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            uninitialised(nn.Linear, HIDDEN_WIDTH, HIDDEN_WIDTH),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            uninitialised(nn.Linear, HIDDEN_WIDTH, num_classes) if num_classes else nn.Identity(),
        )
        self.head_hidden_size = HIDDEN_WIDTH
        self._set_feature_info(feature_info)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(self.check_input(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        if not pre_logits:
            return self.classifier(x)
        # All but the last layer; a loop because TorchScript cannot call a sliced Sequential.
        last = len(self.classifier) - 1
        for index, layer in enumerate(self.classifier):
            if index < last:
                x = layer(x)
        return x


def _vgg(arch: str, batch_norm: bool, **kwargs: Any) -> VGG:
    return VGG(VGG_STAGE_DEPTHS[arch], batch_norm=batch_norm, **kwargs)


@register_model(family="vgg")
def vgg11(**kwargs: Any) -> VGG:
    """VGG-11 (configuration A): 8 conv + 3 FC layers, 132.9 M parameters."""
    return _vgg("vgg11", False, **kwargs)


@register_model(family="vgg")
def vgg11_bn(**kwargs: Any) -> VGG:
    """VGG-11 with BatchNorm after every convolution."""
    return _vgg("vgg11", True, **kwargs)


@register_model(family="vgg")
def vgg13(**kwargs: Any) -> VGG:
    """VGG-13 (configuration B): 10 conv + 3 FC layers, 133.0 M parameters."""
    return _vgg("vgg13", False, **kwargs)


@register_model(family="vgg")
def vgg13_bn(**kwargs: Any) -> VGG:
    """VGG-13 with BatchNorm after every convolution."""
    return _vgg("vgg13", True, **kwargs)


@register_model(family="vgg")
def vgg16(**kwargs: Any) -> VGG:
    """VGG-16 (configuration D): 13 conv + 3 FC layers, 138.4 M parameters."""
    return _vgg("vgg16", False, **kwargs)


@register_model(family="vgg")
def vgg16_bn(**kwargs: Any) -> VGG:
    """VGG-16 with BatchNorm after every convolution."""
    return _vgg("vgg16", True, **kwargs)


@register_model(family="vgg")
def vgg19(**kwargs: Any) -> VGG:
    """VGG-19 (configuration E): 16 conv + 3 FC layers, 143.7 M parameters."""
    return _vgg("vgg19", False, **kwargs)


@register_model(family="vgg")
def vgg19_bn(**kwargs: Any) -> VGG:
    """VGG-19 with BatchNorm after every convolution."""
    return _vgg("vgg19", True, **kwargs)
