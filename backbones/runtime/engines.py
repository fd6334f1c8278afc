"""The backends behind ``optimize(backend=...)``: torch, OpenVINO, onnxruntime, and ``auto`` among them.

``backend="torch"`` is :mod:`backbones.runtime.optimize`'s own path. ``"openvino"`` and
``"onnxruntime"`` build an :class:`~backbones.runtime.outputs.EngineModel` (see
:mod:`backbones.runtime.openvino_engine`, :mod:`backbones.runtime.onnxruntime_engine`). ``"auto"``
builds every backend that takes the model and precision, times each on a sample batch (a few
warm-up calls, then the median of a few timed ones) and keeps the fastest: its ``backend``
attribute says which, ``timings`` holds every backend's seconds per call or the reason it was not
used, and a log line (logger ``backbones.runtime.engines``, INFO) says the same. A backend that is
missing or fails on the model is recorded and skipped, never the end of ``auto``.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from backbones.core.inputs import check_image_batch
from backbones.core.vocabulary import BACKENDS
from backbones.runtime.export import export
from backbones.runtime.fusion import folded_copy
from backbones.runtime.onnxruntime_engine import check_dtype, load_onnx, onnxruntime_module
from backbones.runtime.openvino_engine import check_precision, compile_for_cpu, convert, engine_model, quantize_nncf
from backbones.runtime.outputs import EngineModel, first_line
from backbones.runtime.quantize import calibration_tensors

__all__ = ["BACKENDS", "build_on_backend", "choose_fastest", "default_example"]

logger = logging.getLogger(__name__)

# Calls before timing (first-call allocations, kernel selection), then calls whose median is kept.
WARMUP_CALLS = 2
TIMED_CALLS = 5

# The torch path, as optimize() passes it: (model, dtype name, calibration batches) -> module.
TorchPath = Callable[[nn.Module, str, "list[Tensor] | None"], nn.Module]


def default_example(model: nn.Module, batch: int = 2) -> Tensor:
    """A random batch of ``model``'s input size (its ``pretrained_cfg``), the sample when none is given."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    channels, height, width = cfg.get("input_size", (getattr(model, "in_chans", 3), 224, 224))
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(0))


def build_on_backend(
    backend: str,
    model: nn.Module,
    dtype: str,
    batches: list[Tensor] | None,
    example: Tensor,
    dynamic_size: bool,
    torch_path: TorchPath,
) -> nn.Module:
    """``model`` ready to run on ``backend`` (``"torch"``, ``"openvino"`` or ``"onnxruntime"``).

    Args:
        backend: One of :data:`BACKENDS`.
        model: The float model.
        dtype: ``"fp32"``, ``"bf16"`` or ``"int8"``.
        batches: The calibration batches (int8 only).
        example: The input the graph is traced with (its height and width are fixed unless ``dynamic_size``).
        dynamic_size: Let height and width vary (the batch always may).
        torch_path: How the torch backend builds it.

    Raises:
        EngineError: The backend is not installed, or cannot take this model or precision.
    """
    if backend == "torch":
        return torch_path(model, dtype, batches)
    if backend == "openvino":
        return _on_openvino(model, dtype, batches, example, dynamic_size)
    return _on_onnxruntime(model, dtype, batches, example, dynamic_size)


def _on_openvino(
    model: nn.Module, dtype: str, batches: list[Tensor] | None, example: Tensor, dynamic_size: bool
) -> EngineModel:
    check_precision(dtype)  # before the conversion's seconds
    network, _ = folded_copy(model)  # an eval-mode copy; OpenVINO would fold the norms itself, torch's tracer not
    network.min_input_size = getattr(model, "min_input_size", 1)
    ov_model, structure = convert(network, example, dynamic_size)
    if dtype == "int8":
        ov_model = quantize_nncf(ov_model, batches or [])
    return engine_model(compile_for_cpu(ov_model, dtype), structure, dtype, source=model)


def _on_onnxruntime(
    model: nn.Module, dtype: str, batches: list[Tensor] | None, example: Tensor, dynamic_size: bool
) -> EngineModel:
    onnxruntime_module()  # says it is missing before any export work
    check_dtype(dtype)
    with tempfile.TemporaryDirectory(prefix="backbones-onnxruntime-") as work:
        path = Path(work) / "model.onnx"
        if dtype == "int8":
            export(model, path, "onnx", dynamic_size=dynamic_size, dtype="int8", calibration=batches)
        else:
            export(model, path, "onnx", dynamic_size=dynamic_size, example_input=example, check=False)
        # The session holds the graph in memory: the file may go.
        return load_onnx(path, dtype=dtype, source=model)


def seconds_per_call(candidate: nn.Module, sample: Tensor) -> float:
    """The median seconds of one call of ``candidate`` on ``sample``, after a warm-up."""
    for _ in range(WARMUP_CALLS):
        candidate(sample)
    times = []
    for _ in range(TIMED_CALLS):
        start = time.perf_counter()
        candidate(sample)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def choose_fastest(
    model: nn.Module,
    dtype: str,
    batches: list[Tensor] | None,
    sample: Tensor,
    dynamic_size: bool,
    torch_path: TorchPath,
    backends: Iterable[str] = BACKENDS,
) -> nn.Module:
    """Build ``model`` on every backend that takes it, time each on ``sample``, return the fastest.

    The result's ``backend`` names the one kept and its ``timings`` is ``{backend: seconds per call
    on sample, or the reason it was not used}``, in the order tried.

    Raises:
        RuntimeError: No backend at all could run the model (each one's reason is in the message).
    """
    timings: dict[str, float | str] = {}
    best: nn.Module | None = None
    for backend in backends:
        try:
            candidate = build_on_backend(backend, model, dtype, batches, sample, dynamic_size, torch_path)
            timings[backend] = seconds_per_call(candidate, sample)
        except Exception as error:  # whatever one backend raises, auto goes on with the others
            timings[backend] = first_line(error)
            continue
        if best is None or timings[backend] < timings[best.backend]:
            best = candidate  # the slower one is dropped now, not kept until the end
    if best is None:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in timings.items())
        raise RuntimeError(f"backend='auto' found no backend that runs this model at {dtype} ({reasons})")
    best.timings = timings
    logger.info("backend='auto' chose %s for %s at %s: %s", best.backend, type(model).__name__, dtype,
                describe_timings(timings, sample))  # fmt: skip
    return best


def describe_timings(timings: dict[str, float | str], sample: Tensor) -> str:
    """``openvino 4.1 ms, torch 5.0 ms, onnxruntime: not installed ...`` for a batch of ``sample``'s size."""
    parts = [
        f"{name} {value * 1e3:.1f} ms" if isinstance(value, float) else f"{name}: {value}"
        for name, value in timings.items()
    ]
    return f"{', '.join(parts)} per batch of {len(sample)}"


def check_sample(model: nn.Module, sample: Tensor) -> Tensor:
    """``sample`` checked as the model checks its input, so a bad one fails once rather than per backend."""
    return check_image_batch(sample, getattr(model, "in_chans", 3), getattr(model, "min_input_size", 1))


def calibration_for(model: nn.Module, calibration: Any) -> list[Tensor]:
    """The calibration batches as the torch int8 path reads them (the same checks, the same messages)."""
    return calibration_tensors(calibration, getattr(model, "in_chans", 3), getattr(model, "min_input_size", 1))
