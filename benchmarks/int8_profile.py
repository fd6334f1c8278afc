"""Where int8 time goes: torch.profiler on one model (resnet50 unless named), batch 8, at its input
size, for our eager (FX) int8 model, torchvision's quantized model and our compiled (pt2e) int8
model; writes the tables to stdout.

Usage (from the repository root): ``OMP_NUM_THREADS=$(nproc) .venv/bin/python benchmarks/int8_profile.py [ARCH]``
(benchmarks/INT8_PROFILE.md holds runs and what they show).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones.apps.benchmark import BASELINE, build_variants, image_side

VARIANTS = ("ours int8", "torchvision quantized int8", "ours compiled int8")


def main(arch: str = "resnet50") -> None:
    """Profile the int8 variants of ``arch`` (one torchvision quantizes: resnet18/50, googlenet_v1, inception_v3)."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    x = torch.randn(8, 3, image_side(arch), image_side(arch))
    variants = build_variants(arch, with_compile=True, only=[BASELINE, *VARIANTS], dtypes=("int8",))
    for name in VARIANTS:
        run = variants[name]
        with torch.inference_mode():
            for _ in range(3):  # warm-up (the compiled model compiles on its first call)
                run(x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(5):
                    run(x)
        print(f"\n### {arch}: {name} (5 calls)\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=48))


if __name__ == "__main__":
    main(*sys.argv[1:2])
