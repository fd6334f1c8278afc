"""Fine-tuning on the built-in digits: accuracy and speed of the issue-13 targets; writes benchmarks/FINETUNE.md.

Every run is a real ``backbones finetune`` command (one process, or ``torch.distributed.run
--nproc_per_node 2``) in a fresh process; the figures come from the ``metrics.jsonl`` it writes.
One process uses every core (OMP_NUM_THREADS = cores); under torchrun each of the 2 processes
gets cores / 2 threads. Accuracy is the final validation top-1 on the seeded stratified split
(1437 / 360), the median over seeds; speed is the median over epochs of seconds per training
epoch and training images per second per process. The RBF SVC baseline is computed here, on
the same split.

Usage (from the repository root):

    .venv/bin/python benchmarks/finetune_digits.py               # every target (see RUNS)
    .venv/bin/python benchmarks/finetune_digits.py --only resnet18-1p googlenet-1p --seeds 1

Each run's folder is kept under ``--work`` (default /tmp/backbones-finetune-bench/NAME-seedS); a
folder that already holds a finished run is read instead of run again, so the report can be
completed over several sessions and re-rendered without training.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backbones.core.files import atomic_write_text  # noqa: E402

REPORT = ROOT / "benchmarks" / "FINETUNE.md"
SEEDS = (0, 1, 2)

# name -> (model, processes, seeds, options, target top-1 in %, what the target is)
RUNS: dict[str, tuple[str, int, tuple[int, ...], list[str], float, str]] = {
    "resnet18-1p": ("resnet18", 1, SEEDS, ["--image-size", "32", "--epochs", "5"], 97.0, "default recipe, 5 epochs"),
    "resnet18-2p": (
        "resnet18",
        2,
        SEEDS,
        ["--image-size", "32", "--epochs", "5", "--batch-size", "32"],
        97.0,
        "default recipe, 5 epochs, 2 x 32 = the same global batch of 64",
    ),
    "googlenet-1p": ("googlenet_v1", 1, SEEDS, ["--image-size", "64", "--epochs", "5"], 96.5, "aux heads, 5 epochs"),
    "googlenet-2p": (
        "googlenet_v1",
        2,
        SEEDS,
        ["--image-size", "64", "--epochs", "5", "--batch-size", "32"],
        96.5,
        "aux heads, 5 epochs, 2 x 32",
    ),
    "resnet18-10ep": (
        "resnet18",
        1,
        SEEDS,
        ["--image-size", "32", "--epochs", "10"],
        98.5,
        "beyond the RBF SVC: the default recipe for 10 epochs",
    ),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_once(
    model: str, processes: int, seed: int, options: list[str], out: Path, train: bool = True, threads: int | None = None
) -> list[dict]:
    """One fine-tuning run in fresh processes (or the finished one already in ``out``); its metrics.jsonl records."""
    epochs = int(options[options.index("--epochs") + 1])
    metrics = out / "metrics.jsonl"
    if (out / "model.safetensors").exists() and metrics.exists():
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        if len(records) == epochs and records[-1]["processes"] == processes:
            return records
    if not train:
        return []
    cores = os.cpu_count() or 1
    threads = threads or max(1, cores // processes)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    command = ["finetune", model, "--data", "digits", "--out", str(out), "--seed", str(seed), "--quiet", *options]
    if (out / "checkpoints").exists():
        command.append("--resume")  # an interrupted run of the same recipe continues
    if processes > 1:
        launcher = [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master-port",
            str(_free_port()),
        ]
        argv = [sys.executable, *launcher, "-m", "backbones", *command]
    else:
        argv = [sys.executable, "-m", "backbones", *command]
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def svc_baseline(seed: int = 0) -> float:
    """Top-1 of scikit-learn's RBF SVC (default settings) on the same split, pixels scaled to [0, 1]."""
    from sklearn.svm import SVC

    from backbones.data.digits import load_digits_arrays
    from backbones.data.splits import stratified_split

    images, labels = load_digits_arrays()
    train, val = stratified_split(labels.tolist(), 0.2, seed)
    flat = images.flatten(1).numpy()
    classifier = SVC(kernel="rbf").fit(flat[train], labels[train].numpy())
    return float((classifier.predict(flat[val]) == labels[val].numpy()).mean())


