"""RESULTS.md: the machine, every ratio to the baseline, scaling, int8, memory and start-up figures.

The report states what was measured and how the variants compare; it judges nothing. Targets
(what a change set out to reach) live with the script that checks them, ``benchmarks/targets.py``,
whose tables come in through ``sections``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backbones.apps.benchmark.config import BASELINE, BenchmarkConfig, Measurement, ratio, workloads_of
from backbones.apps.benchmark.plot import plot_speedups
from backbones.apps.benchmark.variants import variant_dtype

__all__ = ["INT8_COMPARISONS", "write_report"]

# The int8 variants over their peers (variant, compared with), shown for every workload with our int8.
INT8_COMPARISONS = (
    ("ours int8", "torchvision quantized int8"),
    ("ours int8", "ours optimized bf16"),
    ("ours int8", "ours optimized fp32"),
    ("ours int8", "onnxruntime int8"),
    ("ours compiled int8", "torchvision quantized int8"),
    ("ours compiled int8", "ours int8"),
)
# The variants the scaling table follows across batch sizes.
_SCALING_VARIANTS = (BASELINE, "ours optimized fp32", "ours optimized bf16")
# The paths whose rate is set against the convolution ceiling of their dtype.
_CEILING_VARIANTS = ("ours optimized fp32", "ours optimized bf16", "ours int8", "ours compiled int8")


def write_report(
    results: dict[str, Any], markdown: Path, plot: Path | None = None, sections: Sequence[str] = ()
) -> None:
    """Write RESULTS.md (and a PNG plot when matplotlib is installed), each atomically.

    Args:
        results: What :func:`~backbones.apps.benchmark.run.run_benchmarks` returned.
        markdown: The report to write.
        plot: The PNG plot to write, or None for none.
        sections: Markdown lines placed right after the machine section (``benchmarks/bench.py``
            puts its judged targets there).
    """
    from backbones.core.files import atomic_write_text

    measurements: list[Measurement] = results["measurements"]
    lines = [
        "# Benchmark results",
        "",
        "Written by `benchmarks/bench.py` (`python -m backbones bench`). Every figure is the median of",
        "interleaved rounds in one process; ratios are to torchvision's eager fp32 model in the same run.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in results["environment"].items()],
        "",
        *sections,
        "## Speed",
        "",
        *_ratio_tables(measurements),
        *_scaling_table(measurements, results["config"]),
        *_int8_section(results),
    ]
    if "memory_mib" in results:
        lines += _extras(results)
    if plot is not None and plot_speedups(measurements, plot):
        lines += ["", f"![speed-ups over torchvision eager fp32]({plot.name})"]
    atomic_write_text(markdown, "\n".join(lines) + "\n")


def _ratio_tables(measurements: list[Measurement]) -> list[str]:
    """One table per workload: every variant's median, spread, throughput and ratio, slowest first."""
    lines: list[str] = []
    for workload in workloads_of(measurements):
        rows = [m for m in measurements if m.workload == workload]
        lines += [
            f"### {workload}",
            "",
            "| variant | median ms | min ms | max ms | images/s | x torchvision eager fp32 | note |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for m in sorted(rows, key=lambda m: m.median, reverse=True):
            lines.append(
                f"| {m.variant} | {m.median * 1e3:.1f} | {min(m.times) * 1e3:.1f} | {max(m.times) * 1e3:.1f} | "
                f"{m.images_per_second:.1f} | {ratio(measurements, workload, m.variant):.2f} | {m.note} |"
            )
        lines.append("")
    return lines


def _scaling_table(measurements: list[Measurement], config: BenchmarkConfig) -> list[str]:
    """Images per second of the baseline and our optimized paths at each batch size."""
    lines = [
        "## Scaling (images/s)",
        "",
        "| model | variant | " + " | ".join(f"batch {b}" for b in config.batches) + " |",
        "| --- | --- |" + " ---: |" * len(config.batches),
    ]
    for arch in config.models:
        for variant in _SCALING_VARIANTS:
            cells = []
            for batch in config.batches:
                rows = [
                    m for m in measurements if m.variant == variant and m.workload.startswith(f"{arch} batch {batch} ")
                ]
                cells.append(f"{rows[0].images_per_second:.1f}" if rows else "")
            lines.append(f"| {arch} | {variant} | " + " | ".join(cells) + " |")
    return lines


def _int8_section(results: dict[str, Any]) -> list[str]:
    """The int8 variants over their peers, batch-1 latency, the convolution ceiling and model sizes."""
    measurements: list[Measurement] = results["measurements"]
    lines = ["", "## int8", "", "| workload | variant | over | speed-up |", "| --- | --- | --- | ---: |"]
    for workload in workloads_of(measurements):
        if ratio(measurements, workload, "ours int8") is None:
            continue
        for variant, other in INT8_COMPARISONS:
            speedup = ratio(measurements, workload, variant, over=other)
            if speedup is not None:
                lines.append(f"| {workload} | {variant} | {other} | {speedup:.2f} |")
    lines += ["", "### Batch-1 latency (median ms)", "", "| workload | variant | ms |", "| --- | --- | ---: |"]
    lines += [f"| {m.workload} | {m.variant} | {m.median * 1e3:.1f} |" for m in measurements if m.batch == 1]
    if "conv_gflops" in results:
        lines += _ceiling_table(measurements, results["conv_gflops"], results.get("macs", {}))
    if "model_mb" in results:
        arch = results.get("model_mb_arch", "resnet50")
        lines += ["", f"### {arch} weights as saved (MB)", "", "| form | MB |", "| --- | ---: |"]
        lines += [f"| {name} | {mb:.1f} |" for name, mb in results["model_mb"].items()]
    return lines


def _ceiling_table(measurements: list[Measurement], rates: dict[str, float], macs: dict[str, int]) -> list[str]:
    """Each optimized path's GFLOP/s and its share of its dtype's 3x3-convolution ceiling."""
    lines = [
        "",
        "### Share of the 3x3-convolution ceiling",
        "",
        "Ceiling: one 3x3 convolution, 256 -> 256 channels on [8, 256, 56, 56] channels-last, per dtype: "
        + ", ".join(f"{d} {r:.0f} GFLOP/s" for d, r in rates.items())
        + ". Each path's rate is 2 x multiply-adds x batch / median time.",
        "",
        "| workload | variant | GFLOP/s | share of its dtype's ceiling |",
        "| --- | --- | ---: | ---: |",
    ]
    for m in measurements:
        if m.variant not in _CEILING_VARIANTS:
            continue
        arch = m.workload.split(" batch ")[0]
        # The FPN's multiply-adds depend on its input size; a classifier's workloads share one size.
        key = f"{arch} {m.workload.rsplit(' ', 1)[-1]}" if arch == "resnet50_fpn" else arch
        if macs.get(key):
            rate = 2 * macs[key] * m.batch / m.median / 1e9
            lines.append(f"| {m.workload} | {m.variant} | {rate:.0f} | {rate / rates[variant_dtype(m.variant)]:.2f} |")
    return lines


def _extras(results: dict[str, Any]) -> list[str]:
    """Peak memory, weight loading, import and compile times."""
    lines = ["", "## Peak memory (resident MiB of a process that runs one variant)", ""]
    for workload, per_variant in results["memory_mib"].items():
        lines += [f"### {workload}", "", "| variant | peak RSS MiB |", "| --- | ---: |"]
        lines += [f"| {name} | {mib:.0f} |" for name, mib in per_variant.items()]
        lines.append("")
    lines += ["## Loading cached resnet50 weights (median)", "", "| how | ms |", "| --- | ---: |"]
    lines += [f"| {k} | {v * 1e3:.1f} |" for k, v in results["load_seconds"].items()]
    lines += ["", "## Import time (fresh interpreter, median)", "", "| what | ms |", "| --- | ---: |"]
    lines += [f"| {k} | {v * 1e3:.0f} |" for k, v in results["import_seconds"].items()]
    lines += [
        "",
        "## torch.compile time of optimize(resnet50, compile=True), first call in a fresh process",
        "",
        "| run | seconds |",
        "| --- | ---: |",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in results["compile_seconds"].items()]
    return lines
