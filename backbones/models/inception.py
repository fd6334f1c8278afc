"""The Inception family: GoogLeNet (Inception v1) and the factorised Inception v2 / v3.

One set of blocks serves the family: :class:`~backbones.layers.ConvBnAct` (conv, BatchNorm,
ReLU), the Inception modules as small classes, and the auxiliary classifiers.

* GoogLeNet (Szegedy et al., 2014): the Inception module runs four branches side by side
  (1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max-pool -> 1x1) and concatenates them on channels; the
  1x1 reductions keep the big kernels cheap. Two auxiliary classifiers on 4a and 4d add
  gradient to the middle of the network during training (their loss weighted 0.3, see
  :func:`googlenet_loss`) and are not run at inference.
* Inception v2 / v3 (Szegedy et al., 2015, "Rethinking the Inception Architecture"): BatchNorm
  everywhere, the 5x5 factorised into two 3x3, n x n into 1 x n then n x 1, grid reductions
  that pool and convolve in parallel, and expanded 8x8 modules. v3 also factorises the 7x7
  stem convolution into three 3x3 and batch-normalises the auxiliary classifier; v2 is the
  same body with the 7x7 stem and an auxiliary classifier without BatchNorm.

State-dict keys are torchvision's (``googlenet``, ``inception_v3``); timm's ``inception_v3``
uses the same keys.
"""

# No `from __future__ import annotations`: TorchScript and torch.fx read these annotations.
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from backbones.core.features import FeatureInfo
from backbones.core.layers import ConvBnAct, NormLayer, resolve_drop_rate, resolve_norm_layer
from backbones.models.backbone import Backbone
from backbones.models.factory import register_model

__all__ = [
    "GoogLeNet",
    "GoogLeNetOutputs",
    "Inception3",
    "InceptionOutputs",
    "googlenet_loss",
    "googlenet_v1",
    "inception_v2",
    "inception_v3",
]

INCEPTION_BN_EPS = 1e-3  # the family's BatchNorm epsilon (Google's TensorFlow default)
AUX_LOSS_WEIGHT = 0.3


class GoogLeNetOutputs(NamedTuple):
    """What GoogLeNet returns in training mode with auxiliary classifiers."""

    logits: Tensor
    aux1: Tensor
    aux2: Tensor


class InceptionOutputs(NamedTuple):
    """What Inception v2/v3 return in training mode with the auxiliary classifier."""

    logits: Tensor
    aux: Tensor


def googlenet_loss(outputs: Tensor | GoogLeNetOutputs, target: Tensor) -> Tensor:
    """The GoogLeNet training loss: ``CE(logits) + 0.3 * (CE(aux1) + CE(aux2))``.

    Args:
        outputs: What the model returned: :class:`GoogLeNetOutputs` in training with auxiliary
            heads, or plain logits (then the loss is plain cross-entropy).
        target: Class indices ``[N]``.

    Example:
        >>> model = googlenet_v1(num_classes=10).train()
        >>> loss = googlenet_loss(model(torch.randn(2, 3, 224, 224)), torch.tensor([1, 7]))
    """
    if isinstance(outputs, Tensor):
        return F.cross_entropy(outputs, target)
    logits, aux1, aux2 = outputs
    return F.cross_entropy(logits, target) + AUX_LOSS_WEIGHT * (
        F.cross_entropy(aux1, target) + F.cross_entropy(aux2, target)
    )


