"""The figures measured outside the timing rounds: peak memory, import, load and compile times.

Memory, import and compile times each run in a fresh interpreter, so that nothing the benchmark
process already loaded, allocated or compiled counts.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from backbones.apps.benchmark.timing import median_seconds

__all__ = ["compile_times", "import_times", "load_times", "peak_memory"]


def _python(code: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run ``code`` in a fresh interpreter; its wall time and stdout.

    Raises:
        RuntimeError: The interpreter failed; the message is its last line of stderr.
    """
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "subprocess failed")
    return time.perf_counter() - start, result.stdout


def import_times(repeats: int = 5) -> dict[str, float]:
    """Median wall time of ``import torch`` and of ``import torch, backbones`` in fresh interpreters.

    Args:
        repeats: Interpreters started for each.

    Returns:
        Seconds for each, and their difference (``"backbones itself"``).
    """
    torch_only = statistics.median(_python("import torch")[0] for _ in range(repeats))
    with_ours = statistics.median(_python("import torch, backbones")[0] for _ in range(repeats))
    return {
        "import torch": torch_only,
        "import torch, backbones": with_ours,
        "backbones itself": with_ours - torch_only,
    }


def load_times(arch: str = "resnet50", repeats: int = 7) -> dict[str, float]:
    """Median time to read cached weights: safetensors (memory-mapped) against torch.load of a .pth.

    Args:
        arch: Whose (randomly initialised) weights are saved and read.
        repeats: Timed reads of each.

    Returns:
        Seconds per way of loading.
    """
    from safetensors.torch import load_file, save_file

    from backbones.models.factory import create_model

    state = create_model(arch).state_dict()
    with tempfile.TemporaryDirectory() as folder:
        st_path, pth_path = Path(folder) / "w.safetensors", Path(folder) / "w.pth"
        save_file({k: v.contiguous() for k, v in state.items()}, st_path)
        torch.save(state, pth_path)
        cases = {
            "safetensors load_file": lambda: load_file(st_path),
            "torch.load(weights_only=True)": lambda: torch.load(pth_path, weights_only=True),
            "torch.load(weights_only=True, mmap=True)": lambda: torch.load(pth_path, weights_only=True, mmap=True),
            f"create_model({arch!r}, pretrained=<.safetensors>)": lambda: create_model(arch, pretrained=st_path),
        }
        return {name: median_seconds(load, repeats) for name, load in cases.items()}


_MEMORY_SCRIPT = """
import gc, json, re, sys, torch
torch.set_num_threads({threads})
from backbones.apps.benchmark.variants import build_variants
arch, name, batch, height, width = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
x = torch.randn(batch, 3, height, width)
run = build_variants(arch, with_compile=False, only=[name], fpn_size=(height, width))[name]
gc.collect()
# Reset the high-water mark so that building the model does not count (Linux clear_refs).
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
with torch.inference_mode():
    for _ in range(3):
        run(x)
status = open("/proc/self/status").read()
print(json.dumps(int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))))
"""


def peak_memory(arch: str, batch: int, size: tuple[int, int], names: Sequence[str], threads: int) -> dict[str, float]:
    """Peak resident memory (MiB) while one variant runs three batches, in a fresh process.

    Only that variant is kept, and the kernel's high-water mark is reset after building: the
    figure is its weights plus its peak working memory, above the Python and torch runtime
    (the same for all variants). A fixed malloc mmap threshold makes freed tensors (the
    reference models built alongside, the unfolded copy behind an optimized model) go back to
    the kernel; with glibc's adaptive threshold they stay resident and would be counted.

    Args:
        arch: The architecture.
        batch: Images per batch.
        size: Input (height, width).
        names: The variants to measure, one process each.
        threads: Intra-op threads in each process.

    Returns:
        MiB per variant; NaN for a variant whose process failed.
    """
    results = {}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    for name in names:
        result = subprocess.run(
            [sys.executable, "-c", _MEMORY_SCRIPT.format(threads=threads), arch, name, str(batch), *map(str, size)],
            capture_output=True,
            text=True,
            env=env,
        )
        results[name] = (
            json.loads(result.stdout.strip().splitlines()[-1]) / 1024 if result.returncode == 0 else float("nan")
        )
    return results


_COMPILE_SCRIPT = """
import time, torch, backbones
torch.set_num_threads({threads})
model = backbones.create_model("resnet50").eval()
x = torch.randn(8, 3, 224, 224)
start = time.perf_counter()
fast = backbones.optimize(model, dtype={dtype}, compile=True)
fast(x)
print(time.perf_counter() - start)
"""


def compile_times(threads: int) -> dict[str, float]:
    """First-call time of ``optimize(resnet50, compile=True)`` in a fresh process, fp32 and bf16.

    Each first with an empty inductor cache (cold), then again with the cache that run filled (warm).

    Args:
        threads: Intra-op threads in each process.

    Returns:
        Seconds per dtype and cache state.

    Raises:
        RuntimeError: A process failed.
    """
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {"TORCHINDUCTOR_CACHE_DIR": cache}
        for dtype in ("torch.float32", "torch.bfloat16"):
            code = _COMPILE_SCRIPT.format(threads=threads, dtype=dtype)
            results[f"{dtype} cold"] = float(_python(code, env)[1].strip())
            results[f"{dtype} warm (second start)"] = float(_python(code, env)[1].strip())
    return results
