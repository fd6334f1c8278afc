"""The benchmark runs end to end and writes its report (its timings are never asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from backbones.apps.benchmark import BASELINE, Measurement, ratio

from .helpers import run_cli


def test_bench_command_writes_results_and_a_plot(tmp_path: Path) -> None:
    result = run_cli(
        "bench", "--models", "googlenet_v1", "--batches", "1", "--compile-batches", "--fpn-sizes", "--seconds", "0.1",
        "--threads", "1", "--no-extras", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "RESULTS.md").read_text()
    assert "## Machine" in report and "### googlenet_v1 batch 1 224x224" in report
    for variant in (BASELINE, "ours eager fp32", "ours optimized fp32", "ours optimized bf16"):
        assert f"| {variant} |" in report
    assert (tmp_path / "speedups.png").read_bytes()[:4] == b"\x89PNG"


def test_ratio_is_baseline_median_over_variant_median() -> None:
    rows = [Measurement("w", BASELINE, 8, [0.3, 0.2, 0.4]), Measurement("w", "fast", 8, [0.1, 0.1, 0.5])]
    assert ratio(rows, "w", "fast") == pytest.approx(3.0)
    assert ratio(rows, "w", "missing") is None
