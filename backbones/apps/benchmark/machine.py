"""The machine the figures come from: what it is, and the convolution rate it tops out at."""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import re
import time
from pathlib import Path

import torch
import torch.nn as nn

from backbones.apps.benchmark.timing import median_seconds
from backbones.runtime.fusion import mkldnn_fusion_available

__all__ = ["conv_ceiling", "environment"]

# The CPU features that decide which kernels the optimized paths get.
_REPORTED_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")
_REPORTED_PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "safetensors",
    "huggingface_hub",
    "openvino",
    "nncf",
    "onnxruntime",
)


def environment(threads: int) -> dict[str, str]:
    """The machine and software the numbers come from.

    Args:
        threads: The intra-op threads the run used.

    Returns:
        ``{what: value}``: CPU, cores, threads, CPU flags, Python and package versions, date.
    """
    import importlib.metadata as metadata

    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    with contextlib.suppress(Exception):  # /proc/cpuinfo is Linux's; elsewhere the platform's name stays
        text = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.*)", text).group(1)  # type: ignore[union-attr]
        found = re.search(r"flags\s*:\s*(.*)", text).group(1).split()  # type: ignore[union-attr]
        flags = [f for f in _REPORTED_CPU_FLAGS if f in found]
    versions = {}
    for package in _REPORTED_PACKAGES:
        with contextlib.suppress(Exception):
            versions[package] = metadata.version(package)
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "threads": str(threads),
        "cpu flags": " ".join(flags) or "none of avx512/amx",
        "python": platform.python_version(),
        **versions,
        "date": time.strftime("%Y-%m-%d"),
    }


def conv_ceiling(threads: int, repeats: int = 7) -> dict[str, float]:
    """GFLOP/s of one 3x3 convolution, 256 -> 256 channels on [8, 256, 56, 56] channels-last, per dtype.

    The rate the optimized paths work under on this machine (oneDNN fp32/bf16, the x86 int8
    engine). bf16 is left out on CPUs where oneDNN has no bf16 kernels: our bf16 path runs on the
    fp32 kernels there, and PyTorch's emulated bf16 convolution is no ceiling of anything.

    Args:
        threads: Intra-op threads.
        repeats: Timed calls per dtype (the median counts).

    Returns:
        GFLOP/s by dtype name.
    """
    import torch.ao.nn.quantized as nnq

    from backbones.runtime.quantize import select_x86_engine

    torch.set_num_threads(threads)
    x = torch.randn(8, 256, 56, 56).contiguous(memory_format=torch.channels_last)
    conv = nn.Conv2d(256, 256, 3, padding=1, bias=False).eval()
    select_x86_engine()
    int8 = nnq.Conv2d(256, 256, 3, padding=1)
    int8.set_weight_bias(
        torch.quantize_per_channel(
            conv.weight.detach(), torch.full((256,), 0.01), torch.zeros(256, dtype=torch.long), 0, torch.qint8
        ),
        None,
    )
    int8.scale, int8.zero_point = 0.05, 0
    runs = {
        "fp32": (conv, x),
        "bf16": (copy.deepcopy(conv).bfloat16(), x.bfloat16()),
        "int8": (int8, torch.quantize_per_tensor(x, 0.05, 128, torch.quint8)),
    }
    if not mkldnn_fusion_available(torch.bfloat16):
        del runs["bf16"]
    flops = 2 * 8 * 256 * 256 * 9 * 56 * 56
    with torch.inference_mode():
        return {
            dtype: flops / median_seconds(lambda layer=layer, inputs=inputs: layer(inputs), repeats) / 1e9
            for dtype, (layer, inputs) in runs.items()
        }
