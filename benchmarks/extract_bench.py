"""Feature-extraction throughput: the whole pipeline against the model-only forward; 1 process vs torchrun.

Usage (from the repository root):

    OMP_NUM_THREADS=$(nproc) .venv/bin/python benchmarks/extract_bench.py            # writes benchmarks/EXTRACT.md
    OMP_NUM_THREADS=$(nproc) .venv/bin/python benchmarks/extract_bench.py --images 512 --repeats 5

What it measures, all in this process except the process comparison, interleaved, medians:

* a folder of ``--pool`` generated 256x256 JPEGs (smooth random pictures, quality 90, in four class
  folders) is written once; each timed run reads the first ``--images`` of them (a folder of
  symbolic links to those files);
* model-only: ``backbones.optimize`` of the very network ``extract`` runs (``--layers pooled``), on a
  random batch of ``--batch-size`` at the crop size, called until it has seen ``--images`` images;
* pipeline: ``backbones.extract`` over the folder at the same batch and dtype (scan, decoding and
  resizing in DataLoader workers, forward, shard writing): its shard loop (timed alone) and the
  whole call (model loading, optimize and set-up included);
* processes: ``python -m backbones extract`` with OMP_NUM_THREADS=2 against ``torchrun
  --nproc_per_node 2`` with OMP_NUM_THREADS=1 (one DataLoader worker each), whole-command wall time;
* with ``--probe-model DIR`` (a ``backbones finetune`` output on the digits): that model's pooled
  embeddings of the digits, the k-NN and logistic-regression probes beside the model's own top-1
  (``--skip-speed`` measures only this and keeps the speed section of the report).

    .venv/bin/python -m backbones finetune resnet18 --data digits --out runs/digits
    .venv/bin/python benchmarks/extract_bench.py --probe-model runs/digits --skip-speed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import backbones
from backbones.apps.cli.options import add_dtype_option
from backbones.apps.extract import runner
from backbones.apps.extract.layers import extraction_network, parse_layers
from backbones.apps.probe import probe
from backbones.runtime.optimize import resolve_dtype

CLASSES = 4
# The model-only path optimizes on a random batch: int8 would have no calibration data there.
MEASURED_DTYPES = ("fp32", "bf16")
PROBE_TITLE = "## Probes on the digits"


def make_jpegs(root: Path, count: int, size: int = 256) -> list[Path]:
    """``count`` smooth random size x size JPEGs in CLASSES folders (kept between runs)."""
    from PIL import Image

    paths = [root / f"class{i % CLASSES}" / f"{i:05d}.jpg" for i in range(count)]
    generator = torch.Generator().manual_seed(0)
    for path in paths:
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        coarse = torch.rand(1, 3, 16, 16, generator=generator)
        picture = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        pixels = (picture[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(path, quality=90)
    return paths


def subset_folder(root: Path, paths: list[Path]) -> Path:
    """A folder of symbolic links to ``paths`` (same class layout): a run over exactly those files."""
    shutil.rmtree(root, ignore_errors=True)
    for path in paths:
        link = root / path.parent.name / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    return root


def model_only_rate(model: torch.nn.Module, dtype: torch.dtype, batch: int, size: int, images: int) -> float:
    network = extraction_network(model, parse_layers("pooled", model))
    x = torch.randn(batch, 3, size, size)
    fast = backbones.optimize(network, dtype=dtype, example_input=x)
    fast(x)  # first call: kernels chosen, weights packed
    seen, start = 0, time.perf_counter()
    while seen < images:
        fast(x)
        seen += batch
    return seen / (time.perf_counter() - start)


def pipeline_rates(
    model: torch.nn.Module, data: Path, out: Path, dtype: str, batch: int, images: int
) -> tuple[float, float]:
    """(shard-loop images/s, whole-call images/s) of backbones.extract."""
    loop_seconds: list[float] = []
    real = runner._run_shards

    def timed(*args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        real(*args, **kwargs)
        loop_seconds.append(time.perf_counter() - start)

    runner._run_shards = timed
    try:
        start = time.perf_counter()
        backbones.extract(model, data, out, dtype=dtype, batch_size=batch, overwrite=True, progress=False)
        whole = time.perf_counter() - start
    finally:
        runner._run_shards = real
    return images / loop_seconds[0], images / whole


# Runs the extract command with its shard loop timed between two barriers: the parallel phase alone.
DRIVER = """
import sys, time
import torch.distributed as dist
from backbones.apps.extract import runner
real = runner._run_shards
def timed(*args, **kwargs):
    sync = dist.barrier if dist.is_initialized() else (lambda: None)
    sync()
    start = time.perf_counter()
    real(*args, **kwargs)
    sync()
    if not dist.is_initialized() or dist.get_rank() == 0:
        print("LOOP_SECONDS", time.perf_counter() - start, flush=True)
