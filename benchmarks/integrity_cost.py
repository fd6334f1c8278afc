"""What trusting a weights file costs per load: the sha256 of the file and the value checks, against the load itself.

Every load of cached weights hashes the file again (backbones/hub/integrity.py) and checks every
tensor for a non-float dtype, NaN/inf and negative BatchNorm variances (check_weight_values in
backbones/hub/loading.py). This script measures both against the load they guard, for a few
architectures, with the file in the page cache (the usual case for a cache read again):

    load   = read the safetensors file (memory-mapped) + model.load_state_dict (the model already built)
    hash   = sha256 of the whole file
    checks = check_weight_values over the state dict
    create = create_model(arch, pretrained=file): build + read + checks + load (what a user waits for)

Medians of --repeats rounds, the four steps interleaved in every round, one process.

Usage (from the repository root):

    OMP_NUM_THREADS=$(nproc) .venv/bin/python benchmarks/integrity_cost.py
    .venv/bin/python benchmarks/integrity_cost.py --models resnet18 resnet50 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))


def _timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def measure(arch: str, repeats: int, folder: Path) -> dict[str, float]:
    """Median seconds of each step for ``arch`` (see the module docstring)."""
    from backbones.core.files import save_safetensors_atomic
    from backbones.hub.integrity import file_sha256
    from backbones.hub.loading import check_weight_values, read_state_dict
    from backbones.models.factory import create_model

    model = create_model(arch)
    path = folder / f"{arch}.safetensors"
    save_safetensors_atomic(model.state_dict(), path)
    own = model.state_dict()
    state = read_state_dict(path, arch)
    steps = {
        "load": lambda: model.load_state_dict(read_state_dict(path, arch)),
        "hash": lambda: file_sha256(path),
        "checks": lambda: check_weight_values(state, own, arch),
        "create": lambda: create_model(arch, pretrained=path),
    }
    for step in steps.values():  # warm the page cache and the allocator
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(_timed(step))
    result = {name: statistics.median(values) for name, values in times.items()}
    result["megabytes"] = path.stat().st_size / 1e6
    return result


def main(argv: list[str] | None = None) -> int:
    """Print a Markdown table of the medians and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "vgg19"])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    print(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, medians of {args.repeats} rounds, file in page cache\n")
    print("| model | file MB | load ms | sha256 ms | hash / load | checks ms | checks / load | create_model ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        for arch in args.models:
            r = measure(arch, args.repeats, Path(folder))
            print(
                f"| {arch} | {r['megabytes']:.0f} | {r['load'] * 1e3:.0f} | {r['hash'] * 1e3:.0f} | "
                f"{r['hash'] / r['load']:.2f} | {r['checks'] * 1e3:.1f} | {r['checks'] / r['load']:.3f} | "
                f"{r['create'] * 1e3:.0f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
