"""The inference fast path: ``backbones.optimize(model)``.

What it does, in order: a private copy in eval mode without gradients; the forward traced with
torch.fx; BatchNorm folded into the convolutions; weights in ``bfloat16`` if asked (faster on CPUs
with AVX-512 bf16 or AMX; on a CPU without bf16 instructions, bf16's numerics at fp32's speed, see
:mod:`backbones.runtime.bf16`); channels-last memory layout; convolutions fused
with their ReLU and residual addition into oneDNN kernels on pre-packed weights; and, with
``compile=True``, torch.compile with freezing instead of the last step (inductor then does its
own fusion and packing). Inputs are checked and converted, outputs come back in the input's dtype,
and everything runs under ``torch.inference_mode``.

``dtype="int8"`` quantizes instead (post-training static quantization with torch.ao.quantization
onto the x86 int8 kernels; see :mod:`backbones.runtime.quantize`): weights per-channel symmetric
int8, activation scales calibrated on the ``calibration`` batches; inputs and outputs stay float32.
``dtype="int8", compile=True`` takes torchao's pt2e flow and inductor instead (after a compile on
the first call; needs the optional torchao package; see :mod:`backbones.runtime.quantize_pt2e`;
benchmarks/RESULTS.md compares the two).

Accuracy (checked by the tests on every registered model): fp32 outputs within 1e-4 relative to
the eager model; bf16 outputs with cosine similarity >= 0.999 and top-1 agreement >= 99%.

Example:
    >>> fast = backbones.optimize(backbones.create_model("resnet50", pretrained=True), dtype="bf16")
    >>> logits = fast(images)          # float32 logits, computed in bfloat16
    >>> int8 = backbones.optimize(model, dtype="int8", calibration=backbones.calibration_batches(model, "digits"))
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils._pytree import tree_map

from backbones.core.inputs import check_image_batch
from backbones.core.vocabulary import dtype_name, engine_name
from backbones.runtime import engines
from backbones.runtime.bf16 import convolve_bf16_on_float32_kernels
from backbones.runtime.fusion import folded_copy, fuse_conv_pointwise, mkldnn_fusion_available
from backbones.runtime.outputs import EngineModel
from backbones.runtime.quantize import QuantizationReport, drop_traced_weight_checks, engine_selected, quantize_int8
from backbones.runtime.quantize_pt2e import quantize_int8_compiled

__all__ = ["OptimizedModel", "optimize"]

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)
# The torch dtype each name of the shared vocabulary computes in (int8: torch.qint8).
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.qint8}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """The dtype :func:`optimize` computes in for ``dtype``: ``torch.float32``, ``torch.bfloat16`` or
    ``torch.qint8`` (int8), read through :func:`backbones.core.vocabulary.dtype_name`.

    Raises:
        ValueError: Anything else.
    """
    return TORCH_DTYPES[dtype_name(dtype, what="optimize's dtype")]


class OptimizedModel(nn.Module):
    """An inference-only model made by :func:`optimize`: same inputs and outputs, faster.

    Attributes:
        dtype: The dtype the network computes in (``torch.qint8`` for int8).
        fused_convolutions: How many convolutions run as fused oneDNN kernels.
        bf16_on_float32_kernels: How many bf16 convolutions run on the float32 kernel, on a CPU
            without bf16 instructions (see :mod:`backbones.runtime.bf16`).
        folded_norms: How many BatchNorm layers were folded away.
        compiled: Whether torch.compile runs the network.
        int8_layers: How many convolutions and linear layers run in int8 (0 unless int8).
        float_layers: For int8, ``{operation: reason}`` for each operation left in float32.
        quantization: For int8, the full :class:`~backbones.runtime.quantize.QuantizationReport`.
        backend: ``"torch"`` (other backends return an :class:`~backbones.runtime.outputs.EngineModel`).
    """

    backend = "torch"

    def __init__(self, network: nn.Module, source: nn.Module, dtype: torch.dtype, compiled: bool) -> None:
        super().__init__()
        self.network = network
        self.dtype = dtype
        # int8 networks quantize their float32 input themselves.
        self.input_dtype = torch.float32 if dtype == torch.qint8 else dtype
        self.compiled = compiled
        self.fused_convolutions = 0
        self.bf16_on_float32_kernels = 0
        self.folded_norms = 0
        self.quantization: QuantizationReport | None = None
        self.in_chans = getattr(source, "in_chans", 3)
        self.min_input_size = getattr(source, "min_input_size", 1)
        for name in ("feature_info", "pretrained_cfg", "num_classes", "out_channels"):
            if hasattr(source, name):
                setattr(self, name, getattr(source, name))

    def forward(self, x: Tensor) -> Any:
        check_image_batch(x, self.in_chans, self.min_input_size)
        out_dtype = x.dtype
        # An eager int8 network's kernels run on the engine it was packed for.
        engine = self.quantization.engine if self.quantization is not None and not self.compiled else None
        with torch.inference_mode(), engine_selected(engine):
            x = x.to(dtype=self.input_dtype, memory_format=torch.channels_last)
            out = self.network(x)
        out = tree_map(lambda t: t.to(out_dtype) if isinstance(t, Tensor) and t.is_floating_point() else t, out)
        # The traced graph builds a plain dict where the model returns an OrderedDict (extractors, FPNs).
        return OrderedDict(out) if type(out) is dict else out

    def train(self, mode: bool = True) -> OptimizedModel:
        if mode:
            raise RuntimeError("an optimized model is for inference only; train the original model instead")
        return super().train(False)

    @property
    def int8_layers(self) -> int:
        return self.quantization.int8_layers if self.quantization else 0

    @property
    def float_layers(self) -> dict[str, str]:
        return dict(self.quantization.float_layers) if self.quantization else {}

    def extra_repr(self) -> str:
        if self.quantization is not None:
            return (
                f"dtype=int8, engine={self.quantization.engine}, int8_layers={self.int8_layers}, "
                f"float_layers={len(self.float_layers)}, calibration_batches={self.quantization.calibration_batches}"
            )
        on_float32_kernels = (
            f", bf16_on_float32_kernels={self.bf16_on_float32_kernels}" if self.bf16_on_float32_kernels else ""
        )
        return (
            f"dtype={self.dtype}, compiled={self.compiled}, folded_norms={self.folded_norms}, "
            f"fused_convolutions={self.fused_convolutions}{on_float32_kernels}"
        )


def optimize(
    model: nn.Module,
    dtype: torch.dtype | str = torch.float32,
    compile: bool = False,
    example_input: Tensor | None = None,
    calibration: Tensor | Iterable | None = None,
    backend: str = "torch",
    sample: Tensor | None = None,
    dynamic_size: bool = False,
) -> OptimizedModel | EngineModel:
    """Return an inference-ready copy of ``model`` (the original is left untouched).

    Works for every registered classification model, ``features_only`` extractor and FPN model.

    Args:
        model: The model to speed up.
        dtype: ``"fp32"`` or ``"bf16"`` (weights and activations; outputs are returned in the
            input's dtype), or ``"int8"`` (post-training static quantization; needs
            ``calibration``; float32 in and out). The long names and torch dtypes work too
            (``"bfloat16"``, ``torch.bfloat16``; see :mod:`backbones.core.vocabulary`).
        compile: Run the network with ``torch.compile`` and freezing (inductor's CPU backend).
            The first call compiles (for a large network, long enough to notice); later processes
            reuse inductor's on-disk cache. With int8, quantize through torchao's pt2e flow (torchao
            must be installed) rather than onto the eager int8 kernels.
        example_input: An input of the shape you will usually feed: the oneDNN weights are
            packed for it now rather than on the first call of that shape.
        calibration: For int8 only: batches of preprocessed images like the ones the model will
            see (one ``[N, C, H, W]`` tensor, a list of them, or a DataLoader of ``(images, labels)``);
            :func:`backbones.calibration_batches` makes them from a folder or the digits (32 images
            by default). Use 16 or more: with fewer, the activation ranges are coarse enough to
            cost deep networks measurable output SQNR (the README's int8 section has the figures).
            Any batch size may be used later.
        backend: Who runs it: ``"torch"`` (torch's own kernels, the default), ``"openvino"``
            (OpenVINO, int8 by NNCF; ``pip install backbones[openvino]``), ``"onnxruntime"`` (our
            ONNX export; fp32 and int8), or ``"auto"``: every installed backend that takes the
            model and ``dtype``, timed on ``sample``, the fastest kept (its ``backend`` and
            ``timings`` attributes and a log line say which and why). See
            :mod:`backbones.runtime.engines`.
        sample: For OpenVINO, onnxruntime and ``"auto"``: a batch like the ones you will feed,
            which the graph is traced with and ``auto`` times on (default: ``example_input``, else
            the first calibration batch, else two random images of the model's input size).
            Their height and width are then fixed, unless ``dynamic_size``; the batch is not.
        dynamic_size: For OpenVINO and onnxruntime: let height and width vary too.

    Returns:
        An :class:`OptimizedModel` for the torch backend, else an
        :class:`~backbones.runtime.outputs.EngineModel` (outputs as torch tensors in the model's own
        structure, ``backend`` naming the engine).

    Raises:
        ValueError: An unsupported dtype, int8 without calibration, or a model that is already
            optimized.
        RuntimeError: int8 with ``compile=True`` and torchao is not installed.
        EngineError: ``backend`` is not installed or cannot take this model or dtype on this CPU.
    """
    dtype = resolve_dtype(dtype)
    backend = engine_name(backend)
    if isinstance(model, (OptimizedModel, EngineModel)):
        raise ValueError(
            f"this model is already optimized ({model.extra_repr()}); optimize the original float model instead"
        )
    if backend != "torch":
        return _optimize_on(backend, model, dtype, compile, example_input, calibration, sample, dynamic_size)
    if dtype == torch.qint8:
        return _optimize_int8(model, compile, example_input, calibration)
    if calibration is not None:
        raise ValueError(f"calibration is only used with dtype='int8', not {dtype}")
    network, folded = folded_copy(model, class_name=f"Optimized{type(model).__name__}")
    network = drop_traced_weight_checks(network)
    network = network.requires_grad_(False).to(dtype=dtype, memory_format=torch.channels_last)
    example = None
    if example_input is not None:
        example = example_input.to(dtype=dtype, memory_format=torch.channels_last)
    fused = on_float32_kernels = 0
    on_cpu = next(iter([*network.parameters(), torch.empty(0)])).device.type == "cpu"
    if compile:
        network = torch.compile(network, options={"freezing": True})
    elif mkldnn_fusion_available(dtype) and on_cpu:
        fused = fuse_conv_pointwise(network, example)
    elif dtype == torch.bfloat16 and on_cpu:
        on_float32_kernels = convolve_bf16_on_float32_kernels(network)
    result = OptimizedModel(network, model, dtype, compiled=compile)
    result.folded_norms, result.fused_convolutions = folded, fused
    result.bf16_on_float32_kernels = on_float32_kernels
    return result.eval()


def _optimize_on(
    backend: str,
    model: nn.Module,
    dtype: torch.dtype,
    compile: bool,
    example_input: Tensor | None,
    calibration: Tensor | Iterable | None,
    sample: Tensor | None,
    dynamic_size: bool,
) -> nn.Module:
    """OpenVINO, onnxruntime or the fastest of all (``auto``); the torch path as ``auto`` times it."""
    name = dtype_name(dtype)
    if compile and backend != "auto":
        raise ValueError(f"compile=True is for backend='torch'; backend={backend!r} compiles the graph itself")
    if calibration is not None and name != "int8":
        raise ValueError(f"calibration is only used with dtype='int8', not {dtype}")
    batches = engines.calibration_for(model, calibration) if name == "int8" else None
    given = sample if sample is not None else example_input
    example = given if given is not None else batches[0] if batches else engines.default_example(model)
    example = engines.check_sample(model, example)

    def torch_path(model: nn.Module, name: str, batches: list[Tensor] | None) -> OptimizedModel:
        return optimize(model, name, compile=compile, example_input=example_input, calibration=batches)

    if backend == "auto":
        return engines.choose_fastest(model, name, batches, example, dynamic_size, torch_path)
    return engines.build_on_backend(backend, model, name, batches, example, dynamic_size, torch_path)


def _optimize_int8(
    model: nn.Module, compile: bool, example_input: Tensor | None, calibration: Tensor | Iterable | None
) -> OptimizedModel:
    if compile:
        network, report = quantize_int8_compiled(model, calibration)
    else:
        network, report = quantize_int8(model, calibration)
    result = OptimizedModel(network, model, torch.qint8, compiled=compile).eval()
    result.quantization = report
    if example_input is not None:
        result(example_input)  # the first call allocates the kernels' buffers
    return result
