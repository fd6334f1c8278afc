"""The benchmark's report, plot and targets (not its timings): every run gets a readable picture and table."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from backbones.apps.benchmark import (
    BASELINE,
    BenchmarkConfig,
    Measurement,
    plot_workloads,
    variant_colours,
    write_report,
)

from .helpers import REPO_ROOT

VARIANTS = [BASELINE, *(f"variant {i}" for i in range(10))]  # 11, as in the committed plot


def _targets() -> ModuleType:
    """benchmarks/targets.py, loaded as ``backbones bench --targets`` loads it (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location("bench_targets", REPO_ROOT / "benchmarks" / "targets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _results(batches: tuple[int, ...]) -> dict:
    # Made-up timings: these tests check what the report shows, never how fast anything is.
    measurements = [
        Measurement(f"resnet50 batch {batch} 224x224", variant, batch, [0.1 * batch / (1 + i)] * 3)
        for batch in batches
        for i, variant in enumerate(VARIANTS)
    ]
    config = BenchmarkConfig(models=("resnet50",), batches=batches, compile_batches=(), fpn_sizes=())
    return {"measurements": measurements, "environment": {"cpu": "test"}, "config": config}


def test_a_run_without_batch_8_still_plots_its_largest_batch_and_says_targets_were_not_measured(
    tmp_path: Path,
) -> None:
    results = _results((1, 2))
    assert plot_workloads(results["measurements"]) == ["resnet50 batch 2 224x224"]
    sections = _targets().report_sections(results["measurements"])
    write_report(results, tmp_path / "RESULTS.md", tmp_path / "speedups.png", sections=sections)
    report = (tmp_path / "RESULTS.md").read_text()
    assert "Not measured in this run: the targets are for resnet50 batch 8 224x224" in report
    assert "## int8 targets (issue 15)\n\nNot measured in this run" in report
    assert "![speed-ups over torchvision eager fp32](speedups.png)" in report
    assert (tmp_path / "speedups.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_package_report_judges_nothing(tmp_path: Path) -> None:
    # Targets belong to benchmarks/targets.py: without its sections the report states ratios only.
    write_report(_results((8,)), tmp_path / "RESULTS.md")
    report = (tmp_path / "RESULTS.md").read_text()
    assert "### resnet50 batch 8 224x224" in report
    assert "target" not in report.lower() and "| met |" not in report


def test_targets_say_which_were_met_and_the_judged_tables_follow_the_machine(tmp_path: Path) -> None:
    workload = "resnet50 batch 8 224x224"
    medians = {
        BASELINE: 1.0,
        "ours optimized fp32": 0.5,  # 2.0x: meets >= 1.5
        "ours optimized bf16": 0.5,  # 2.0x: misses >= 4.0
        "torchvision compiled fp32": 0.4,  # 2.5x
        "ours compiled fp32": 0.45,  # 2.2x: meets >= 1.9 but not > torchvision compiled
        "torchvision quantized int8": 0.3,
        "ours int8": 0.25,  # 1.2x torchvision's quantized: meets >= 1.0; 2.0x our bf16: meets >= 1.8
    }
    measurements = [Measurement(workload, variant, 8, [median] * 3) for variant, median in medians.items()]
    targets = _targets()
    sections = targets.report_sections(measurements)
    assert "| ours optimized fp32 | >= 1.5 | 2.00 | yes |" in sections
    assert "| ours optimized bf16 | >= 4.0 | 2.00 | NO |" in sections
    assert "| ours compiled fp32 | >= 1.9 and > torchvision compiled (2.50) | 2.22 | NO |" in sections
    assert f"| {workload} | ours int8 | torchvision quantized int8 | >= 1.0 | 1.20 | yes |" in sections
    assert f"| {workload} | ours int8 | ours optimized bf16 | >= 1.8 | 2.00 | yes |" in sections
    without_bf16 = [m for m in measurements if m.variant != "ours optimized bf16"]
    assert (
        f"| {workload} | ours int8 | ours optimized bf16 | >= 1.8 | not run | CPU lacks oneDNN bf16 |"
        in targets.report_sections(without_bf16)
    )
    config = BenchmarkConfig(models=("resnet50",), batches=(8,), compile_batches=(8,), fpn_sizes=())
    results = {"measurements": measurements, "environment": {"cpu": "test"}, "config": config}
    write_report(results, tmp_path / "RESULTS.md", sections=sections)
    report = (tmp_path / "RESULTS.md").read_text()
    assert report.index("## Machine") < report.index("## Targets (resnet50 batch 8 224x224)") < report.index("## Speed")
    # The package's own int8 table gives the same ratio, unjudged.
    assert f"| {workload} | ours int8 | torchvision quantized int8 | 1.20 |" in report


def test_batch_8_is_the_plotted_batch_when_it_was_run() -> None:
    assert plot_workloads(_results((1, 8, 32))["measurements"]) == ["resnet50 batch 8 224x224"]


def test_every_variant_gets_its_own_colour() -> None:
    for count in (len(VARIANTS), 20, 23):
        assert len(set(variant_colours(count))) == count


def _report(tmp_path: Path, medians: dict[tuple[str, str], float], batches: tuple[int, ...]) -> str:
    """The package report of made-up medians, {(workload, variant): seconds}."""
    measurements = [
        Measurement(workload, variant, int(workload.split(" batch ")[1].split()[0]), [median] * 3)
        for (workload, variant), median in medians.items()
    ]
    config = BenchmarkConfig(models=("resnet50",), batches=batches, compile_batches=(), fpn_sizes=())
    write_report({"measurements": measurements, "environment": {"cpu": "test"}, "config": config}, tmp_path / "R.md")
    return (tmp_path / "R.md").read_text()


def test_the_engines_table_sets_our_fastest_against_the_fastest_peer_of_each_precision(tmp_path: Path) -> None:
    workload = "resnet50 batch 8 224x224"
    medians = {
        BASELINE: 1.0,
        "OpenVINO f32": 0.6,
        "onnxruntime fp32": 0.5,
        "ours optimized fp32": 0.55,
        "ours auto fp32": 0.5,
        "OpenVINO NNCF int8": 0.2,
        "onnxruntime int8": 0.3,
        "ours int8": 0.25,
    }
    report = _report(tmp_path, {(workload, v): m for v, m in medians.items()}, (8,))
    images = {v: 8 / m for v, m in medians.items()}
    fp32 = (
        f"| {workload} | fp32 | onnxruntime fp32 ({images['onnxruntime fp32']:.1f}) | "
        f"ours optimized fp32 ({images['ours optimized fp32']:.1f}) | {0.5 / 0.55:.2f} | "
        f"ours auto fp32 ({images['ours auto fp32']:.1f}) | 1.00 |"
    )
    int8 = (
        f"| {workload} | int8 | OpenVINO NNCF int8 ({images['OpenVINO NNCF int8']:.1f}) | "
        f"ours int8 ({images['ours int8']:.1f}) | {0.2 / 0.25:.2f} | not run |  |"
    )
    assert fp32 in report and int8 in report
    assert f"| {workload} | ours int8 | OpenVINO NNCF int8 | {0.2 / 0.25:.2f} |" in report
    for variant in ("OpenVINO f32", "OpenVINO NNCF int8", "onnxruntime fp32"):
        assert f"| {variant} | {medians[variant] * 1e3:.1f} |" in report


def test_a_run_without_int8_has_no_int8_section_and_no_rows_for_variants_not_timed(tmp_path: Path) -> None:
    medians = {
        ("resnet50 batch 1 224x224", BASELINE): 0.1,
        ("resnet50 batch 8 224x224", BASELINE): 0.5,
        ("resnet50 batch 8 224x224", "ours optimized fp32"): 0.25,
    }
    report = _report(tmp_path, medians, (1, 8))
    assert "## int8" not in report and "(issue 15)" not in report
    assert "| resnet50 | ours optimized fp32 | not run | 32.0 |" in report
    assert "ours optimized bf16" not in report  # not timed: no blank row
    assert "\n\n\n" not in report
