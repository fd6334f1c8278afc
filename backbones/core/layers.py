"""Blocks shared by the families: convolution helpers, conv+BN+ReLU, frozen BatchNorm."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AdaptiveAvgPool2d",
    "ConvBnAct",
    "FrozenBatchNorm2d",
    "NormLayer",
    "conv1x1",
    "conv2d",
    "conv3x3",
    "freeze_batch_norm",
    "resolve_drop_rate",
    "resolve_norm_layer",
    "same_padding",
    "uninitialised",
]

NormLayer = Callable[..., nn.Module]


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the spatial size at stride 1: ``dilation * (kernel_size - 1) // 2``.

    Example:
        >>> same_padding(3), same_padding(7), same_padding(3, dilation=2)
        (1, 3, 2)
    """
    if kernel_size % 2 == 0:
        raise ValueError(f"'same' padding needs an odd kernel size, got {kernel_size}")
    return dilation * (kernel_size - 1) // 2


def uninitialised(module_class: type[nn.Module], *args: Any, **kwargs: Any) -> nn.Module:
    """``module_class(*args, **kwargs)`` without torch's default initialisation, on the default device.

    For layers whose weights the family's own initialisation overwrites right after: VGG's
    120M classifier weights were otherwise drawn twice, about a second per model on these CPUs,
    and ResNet-152's convolutions 0.4 s.

    Example:
        >>> layer = uninitialised(nn.Linear, 4096, 1000)
        >>> _ = nn.init.normal_(layer.weight, 0, 0.01)
    """
    return nn.utils.skip_init(module_class, *args, device=torch.get_default_device(), **kwargs)


def conv2d(*args: Any, init: bool = True, **kwargs: Any) -> nn.Conv2d:
    """``nn.Conv2d(*args, **kwargs)``; with ``init=False`` its weights are left for the family's
    own initialisation to draw (see :func:`uninitialised`)."""
    return nn.Conv2d(*args, **kwargs) if init else uninitialised(nn.Conv2d, *args, **kwargs)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1, *, init: bool = True) -> nn.Conv2d:
    """3x3 convolution without bias (a norm layer follows), padded to keep the size at stride 1.

    ``init=False`` leaves the weight for the family's own initialisation (see :func:`conv2d`).
    """
    padding = same_padding(3, dilation)
    return conv2d(in_channels, out_channels, 3, stride, padding, dilation, bias=False, init=init)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1, *, init: bool = True) -> nn.Conv2d:
    """1x1 convolution without bias: a per-pixel linear map across channels (``init`` as
    :func:`conv3x3`)."""
    return conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False, init=init)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, for fine-tuning detectors.

    Its state-dict keys (weight, bias, running_mean, running_var) are BatchNorm2d's and
    torchvision's ``FrozenBatchNorm2d``'s, so either checkpoint loads into it. They are buffers,
    not parameters: no optimizer updates them and no batch statistics are ever computed.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Tensor],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A BatchNorm2d checkpoint carries a step counter that a frozen layer has no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: Tensor) -> Tensor:
        # Same arithmetic order as torchvision's FrozenBatchNorm2d, so outputs match bit for bit.
        scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var.reshape(1, -1, 1, 1) + self.eps).rsqrt()
        bias = self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale
        return x * scale + bias

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


_NORM_LAYERS: dict[str, NormLayer] = {
    "batchnorm": nn.BatchNorm2d,
    "frozen_batchnorm": FrozenBatchNorm2d,
}


def resolve_drop_rate(dropout: float, drop_rate: float | None) -> float:
    """The classifier dropout of a family whose own option is ``dropout``, given timm's ``drop_rate`` too.

    ``drop_rate`` (when given) wins, so ``create_model(name, drop_rate=p)`` means the same for
    every family.

    Raises:
        ValueError: The probability is outside [0, 1).

    Example:
        >>> resolve_drop_rate(0.5, None), resolve_drop_rate(0.5, 0.1)
        (0.5, 0.1)
    """
    rate = dropout if drop_rate is None else drop_rate
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_rate must be a probability in [0, 1), got {rate!r}")
    return float(rate)


