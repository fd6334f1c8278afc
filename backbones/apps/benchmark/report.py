"""RESULTS.md: the machine, every ratio to the baseline, the engines, scaling, int8, memory and start-up figures.

A section or a row appears only when the run measured something for it: a run without int8 has
no int8 section, a variant not timed has no row.

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
from backbones.core.vocabulary import DTYPES

__all__ = ["INT8_COMPARISONS", "write_report"]

# The int8 variants over their peers (variant, compared with), shown for every workload with our int8.
INT8_COMPARISONS = (
    ("ours int8", "torchvision quantized int8"),
    ("ours int8", "ours optimized bf16"),
    ("ours int8", "ours optimized fp32"),
    ("ours int8", "onnxruntime int8"),
    ("ours int8", "OpenVINO NNCF int8"),
    ("ours auto int8", "OpenVINO NNCF int8"),
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
        *_engines_table(measurements),
        *_scaling_table(measurements, results["config"]),
        *_int8_section(results),
        *_latency_table(measurements),
    ]
    if "conv_gflops" in results:
        lines += _ceiling_table(measurements, results["conv_gflops"], results.get("macs", {}))
    if "memory_mib" in results:
        lines += _extras(results)
    if plot is not None and plot_speedups(measurements, plot):
        lines += ["", f"![speed-ups over torchvision eager fp32]({plot.name})"]
    # Sections start and end with a blank line each; one between them is enough.
    lines = [line for i, line in enumerate(lines) if line or i == 0 or lines[i - 1]]
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
    """Images per second of the baseline and our optimized paths at each batch size (rows that were timed)."""
    rows = []
    for arch in config.models:
        for variant in _SCALING_VARIANTS:
            cells = []
            for batch in config.batches:
                timed = [
                    m for m in measurements if m.variant == variant and m.workload.startswith(f"{arch} batch {batch} ")
                ]
                cells.append(f"{timed[0].images_per_second:.1f}" if timed else "not run")
            if any(cell != "not run" for cell in cells):
                rows.append(f"| {arch} | {variant} | " + " | ".join(cells) + " |")
    if len(config.batches) < 2 or not rows:
        return []
    return [
        "## Scaling (images/s)",
        "",
        "| model | variant | " + " | ".join(f"batch {b}" for b in config.batches) + " |",
        "| --- | --- |" + " ---: |" * len(config.batches),
        *rows,
    ]


def _is_ours(m: Measurement) -> bool:
    return m.variant.startswith("ours ")


def _on_torch(m: Measurement) -> bool:
    # Results of optimize(backend=...) other than torch (bench --backend, auto) carry it in their note.
    return _is_ours(m) and " auto " not in m.variant and not m.note.startswith("engine ")


def _fastest(rows: list[Measurement]) -> Measurement | None:
    return min(rows, key=lambda m: m.median, default=None)


def _engines_table(measurements: list[Measurement]) -> list[str]:
    """Per workload and precision: the fastest peer, our fastest torch path and auto, and their ratios."""
    lines = []
    for workload in workloads_of(measurements):
        for dtype in DTYPES:
            rows = [m for m in measurements if m.workload == workload and variant_dtype(m.variant) == dtype]
            peer = _fastest([m for m in rows if not _is_ours(m)])
            torch_path = _fastest([m for m in rows if _on_torch(m)])
            auto = _fastest([m for m in rows if " auto " in m.variant])
            if peer is None or (torch_path is None and auto is None):
                continue
            cells = [f"{peer.variant} ({peer.images_per_second:.1f})"]
            for ours in (torch_path, auto):
                cells += (
                    ["not run", ""]
                    if ours is None
                    else [f"{ours.variant} ({ours.images_per_second:.1f})", f"{peer.median / ours.median:.2f}"]
                )
            lines.append(f"| {workload} | {dtype} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    return [
        "## Engines: ours against the fastest peer (images/s)",
        "",
        "Per precision, the fastest variant that is not ours (torchvision, timm, OpenVINO, onnxruntime) against",
        'our fastest on torch\'s kernels and `optimize(backend="auto")`; a ratio above 1 is ours ahead.',
        "",
        "| workload | precision | fastest peer | ours on torch | x peer | ours auto | x peer |",
        "| --- | --- | --- | --- | ---: | --- | ---: |",
        *lines,
        "",
    ]


def _int8_section(results: dict[str, Any]) -> list[str]:
    """The int8 variants over their peers and the model sizes; nothing when the run timed no int8."""
    measurements: list[Measurement] = results["measurements"]
    rows = []
    for workload in workloads_of(measurements):
        for variant, other in INT8_COMPARISONS:
            speedup = ratio(measurements, workload, variant, over=other)
            if speedup is not None:
                rows.append(f"| {workload} | {variant} | {other} | {speedup:.2f} |")
    if not rows and "model_mb" not in results:
        return []
    lines = ["", "## int8"]
    if rows:
        lines += ["", "| workload | variant | over | speed-up |", "| --- | --- | --- | ---: |", *rows]
    if "model_mb" in results:
        arch = results.get("model_mb_arch", "resnet50")
        lines += ["", f"### {arch} weights as saved (MB)", "", "| form | MB |", "| --- | ---: |"]
        lines += [f"| {name} | {mb:.1f} |" for name, mb in results["model_mb"].items()]
    return lines


def _latency_table(measurements: list[Measurement]) -> list[str]:
    """Every batch-1 measurement's median, when the run had batch 1."""
    rows = [f"| {m.workload} | {m.variant} | {m.median * 1e3:.1f} |" for m in measurements if m.batch == 1]
    if not rows:
        return []
    return ["", "## Batch-1 latency (median ms)", "", "| workload | variant | ms |", "| --- | --- | ---: |", *rows]


def _ceiling_table(measurements: list[Measurement], rates: dict[str, float], macs: dict[str, int]) -> list[str]:
    """Each optimized path's GFLOP/s and its share of its dtype's 3x3-convolution ceiling (when one was timed)."""
    rows = []
    for m in measurements:
        if m.variant not in _CEILING_VARIANTS:
            continue
        arch = m.workload.split(" batch ")[0]
        # The FPN's multiply-adds depend on its input size; a classifier's workloads share one size.
        key = f"{arch} {m.workload.rsplit(' ', 1)[-1]}" if arch == "resnet50_fpn" else arch
        if macs.get(key):
            rate = 2 * macs[key] * m.batch / m.median / 1e9
            rows.append(f"| {m.workload} | {m.variant} | {rate:.0f} | {rate / rates[variant_dtype(m.variant)]:.2f} |")
    if not rows:
        return []
    return [
        "",
        "## Share of the 3x3-convolution ceiling",
        "",
        "Ceiling: one 3x3 convolution, 256 -> 256 channels on [8, 256, 56, 56] channels-last, per dtype: "
        + ", ".join(f"{d} {r:.0f} GFLOP/s" for d, r in rates.items())
        + ". Each path's rate is 2 x multiply-adds x batch / median time.",
        "",
        "| workload | variant | GFLOP/s | share of its dtype's ceiling |",
        "| --- | --- | ---: | ---: |",
        *rows,
    ]


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
