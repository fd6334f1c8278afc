"""OpenVINO: converting a model, quantizing it with NNCF, compiling it for the CPU, reading IR files.

``optimize(model, backend="openvino")`` converts the model with ``openvino.convert_model`` (BatchNorm
folded first, as the torch path does), quantizes it for int8 with NNCF's post-training quantization
on the same calibration batches the torch int8 path takes, and compiles it for the CPU: fp32 with
the ``f32`` inference-precision hint (else OpenVINO would compute in bf16 wherever the CPU has it),
bf16 with the ``bf16`` hint where the CPU reports bf16, threads following
``torch.get_num_threads()``. The batch is dynamic, and height and width with ``dynamic_size=True``.

OpenVINO and NNCF are the optional extra ``pip install backbones[openvino]``; they are imported
only here, inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from backbones.runtime.outputs import DTYPE_KEY, METADATA_KEY, EngineError, EngineModel, OutputStructure, first_line

__all__ = [
    "check_precision",
    "compile_for_cpu",
    "convert",
    "engine_model",
    "load_ir",
    "nncf_module",
    "openvino_module",
    "quantize_nncf",
    "structure_of",
]

INSTALL = "pip install backbones[openvino]"
# Inference-precision hints by our precision names; int8's float operations stay float32, as the
# torch int8 path's do.
_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
# Where the output structure lives in an IR file's rt_info.
_RT_INFO_PATH = METADATA_KEY.split(".")


def openvino_module() -> Any:
    """The ``openvino`` package.

    Raises:
        EngineError: It is not installed.
    """
    try:
        import openvino
    except ImportError:
        raise EngineError(f"backend='openvino' needs OpenVINO: {INSTALL}") from None
    return openvino


def convert(
    network: nn.Module, example: Tensor, dynamic_size: bool = False, dynamic_batch: bool = True
) -> tuple[Any, OutputStructure]:
    """``network`` (in eval mode) as an ``openvino.Model`` with named outputs, and its output structure.

    Args:
        network: The model to convert, in eval mode.
        example: An input it is traced with; its channels (and, unless ``dynamic_size``, its height
            and width) are fixed in the converted model, the batch never.
        dynamic_size: Let height and width vary.
        dynamic_batch: Let the batch vary (else it is the example's).
    """
    ov = openvino_module()
    with torch.no_grad():
        structure = OutputStructure.of(network(example), getattr(network, "min_input_size", 1))
    batch, channels, height, width = example.shape
    shape = [-1 if dynamic_batch else batch, channels, *([-1, -1] if dynamic_size else [height, width])]
    with warnings.catch_warnings():
        # The input checks are Python conditions the tracer warns it cannot record: it is right, and
        # the compiled model checks its inputs itself (EngineModel).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            ov_model = ov.convert_model(network, example_input=example, input=[ov.PartialShape(shape)])
        except Exception as error:  # the converter's own exceptions carry pages of its internals
            raise EngineError(f"backend='openvino' could not convert {type(network).__name__}: {first_line(error)}; "
                              "use backend='torch' or 'onnxruntime'") from None  # fmt: skip
    if len(ov_model.outputs) != len(structure.names):
        raise EngineError(f"backend='openvino' converted {len(ov_model.outputs)} outputs where the model has "
                          f"{len(structure.names)}; use backend='torch' or 'onnxruntime'")  # fmt: skip
    for output, name in zip(ov_model.outputs, structure.names, strict=True):
        output.get_tensor().set_names({name})
    ov_model.set_rt_info(structure.to_json(), _RT_INFO_PATH)
    return ov_model, structure


def nncf_module() -> Any:
    """The ``nncf`` package.

    Raises:
        EngineError: It is not installed.
    """
    try:
        import nncf
    except ImportError:
        raise EngineError(f"int8 with backend='openvino' needs NNCF: {INSTALL}") from None
    return nncf


def check_precision(dtype: str) -> None:
    """Refuse, before any conversion, a precision this CPU cannot run in OpenVINO (or int8 without NNCF).

    Raises:
        EngineError: OpenVINO (or, for int8, NNCF) is not installed, or bf16 on a CPU that OpenVINO
            says has no bf16.
    """
    ov = openvino_module()
    if dtype == "int8":
        nncf_module()
    if dtype == "bf16" and "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise EngineError(
            "backend='openvino' cannot run bf16 on this CPU: it has no bf16 instructions (OpenVINO's CPU "
            "capabilities lack BF16); use dtype='fp32' or 'int8', or backend='torch' for bf16"
        )


def quantize_nncf(ov_model: Any, batches: list[Tensor]) -> Any:
    """``ov_model`` quantized to int8 by NNCF's post-training quantization, ranges from ``batches``.

    Raises:
        EngineError: NNCF is not installed.
    """
    nncf = nncf_module()
    dataset = nncf.Dataset([batch.float().contiguous().numpy() for batch in batches])
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    # Its warnings are about its defaults, not the user's input; its progress bars go to stderr, so
    # that a command's output on stdout stays what it prints.
    nncf_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            quantized = nncf.quantize(ov_model, dataset, subset_size=len(batches))
    finally:
        nncf_log.setLevel(level)
    quantized.set_rt_info(ov_model.get_rt_info(_RT_INFO_PATH).astype(str), _RT_INFO_PATH)
    return quantized


def compile_for_cpu(ov_model: Any, dtype: str, threads: int | None = None) -> Any:
    """``ov_model`` compiled for the CPU at precision ``dtype`` (``"fp32"``, ``"bf16"`` or ``"int8"``).

    Raises:
        EngineError: bf16 on a CPU that OpenVINO says has no bf16.
    """
    check_precision(dtype)
    core = openvino_module().Core()
    config = {
        "INFERENCE_PRECISION_HINT": _PRECISION_HINTS[dtype],
        "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
        "PERFORMANCE_HINT": "LATENCY",  # one request at a time, every thread on it
    }
    return core.compile_model(ov_model, "CPU", config)


def engine_model(compiled: Any, structure: OutputStructure, dtype: str, source: nn.Module | None = None) -> EngineModel:
    """The :class:`~backbones.runtime.outputs.EngineModel` that runs ``compiled``."""
    shape = compiled.inputs[0].get_partial_shape()
    input_shape = [None if dim.is_dynamic else dim.get_length() for dim in shape][1:]
    request = compiled.create_infer_request()

    def run(images: Any) -> list[Any]:
        # share_outputs=False: copies, so the next call does not overwrite what this one returned.
        return list(request.infer({0: images}, share_outputs=False).to_tuple())

    return EngineModel(run, structure, "openvino", dtype, input_shape, source)


def structure_of(ov_model: Any) -> OutputStructure:
    """The output structure an IR file records, or (a file from elsewhere) what its output names imply."""
    if ov_model.has_rt_info(_RT_INFO_PATH):
        return OutputStructure.from_json(ov_model.get_rt_info(_RT_INFO_PATH).astype(str))
    return OutputStructure.from_names([output.get_any_name() for output in ov_model.outputs])


def load_ir(path: str | Path, threads: int | None = None) -> EngineModel:
    """Run an OpenVINO IR file (``.xml`` beside its ``.bin``) on the CPU, outputs in the model's structure."""
    ov_model = openvino_module().Core().read_model(str(path))
    recorded = ov_model.has_rt_info(DTYPE_KEY.split("."))
    dtype = ov_model.get_rt_info(DTYPE_KEY.split(".")).astype(str) if recorded else _precision_of(ov_model)
    return engine_model(compile_for_cpu(ov_model, dtype, threads), structure_of(ov_model), dtype)


def _precision_of(ov_model: Any) -> str:
    # NNCF's int8 graphs hold FakeQuantize operations; a float graph none.
    return "int8" if any(op.get_type_name() == "FakeQuantize" for op in ov_model.get_ops()) else "fp32"