class InputRenormalize(nn.Module):
    """Re-normalise ImageNet-normalised input to the (x - 0.5) / 0.5 range Google trained on.

    torchvision does this silently inside GoogLeNet and Inception v3 (``transform_input``) when
    it loads their ImageNet weights. Here it is an explicit, visible module, built only with
    ``transform_input=True``; by default the weights' ``pretrained_cfg`` asks for mean = std =
    0.5 directly, which is the same function without the extra pass over the input.
    """

    imagenet_mean = (0.485, 0.456, 0.406)
    imagenet_std = (0.229, 0.224, 0.225)

    def __init__(self) -> None:
        super().__init__()
        # Plain floats, not buffers: nothing to save, and nothing left behind on the meta device
        # when a model is built there and given its weights with load_state_dict(assign=True).
        self.scale = [s / 0.5 for s in self.imagenet_std]
        self.shift = [(m - 0.5) / 0.5 for m in self.imagenet_mean]

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.tensor(self.scale, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
        shift = torch.tensor(self.shift, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
        return x * scale + shift


# Every convolution's weight is drawn once, by _init_truncated_normal: skip torch's default draw.
_conv_bn_act = partial(ConvBnAct, init=False)


def _init_truncated_normal(model: nn.Module, std: float, overrides: dict[nn.Module, float] | None = None) -> None:
    """Truncated-normal weights (at +-2, as Google's TensorFlow models), BatchNorm at 1 / 0."""
    overrides = overrides or {}
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, mean=0.0, std=overrides.get(m, std), a=-2, b=2)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- GoogLeNet


class InceptionModule(nn.Module):
    """GoogLeNet's Inception module: four parallel branches concatenated on channels.

    Args:
        in_channels: Input channels.
        ch1x1: Outputs of the 1x1 branch.
        ch3x3red, ch3x3: The 1x1 reduction and the 3x3 convolution of the second branch.
        ch5x5red, ch5x5: The 1x1 reduction and the "5x5" convolution of the third branch.
        pool_proj: Outputs of the 1x1 projection after the 3x3 max-pool.
        branch3_kernel: Kernel of the third branch. torchvision's ImageNet weights were trained
            with 3 (a known deviation, pytorch/vision#906); 5 is the paper's.
        norm: Norm layer constructor.
    """

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
        branch3_kernel: int,
        norm: NormLayer,
    ) -> None:
        super().__init__()
        self.branch1 = _conv_bn_act(in_channels, ch1x1, 1, norm_layer=norm)
        self.branch2 = nn.Sequential(
            _conv_bn_act(in_channels, ch3x3red, 1, norm_layer=norm),
            _conv_bn_act(ch3x3red, ch3x3, 3, padding=1, norm_layer=norm),
        )
        self.branch3 = nn.Sequential(
            _conv_bn_act(in_channels, ch5x5red, 1, norm_layer=norm),
            _conv_bn_act(ch5x5red, ch5x5, branch3_kernel, padding=branch3_kernel // 2, norm_layer=norm),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            _conv_bn_act(in_channels, pool_proj, 1, norm_layer=norm),
        )
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNetAux(nn.Module):
    """GoogLeNet's auxiliary classifier: 4x4 average pool, 1x1 conv, two fully connected layers."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float, norm: NormLayer) -> None:
        super().__init__()
        self.conv = _conv_bn_act(in_channels, 128, 1, norm_layer=norm)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes) if num_classes else nn.Identity()
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.conv(F.adaptive_avg_pool2d(x, (4, 4))), 1)
        x = self.dropout(F.relu(self.fc1(x), inplace=True))
        return self.fc2(x)


# (module name, (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj)) per stage, and the pool
# that closes the stage. The paper's Table 1.
GOOGLENET_STAGES: tuple[tuple[tuple[tuple[str, tuple[int, ...]], ...], Callable[[], nn.Module] | None], ...] = (
    (
        (("inception3a", (64, 96, 128, 16, 32, 32)), ("inception3b", (128, 128, 192, 32, 96, 64))),
        lambda: nn.MaxPool2d(3, stride=2, ceil_mode=True),
    ),
    (
        (
            ("inception4a", (192, 96, 208, 16, 48, 64)),
            ("inception4b", (160, 112, 224, 24, 64, 64)),
            ("inception4c", (128, 128, 256, 24, 64, 64)),
            ("inception4d", (112, 144, 288, 32, 64, 64)),
            ("inception4e", (256, 160, 320, 32, 128, 128)),
        ),
        lambda: nn.MaxPool2d(2, stride=2, ceil_mode=True),
    ),
    ((("inception5a", (256, 160, 320, 32, 128, 128)), ("inception5b", (384, 192, 384, 48, 128, 128))), None),
)


class GoogLeNet(Backbone):
    """GoogLeNet (Inception v1): a 3-conv stem, nine Inception modules, two auxiliary heads.

    Args:
        num_classes: Classifier outputs (the auxiliary heads' too).
        in_chans: Input channels.
        aux_logits: Build the auxiliary classifiers on 4a and 4d. In training mode ``forward``
            then returns :class:`GoogLeNetOutputs`; in eval mode plain logits. ``False`` builds
            no auxiliary layers at all (no unused parameters under DistributedDataParallel).
        transform_input: Prepend :class:`InputRenormalize`, for ImageNet-normalised input to
            torchvision's weights (what torchvision does implicitly). Off by default: those
            weights' ``pretrained_cfg`` normalises with mean = std = 0.5 instead.
        true_5x5: Build the paper's 5x5 kernel in the third branch. The default, 3x3, is what
            torchvision's ImageNet weights were trained with.
        dropout: Dropout before the classifier.
        drop_rate: The same as ``dropout``, under the name timm and every family here use.
        dropout_aux: Dropout in the auxiliary classifiers.
        norm_layer: ``"batchnorm"`` (default, eps 1e-3), ``"frozen_batchnorm"`` or a callable.

    Example:
        >>> model = GoogLeNet(num_classes=10).train()
        >>> logits, aux1, aux2 = model(torch.randn(2, 3, 224, 224))
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        aux_logits: bool = True,
        transform_input: bool = False,
        true_5x5: bool = False,
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
        norm_layer: str | NormLayer | None = None,
        drop_rate: float | None = None,
    ) -> None:
        super().__init__(num_classes, in_chans)
        dropout = resolve_drop_rate(dropout, drop_rate)
        if transform_input and in_chans != 3:
            raise ValueError("transform_input re-normalises RGB ImageNet input; it needs in_chans=3")
        norm = resolve_norm_layer(norm_layer, eps=INCEPTION_BN_EPS)
        self.aux_logits = aux_logits
        self.input_transform = InputRenormalize() if transform_input else nn.Identity()

        self.conv1 = _conv_bn_act(in_chans, 64, 7, stride=2, padding=3, norm_layer=norm)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = _conv_bn_act(64, 64, 1, norm_layer=norm)
        self.conv3 = _conv_bn_act(64, 192, 3, padding=1, norm_layer=norm)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        feature_info = [FeatureInfo("conv1", 64, 2, "conv1"), FeatureInfo("conv3", 192, 4, "conv3")]

        channels, stride = 192, 8
        for index, (modules, make_pool) in enumerate(GOOGLENET_STAGES, start=3):
            for name, widths in modules:
                module = InceptionModule(channels, *widths, branch3_kernel=5 if true_5x5 else 3, norm=norm)
                self.add_module(name, module)
                channels = module.out_channels
            feature_info.append(FeatureInfo(name, channels, stride, name))
            if make_pool is not None:
                self.add_module(f"maxpool{index}", make_pool())
                stride *= 2

        self.aux1: GoogLeNetAux | None = None
        self.aux2: GoogLeNetAux | None = None
        if aux_logits:
            self.aux1 = GoogLeNetAux(self.inception4a.out_channels, num_classes, dropout_aux, norm)
            self.aux2 = GoogLeNetAux(self.inception4d.out_channels, num_classes, dropout_aux, norm)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(channels, num_classes) if num_classes else nn.Identity()
        self._set_feature_info(feature_info)
        _init_truncated_normal(self, std=0.01)

    def _trunk(self, x: Tensor, with_aux: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        x = self.input_transform(self.check_input(x))
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux1: Tensor | None = None
        if with_aux and self.aux1 is not None:
            aux1 = self.aux1(x)
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2: Tensor | None = None
        if with_aux and self.aux2 is not None:
            aux2 = self.aux2(x)
        x = self.maxpool4(self.inception4e(x))
        return self.inception5b(self.inception5a(x)), aux1, aux2

    def forward_features(self, x: Tensor) -> Tensor:
        return self._trunk(x, with_aux=False)[0]

    def forward(self, x: Tensor) -> Tensor | GoogLeNetOutputs:
        """Logits in eval mode; :class:`GoogLeNetOutputs` in training mode with auxiliary heads."""
        x, aux1, aux2 = self._trunk(x, with_aux=self.training)
        logits = self.forward_head(x)
        if aux1 is not None and aux2 is not None:
            return GoogLeNetOutputs(logits, aux1, aux2)
        return logits

    first_conv = "conv1.conv.weight"

    def head_layer_names(self) -> list[str]:
        aux = ["aux1.fc2", "aux2.fc2"] if self.aux1 is not None and self.num_classes else []
        return super().head_layer_names() + aux

    def unbuilt_checkpoint_prefixes(self) -> list[str]:
        aux = ["aux1.", "aux2."] if self.aux1 is None else [] if self.num_classes else ["aux1.fc2.", "aux2.fc2."]
        return super().unbuilt_checkpoint_prefixes() + aux

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier and the auxiliary classifiers' last layers (0 removes them)."""
        super().reset_classifier(num_classes)
        for aux in (self.aux1, self.aux2):
            if aux is not None:
                aux.fc2 = nn.Linear(aux.fc1.out_features, num_classes) if num_classes else nn.Identity()


# --------------------------------------------------------------------------- Inception v2 / v3


class InceptionA(nn.Module):
    """35x35 module: 1x1; 1x1 -> 5x5; 1x1 -> 3x3 -> 3x3 (a factorised 5x5); avg-pool -> 1x1.

    The second branch keeps a 5x5 kernel, as Google's released v3 checkpoint (and torchvision's
    and timm's ports) do; the third is the paper's factorisation of a 5x5 into two 3x3.
    """

    def __init__(self, in_channels: int, pool_features: int, norm: NormLayer) -> None:
        super().__init__()
        self.branch1x1 = _conv_bn_act(in_channels, 64, 1, norm_layer=norm)
        self.branch5x5_1 = _conv_bn_act(in_channels, 48, 1, norm_layer=norm)
        self.branch5x5_2 = _conv_bn_act(48, 64, 5, padding=2, norm_layer=norm)
        self.branch3x3dbl_1 = _conv_bn_act(in_channels, 64, 1, norm_layer=norm)
        self.branch3x3dbl_2 = _conv_bn_act(64, 96, 3, padding=1, norm_layer=norm)
        self.branch3x3dbl_3 = _conv_bn_act(96, 96, 3, padding=1, norm_layer=norm)
        self.branch_pool = _conv_bn_act(in_channels, pool_features, 1, norm_layer=norm)
        self.out_channels = 64 + 64 + 96 + pool_features

    def forward(self, x: Tensor) -> Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: a strided 3x3, a strided double 3x3 and a max-pool in parallel."""

    def __init__(self, in_channels: int, norm: NormLayer) -> None:
        super().__init__()
        self.branch3x3 = _conv_bn_act(in_channels, 384, 3, stride=2, norm_layer=norm)
        self.branch3x3dbl_1 = _conv_bn_act(in_channels, 64, 1, norm_layer=norm)
        self.branch3x3dbl_2 = _conv_bn_act(64, 96, 3, padding=1, norm_layer=norm)
        self.branch3x3dbl_3 = _conv_bn_act(96, 96, 3, stride=2, norm_layer=norm)
        self.out_channels = 384 + 96 + in_channels

    def forward(self, x: Tensor) -> Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch3x3(x), branch3x3dbl, branch_pool], 1)


class InceptionC(nn.Module):
    """17x17 module: 7x7 convolutions factorised into 1x7 then 7x1 (spatially separable)."""

    def __init__(self, in_channels: int, channels_7x7: int, norm: NormLayer) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = _conv_bn_act(in_channels, 192, 1, norm_layer=norm)
        self.branch7x7_1 = _conv_bn_act(in_channels, c7, 1, norm_layer=norm)
        self.branch7x7_2 = _conv_bn_act(c7, c7, (1, 7), padding=(0, 3), norm_layer=norm)
        self.branch7x7_3 = _conv_bn_act(c7, 192, (7, 1), padding=(3, 0), norm_layer=norm)
        self.branch7x7dbl_1 = _conv_bn_act(in_channels, c7, 1, norm_layer=norm)
        self.branch7x7dbl_2 = _conv_bn_act(c7, c7, (7, 1), padding=(3, 0), norm_layer=norm)
        self.branch7x7dbl_3 = _conv_bn_act(c7, c7, (1, 7), padding=(0, 3), norm_layer=norm)
        self.branch7x7dbl_4 = _conv_bn_act(c7, c7, (7, 1), padding=(3, 0), norm_layer=norm)
        self.branch7x7dbl_5 = _conv_bn_act(c7, 192, (1, 7), padding=(0, 3), norm_layer=norm)
        self.branch_pool = _conv_bn_act(in_channels, 192, 1, norm_layer=norm)
        self.out_channels = 4 * 192

    def forward(self, x: Tensor) -> Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_2(self.branch7x7dbl_1(x))
        branch7x7dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(branch7x7dbl)))
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: 1x1 -> strided 3x3; 1x1 -> 1x7 -> 7x1 -> strided 3x3; max-pool."""

    def __init__(self, in_channels: int, norm: NormLayer) -> None:
        super().__init__()
        self.branch3x3_1 = _conv_bn_act(in_channels, 192, 1, norm_layer=norm)
        self.branch3x3_2 = _conv_bn_act(192, 320, 3, stride=2, norm_layer=norm)
        self.branch7x7x3_1 = _conv_bn_act(in_channels, 192, 1, norm_layer=norm)
        self.branch7x7x3_2 = _conv_bn_act(192, 192, (1, 7), padding=(0, 3), norm_layer=norm)
        self.branch7x7x3_3 = _conv_bn_act(192, 192, (7, 1), padding=(3, 0), norm_layer=norm)
        self.branch7x7x3_4 = _conv_bn_act(192, 192, 3, stride=2, norm_layer=norm)
        self.out_channels = 320 + 192 + in_channels

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(branch7x7x3))
        return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 module with an expanded filter bank: 3x3 outputs split into parallel 1x3 and 3x1."""

    def __init__(self, in_channels: int, norm: NormLayer) -> None:
        super().__init__()
        self.branch1x1 = _conv_bn_act(in_channels, 320, 1, norm_layer=norm)
        self.branch3x3_1 = _conv_bn_act(in_channels, 384, 1, norm_layer=norm)
        self.branch3x3_2a = _conv_bn_act(384, 384, (1, 3), padding=(0, 1), norm_layer=norm)
        self.branch3x3_2b = _conv_bn_act(384, 384, (3, 1), padding=(1, 0), norm_layer=norm)
        self.branch3x3dbl_1 = _conv_bn_act(in_channels, 448, 1, norm_layer=norm)
        self.branch3x3dbl_2 = _conv_bn_act(448, 384, 3, padding=1, norm_layer=norm)
        self.branch3x3dbl_3a = _conv_bn_act(384, 384, (1, 3), padding=(0, 1), norm_layer=norm)
        self.branch3x3dbl_3b = _conv_bn_act(384, 384, (3, 1), padding=(1, 0), norm_layer=norm)
        self.branch_pool = _conv_bn_act(in_channels, 192, 1, norm_layer=norm)
        self.out_channels = 320 + 2 * 384 + 2 * 384 + 192

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, branch_pool], 1)


class InceptionAux(nn.Module):
    """The v2/v3 auxiliary classifier on the 17x17 grid: 5x5/3 avg-pool, 1x1 conv, 5x5 conv, fc.

    With ``norm=None`` its convolutions carry biases and no BatchNorm (Inception v2's head).
    """

    def __init__(self, in_channels: int, num_classes: int, norm: NormLayer | None) -> None:
        super().__init__()
        self.conv0 = _conv_bn_act(in_channels, 128, 1, norm_layer=norm)
        self.conv1 = _conv_bn_act(128, 768, 5, norm_layer=norm)
        self.fc = nn.Linear(768, num_classes) if num_classes else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.conv0(F.avg_pool2d(x, kernel_size=5, stride=3)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


# The smallest input whose 17x17-grid map (Mixed_6e) is still >= 17 pixels: the auxiliary head's
# 5x5/3 pool followed by a 5x5 convolution needs that much.
AUX_MIN_INPUT_SIZE = 299
# Below 75 pixels the unpadded stem and grid reductions run out of pixels.
INCEPTION3_MIN_INPUT_SIZE = 75


class Inception3(Backbone):
    """The factorised Inception network of "Rethinking the Inception Architecture" (v2 and v3).

    Args:
        num_classes: Classifier outputs (the auxiliary head's too).
        in_chans: Input channels.
        aux_logits: Build the auxiliary classifier on Mixed_6e. In training mode ``forward``
            then returns :class:`InceptionOutputs` and needs inputs of at least 299x299.
        transform_input: Prepend :class:`InputRenormalize` (torchvision's implicit behaviour).
        stem: ``"3x3"``: v3's stem, the 7x7/2 convolution factorised into three 3x3
            (``Conv2d_1a_3x3``, ``Conv2d_2a_3x3``, ``Conv2d_2b_3x3``); ``"7x7"``: v2's single
            7x7/2 convolution (``Conv2d_1a_7x7``). Both give 64 channels at 147x147 from 299x299.
        aux_batch_norm: BatchNorm in the auxiliary classifier (v3) or not (v2).
        dropout: Dropout before the classifier.
        drop_rate: The same as ``dropout``, under the name timm and every family here use.
        norm_layer: ``"batchnorm"`` (default, eps 1e-3), ``"frozen_batchnorm"`` or a callable.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        aux_logits: bool = True,
        transform_input: bool = False,
        stem: str = "3x3",
        aux_batch_norm: bool = True,
        dropout: float = 0.5,
        norm_layer: str | NormLayer | None = None,
        drop_rate: float | None = None,
    ) -> None:
        super().__init__(num_classes, in_chans)
        dropout = resolve_drop_rate(dropout, drop_rate)
        if transform_input and in_chans != 3:
            raise ValueError("transform_input re-normalises RGB ImageNet input; it needs in_chans=3")
        norm = resolve_norm_layer(norm_layer, eps=INCEPTION_BN_EPS)
        self.aux_logits = aux_logits
        self.aux_min_input_size = AUX_MIN_INPUT_SIZE if aux_logits else 0
        # The head's BatchNorm sees one value per channel (a 1x1 map) for each image: batch 1
        # cannot give it statistics.
        self.aux_min_batch = 2 if aux_logits and aux_batch_norm else 1
        self.input_transform = InputRenormalize() if transform_input else nn.Identity()

        if stem == "3x3":
            self.Conv2d_1a_3x3 = _conv_bn_act(in_chans, 32, 3, stride=2, norm_layer=norm)
            self.Conv2d_2a_3x3 = _conv_bn_act(32, 32, 3, norm_layer=norm)
            self.Conv2d_2b_3x3 = _conv_bn_act(32, 64, 3, padding=1, norm_layer=norm)
            first_stage = "Conv2d_2b_3x3"
            self.first_conv = "Conv2d_1a_3x3.conv.weight"
        elif stem == "7x7":
            self.Conv2d_1a_7x7 = _conv_bn_act(in_chans, 64, 7, stride=2, norm_layer=norm)
            first_stage = "Conv2d_1a_7x7"
            self.first_conv = "Conv2d_1a_7x7.conv.weight"
        else:
            raise ValueError(f"stem must be '3x3' (Inception v3) or '7x7' (Inception v2), got {stem!r}")
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = _conv_bn_act(64, 80, 1, norm_layer=norm)
        self.Conv2d_4a_3x3 = _conv_bn_act(80, 192, 3, norm_layer=norm)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)

        self.Mixed_5b = InceptionA(192, pool_features=32, norm=norm)
        self.Mixed_5c = InceptionA(self.Mixed_5b.out_channels, pool_features=64, norm=norm)
        self.Mixed_5d = InceptionA(self.Mixed_5c.out_channels, pool_features=64, norm=norm)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels, norm=norm)
        channels = self.Mixed_6a.out_channels
        for name, channels_7x7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            self.add_module(name, InceptionC(channels, channels_7x7, norm=norm))
        self.AuxLogits = InceptionAux(channels, num_classes, norm if aux_batch_norm else None) if aux_logits else None
        self.Mixed_7a = InceptionD(channels, norm=norm)
        self.Mixed_7b = InceptionE(self.Mixed_7a.out_channels, norm=norm)
        self.Mixed_7c = InceptionE(self.Mixed_7b.out_channels, norm=norm)
        channels = self.Mixed_7c.out_channels
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(channels, num_classes) if num_classes else nn.Identity()

        self._set_feature_info(
            [
                FeatureInfo(first_stage, 64, 2, first_stage),
                FeatureInfo("Conv2d_4a_3x3", 192, 4, "Conv2d_4a_3x3"),
                FeatureInfo("Mixed_5d", self.Mixed_5d.out_channels, 8, "Mixed_5d"),
                FeatureInfo("Mixed_6e", 768, 16, "Mixed_6e"),
                FeatureInfo("Mixed_7c", channels, 32, "Mixed_7c"),
            ],
            min_input_size=INCEPTION3_MIN_INPUT_SIZE,
        )
        aux_std = {self.AuxLogits.conv1.conv: 0.01, self.AuxLogits.fc: 0.001} if self.AuxLogits is not None else {}
        _init_truncated_normal(self, std=0.1, overrides=aux_std)

    def _stem(self, x: Tensor) -> Tensor:
        # hasattr, not a string flag: TorchScript resolves it while compiling and skips the
        # branch whose modules this configuration does not have.
        if hasattr(self, "Conv2d_1a_7x7"):
            return self.Conv2d_1a_7x7(x)
        return self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))

    def _trunk(self, x: Tensor, with_aux: bool) -> tuple[Tensor, Tensor | None]:
        x = self.input_transform(self.check_input(x))
        if with_aux and self.AuxLogits is not None:
            _check_aux_input(x, self.aux_min_input_size, self.aux_min_batch)
        x = self.maxpool1(self._stem(x))
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        x = self.Mixed_6a(self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x))))
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
        aux: Tensor | None = None
        if with_aux and self.AuxLogits is not None:
            aux = self.AuxLogits(x)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        return x, aux

    def forward_features(self, x: Tensor) -> Tensor:
        return self._trunk(x, with_aux=False)[0]

    def forward(self, x: Tensor) -> Tensor | InceptionOutputs:
        """Logits in eval mode; :class:`InceptionOutputs` in training mode with the auxiliary head."""
        x, aux = self._trunk(x, with_aux=self.training)
        logits = self.forward_head(x)
        if aux is not None:
            return InceptionOutputs(logits, aux)
        return logits

    def head_layer_names(self) -> list[str]:
        aux = ["AuxLogits.fc"] if self.AuxLogits is not None and self.num_classes else []
        return super().head_layer_names() + aux

    def unbuilt_checkpoint_prefixes(self) -> list[str]:
        aux = ["AuxLogits."] if self.AuxLogits is None else [] if self.num_classes else ["AuxLogits.fc."]
        return super().unbuilt_checkpoint_prefixes() + aux

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier and the auxiliary classifier's last layer (0 removes them)."""
        super().reset_classifier(num_classes)
        if self.AuxLogits is not None:
            width = self.AuxLogits.conv1.conv.out_channels
            self.AuxLogits.fc = nn.Linear(width, num_classes) if num_classes else nn.Identity()


