"""The benchmark runs end to end and writes its report (its timings are never asserted)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from backbones.apps.benchmark import BASELINE, Measurement, ratio
from backbones.apps.benchmark.engines import ENGINE_VARIANTS, engine_factories, openvino_default_is_bf16

from .helpers import REPO_ROOT, assert_one_line_error, relative_max_diff, run_cli


def test_bench_command_writes_results_and_a_plot(tmp_path: Path) -> None:
    # fp32 and int8: a variant of each kind (torchvision's, ours, an engine's), named with --variants:
    # building every engine row of resnet18 (OpenVINO, NNCF, two ONNX exports, auto) takes minutes;
    # test_the_engine_rows_* build one on a tiny network. The bf16 variants are the same code with
    # another dtype, and on CPUs without bf16 instructions torchvision's bf16 autocast runs emulated,
    # slowly. int8 as torch spells it (qint8): the shared vocabulary reads it.
    targets = str(REPO_ROOT / "benchmarks" / "targets.py")
    variants = ("ours eager fp32", "ours optimized fp32", "ours int8", "torchvision quantized int8", "onnxruntime int8")
    result = run_cli(
        "bench", "--models", "resnet18", "--batches", "1", "--compile-batches", "--fpn-sizes", "--seconds", "0.1",
        "--threads", "1", "--no-extras", "--dtype", "fp32", "qint8", "--variants", *variants,
        "--targets", targets, "--out", str(tmp_path),
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


class _Tiny(nn.Module):
    """A network small enough to convert in a second: the engines' plumbing, not their speed."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_the_engine_rows_are_offered_with_their_packages_and_run_the_models_own_weights() -> None:
    # openvino, nncf and onnxruntime are test dependencies: every engine row is offered, OpenVINO's
    # default-precision row where its CPU plugin computes in bf16 by default (else it repeats f32).
    model, x = _Tiny().eval(), torch.randn(2, 3, 8, 8)
    factories = engine_factories(model, x[:1], [x])
    expected = [v for v in ENGINE_VARIANTS if v != "OpenVINO default bf16" or openvino_default_is_bf16()]
    assert list(factories) == expected
    without_calibration = engine_factories(model, x[:1])
    assert not any(name.endswith("int8") for name in without_calibration)
    run = factories["OpenVINO f32"]()
    assert "computes in f32" in run.note
    # Converted from the same module: its outputs, at fp32 rounding (and a batch other than the traced one).
    with torch.no_grad():
        assert relative_max_diff(torch.from_numpy(run(x)[0]), model(x)) < 1e-5


def test_bench_refuses_an_unknown_backend_in_one_line(tmp_path: Path) -> None:
    result = run_cli("bench", "--backend", "tensorrt", "--out", str(tmp_path))
    assert_one_line_error(result, "--backend", "tensorrt")
