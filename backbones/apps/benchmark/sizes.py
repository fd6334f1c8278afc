"""How much work and how many bytes: multiply-adds per image, and the weights' size as saved."""

from __future__ import annotations

import io

import torch
import torch.nn as nn

from backbones.apps.benchmark.config import BASELINE
from backbones.apps.benchmark.variants import AUX_HEAD_ARCHITECTURES, Runner

__all__ = ["model_macs", "model_sizes"]

# The variants whose saved weights are compared: the fp32 state dicts (torchvision's baseline, always
# timed, holds the same tensors as ours), our int8 one and torchvision's quantized one.
_SAVED_VARIANTS = (BASELINE, "ours eager fp32", "ours int8", "torchvision quantized int8")


def model_macs(arch: str, size: tuple[int, int]) -> int:
    """Multiply-adds of one image through ``arch`` at ``size`` (torch's flop counter, via summary).

    Args:
        arch: An architecture (classifiers without their auxiliary heads).
        size: Input (height, width).

    Returns:
        Multiply-adds.
    """
    from backbones.apps.analysis import summary
    from backbones.models.factory import create_model

    options = {"aux_logits": False} if arch in AUX_HEAD_ARCHITECTURES else {}
    return summary(create_model(arch, **options).eval(), (1, 3, *size)).total_macs


def _saved_mb(module: nn.Module) -> float:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell() / 1e6


def model_sizes(variants: dict[str, Runner]) -> dict[str, float]:
    """MB of the weights as saved, for those of ``variants`` that have them.

    The state dicts (torch.save) of the fp32 models, our int8 one and torchvision's quantized one,
    and onnxruntime's int8 ONNX file.

    Args:
        variants: One workload's variants, as built by :func:`~backbones.apps.benchmark.variants.build_variants`.

    Returns:
        MB by form.
    """
    sizes = {}
    for name in _SAVED_VARIANTS:
        if name in variants:
            model = variants[name]
            # An OptimizedModel saves the network it runs, not the float source it keeps.
            sizes[name] = _saved_mb(model.network if hasattr(model, "network") else model)
    if "onnxruntime int8" in variants:
        sizes["onnxruntime int8 (.onnx file)"] = variants["onnxruntime int8"].file_mb
    return sizes