runner._run_shards = timed
from backbones.apps.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def command_seconds(command: list[str], threads: int) -> tuple[float, float]:
    """(whole command seconds, shard-loop seconds) of an extract command run through DRIVER."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    result = subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    whole = time.perf_counter() - start
    loop = next(float(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("LOOP_SECONDS"))
    return whole, loop


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def interleaved(repeats: int, jobs: dict[str, Callable[[], Any]]) -> dict[str, list[Any]]:
    results: dict[str, list[Any]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, job in jobs.items():
            results[name].append(job())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    add_dtype_option(parser, allowed=MEASURED_DTYPES, help="the precision both the model and the pipeline run in")
    parser.add_argument("--pool", type=int, default=2000, help="JPEGs generated")
    parser.add_argument("--images", type=int, default=256, help="images per timed run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "backbones-extract-bench"))
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "EXTRACT.md"))
    parser.add_argument("--probe-model", help="a finetune output folder (digits) to probe")
    parser.add_argument("--skip-speed", action="store_true", help="only the probes; keep the report's speed section")
    args = parser.parse_args()
    report = Path(args.out)
    if args.skip_speed:
        speed = report.read_text(encoding="utf-8").split(PROBE_TITLE)[0].rstrip() + "\n"
    else:
        speed = speed_section(args)
    probes = probe_section(Path(args.probe_model), Path(args.work)) if args.probe_model else ""
    report.write_text(speed + ("\n" + probes if probes else ""), encoding="utf-8")
    print(speed + probes)


def probe_section(model_dir: Path, work: Path) -> str:
    """The probes' top-1 on the digits beside the fine-tuned model's own validation top-1."""
    out = work / "probe-features"
    start = time.perf_counter()
    backbones.extract(model_dir, "digits", out, batch_size=128, overwrite=True, progress=False)
    seconds = time.perf_counter() - start
    result = probe(out)
    records = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    own = records[-1]["val_top1"]
    architecture = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["architecture"]
    return "\n".join(
        [
            PROBE_TITLE,
            "",
            f"{architecture} after {len(records)} epochs of `backbones finetune` (default recipe) on the digits "
            f"({model_dir}); its pooled embeddings "
            f"of all 1,797 digits extracted ({seconds:.0f} s), `backbones probe` on the data layer's split (seed 0, "
            f"{result.train_images} train / {result.val_images} val, the split the model was validated on).",
            "",
            "| classifier on the validation digits | top-1 |",
            "|---|---|",
            f"| the fine-tuned model itself (metrics.jsonl, last epoch) | {100 * own:.2f}% |",
            f"| k-NN on its embeddings (cosine, k={result.k}) | {100 * result.knn_top1:.2f}% |",
            f"| logistic regression on its embeddings | {100 * result.logistic_top1:.2f}% |",
            "",
        ]
    )


def speed_section(args: argparse.Namespace) -> str:
    """Pipeline against model-only, and 1 process x 2 threads against 2 processes x 1 thread."""
    work = Path(args.work)
    started = time.perf_counter()
    pool = make_jpegs(work / "jpegs", args.pool)
    print(f"{len(pool)} JPEGs ready in {time.perf_counter() - started:.1f} s", flush=True)
    data = subset_folder(work / "subset", pool[: args.images])
    torch.manual_seed(0)
    model = backbones.create_model(args.model).eval()
    model_dir = work / "model"
    model.save_pretrained(model_dir)
    size = int(model.pretrained_cfg["crop_size"])
    dtype = resolve_dtype(args.dtype)
    load_before = os.getloadavg()[0]

    in_process = interleaved(
        args.repeats,
        {
            "model": lambda: model_only_rate(model, dtype, args.batch_size, size, args.images),
            "pipeline": lambda: pipeline_rates(model, data, work / "out", args.dtype, args.batch_size, args.images),
        },
    )
    print("in-process:", in_process, flush=True)
    driver = work / "driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    shard_size = max(1, args.images // 8)  # eight shards: four for each of two processes
    common = [str(model_dir), "--data", str(data), "--batch-size", str(args.batch_size), "--dtype", args.dtype]
    common += ["--shard-size", str(shard_size), "--quiet", "--overwrite"]
    one = [sys.executable, str(driver), "extract", *common, "--out", str(work / "one")]
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    two += [str(driver), "extract", *common, "--out", str(work / "two")]
    processes = interleaved(
        args.repeats,
        {
            "1 process x 2 threads": lambda: command_seconds(one, 2),
            "2 processes x 1 thread": lambda: command_seconds(two, 1),
        },
    )
    print("processes:", processes, flush=True)
    load_after = os.getloadavg()[0]

    model_rate = in_process["model"]
    loop_rate = [loop for loop, _ in in_process["pipeline"]]
    whole_rate = [whole for _, whole in in_process["pipeline"]]
    ratio = [loop / m for loop, m in zip(loop_rate, model_rate, strict=True)]
    lines = [
        "# Feature extraction throughput",
        "",
        f"`{' '.join(['benchmarks/extract_bench.py', *sys.argv[1:]])}` with OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}. {args.model}, random weights, {args.dtype}, "
        f"batch {args.batch_size}, {size}x{size} crops of 256x256 JPEGs ({args.images} per run, from a folder of "
        f"{args.pool}), {args.repeats} interleaved repeats: median (min, max).",
        "",
        "| measurement | images/s |",
        "|---|---|",
        f"| model only (optimize fast path, same network, batch and dtype) | {summary(model_rate)} |",
        f"| extract: shard loop (decode in workers, forward, write) | {summary(loop_rate)} |",
        f"| extract: whole call (load, optimize, scan, loop, index) | {summary(whole_rate)} |",
        f"| **pipeline / model-only** (shard loop; target >= 0.8) | **{summary(ratio)}** |",
        "",
        "| processes | whole command s (start-up included) | shard loop images/s |",
        "|---|---|---|",
    ]
    for name, runs in processes.items():
        whole = [w for w, _ in runs]
        loop = [args.images / s for _, s in runs]
        lines.append(f"| {name} | {summary(whole)} | {summary(loop)} |")
    one_loop, two_loop = ([s for _, s in processes[n]] for n in processes)
    loop_ratio = statistics.median(one_loop) / statistics.median(two_loop)
    whole_ratio = statistics.median([w for w, _ in processes["1 process x 2 threads"]]) / statistics.median(
        [w for w, _ in processes["2 processes x 1 thread"]]
    )
    lines += [
        "",
        f"2 processes x 1 thread against 1 process x 2 threads, speed ratio of the medians (> 1: two processes "
        f"faster; target: not slower): shard loop **{loop_ratio:.2f}**, whole command {whole_ratio:.2f} (torchrun "
        "starts three interpreters, one of them the launcher).",
        "",
        f"Load average (1 min) before / after: {load_before:.1f} / {load_after:.1f} on {os.cpu_count()} cores: the "
        "machine is shared, so absolute rates are noisy; the ratios come from interleaved runs.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
