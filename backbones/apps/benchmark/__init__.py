"""Side-by-side speed, memory and load-time measurements against torchvision and timm.

Everything runs in one process, in interleaved rounds (each round runs every variant once, so a
slow spell of the machine hits all variants alike), and reports the median with min and max.
Ratios are to torchvision's eager fp32 model in the same run. torchvision and timm are needed
here only (``pip install backbones[test]``); ``import backbones`` never imports them.

Run ``python benchmarks/bench.py`` (or ``python -m backbones bench``); it writes
``benchmarks/RESULTS.md`` and a plot. The package reports ratios; the targets a run is judged
against live in ``benchmarks/targets.py``.

Modules, each one job:

* :mod:`~backbones.apps.benchmark.config`: what to measure, a measurement, ratios;
* :mod:`~backbones.apps.benchmark.variants`: what is timed (ours, torchvision's, timm's);
* :mod:`~backbones.apps.benchmark.quantized`: the int8 peers and their shared calibration;
* :mod:`~backbones.apps.benchmark.engines`: the engine peers (OpenVINO, onnxruntime) and ``bench --backend``;
* :mod:`~backbones.apps.benchmark.timing`: interleaved rounds and medians;
* :mod:`~backbones.apps.benchmark.probes`: memory, import, load and compile times (fresh processes);
* :mod:`~backbones.apps.benchmark.machine`: the machine and its convolution ceiling;
* :mod:`~backbones.apps.benchmark.sizes`: multiply-adds and saved sizes;
* :mod:`~backbones.apps.benchmark.run`: one run, every workload;
* :mod:`~backbones.apps.benchmark.report` and :mod:`~backbones.apps.benchmark.plot`: RESULTS.md and the plot.
"""

from __future__ import annotations

from backbones.apps.benchmark.config import (
    BASELINE,
    BenchmarkConfig,
    Measurement,
    image_side,
    measurement_of,
    ratio,
    workloads_of,
)
from backbones.apps.benchmark.plot import plot_workloads, variant_colours
from backbones.apps.benchmark.report import write_report
from backbones.apps.benchmark.run import run_benchmarks
from backbones.apps.benchmark.variants import VARIANTS, build_variants, variant_dtype

__all__ = [
    "BASELINE",
    "VARIANTS",
    "BenchmarkConfig",
    "Measurement",
    "build_variants",
    "image_side",
    "measurement_of",
    "plot_workloads",
    "ratio",
    "run_benchmarks",
    "variant_colours",
    "variant_dtype",
    "workloads_of",
    "write_report",
]
