"""The targets benchmark runs are judged against: what earlier issues set out to reach, and whether a run did.

The package's report (``backbones.apps.benchmark``) states ratios and judges nothing; this file,
loaded by ``benchmarks/bench.py`` (``backbones bench --targets benchmarks/targets.py``), adds the
tables that say which targets a run met. A target is a minimum speed-up of one variant over
another on the same workload, in the same run.
"""

from __future__ import annotations

from collections.abc import Sequence

from backbones.apps.benchmark import Measurement, measurement_of, ratio, workloads_of

__all__ = [
    "INT8_TARGETS",
    "SPEED_TARGETS",
    "SPEED_TARGET_WORKLOAD",
    "int8_targets",
    "report_sections",
    "speed_targets",
]

# The workload the speed targets are set on.
SPEED_TARGET_WORKLOAD = "resnet50 batch 8 224x224"
# The fast path's targets: variant -> minimum ratio to torchvision eager fp32 on SPEED_TARGET_WORKLOAD.
SPEED_TARGETS = {
    "ours eager fp32": 0.97,
    "ours optimized fp32": 1.5,
    "ours compiled fp32": 1.9,
    "ours optimized bf16": 4.0,
    "ours compiled bf16": 4.0,
}
# Also must beat torchvision's model compiled the same way, whatever the minimum ratio says.
_MUST_BEAT_TORCHVISION_COMPILED = "ours compiled fp32"

# Issue 15's int8 targets: (workload prefix, int8 variant, compared with, minimum ratio).
INT8_TARGETS = (
    ("resnet50 batch 8 ", "ours int8", "torchvision quantized int8", 1.0),
    ("resnet50 batch 8 ", "ours int8", "ours optimized bf16", 1.8),
    ("googlenet_v1 batch 8 ", "ours int8", "torchvision quantized int8", 1.0),
    ("inception_v3 batch 8 ", "ours int8", "torchvision quantized int8", 1.0),
    ("vgg19 batch 8 ", "ours int8", "ours optimized bf16", 1.8),
    ("resnet50_fpn ", "ours int8", "ours optimized bf16", 1.8),
    # The pt2e flow (optimize(dtype="int8", compile=True), with torchao) against the same peers.
    ("resnet50 batch 8 ", "ours compiled int8", "torchvision quantized int8", 1.0),
    ("googlenet_v1 batch 8 ", "ours compiled int8", "torchvision quantized int8", 1.0),
    ("inception_v3 batch 8 ", "ours compiled int8", "torchvision quantized int8", 1.0),
)


def _met(met: bool) -> str:
    return "yes" if met else "NO"


def _section(
    title: str, table_head: Sequence[str], rows: list[str], targets_for: str, measurements: Sequence[Measurement]
) -> list[str]:
    """A Markdown section: the judged rows under ``table_head``, or a line saying the run measured none of them."""
    lines = [title, ""]
    if rows:
        lines += [*table_head, *rows]
    else:
        timed = ", ".join(workloads_of(measurements)) or "nothing"
        lines.append(f"Not measured in this run: the targets are for {targets_for}; this run timed {timed}.")
    return [*lines, ""]


def speed_targets(measurements: Sequence[Measurement]) -> list[str]:
    """The fast path's targets on :data:`SPEED_TARGET_WORKLOAD`, as a Markdown section.

    Args:
        measurements: One run's measurements.

    Returns:
        Markdown lines: a table of the targets the run measured, or a line saying it measured none.
    """
    rows = []
    tv_compiled = ratio(measurements, SPEED_TARGET_WORKLOAD, "torchvision compiled fp32")
    for variant, target in SPEED_TARGETS.items():
        measured = ratio(measurements, SPEED_TARGET_WORKLOAD, variant)
        if measured is None:
            continue
        met = measured >= target
        target_text = f">= {target}"
        if variant == _MUST_BEAT_TORCHVISION_COMPILED and tv_compiled is not None:
            met = met and measured > tv_compiled
            target_text += f" and > torchvision compiled ({tv_compiled:.2f})"
        rows.append(f"| {variant} | {target_text} | {measured:.2f} | {_met(met)} |")
    table_head = ("| variant | target | measured | met |", "| --- | ---: | ---: | --- |")
    title = f"## Targets ({SPEED_TARGET_WORKLOAD})"
    return _section(title, table_head, rows, SPEED_TARGET_WORKLOAD, measurements)


def int8_targets(measurements: Sequence[Measurement]) -> list[str]:
    """Issue 15's int8 targets on every workload they name that the run timed, as a Markdown section.

    Args:
        measurements: One run's measurements.

    Returns:
        Markdown lines: a table, or a line saying the run measured none of them. A target whose
        peer is our bf16 path, on a CPU without oneDNN bf16 (where that path is not timed), says
        so instead of a figure.
    """
    rows = []
    workloads = workloads_of(measurements)
    for prefix, variant, other, target in INT8_TARGETS:
        for workload in (w for w in workloads if w.startswith(prefix)):
            measured = ratio(measurements, workload, variant, over=other)
            if measured is not None:
                rows.append(
                    f"| {workload} | {variant} | {other} | >= {target} | {measured:.2f} | {_met(measured >= target)} |"
                )
            elif measurement_of(measurements, workload, variant) and other == "ours optimized bf16":
                rows.append(f"| {workload} | {variant} | {other} | >= {target} | not run | CPU lacks oneDNN bf16 |")
    named = ", ".join(dict.fromkeys(prefix.strip() for prefix, *_ in INT8_TARGETS))
    table_head = (
        "| workload | variant | over | target | measured | met |",
        "| --- | --- | --- | ---: | ---: | --- |",
    )
    return _section("## int8 targets (issue 15)", table_head, rows, named, measurements)


def report_sections(measurements: Sequence[Measurement]) -> list[str]:
    """Every target table, as the Markdown lines ``backbones bench --targets`` adds to RESULTS.md.

    Args:
        measurements: One run's measurements.

    Returns:
        Markdown lines.
    """
    return [*speed_targets(measurements), *int8_targets(measurements)]
