"""Shape arithmetic and the network summary: output sizes, padding, receptive fields, the layer table.

The seed's formula: a convolution or pooling of kernel k, stride s, padding p and dilation d maps
a size n to ``floor((n + 2p - d(k - 1) - 1) / s) + 1`` (``ceil`` for pools with ``ceil_mode``);
"same" padding at stride 1 is ``(k - 1) / 2``. A convolution from M to N channels has N x M x K x K
weights (plus N biases); a fully connected layer from M to N has N x M (plus N).

:func:`summary` runs the model once and returns a table (data and a terminal rendering) of each
layer's output shape, parameters (trainable and frozen), multiply-adds (torch's own flop counter),
cumulative stride and receptive field. :func:`receptive_field` gives those two per stage.

Example:
    >>> print(summary(backbones.create_model("resnet50"), (1, 3, 224, 224), depth=1))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from backbones.core.layers import same_padding

__all__ = [
    "LayerRow",
    "ModelSummary",
    "conv_output_size",
    "receptive_field",
    "same_padding",
    "summary",
]


def conv_output_size(
    size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1, ceil_mode: bool = False
) -> int:
    """Output length of a convolution or pooling along one spatial dimension (PyTorch's rule).

    ``floor((size + 2 * padding - dilation * (kernel_size - 1) - 1) / stride) + 1``; with
    ``ceil_mode`` the ceiling, except that the last window must start inside the input or its
    left padding.

    Example:
        >>> conv_output_size(224, kernel_size=7, stride=2, padding=3)
        112
        >>> conv_output_size(112, kernel_size=3, stride=2, ceil_mode=True)
        56
    """
    span = size + 2 * padding - dilation * (kernel_size - 1) - 1
    if span < 0:
        raise ValueError(
            f"a {kernel_size}x{kernel_size} window (dilation {dilation}) does not fit in {size} + 2*{padding}"
        )
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


# ----------------------------------------------------------------------------- receptive fields


@dataclass(frozen=True)
class _Geometry:
    """How far apart in the input two neighbouring pixels of a map are (``jump``), and how wide
    an input window one pixel sees (``rf``; ``None`` once a global pool has seen everything)."""

    rf: int | None
    jump: float


def _pair(value: Any) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


class _ReceptiveFieldMode(TorchFunctionMode):
    """Follows every tensor through the forward pass with its receptive field and stride (height axis)."""

    def __init__(self) -> None:
        super().__init__()
        self.geometry: dict[int, _Geometry] = {}
        self._alive: list[Tensor] = []  # keeps ids unique while the pass runs

    def track(self, tensor: Tensor, geometry: _Geometry) -> None:
        self.geometry[id(tensor)] = geometry
        self._alive.append(tensor)

    def lookup(self, tensor: Tensor) -> _Geometry | None:
        return self.geometry.get(id(tensor))

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [g for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor) and (g := self.lookup(t))]
        if not inputs:
            return out
        rf = None if any(g.rf is None for g in inputs) else max(g.rf for g in inputs)  # type: ignore[type-var]
        jump = max(g.jump for g in inputs)
        geometry = self._transform(func, args, kwargs, _Geometry(rf, jump), out)
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, Tensor):
                self.track(tensor, geometry)
        return out

    def _transform(self, func: Any, args: tuple, kwargs: dict, g: _Geometry, out: Any) -> _Geometry:
        window = self._window(func, args, kwargs)
        if window is not None:
            kernel, stride, dilation = window
            rf = None if g.rf is None else g.rf + int((kernel - 1) * dilation * g.jump)
            return _Geometry(rf, g.jump * stride)
        name = getattr(func, "__name__", "")
        if name in {"adaptive_avg_pool2d", "adaptive_max_pool2d"}:
            size, target = args[0].shape[-2], _pair(_arg(args, kwargs, 1, "output_size", 1))
            if target == 1:
                return _Geometry(None, g.jump * size)
            kernel, stride = math.ceil(size / target), size // target
            rf = None if g.rf is None else g.rf + int((kernel - 1) * g.jump)
            return _Geometry(rf, g.jump * max(stride, 1))
        if name in {"interpolate", "upsample_nearest2d"} and isinstance(out, Tensor):
            return _Geometry(g.rf, g.jump * args[0].shape[-2] / out.shape[-2])
        if name in {"linear", "flatten", "mean"} and isinstance(out, Tensor) and out.dim() < 4:
            return _Geometry(None, g.jump)
        return g

    def _window(self, func: Any, args: tuple, kwargs: dict) -> tuple[int, int, int] | None:
        name = getattr(func, "__name__", "")
        if name in {"conv2d", "_conv_forward"}:
            weight = _arg(args, kwargs, 1, "weight", None)
            stride = _pair(_arg(args, kwargs, 3, "stride", 1))
            dilation = _pair(_arg(args, kwargs, 5, "dilation", 1))
            return int(weight.shape[-2]), stride, dilation
        if name in {"max_pool2d", "avg_pool2d", "max_pool2d_with_indices", "_max_pool2d"}:
            kernel = _pair(_arg(args, kwargs, 1, "kernel_size", 1))
            stride = _arg(args, kwargs, 2, "stride", None)
            stride = kernel if stride in (None, [], ()) else _pair(stride)
            dilation = _pair(_arg(args, kwargs, 4, "dilation", 1)) if "max" in name else 1
            return kernel, stride, dilation
        return None


# ----------------------------------------------------------------------------- the summary


@dataclass
class LayerRow:
    """One row of the summary table.

    Attributes:
        name: Qualified module name (``layer1.0.conv1``).
        type: Module class name.
        depth: Nesting depth (0 = direct child of the model).
        output_shape: Shape of the output (for modules returning several tensors, the first
            one they compute rather than pass through).
        params: Parameters of this module and its children.
        trainable: Those with ``requires_grad``.
        macs: Multiply-accumulates of this module and its children (FLOPs / 2).
        stride: Input pixels per output pixel along the height, or ``None`` for non-spatial outputs.
        receptive_field: Input pixels (per side) one output pixel sees; ``None`` when it sees
            the whole image (after global pooling).
    """

    name: str
    type: str
    depth: int
    output_shape: tuple[int, ...]
    params: int
    trainable: int
    macs: int
    stride: float | None
    receptive_field: int | None

    @property
    def frozen(self) -> int:
        return self.params - self.trainable


@dataclass
class ModelSummary:
    """The result of :func:`summary`: rows as data, totals, and ``str()`` for terminals.

    ``total_params`` counts every parameter of the model; modules that hold parameters but did
    not run in eval mode on this input (GoogLeNet's and Inception's auxiliary classifiers, used
    in training only) are not rows: ``not_run`` maps each to its parameter count, and the table
    says so under the totals.
    """

    model_name: str
    input_size: tuple[int, ...]
    rows: list[LayerRow] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    total_macs: int = 0
    activation_bytes: int = 0
    param_bytes: int = 0
    not_run: dict[str, int] = field(default_factory=dict)

    @property
    def shown_params(self) -> int:
        """Parameters of the modules that ran (the rows); ``total_params`` also counts :attr:`not_run`."""
        return self.total_params - sum(self.not_run.values())

    @property
    def frozen_params(self) -> int:
        return self.total_params - self.trainable_params

    def as_dicts(self) -> list[dict[str, Any]]:
        """The rows as plain dictionaries (for JSON, pandas, ...)."""
        return [dict(vars(row), frozen=row.frozen) for row in self.rows]

    def __str__(self) -> str:
        header = ("Layer", "Type", "Output shape", "Params", "Frozen", "MACs", "Stride", "RF")
        body = [
            (
                "  " * row.depth + row.name.rsplit(".", 1)[-1] if row.depth else row.name,
                row.type,
                "x".join(str(d) for d in row.output_shape),
                f"{row.params:,}",
                f"{row.frozen:,}" if row.frozen else "",
                _si(row.macs),
                "" if row.stride is None else f"{row.stride:g}",
                "all" if row.receptive_field is None else str(row.receptive_field),
            )
            for row in self.rows
        ]
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        rule = "-" * (sum(widths) + 2 * (len(widths) - 1))

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )

        totals = [
            f"Input: {'x'.join(map(str, self.input_size))}",
            f"Parameters: {self.total_params:,} (trainable {self.trainable_params:,}, frozen {self.frozen_params:,})",
            *(
                [
                    "Not run in eval mode, so not in the rows: "
                    + ", ".join(f"{name} ({count:,})" for name, count in self.not_run.items())
                    + f"; the rows hold {self.shown_params:,}"
                ]
                if self.not_run
                else []
            ),
            f"Multiply-adds: {_si(self.total_macs)} ({self.total_macs:,})",
            f"Parameter memory: {self.param_bytes / 2**20:.1f} MiB; "
            f"forward activations: {self.activation_bytes / 2**20:.1f} MiB",
        ]
        return "\n".join([self.model_name, rule, line(header), rule, *map(line, body), rule, *totals])


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(int(value))


def _tensor_ids(values: Any) -> set[int]:
    return {id(item) for item in tree_flatten(values)[0] if isinstance(item, Tensor)}


def _representative_output(output: Any, input_ids: set[int]) -> Tensor | None:
    """The first tensor the module computed, not one it passed through (an FPN's extra block
    returns every level with its own appended); the first tensor when all are passed through."""
    tensors = [item for item in tree_flatten(output)[0] if isinstance(item, Tensor)]
    return next((t for t in tensors if id(t) not in input_ids), tensors[0] if tensors else None)


def _parameters_not_run(model: nn.Module, ran: set[str]) -> dict[str, int]:
    """Parameter counts of the outermost modules that never ran, e.g. ``{"aux1": ..., "aux2": ...}``."""
    counts: dict[str, int] = {}
    for name, parameter in model.named_parameters():
        owner = name.rpartition(".")[0]
        if owner in ran or not owner:
            continue
        parts = owner.split(".")
        # The outermost ancestor that did not run names the group (aux1, not aux1.fc2).
        top = next(".".join(parts[: i + 1]) for i in range(len(parts)) if ".".join(parts[: i + 1]) not in ran)
        counts[top] = counts.get(top, 0) + parameter.numel()
    return counts


def summary(
    model: nn.Module,
    input_size: Sequence[int] = (1, 3, 224, 224),
    depth: int = 2,
    device: str | torch.device | None = None,
) -> ModelSummary:
    """Run ``model`` once on zeros of ``input_size`` and tabulate its layers down to ``depth``.

    Args:
        model: Any module (it is run in eval mode, then its mode is restored).
        input_size: The input batch shape, e.g. ``(1, 3, 224, 224)``.
        depth: How deep to list nested modules (0: only the model's direct children).
        device: Where to run it; by default where the model's parameters are. A model built on
            the meta device (``with torch.device("meta"): ...``) is summarised without any
            arithmetic or weight memory.

    Returns:
        A :class:`ModelSummary`; ``print()`` it for the table.
    """
    input_size = tuple(int(d) for d in input_size)
    was_training = model.training
    model.eval()
    names = {module: name for name, module in model.named_modules() if name}
    outputs: dict[str, Any] = {}
    order: list[str] = []
    leaf_bytes = 0
    tracker = _ReceptiveFieldMode()

    input_ids: dict[nn.Module, set[int]] = {}

    def pre_hook(module: nn.Module, inputs: Any) -> None:
        # Rows follow the order in which modules start running: a block before its layers.
        if names[module] not in order:
            order.append(names[module])
        # Taken before the call: a module may append its outputs to a list it was given.
        input_ids[module] = _tensor_ids(inputs)

    def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal leaf_bytes
        name = names[module]
        tensor = _representative_output(output, input_ids.get(module, set()))
        outputs[name] = (
            tensor.shape if tensor is not None else (),
            tracker.lookup(tensor) if tensor is not None else None,
        )
        if not any(True for _ in module.children()):
            leaf_bytes += sum(t.numel() * t.element_size() for t in tree_flatten(output)[0] if isinstance(t, Tensor))

    listed = {m for m, name in names.items() if name.count(".") <= depth}
    leaves = {m for m in names if not any(True for _ in m.children())}
    handles = [m.register_forward_pre_hook(pre_hook) for m in listed]
    handles += [m.register_forward_hook(hook) for m in listed | leaves]
    if device is None:
        device = next(iter([*model.parameters(), torch.empty(0)])).device
    x = torch.zeros(input_size, device=device)
    try:
        with torch.no_grad(), FlopCounterMode(display=False, depth=None) as flops, tracker:
            tracker.track(x, _Geometry(1, 1.0))
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    root = type(model).__name__
    flop_counts = {key.removeprefix(f"{root}."): sum(v.values()) for key, v in flops.get_flop_counts().items()}
    result = ModelSummary(type(model).__name__, input_size)
    for name in order:
        module = model.get_submodule(name)
        shape, geometry = outputs[name]
        params = list(module.parameters())
        result.rows.append(
            LayerRow(
                name=name,
                type=type(module).__name__,
                depth=name.count("."),
                output_shape=tuple(shape),
                params=sum(p.numel() for p in params),
                trainable=sum(p.numel() for p in params if p.requires_grad),
                macs=flop_counts.get(name, 0) // 2,
                stride=None if geometry is None or len(shape) < 4 else geometry.jump,
                receptive_field=None if geometry is None or len(shape) < 4 else geometry.rf,
            )
        )
    all_params = list(model.parameters())
    result.total_params = sum(p.numel() for p in all_params)
    result.trainable_params = sum(p.numel() for p in all_params if p.requires_grad)
    result.not_run = _parameters_not_run(model, ran={names[m] for m in listed | leaves if names[m] in outputs})
    result.total_macs = sum(flops.get_flop_counts().get("Global", {}).values()) // 2
    result.activation_bytes = leaf_bytes
    result.param_bytes = sum(p.numel() * p.element_size() for p in all_params)
    return result


def receptive_field(
    model: nn.Module, input_size: Sequence[int] = (1, 3, 224, 224)
) -> dict[str, tuple[int | None, float]]:
    """Receptive field and cumulative stride of each stage in ``model.feature_info``.

    Returns:
        ``{stage name: (receptive field in input pixels, stride)}``; a receptive field of
        ``None`` means the whole image.

    Example:
        >>> receptive_field(backbones.create_model("resnet50"))["layer1"]
        (35, 4.0)
    """
    info = getattr(model, "feature_info", None)
    if not info:
        raise TypeError(f"{type(model).__name__} has no feature_info; receptive_field works per stage")
    table = summary(model, input_size, depth=max(f.module.count(".") for f in info))
    rows = {row.name: row for row in table.rows}
    return {f.name: (rows[f.module].receptive_field, rows[f.module].stride) for f in info}
