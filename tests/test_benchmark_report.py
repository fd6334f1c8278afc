"""The benchmark's report and plot (not its timings): every run gets a readable picture and table."""

from __future__ import annotations

from pathlib import Path

from backbones.apps.benchmark import (
    BASELINE,
    BenchmarkConfig,
    Measurement,
    plot_workloads,
    variant_colours,
    write_report,
)

VARIANTS = [BASELINE, *(f"variant {i}" for i in range(10))]  # 11, as in the committed plot


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
    write_report(results, tmp_path / "RESULTS.md", tmp_path / "speedups.png")
    report = (tmp_path / "RESULTS.md").read_text()
    assert "Not measured in this run: the targets are for resnet50 batch 8 224x224" in report
    assert "![speed-ups over torchvision eager fp32](speedups.png)" in report
    assert (tmp_path / "speedups.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_batch_8_is_the_plotted_batch_when_it_was_run() -> None:
    assert plot_workloads(_results((1, 8, 32))["measurements"]) == ["resnet50 batch 8 224x224"]


def test_every_variant_gets_its_own_colour() -> None:
    for count in (len(VARIANTS), 20, 23):
        assert len(set(variant_colours(count))) == count
