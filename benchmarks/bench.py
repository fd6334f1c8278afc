"""Benchmark backbones side by side with torchvision and timm; writes benchmarks/RESULTS.md and a plot.

The same run as ``backbones bench``, judged against the targets in benchmarks/targets.py.

Usage (from the repository root, after `make test` or `make demo` created .venv):

    OMP_NUM_THREADS=$(nproc) .venv/bin/python benchmarks/bench.py             # the full run
    .venv/bin/python benchmarks/bench.py --models resnet50 --batches 8 --fpn-sizes 800x1344 --seconds 10
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones.apps.cli.main import main

TARGETS = Path(__file__).resolve().with_name("targets.py")

if __name__ == "__main__":
    raise SystemExit(main(["bench", "--targets", str(TARGETS), *sys.argv[1:]]))