def write_report(
    results: dict[str, dict], svc: float, load: str, threads: int | None, unfinished: list[str] | None = None
) -> None:
    lines = [
        "# Fine-tuning on the digits (issue 13)",
        "",
        f"Written by `benchmarks/finetune_digits.py` on {time.strftime('%Y-%m-%d %H:%M')} "
        f"({os.cpu_count()} cores, torch threads per process: {threads or 'cores / processes'}). {load}",
        "",
        "Data: scikit-learn's 1,797 real 8x8 digits, stratified seed-0 split 1437 train / 360 validation, "
        "upsampled to the input size; random initialisation; SGD nesterov lr 0.05 batch 64 per process, "
        "1 warmup epoch then cosine, no augmentation (the digits' default). Top-1 is the final "
        "validation accuracy; the median is over the seeds listed.",
        "",
        f"Classical baseline on the same split: RBF SVC (scikit-learn defaults) **{100 * svc:.2f}%**.",
        "",
        "| run | model | input | processes | seeds | top-1 per seed (%) | median top-1 | target | met | "
        "s / epoch | images/s per process |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} ({r['what']}) | {r['model']} | {r['size']}x{r['size']} | {r['processes']} | "
            f"{len(r['top1'])} | {', '.join(f'{100 * t:.2f}' for t in r['top1'])} | "
            f"**{100 * statistics.median(r['top1']):.2f}%** | >= {r['target']}% | "
            f"{'yes' if 100 * statistics.median(r['top1']) >= r['target'] else 'NO'} | "
            f"{r['seconds']:.1f} | {r['per_process']:.0f} |"
        )
    lines += [
        "",
        "Seconds per epoch count training only (not the validation pass); images/s per process is the "
        "training throughput of one process. The machine is shared with other jobs while this runs, so "
        "times are noisy (see the load average above); accuracies do not depend on it.",
        "",
    ]
    if unfinished:
        lines += [f"Not finished when this report was written (left out above): {', '.join(unfinished)}.", ""]
    atomic_write_text(REPORT, "\n".join(lines))


def _write(results: dict, svc: float, before: tuple, threads: int | None, unfinished: list[str]) -> None:
    load = f"Load average (1 min) {before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the last update."
    write_report(results, svc, load, threads, unfinished)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(RUNS), help="run only these")
    parser.add_argument("--seeds", type=int, help="use only the first N seeds of each run")
    parser.add_argument(
        "--threads", type=int, help="torch threads per process (default: cores / processes; 1 on a shared machine)"
    )
    parser.add_argument("--report-only", action="store_true", help="report the finished runs in --work, train none")
    parser.add_argument("--work", type=Path, default=Path("/tmp/backbones-finetune-bench"), help="run folders")
    args = parser.parse_args()
    svc = svc_baseline()
    results: dict[str, dict] = {}
    unfinished: list[str] = []
    before = os.getloadavg()
    for name in args.only or list(RUNS):
        model, processes, seeds, options, target, what = RUNS[name]
        seeds = seeds[: args.seeds] if args.seeds else seeds
        top1, seconds, per_process = [], [], []
        for seed in seeds:
            folder = args.work / f"{name}-seed{seed}"
            records = run_once(model, processes, seed, options, folder, not args.report_only, args.threads)
            if not records:
                unfinished.append(f"{name} seed {seed}")
                continue
            top1.append(records[-1]["val_top1"])
            seconds += [r["seconds"] for r in records]
            per_process += [r["images_per_s_per_process"] for r in records]
            print(
                f"{name} seed {seed}: top-1 {100 * top1[-1]:.2f}%, {statistics.median(seconds):.1f} s/epoch", flush=True
            )
        if not top1:
            continue
        size = int(options[options.index("--image-size") + 1])
        results[name] = {
            "model": model,
            "processes": processes,
            "size": size,
            "top1": top1,
            "target": target,
            "what": what,
            "seconds": statistics.median(seconds),
            "per_process": statistics.median(per_process),
        }
        _write(results, svc, before, args.threads, unfinished)
    _write(results, svc, before, args.threads, unfinished)
    print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
