"""The benchmark runs end to end and writes its report (its timings are never asserted)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backbones.apps.benchmark import BASELINE, Measurement, ratio

from .helpers import run_cli


def test_bench_command_writes_results_and_a_plot(tmp_path: Path) -> None:
    # fp32 and int8: every kind of variant (torchvision's, timm's, ours, onnxruntime's). The bf16
    # variants are the same code with another dtype, and on CPUs without bf16 instructions
    # torchvision's bf16 autocast runs emulated, a second and a half a call.
    result = run_cli(
        "bench", "--models", "resnet18", "--batches", "1", "--compile-batches", "--fpn-sizes", "--seconds", "0.1",
        "--threads", "1", "--no-extras", "--dtype", "fp32", "int8", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "RESULTS.md").read_text()
    assert "## Machine" in report and "### resnet18 batch 1 224x224" in report
    speed = report.split("### resnet18 batch 1 224x224", 1)[1].split("\n## ", 1)[0]
    timed = (BASELINE, "ours eager fp32", "ours optimized fp32", "ours int8", "torchvision quantized int8")
    for variant in (*timed, "onnxruntime int8"):
        assert re.search(rf"^\| {variant} \| [0-9.]+ \|", speed, re.MULTILINE), variant
    assert "| resnet18 batch 1 224x224 | ours int8 | ours optimized fp32 | (none) |" in report
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
