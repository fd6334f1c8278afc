"""The benchmark runs end to end and writes its report (its timings are never asserted)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backbones.apps.benchmark import BASELINE, Measurement, ratio

from .helpers import REPO_ROOT, run_cli


def test_bench_command_writes_results_and_a_plot(tmp_path: Path) -> None:
    # fp32 and int8: every kind of variant (torchvision's, timm's, ours, onnxruntime's). The bf16
    # variants are the same code with another dtype, and on CPUs without bf16 instructions
    # torchvision's bf16 autocast runs emulated, slowly. int8 as torch spells it (qint8): the shared
    # vocabulary reads it.
    targets = str(REPO_ROOT / "benchmarks" / "targets.py")
    result = run_cli(
        "bench", "--models", "resnet18", "--batches", "1", "--compile-batches", "--fpn-sizes", "--seconds", "0.1",
        "--threads", "1", "--no-extras", "--dtype", "fp32", "qint8", "--targets", targets, "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "RESULTS.md").read_text()
    assert "## Machine" in report and "### resnet18 batch 1 224x224" in report
    speed = report.split("### resnet18 batch 1 224x224", 1)[1].split("\n## ", 1)[0]
    timed = (BASELINE, "ours eager fp32", "ours optimized fp32", "ours int8", "torchvision quantized int8")
    for variant in (*timed, "onnxruntime int8"):
        assert re.search(rf"^\| {variant} \| [0-9.]+ \|", speed, re.MULTILINE), variant
    assert re.search(r"^\| resnet18 batch 1 224x224 \| ours int8 \| ours optimized fp32 \| [0-9.]+ \|$", report, re.M)
    # The targets file judges the run: resnet18 at batch 1 is none of the workloads its targets name.
    assert "Not measured in this run: the targets are for resnet50 batch 8 224x224" in report
    assert "## int8 targets (issue 15)\n\nNot measured in this run: the targets are for resnet50 batch 8," in report
    sizes = report.split("### resnet18 weights as saved (MB)", 1)[1]
    for form in (
        BASELINE,
        "ours eager fp32",
        "ours int8",
        "torchvision quantized int8",
        "onnxruntime int8 (.onnx file)",
    ):
        assert re.search(rf"^\| {re.escape(form)} \| [0-9.]+ \|", sizes, re.MULTILINE), form
    assert (tmp_path / "speedups.png").read_bytes()[:4] == b"\x89PNG"


def test_ratio_is_baseline_median_over_variant_median() -> None:
    rows = [Measurement("w", BASELINE, 8, [0.3, 0.2, 0.4]), Measurement("w", "fast", 8, [0.1, 0.1, 0.5])]
    assert ratio(rows, "w", "fast") == pytest.approx(3.0)
    assert ratio(rows, "w", "missing") is None
    assert ratio(rows, "w", BASELINE, over="fast") == pytest.approx(1 / 3)


def test_bench_refuses_a_targets_file_without_report_sections_before_timing(tmp_path: Path) -> None:
    empty = tmp_path / "targets.py"
    empty.write_text("TARGETS = {}\n")
    result = run_cli("bench", "--targets", str(empty), "--out", str(tmp_path / "results"))
    assert result.returncode == 2
    assert "defines no report_sections" in result.stderr
    assert not (tmp_path / "results" / "RESULTS.md").exists()
