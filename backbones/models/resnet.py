"""ResNet (He et al., 2015): residual stages of BasicBlocks or Bottlenecks on a strided stem.

A block learns the residual F(x) = H(x) - x and adds the input back through the shortcut, an
identity or, when the channels or the stride change, a 1x1 projection. State-dict keys are
torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``, ``fc``), so a
torchvision or timm ResNet checkpoint loads with ``strict=True`` and no conversion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn as nn
from torch import Tensor

from backbones.core.features import FeatureInfo
from backbones.core.layers import NormLayer, conv1x1, conv2d, conv3x3, resolve_drop_rate, resolve_norm_layer
from backbones.models.backbone import Backbone
from backbones.models.factory import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]

STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, width, stride, dilation, init=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, width, dilation=dilation, init=False)
        self.bn2 = norm_layer(width)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # The shortcut is made last and added in place, as torchvision does: no extra map is
        # alive during the residual branch and no new one is allocated for the sum.
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)

    def last_norm(self) -> nn.Module:
        """The norm layer on the residual branch's output (zeroed by ``zero_init_residual``)."""
        return self.bn2


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4, and a shortcut (ResNet-50+).

    The stride sits on the 3x3 convolution (torchvision's "ResNet v1.5"), which is about half a
    point more accurate on ImageNet than the paper's stride on the first 1x1.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = conv1x1(in_channels, width, init=False)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, dilation, init=False)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, out_channels, init=False)
        self.bn3 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)

    def last_norm(self) -> nn.Module:
        """The norm layer on the residual branch's output (zeroed by ``zero_init_residual``)."""
        return self.bn3


ResidualBlock = type[BasicBlock] | type[Bottleneck]


class ResNet(Backbone):
    """A ResNet: stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), four residual stages, pool, fc.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: Blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        num_classes: Classifier outputs; 0 builds no classifier (``forward`` gives pooled features).
        in_chans: Input channels.
        zero_init_residual: Start each block's last norm at zero so every block begins as the
            identity (helps large-batch training; Goyal et al., 2017).
        norm_layer: ``"batchnorm"`` (default), ``"frozen_batchnorm"`` or a callable.
        replace_stride_with_dilation: Three flags for layer2..layer4: keep that stage's
            resolution and dilate its convolutions instead (output stride 16 or 8, for
            segmentation).
        drop_rate: Dropout before the classifier (0 in torchvision's ResNet).

    Example:
        >>> model = ResNet(Bottleneck, (3, 4, 6, 3), num_classes=10)
        >>> [(f.name, f.channels, f.stride) for f in model.feature_info][-1]
        ('layer4', 2048, 32)
    """

    first_conv = "conv1.weight"

    def __init__(
        self,
        block: ResidualBlock,
        layers: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        zero_init_residual: bool = False,
        norm_layer: str | NormLayer | None = None,
        replace_stride_with_dilation: Sequence[bool] | None = None,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__(num_classes, in_chans)
        if len(layers) != len(STAGE_WIDTHS):
            raise ValueError(f"layers needs one block count per stage (4), got {list(layers)}")
        dilate_flags = list(replace_stride_with_dilation or (False, False, False))
        if len(dilate_flags) != 3:
            raise ValueError(f"replace_stride_with_dilation needs 3 flags (layer2..4), got {dilate_flags}")
        norm = resolve_norm_layer(norm_layer)

        # Every convolution's weight is drawn once, by _init_weights (init=False skips torch's default).
        self.conv1 = conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False, init=False)
        self.bn1 = norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        feature_info = [FeatureInfo("stem", 64, 2, "relu")]

        channels, stride, dilation = 64, 4, 1
        for index, (width, blocks, stage_stride, dilate) in enumerate(
            zip(STAGE_WIDTHS, layers, STAGE_STRIDES, [False, *dilate_flags], strict=True), start=1
        ):
            previous_dilation = dilation
            if dilate:
                dilation *= stage_stride
                stage_stride = 1
            stage = self._make_stage(block, channels, width, blocks, stage_stride, (previous_dilation, dilation), norm)
            name = f"layer{index}"
            self.add_module(name, stage)
            channels = width * block.expansion
            stride *= stage_stride
            feature_info.append(FeatureInfo(name, channels, stride, name))

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(resolve_drop_rate(0.0, drop_rate))
        self.fc = nn.Linear(channels, num_classes) if num_classes else nn.Identity()
        self._set_feature_info(feature_info)
        self._init_weights(zero_init_residual)

    @staticmethod
    def _make_stage(
        block: ResidualBlock,
        in_channels: int,
        width: int,
        blocks: int,
        stride: int,
        dilations: tuple[int, int],
        norm: NormLayer,
    ) -> nn.Sequential:
        # The first block of a newly dilated stage keeps the previous stage's dilation, as in
        # torchvision (and the DeepLab models trained on it).
        first_dilation, dilation = dilations
        out_channels = width * block.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(conv1x1(in_channels, out_channels, stride, init=False), norm(out_channels))
        layers = [block(in_channels, width, stride, downsample, first_dilation, norm)]
        layers += [block(out_channels, width, 1, None, dilation, norm) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    norm = m.last_norm()
                    if isinstance(getattr(norm, "weight", None), nn.Parameter):
                        nn.init.zeros_(norm.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.check_input(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


@register_model(family="resnet")
def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18: BasicBlocks (2, 2, 2, 2), 11.7 M parameters."""
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


@register_model(family="resnet")
def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34: BasicBlocks (3, 4, 6, 3), 21.8 M parameters."""
    return ResNet(BasicBlock, (3, 4, 6, 3), **kwargs)


@register_model(family="resnet")
def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50: Bottlenecks (3, 4, 6, 3), 25.6 M parameters."""
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)


@register_model(family="resnet")
def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101: Bottlenecks (3, 4, 23, 3), 44.5 M parameters."""
    return ResNet(Bottleneck, (3, 4, 23, 3), **kwargs)


@register_model(family="resnet")
def resnet152(**kwargs: Any) -> ResNet:
    """ResNet-152: Bottlenecks (3, 8, 36, 3), 60.2 M parameters."""
    return ResNet(Bottleneck, (3, 8, 36, 3), **kwargs)
