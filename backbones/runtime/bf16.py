"""bfloat16 convolutions on CPUs without bf16 instructions.

Where oneDNN has no bf16 kernels (an AVX2-only CPU: no AVX-512 BF16, no AVX-NE-CONVERT), PyTorch
convolves bfloat16 tensors with its generic kernel, many times slower than the float32
convolution. A native bf16 convolution multiplies bf16 values, sums the products in float32 and rounds
the result to bf16; the float32 kernel computes exactly that when given the bf16 values widened to
float32, so :class:`Bf16ConvOnFloat32Kernels` does, at the float32 kernel's speed. Weights stay
bf16 in memory; activations between layers stay bf16.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["Bf16ConvOnFloat32Kernels", "convolve_bf16_on_float32_kernels"]


class Bf16ConvOnFloat32Kernels(nn.Conv2d):
    """A bfloat16 ``nn.Conv2d`` computed by the float32 kernel: bf16 in, float32 sums, bf16 out."""

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.float()
        return self._conv_forward(x.float(), self.weight.float(), bias).to(x.dtype)


def convolve_bf16_on_float32_kernels(network: nn.Module) -> int:
    """Turn every bfloat16 ``nn.Conv2d`` of ``network`` into a :class:`Bf16ConvOnFloat32Kernels`, in place.

    The parameters (and so the state dict's keys and values) are unchanged.

    Returns:
        How many convolutions were turned.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3)).to(torch.bfloat16)
        >>> convolve_bf16_on_float32_kernels(net)
        1
    """
    turned = 0
    for module in network.modules():
        if type(module) is nn.Conv2d and module.weight.dtype == torch.bfloat16:
            module.__class__ = Bf16ConvOnFloat32Kernels  # a subclass adding no state: only forward differs
            turned += 1
    return turned