def _check_aux_input(x: Tensor, min_size: int, min_batch: int) -> None:
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            f"training with the auxiliary classifier needs inputs of at least {min_size}x{min_size}, got "
            f"{x.shape[2]}x{x.shape[3]}; use larger images or build the model with aux_logits=False"
        )
    if x.shape[0] < min_batch:
        raise ValueError(
            f"training with the auxiliary classifier needs a batch of at least {min_batch} (its BatchNorm "
            f"normalises a 1x1 map), got {x.shape[0]}; use a larger batch or build the model with aux_logits=False"
        )


torch.fx.wrap("_check_aux_input")

GOOGLENET_CFG: dict[str, Any] = {}
INCEPTION3_CFG: dict[str, Any] = {"input_size": (3, 299, 299), "resize_size": 342, "crop_size": 299}


@register_model(family="inception", default_cfg=GOOGLENET_CFG)
def googlenet_v1(**kwargs: Any) -> GoogLeNet:
    """GoogLeNet (Inception v1): 6.6 M parameters, 13.0 M with the two auxiliary classifiers."""
    return GoogLeNet(**kwargs)


@register_model(family="inception", default_cfg=INCEPTION3_CFG)
def inception_v2(**kwargs: Any) -> Inception3:
    """Inception v2: v3's body with the 7x7/2 stem convolution and a BatchNorm-free auxiliary head."""
    return Inception3(**{"stem": "7x7", "aux_batch_norm": False, **kwargs})


@register_model(family="inception", default_cfg=INCEPTION3_CFG)
def inception_v3(**kwargs: Any) -> Inception3:
    """Inception v3: the factorised network, 27.2 M parameters with the auxiliary classifier (299x299 input)."""
    return Inception3(**{"stem": "3x3", "aux_batch_norm": True, **kwargs})
