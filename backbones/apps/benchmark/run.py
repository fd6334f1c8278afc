"""One benchmark run: every workload's variants timed, then the machine's and the extra figures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from backbones.apps.benchmark.config import BASELINE, BenchmarkConfig, Measurement, image_side
from backbones.apps.benchmark.machine import conv_ceiling, environment
from backbones.apps.benchmark.probes import compile_times, import_times, load_times, peak_memory
from backbones.apps.benchmark.sizes import model_macs, model_sizes
from backbones.apps.benchmark.timing import time_interleaved
from backbones.apps.benchmark.variants import build_variants

__all__ = ["run_benchmarks"]

# The variants whose peak memory is measured (the int8 ones only when the run times int8).
_MEMORY_VARIANTS = (
    BASELINE,
    "torchvision channels_last",
    "ours eager fp32",
    "ours optimized fp32",
    "ours optimized bf16",
)
_MEMORY_INT8_VARIANTS = ("ours int8", "torchvision quantized int8")


def _only(config: BenchmarkConfig) -> list[str] | None:
    """The variants a run times: the baseline (every ratio's denominator) and those asked for."""
    return None if config.variants is None else [BASELINE, *config.variants]


def run_benchmarks(config: BenchmarkConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every measurement ``config`` asks for.

    Args:
        config: What to measure.
        log: Where progress and each variant's median are written.

    Returns:
        The results :func:`~backbones.apps.benchmark.report.write_report` writes: ``measurements``,
        ``config``, ``environment``, ``conv_gflops``, ``macs``, the int8 model sizes when int8 was
        timed, and with ``config.extras`` the memory, load, import and compile figures.
    """
    torch.set_num_threads(config.threads)
    torch.manual_seed(0)
    measurements: list[Measurement] = []
    results: dict[str, Any] = {"measurements": measurements, "config": config}

    def run_workload(arch: str, workload: str, x: torch.Tensor, with_compile: bool) -> None:
        log(workload)
        only, size = _only(config), (x.shape[-2], x.shape[-1])
        variants = build_variants(
            arch,
            with_compile=with_compile,
            only=only,
            dtypes=config.dtypes,
            fpn_size=size,
            backend=config.backend,
            sample=x,
        )
        measurements.extend(time_interleaved(workload, variants, x, config, log))
        if "int8" in config.dtypes and "model_mb" not in results:
            # The first workload's models, as timed: the sizes sit beside its timings.
            results.update(model_mb_arch=arch, model_mb=model_sizes(variants))
        if with_compile:
            # torch.compile keeps every compiled network alive (as globals of its generated code)
            # until reset; free them before the next models are built, or a full run's memory
            # grows with every compiled workload.
            torch._dynamo.reset()

    for arch in config.models:
        side = image_side(arch)
        for batch in config.batches:
            x = torch.randn(batch, 3, side, side)
            run_workload(arch, f"{arch} batch {batch} {side}x{side}", x, batch in config.compile_batches)
    for height, width in config.fpn_sizes:
        x = torch.randn(1, 3, height, width)
        first = (height, width) == tuple(config.fpn_sizes[0])
        run_workload("resnet50_fpn", f"resnet50_fpn batch 1 {height}x{width}", x, first)
    results["environment"] = environment(config.threads)
    log("3x3 convolution ceiling and multiply-adds")
    results["conv_gflops"] = conv_ceiling(config.threads)
    results["macs"] = {arch: model_macs(arch, (image_side(arch), image_side(arch))) for arch in config.models}
    results["macs"].update({f"resnet50_fpn {h}x{w}": model_macs("resnet50_fpn", (h, w)) for h, w in config.fpn_sizes})
    if config.extras:
        log("memory")
        names = [*_MEMORY_VARIANTS, *(_MEMORY_INT8_VARIANTS if "int8" in config.dtypes else ())]
        # torchvision quantizes no FPN.
        fpn_names = [name for name in names if name != "torchvision quantized int8"]
        results["memory_mib"] = {
            "resnet50 batch 8 224x224": peak_memory("resnet50", 8, (224, 224), names, config.threads),
            "resnet50_fpn batch 1 800x1344": peak_memory("resnet50_fpn", 1, (800, 1344), fpn_names, config.threads),
        }
        log("load, import and compile times")
        results.update(
            load_seconds=load_times(), import_seconds=import_times(), compile_seconds=compile_times(config.threads)
        )
    return results
