"""onnxruntime: running an ONNX file (ours, fp32 or int8 QDQ) on its CPU provider, outputs in the model's structure.

``optimize(model, backend="onnxruntime")`` exports the model through :func:`backbones.export` to a
temporary file (int8: the QDQ file of :mod:`backbones.runtime.onnx_int8`) and runs it here, with
``intra_op_num_threads`` following ``torch.get_num_threads()``. onnxruntime's CPU provider has no
bf16 convolution, so bf16 is refused with the backends that have one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from backbones.runtime.outputs import DTYPE_KEY, METADATA_KEY, EngineError, EngineModel, OutputStructure

__all__ = ["check_dtype", "load_onnx", "onnxruntime_module"]


def onnxruntime_module() -> Any:
    """The ``onnxruntime`` package.

    Raises:
        EngineError: It is not installed.
    """
    try:
        import onnxruntime
    except ImportError:
        raise EngineError("backend='onnxruntime' needs onnxruntime: pip install onnxruntime") from None
    return onnxruntime


def check_dtype(dtype: str) -> None:
    """Refuse a precision onnxruntime's CPU provider cannot compute in.

    Raises:
        EngineError: ``dtype`` is bf16.
    """
    if dtype == "bf16":
        raise EngineError(
            "backend='onnxruntime' cannot run bf16: its CPU provider has no bf16 convolution; "
            "use backend='openvino' or 'torch' for bf16, or dtype='fp32' or 'int8'"
        )


def load_onnx(
    path: str | Path, threads: int | None = None, dtype: str | None = None, source: nn.Module | None = None
) -> EngineModel:
    """Run the ONNX file ``path`` in onnxruntime's CPU provider, outputs in the model's structure.

    Args:
        path: An ONNX file (its structure is read from its metadata, else from its output names).
        threads: Intra-op threads; by default ``torch.get_num_threads()``.
        dtype: What the file computes in, for the result's ``dtype`` (default: what its metadata
            records, else ``"fp32"``).
        source: The model it was exported from, whose attributes (``feature_info``, ...) the result keeps.
    """
    onnxruntime = onnxruntime_module()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    # One call at a time: the intra-op threads are the parallelism; spinning inter-op threads would steal them.
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    names = [output.name for output in session.get_outputs()]
    structure = (
        OutputStructure.from_json(metadata[METADATA_KEY]) if METADATA_KEY in metadata
        else OutputStructure.from_names(names)
    )  # fmt: skip
    if list(structure.names) != names:
        raise EngineError(f"{path} has outputs {names}, not the {list(structure.names)} its metadata records")
    shape = session.get_inputs()[0].shape
    input_shape = [dim if isinstance(dim, int) else None for dim in shape][1:]
    input_name = session.get_inputs()[0].name

    def run(images: Any) -> list[Any]:
        return session.run(None, {input_name: images})

    return EngineModel(run, structure, "onnxruntime", dtype or metadata.get(DTYPE_KEY, "fp32"), input_shape, source)
