"""Graph rewrites behind the inference fast path (``backbones.optimize``), on torch.fx graphs.

* :func:`fold_batch_norm`: a convolution followed by BatchNorm (or FrozenBatchNorm) becomes one
  convolution with the normalisation folded into its weights and bias.
* :func:`fuse_conv_pointwise`: a convolution and the ReLU, residual addition, or addition then
  ReLU after it become one oneDNN call (``torch.ops.mkldnn._convolution_pointwise``, the kernel
  torch.compile's CPU backend emits) on weights packed once in oneDNN's blocked layout. The
  intermediate map is never written to memory: on this kind of CPU the residual additions and
  ReLUs alone cost more than a tenth of a ResNet-50's time in bfloat16.
"""

from __future__ import annotations

import copy
import operator
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from backbones.core.layers import FrozenBatchNorm2d

__all__ = [
    "FusedConv2d",
    "InferenceTracer",
    "fold_batch_norm",
    "folded_copy",
    "fuse_conv_pointwise",
    "mkldnn_fusion_available",
]

_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


class InferenceTracer(torch.fx.Tracer):
    """Traces through everything but torch.nn layers and our own leaf layers (frozen BatchNorm,
    input re-normalisation): those are what the rewrites recognise."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        from backbones.models.inception import InputRenormalize

        return isinstance(m, (FrozenBatchNorm2d, InputRenormalize)) or super().is_leaf_module(m, module_qualified_name)


def _module(gm: torch.fx.GraphModule, node: torch.fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None  # type: ignore[arg-type]


def _only_user(node: torch.fx.Node) -> torch.fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _folded_conv(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    scale = norm.weight.detach() * torch.rsqrt(norm.running_var.detach() + norm.eps)
    shift = norm.bias.detach() - norm.running_mean.detach() * scale
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(conv.weight.detach() * scale.reshape(-1, 1, 1, 1))
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(shift)
        fused.bias.copy_(bias * scale + shift)
    return fused


def fold_batch_norm(gm: torch.fx.GraphModule) -> int:
    """Fold every BatchNorm that only follows a convolution into it; returns how many were folded.

    Only valid in eval mode (the running statistics are what is folded).
    """
    folded = 0
    for node in list(gm.graph.nodes):
        conv = _module(gm, node)
        norm_node = _only_user(node)
        if not isinstance(conv, nn.Conv2d) or norm_node is None:
            continue
        norm = _module(gm, norm_node)
        if not isinstance(norm, _NORMS) or (isinstance(norm, nn.BatchNorm2d) and not norm.track_running_stats):
            continue
        if isinstance(norm, nn.BatchNorm2d) and not norm.affine:
            continue
        _set_submodule(gm, node.target, _folded_conv(conv, norm))  # type: ignore[arg-type]
        norm_node.replace_all_uses_with(node)
        gm.graph.erase_node(norm_node)
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return folded


def folded_copy(model: nn.Module, class_name: str | None = None) -> tuple[torch.fx.GraphModule, int]:
    """An eval-mode copy of ``model`` as a traced graph with its BatchNorms folded (``model`` is untouched).

    Returns:
        The graph module (named ``class_name``, by default the model's class name) and how many
        BatchNorm layers were folded.
    """
    source = copy.deepcopy(model).eval()
    graph = InferenceTracer().trace(source)
    traced = torch.fx.GraphModule(source, graph, class_name=class_name or type(model).__name__)
    return traced, fold_batch_norm(traced)


def _set_submodule(gm: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def mkldnn_fusion_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this PyTorch build and this CPU run oneDNN's fused convolution kernels in ``dtype``.

    oneDNN's bfloat16 kernels need AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT; on a CPU without them
    (an AVX2-only Zen 3, say) bfloat16 runs on PyTorch's own kernels, unfused.
    """
    available = (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
        and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")
    )
    if available and dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return available


class FusedConv2d(nn.Module):
    """A convolution with its ReLU and/or residual addition fused, on oneDNN-packed weights.

    ``forward(x)`` computes ``post(conv(x))``; ``forward(x, other)`` computes
    ``post(conv(x) + other)``, where ``post`` is ReLU or nothing.

    oneDNN picks the weights' blocked layout for an input shape, and a layout packed for another
    shape is reordered on every call (a ResNet-50 at batch 1 on weights packed for batch 8 runs
    slower than unfused eager). So weights are packed per input shape, the last
    ``PACKED_SHAPES`` kept; only packed copies are held (a new one is packed from an old one).
    """

    PACKED_SHAPES = 3

    def __init__(self, conv: nn.Conv2d, relu: bool, residual: bool) -> None:
        super().__init__()
        self.padding, self.stride = list(conv.padding), list(conv.stride)  # type: ignore[arg-type]
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self._dense: Tensor | None = conv.weight.detach().contiguous()
        self._packed: OrderedDict[tuple[int, ...], Tensor] = OrderedDict()
        self.bias = None if conv.bias is None else conv.bias.detach().clone()
        self.unary = "relu" if relu else "none"
        self.residual = residual
        self.description = f"{conv.in_channels}, {conv.out_channels}, kernel_size={tuple(conv.kernel_size)}"

    def packed_weight(self, shape: torch.Size) -> Tensor:
        """The weights packed for inputs of ``shape`` (packed on first use)."""
        key = tuple(shape)
        weight = self._packed.get(key)
        if weight is not None:
            self._packed.move_to_end(key)
            return weight
        dense = self._dense if self._dense is not None else next(iter(self._packed.values())).to_dense()
        weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
            dense.to_mkldnn(), self.padding, self.stride, self.dilation, self.groups, list(key)
        )
        self._packed[key] = weight
        self._dense = None  # from now on the packed copies are the only ones
        while len(self._packed) > self.PACKED_SHAPES:
            self._packed.popitem(last=False)
        return weight

    def forward(self, x: Tensor, other: Tensor | None = None) -> Tensor:
        weight = self.packed_weight(x.shape)
        args = (self.padding, self.stride, self.dilation, self.groups)
        if other is None:
            return torch.ops.mkldnn._convolution_pointwise(x, weight, self.bias, *args, self.unary, [], "")
        unary = None if self.unary == "none" else self.unary
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, weight, self.bias, *args, "add", None, unary, [], ""
        )

    def extra_repr(self) -> str:
        post = ("+ residual " if self.residual else "") + ("-> relu" if self.unary == "relu" else "")
        return f"{self.description} {post}".strip()


