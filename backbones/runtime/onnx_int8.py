"""int8 ONNX files (QDQ format) through onnxruntime's own quantization tools, checked in onnxruntime.

``export(model, path, format="onnx", dtype="int8", calibration=batches)`` writes the float ONNX
graph first, then :func:`quantize_onnx` quantizes it the way onnxruntime recommends for CPUs:
QuantizeLinear/DequantizeLinear pairs around each operator, weights per-channel symmetric int8,
activations uint8 from the calibration batches' ranges, and 7-bit activations where the CPU has
no VNNI instruction (without it, the u8 x s8 products saturate their 16-bit sums).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from backbones.runtime.quantize import cpu_has_vnni

__all__ = ["quantize_onnx", "run_onnx"]


class _BatchReader:
    """onnxruntime's CalibrationDataReader protocol over a list of batches."""

    def __init__(self, input_name: str, batches: list[Tensor]) -> None:
        self._feeds = iter([{input_name: b.numpy()} for b in batches])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def quantize_onnx(float_path: str | Path, int8_path: str | Path, batches: list[Tensor], input_name: str) -> Path:
    """Quantize the float ONNX file ``float_path`` into a QDQ int8 file ``int8_path``.

    Args:
        float_path: A float32 ONNX model.
        int8_path: Where to write the int8 model.
        batches: Preprocessed calibration images, float32 ``[N, C, H, W]``.
        input_name: The model's input name.

    Returns:
        ``int8_path``.

    Raises:
        ImportError: onnxruntime is not installed.
    """
    try:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quant_pre_process,
            quantize_static,
        )
    except ImportError:
        raise ImportError(
            "int8 ONNX export needs onnxruntime: `pip install onnxruntime` (or `pip install backbones[test]`)"
        ) from None
    int8_path = Path(int8_path)
    prepared = Path(float_path).with_name(Path(float_path).stem + ".prepared.onnx")
    try:
        # Shape inference and graph clean-up first, as onnxruntime's quantization guide asks.
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(int8_path),
            _BatchReader(input_name, batches),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=not cpu_has_vnni(),
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        prepared.unlink(missing_ok=True)
    return int8_path


def run_onnx(path: str | Path, images: Tensor, threads: int | None = None) -> list[Tensor]:
    """Run an ONNX file in onnxruntime's CPU provider on ``images``; returns its outputs as tensors."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: images.float().numpy()}
    return [torch.from_numpy(out) for out in session.run(None, feed)]