def resolve_norm_layer(norm_layer: str | NormLayer | None, eps: float = 1e-5) -> NormLayer:
    """Turn a norm-layer option into a constructor ``norm(num_features)``.

    Args:
        norm_layer: ``None`` or ``"batchnorm"`` (BatchNorm2d), ``"frozen_batchnorm"``, or a
            callable such as ``nn.BatchNorm2d`` or ``torchvision.ops.FrozenBatchNorm2d``.
            Names are preferred: they survive ``save_pretrained`` into config.json.
        eps: The family's epsilon, applied when ``norm_layer`` is given by name.

    Example:
        >>> resolve_norm_layer("frozen_batchnorm", eps=1e-3)(64)
        FrozenBatchNorm2d(64, eps=0.001)
    """
    if norm_layer is None:
        norm_layer = "batchnorm"
    if isinstance(norm_layer, str):
        try:
            return partial(_NORM_LAYERS[norm_layer], eps=eps)
        except KeyError:
            raise ValueError(
                f"unknown norm_layer {norm_layer!r}: use one of {sorted(_NORM_LAYERS)} or a callable"
            ) from None
    if not callable(norm_layer):
        raise TypeError(f"norm_layer must be a name or a callable, got {type(norm_layer).__name__}")
    return norm_layer


class ConvBnAct(nn.Module):
    """Convolution, then BatchNorm, then ReLU: the basic unit of the Inception family.

    With ``norm_layer=None`` the convolution carries a bias and no norm layer is built (the
    networks without BatchNorm). Submodules are named ``conv`` and ``bn`` as in torchvision.
    ``init=False`` leaves a bias-free convolution's weight for the family's own initialisation
    (a bias always gets torch's default, which no family redraws).

    Example:
        >>> ConvBnAct(3, 32, kernel_size=3, stride=2)(torch.randn(1, 3, 299, 299)).shape
        torch.Size([1, 32, 149, 149])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        norm_layer: NormLayer | None = nn.BatchNorm2d,
        *,
        init: bool = True,
    ) -> None:
        super().__init__()
        has_bias = norm_layer is None
        self.conv = conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=has_bias, init=init or has_bias
        )
        self.bn = nn.Identity() if norm_layer is None else norm_layer(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _adaptive_avg_pool_1d_by_sums(x: Tensor, dim: int, out: int) -> Tensor:
    """Adaptive average pooling along ``dim`` as differences of prefix sums, with bin edges
    computed from the (possibly symbolic) input size: PyTorch's bins, start = floor(i * n / out)
    and end = ceil((i + 1) * n / out)."""
    n = x.shape[dim]
    index = torch.arange(out, device=x.device)
    starts = (index * n) // out
    ends = ((index + 1) * n + out - 1) // out
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [1, 0]
    sums = F.pad(x.cumsum(dim), pad)  # sums[k] = x[0] + ... + x[k - 1]
    total = sums.index_select(dim, ends) - sums.index_select(dim, starts)
    shape = [1] * x.dim()
    shape[dim] = out
    return total / (ends - starts).to(x.dtype).reshape(shape)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` that also exports with a dynamic input size.

    ONNX has no adaptive pooling: exporters turn it into a fixed-kernel pool computed for the
    example's size, wrong at any other size. While torch.export traces (the ONNX exporter
    included), this layer computes the same bins from prefix sums instead, which follow the
    input size; otherwise it is PyTorch's own kernel.
    """

    def forward(self, x: Tensor) -> Tensor:
        # Two ifs, not one: TorchScript skips this whole block, and must never see is_exporting.
        if not torch.jit.is_scripting():  # noqa: SIM102
            if torch.compiler.is_exporting():
                return self._pool_by_sums(x)
        return F.adaptive_avg_pool2d(x, self.output_size)

    @torch.jit.unused
    def _pool_by_sums(self, x: Tensor) -> Tensor:
        size = self.output_size
        height, width = (size, size) if isinstance(size, int) else size
        height = x.shape[-2] if height is None else height
        width = x.shape[-1] if width is None else width
        return _adaptive_avg_pool_1d_by_sums(_adaptive_avg_pool_1d_by_sums(x, -2, height), -1, width)


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``module`` by a :class:`FrozenBatchNorm2d` with its statistics.

    Returns the module (changed in place; a bare ``BatchNorm2d`` comes back as a new module).
    The epsilon, affine parameters and running statistics are kept, so the eval-mode output
    is unchanged and state-dict keys stay the same (less ``num_batches_tracked``).

    Example:
        >>> model = freeze_batch_norm(backbones.create_model("resnet50"))
    """
    if isinstance(module, nn.BatchNorm2d):
        device = next(iter([*module.parameters(), *module.buffers()])).device
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps).to(device)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.track_running_stats:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        replaced = freeze_batch_norm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module