_RELU_FUNCTIONS: set[Callable] = {torch.relu, torch.relu_, F.relu}
_ADD_FUNCTIONS: set[Callable] = {operator.add, operator.iadd, torch.add}


def _is_relu(gm: torch.fx.GraphModule, node: torch.fx.Node | None) -> bool:
    if node is None:
        return False
    if node.op == "call_module":
        return isinstance(_module(gm, node), nn.ReLU)
    if node.op == "call_method":
        return node.target in {"relu", "relu_"}
    return node.op == "call_function" and node.target in _RELU_FUNCTIONS


def _residual_operand(node: torch.fx.Node | None, conv: torch.fx.Node) -> torch.fx.Node | None:
    """If ``node`` is ``conv + other`` of two tensors (no scaling), return ``other``."""
    if node is None or len(node.args) != 2 or node.kwargs:
        return None
    if not (node.op == "call_function" and node.target in _ADD_FUNCTIONS):
        return None
    left, right = node.args
    other = right if left is conv else left if right is conv else None
    return other if isinstance(other, torch.fx.Node) and other is not conv else None


def fuse_conv_pointwise(gm: torch.fx.GraphModule, example: Tensor | None = None) -> int:
    """Replace convolutions (and a following ReLU / addition / addition + ReLU) by :class:`FusedConv2d`.

    Args:
        gm: The traced model, BatchNorm already folded, in the dtype it will run in.
        example: An input of the shape it will usually see: one run packs the weights for it.

    Returns:
        How many convolutions were replaced.
    """
    fused = 0
    for node in list(gm.graph.nodes):
        conv = _module(gm, node)
        if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros":
            continue
        user = _only_user(node)
        other = _residual_operand(user, node)
        if other is not None:
            after = _only_user(user)  # type: ignore[arg-type]
            relu = _is_relu(gm, after)
            last, args = (after if relu else user), (node.args[0], other)
        else:
            relu = _is_relu(gm, user)
            last, args = (user if relu else node), (node.args[0],)
        name = f"{str(node.target).replace('.', '_')}_fused"
        gm.add_module(name, FusedConv2d(conv, relu, other is not None))
        with gm.graph.inserting_after(last):  # type: ignore[arg-type]
            replacement = gm.graph.call_module(name, args)
        last.replace_all_uses_with(replacement)  # type: ignore[union-attr]
        fused += 1
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    if example is not None:
        with torch.inference_mode():
            gm(example)
    return fused
