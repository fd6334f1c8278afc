"""Side-by-side speed, memory and load-time measurements against torchvision and timm.

Everything runs in one process, in interleaved rounds (each round runs every variant once, so a
slow spell of the machine hits all variants alike), and reports the median with min and max.
Ratios are to torchvision's eager fp32 model in the same run. torchvision and timm are needed
here only (``pip install backbones[test]``); ``import backbones`` never imports them.

Run ``python benchmarks/bench.py`` (or ``python -m backbones bench``); it writes
``benchmarks/RESULTS.md`` and a plot.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from backbones.runtime.fusion import mkldnn_fusion_available
from backbones.runtime.quantize_pt2e import torchao_available

__all__ = [
    "VARIANTS",
    "BenchmarkConfig",
    "Measurement",
    "image_side",
    "plot_workloads",
    "run_benchmarks",
    "variant_colours",
    "write_report",
]

BASELINE = "torchvision eager fp32"


@dataclass
class Measurement:
    """Timings of one variant on one workload (seconds per batch)."""

    workload: str
    variant: str
    batch: int
    times: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def images_per_second(self) -> float:
        return self.batch / self.median


@dataclass
class BenchmarkConfig:
    """What to measure.

    Attributes:
        models: Classification architectures to time.
        batches: Batch sizes for them.
        compile_batches: Batch sizes at which the torch.compile variants run (each compiles anew).
        fpn_sizes: Input sizes (H, W) for resnet50_fpn at batch 1.
        seconds_per_workload: Target wall time per workload, split into rounds.
        min_rounds, max_rounds: Bounds on the number of interleaved rounds.
        threads: Intra-op threads (default: every core).
        extras: Also measure peak memory, load, import and compile times (several subprocesses).
        dtypes: Which variants to time besides the baseline: ``"fp32"``, ``"bf16"``, ``"int8"``.
        variants: Only these variants (names as in :data:`VARIANTS`) besides the baseline; all by default.
    """

    models: Sequence[str] = ("resnet50", "vgg19", "googlenet_v1", "inception_v3")
    batches: Sequence[int] = (1, 8, 32)
    compile_batches: Sequence[int] = (8,)
    fpn_sizes: Sequence[tuple[int, int]] = ((800, 1344), (512, 864))
    seconds_per_workload: float = 40.0
    min_rounds: int = 3
    max_rounds: int = 15
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    extras: bool = True
    dtypes: Sequence[str] = ("fp32", "bf16", "int8")
    variants: Sequence[str] | None = None


# ----------------------------------------------------------------------------- variants

# Every variant a run can time (those of one workload depend on the model, the dtypes, whether
# it compiles, the CPU's bf16 support and whether torchao is installed).
VARIANTS = (
    "torchvision eager fp32",
    "torchvision channels_last",
    "torchvision bf16 autocast",
    "timm eager fp32",
    "ours eager fp32",
    "ours optimized fp32",
    "ours optimized bf16",
    "torchvision compiled fp32",
    "torchvision compiled bf16 autocast",
    "ours compiled fp32",
    "ours compiled bf16",
    "ours int8",
    "ours compiled int8",
    "torchvision quantized int8",
    "onnxruntime int8",
)


Runner = Callable[[torch.Tensor], Any]


def _references(arch: str) -> tuple[nn.Module, nn.Module | None]:
    """torchvision's and timm's model for ``arch`` (timm's may be missing), with our weights' values."""
    import torchvision

    tv_name = {"googlenet_v1": "googlenet"}.get(arch, arch)
    kwargs = {"aux_logits": False, "init_weights": True} if arch in {"googlenet_v1", "inception_v3"} else {}
    tv = torchvision.models.get_model(tv_name, weights=None, **kwargs).eval()
    timm_model = None
    if arch != "googlenet_v1":
        import timm

        timm_model = timm.create_model(arch, pretrained=False).eval()
    return tv, timm_model


def _compiled(model: nn.Module) -> nn.Module:
    return torch.compile(copy.deepcopy(model), options={"freezing": True})


def _autocast(model: nn.Module) -> Runner:
    def run(x: torch.Tensor) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)

    return run


def _channels_last(model: nn.Module) -> Runner:
    model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    return lambda x: model(x.contiguous(memory_format=torch.channels_last))


def _models(
    arch: str, fpn_size: tuple[int, int] = (800, 1344)
) -> tuple[nn.Module, nn.Module, nn.Module | None, torch.Tensor | None]:
    """torchvision's model, ours with the same weights, timm's (or None), and the example input
    the optimized variants pack their weights for and int8 calibrates at (None: the model's own
    input size; the FPN's workload size for the FPN)."""
    from backbones.models.factory import create_model

    if arch == "resnet50_fpn":
        from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

        tv, timm_model = resnet_fpn_backbone(backbone_name="resnet50", weights=None).eval(), None
        example: torch.Tensor | None = torch.randn(1, 3, *fpn_size)
    else:
        (tv, timm_model), example = _references(arch), None
    ours = create_model(arch, **({"aux_logits": False} if arch in {"googlenet_v1", "inception_v3"} else {})).eval()
    ours.load_state_dict(tv.state_dict())
    return tv, ours, timm_model, example


# torchvision's post-training-quantizable models (x86 engine), by our architecture name.
_TV_QUANTIZED = {
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "googlenet_v1": "googlenet",
    "inception_v3": "inception_v3",
}
CALIBRATION_BATCHES, CALIBRATION_BATCH_SIZE = 4, 8
# Larger inputs (the FPN's) calibrate on fewer batches, as many pixels as 4 x 8 images at 299x299:
# the histogram observers' cost grows with the pixels (one batch of 8 FPN images at 800x1344 took
# 98 s to build, calibrate and quantize here, longer than the timing).
CALIBRATION_PIXELS = CALIBRATION_BATCHES * CALIBRATION_BATCH_SIZE * 299 * 299


def image_side(arch: str) -> int:
    """The side of the square images a classifier's workloads feed ``arch``: its training size."""
    return 299 if arch == "inception_v3" else 224


def variant_dtype(variant: str) -> str:
    """``"int8"``, ``"bf16"`` or ``"fp32"``: what a variant computes in, from its name."""
    return next((d for d in ("int8", "bf16") if d in variant), "fp32")


def _calibration(model: nn.Module, example: torch.Tensor | None) -> list[torch.Tensor]:
    """The calibration batches every int8 variant shares: the digits at the workload's input size."""
    from backbones.data.calibration import calibration_batches

    size = example.shape[-1] if example is not None else model.pretrained_cfg["input_size"][-1]
    pixels = example.shape[-2] * example.shape[-1] if example is not None else size * size
    count = min(CALIBRATION_BATCHES, max(1, round(CALIBRATION_PIXELS / (CALIBRATION_BATCH_SIZE * pixels))))
    batches = calibration_batches(model, "digits", batches=count, batch_size=CALIBRATION_BATCH_SIZE, image_size=size)
    if example is not None and example.shape[-2] != example.shape[-1]:  # FPN workloads are not square
        batches = [nn.functional.interpolate(b, size=example.shape[-2:], mode="bilinear") for b in batches]
    return batches


def _torchvision_quantized(arch: str, tv: nn.Module, calibration: list[torch.Tensor]) -> nn.Module:
    """torchvision's quantizable ``arch`` with ``tv``'s weights, quantized as torchvision does
    (fused modules, the x86 engine's default qconfig, eager-mode prepare/convert) on ``calibration``."""
    import warnings

    import torchvision.models.quantization as tvq
    from torch.ao.quantization import convert, get_default_qconfig, prepare

    from backbones.runtime.quantize import quantized_engine

    engine = quantized_engine()
    options = {} if arch.startswith("resnet") else {"aux_logits": False, "init_weights": False}
    model = getattr(tvq, _TV_QUANTIZED[arch])(weights=None, quantize=False, **options).eval()
    model.load_state_dict(tv.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fuse_model(is_qat=False)
        model.qconfig = get_default_qconfig(engine)
        prepare(model, inplace=True)
        with torch.no_grad():
            for batch in calibration:
                model(batch)
        return convert(model, inplace=True)


class _OnnxRuntimeInt8:
    """Our model exported to int8 QDQ ONNX (``export(dtype="int8")``), run by onnxruntime's CPU
    provider; called like a model. The file is read into the session and its folder removed."""

    def __init__(self, ours: nn.Module, calibration: list[torch.Tensor]) -> None:
        import onnxruntime

        from backbones.runtime.export import export

        with tempfile.TemporaryDirectory(prefix="backbones-bench-") as folder:
            path = export(ours, Path(folder) / "int8.onnx", dtype="int8", calibration=calibration, dynamic_size=False)
            program = path.read_bytes()
        self.file_mb = len(program) / 1e6
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(program, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> Any:
        return self.session.run(None, {self.input_name: x.numpy()})


def build_variants(
    arch: str,
    with_compile: bool,
    only: Sequence[str] | None = None,
    dtypes: Sequence[str] = ("fp32", "bf16", "int8"),
    fpn_size: tuple[int, int] = (800, 1344),
) -> dict[str, Runner]:
    """Every way of running ``arch`` the benchmark compares (or just those in ``only``, or of
    ``dtypes``), by name; the FPN's prepared for ``fpn_size`` images (height, width)."""
    from backbones.runtime.optimize import optimize

    tv, ours, timm_model, example = _models(arch, fpn_size)
    factories: dict[str, Callable[[], Runner]] = {
        BASELINE: lambda: tv,
        "torchvision channels_last": lambda: _channels_last(tv),
        "torchvision bf16 autocast": lambda: _autocast(tv),
        "ours eager fp32": lambda: ours,
        "ours optimized fp32": lambda: optimize(ours, example_input=example),
        "ours optimized bf16": lambda: optimize(ours, dtype=torch.bfloat16, example_input=example),
    }
    if timm_model is not None:
        factories["timm eager fp32"] = lambda: timm_model
    if with_compile:
        factories["torchvision compiled fp32"] = lambda: _compiled(tv)
        if arch != "resnet50_fpn":
            factories["torchvision compiled bf16 autocast"] = lambda: _autocast(_compiled(tv))
        factories["ours compiled fp32"] = lambda: optimize(ours, compile=True, example_input=example)
        factories["ours compiled bf16"] = lambda: optimize(
            ours, dtype=torch.bfloat16, compile=True, example_input=example
        )
    if "int8" in dtypes:
        calibration = _calibration(ours, example)
        factories["ours int8"] = lambda: optimize(ours, dtype="int8", calibration=calibration)
        if with_compile and torchao_available():
            factories["ours compiled int8"] = lambda: optimize(
                ours, dtype="int8", compile=True, calibration=calibration, example_input=example
            )
        if arch in _TV_QUANTIZED:
            factories["torchvision quantized int8"] = lambda: _torchvision_quantized(arch, tv, calibration)
        factories["onnxruntime int8"] = lambda: _OnnxRuntimeInt8(ours, calibration)
    if not mkldnn_fusion_available(torch.bfloat16):
        # oneDNN's bf16 kernels need AVX-512 (bw, vl, dq) or AVX-NE-CONVERT; without them ours runs on
        # the fp32 kernels (backbones.runtime.bf16): fp32's speed, no bf16 speed to measure.
        factories = {n: f for n, f in factories.items() if not (n.startswith("ours") and variant_dtype(n) == "bf16")}
    assert set(factories) <= set(VARIANTS), sorted(set(factories) - set(VARIANTS))
    wanted = [n for n in factories if (only is None or n in only) and (n == BASELINE or variant_dtype(n) in dtypes)]
    return {name: factories[name]() for name in wanted}


# ----------------------------------------------------------------------------- timing


def time_interleaved(
    workload: str, variants: dict[str, Runner], x: torch.Tensor, config: BenchmarkConfig, log: Callable[[str], None]
) -> list[Measurement]:
    """Warm every variant up (compiling where needed), then time them in interleaved rounds."""
    measurements = {name: Measurement(workload, name, x.shape[0]) for name in variants}
    with torch.inference_mode():
        for name, run in variants.items():
            start = time.perf_counter()
            run(x)
            first = time.perf_counter() - start
            run(x)
            if first > 5:
                measurements[name].note = f"first call {first:.1f} s"
        # One timed pass sizes the number of rounds to the time budget.
        one_round = 0.0
        for name, run in variants.items():
            start = time.perf_counter()
            run(x)
            elapsed = time.perf_counter() - start
            measurements[name].times.append(elapsed)
            one_round += elapsed
        rounds = int(
            min(config.max_rounds, max(config.min_rounds, config.seconds_per_workload // max(one_round, 1e-9)))
        )
        for _ in range(rounds - 1):
            for name, run in variants.items():
                start = time.perf_counter()
                run(x)
                measurements[name].times.append(time.perf_counter() - start)
    baseline = measurements[BASELINE].median
    for m in measurements.values():
        log(f"  {m.variant:<38} {m.median * 1e3:9.1f} ms  x{baseline / m.median:5.2f}  ({len(m.times)} rounds)")
    return list(measurements.values())


# ----------------------------------------------------------------------------- the other figures


def _python(code: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "subprocess failed")
    return time.perf_counter() - start, result.stdout


def import_times(repeats: int = 5) -> dict[str, float]:
    """Median wall time of ``import torch`` and of ``import torch, backbones`` in fresh interpreters."""
    torch_only = statistics.median(_python("import torch")[0] for _ in range(repeats))
    with_ours = statistics.median(_python("import torch, backbones")[0] for _ in range(repeats))
    return {
        "import torch": torch_only,
        "import torch, backbones": with_ours,
        "backbones itself": with_ours - torch_only,
    }


def load_times(arch: str = "resnet50", repeats: int = 7) -> dict[str, float]:
    """Median time to read cached weights: safetensors (memory-mapped) vs torch.load of a .pth."""
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
        results = {}
        for name, fn in cases.items():
            fn()
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - start)
            results[name] = statistics.median(samples)
    return results


_MEMORY_SCRIPT = """
import gc, json, re, sys, torch
torch.set_num_threads({threads})
from backbones.apps.benchmark import build_variants
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
    """First-call time of ``optimize(resnet50, compile=True)`` in a fresh process: with an empty
    inductor cache (cold), then again with the cache that run filled (warm)."""
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {"TORCHINDUCTOR_CACHE_DIR": cache}
        for dtype in ("torch.float32", "torch.bfloat16"):
            code = _COMPILE_SCRIPT.format(threads=threads, dtype=dtype)
            results[f"{dtype} cold"] = float(_python(code, env)[1].strip())
            results[f"{dtype} warm (second start)"] = float(_python(code, env)[1].strip())
    return results


def conv_ceiling(threads: int, repeats: int = 7) -> dict[str, float]:
    """GFLOP/s of one 3x3 convolution, 256 -> 256 channels on [8, 256, 56, 56] channels-last, per dtype:
    the rate the optimized paths work under on this machine (oneDNN fp32/bf16, the x86 int8 engine).

    bf16 is left out on CPUs where oneDNN has no bf16 kernels: our bf16 path runs on the fp32 kernels
    there, and PyTorch's emulated bf16 convolution is no ceiling of anything."""
    import torch.ao.nn.quantized as nnq

    from backbones.runtime.quantize import quantized_engine

    torch.set_num_threads(threads)
    x = torch.randn(8, 256, 56, 56).contiguous(memory_format=torch.channels_last)
    conv = nn.Conv2d(256, 256, 3, padding=1, bias=False).eval()
    quantized_engine()
    int8 = nnq.Conv2d(256, 256, 3, padding=1)
    int8.set_weight_bias(
        torch.quantize_per_channel(
            conv.weight.detach(), torch.full((256,), 0.01), torch.zeros(256, dtype=torch.long), 0, torch.qint8
        ),
        None,
    )
    int8.scale, int8.zero_point = 0.05, 0
    runs = {
        "fp32": (conv, x),
        "bf16": (copy.deepcopy(conv).bfloat16(), x.bfloat16()),
        "int8": (int8, torch.quantize_per_tensor(x, 0.05, 128, torch.quint8)),
    }
    if not mkldnn_fusion_available(torch.bfloat16):
        del runs["bf16"]
    flops = 2 * 8 * 256 * 256 * 9 * 56 * 56
    rates = {}
    with torch.inference_mode():
        for dtype, (layer, inputs) in runs.items():
            layer(inputs)
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                layer(inputs)
                samples.append(time.perf_counter() - start)
            rates[dtype] = flops / statistics.median(samples) / 1e9
    return rates


def model_macs(arch: str, size: tuple[int, int]) -> int:
    """Multiply-adds of one image through ``arch`` at ``size`` (torch's flop counter, via summary)."""
    from backbones.apps.analysis import summary
    from backbones.models.factory import create_model

    options = {"aux_logits": False} if arch in {"googlenet_v1", "inception_v3"} else {}
    return summary(create_model(arch, **options).eval(), (1, 3, *size)).total_macs


def model_sizes(variants: dict[str, Runner]) -> dict[str, float]:
    """MB of the weights as saved, for those of ``variants`` that have them: the fp32 state dicts
    (torchvision's baseline, always timed, holds the same tensors as ours), our int8 one and
    torchvision's quantized one (torch.save), and onnxruntime's int8 ONNX file."""
    import io

    def saved(module: nn.Module) -> float:
        buffer = io.BytesIO()
        torch.save(module.state_dict(), buffer)
        return buffer.tell() / 1e6

    sizes = {}
    for name in (BASELINE, "ours eager fp32", "ours int8", "torchvision quantized int8"):
        if name in variants:
            model = variants[name]
            sizes[name] = saved(model.network if hasattr(model, "network") else model)
    if "onnxruntime int8" in variants:
        sizes["onnxruntime int8 (.onnx file)"] = variants["onnxruntime int8"].file_mb
    return sizes


# ----------------------------------------------------------------------------- the run


def _only(config: BenchmarkConfig) -> list[str] | None:
    """The variants a run times: the baseline (every ratio's denominator) and those asked for."""
    return None if config.variants is None else [BASELINE, *config.variants]


def run_benchmarks(config: BenchmarkConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every measurement and return them (see :func:`write_report`)."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(0)
    measurements: list[Measurement] = []
    results: dict[str, Any] = {"measurements": measurements, "config": config}

    def run_workload(arch: str, workload: str, x: torch.Tensor, with_compile: bool) -> None:
        log(workload)
        only, size = _only(config), (x.shape[-2], x.shape[-1])
        variants = build_variants(arch, with_compile=with_compile, only=only, dtypes=config.dtypes, fpn_size=size)
        measurements.extend(time_interleaved(workload, variants, x, config, log))
        if "int8" in config.dtypes and "model_mb" not in results:
            # The first workload's models, as timed: the sizes sit beside its timings.
            results.update(model_mb_arch=arch, model_mb=model_sizes(variants))
        if with_compile:
            # torch.compile keeps every compiled network alive (as globals of its generated code)
            # until reset; free them before the next models are built (a run without this was
            # killed for memory, at 24 GB, on its last workload).
            torch._dynamo.reset()

    for arch in config.models:
        size = image_side(arch)
        for batch in config.batches:
            x = torch.randn(batch, 3, size, size)
            run_workload(arch, f"{arch} batch {batch} {size}x{size}", x, batch in config.compile_batches)
    for height, width in config.fpn_sizes:
        x = torch.randn(1, 3, height, width)
        first = (height, width) == tuple(config.fpn_sizes[0])
        run_workload("resnet50_fpn", f"resnet50_fpn batch 1 {height}x{width}", x, first)
    results["environment"] = environment(config.threads)
    log("3x3 convolution ceiling and multiply-adds")
    results["conv_gflops"] = conv_ceiling(config.threads)
    results["macs"] = {arch: model_macs(arch, (image_side(arch), image_side(arch))) for arch in config.models}
    results["macs"].update({f"resnet50_fpn {h}x{w}": model_macs("resnet50_fpn", (h, w)) for h, w in config.fpn_sizes})
    if config.extras:
        log("memory")
        names = [BASELINE, "torchvision channels_last", "ours eager fp32", "ours optimized fp32", "ours optimized bf16"]
        names += [] if "int8" not in config.dtypes else ["ours int8", "torchvision quantized int8"]
        results["memory_mib"] = {
            "resnet50 batch 8 224x224": peak_memory("resnet50", 8, (224, 224), names, config.threads),
            "resnet50_fpn batch 1 800x1344": peak_memory("resnet50_fpn", 1, (800, 1344), names[:-1], config.threads),
        }
        log("load, import and compile times")
        results.update(
            load_seconds=load_times(), import_seconds=import_times(), compile_seconds=compile_times(config.threads)
        )

    return results


def environment(threads: int) -> dict[str, str]:
    """The machine and software the numbers come from."""
    import importlib.metadata as metadata

    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    with contextlib.suppress(Exception):
        text = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.*)", text).group(1)  # type: ignore[union-attr]
        found = re.search(r"flags\s*:\s*(.*)", text).group(1).split()  # type: ignore[union-attr]
        flags = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8") if f in found]
    versions = {}
    for package in ("torch", "torchvision", "timm", "safetensors", "huggingface_hub"):
        with contextlib.suppress(Exception):
            versions[package] = metadata.version(package)
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "threads": str(threads),
        "cpu flags": " ".join(flags) or "none of avx512/amx",
        "python": platform.python_version(),
        **versions,
        "date": time.strftime("%Y-%m-%d"),
    }


# ----------------------------------------------------------------------------- the report


def _ratio_table(measurements: list[Measurement]) -> list[str]:
    lines: list[str] = []
    for workload in dict.fromkeys(m.workload for m in measurements):
        rows = [m for m in measurements if m.workload == workload]
        baseline = next(m for m in rows if m.variant == BASELINE).median
        lines += [
            f"### {workload}",
            "",
            "| variant | median ms | min ms | max ms | images/s | x torchvision eager fp32 | note |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for m in sorted(rows, key=lambda m: m.median, reverse=True):
            lines.append(
                f"| {m.variant} | {m.median * 1e3:.1f} | {min(m.times) * 1e3:.1f} | {max(m.times) * 1e3:.1f} | "
                f"{m.images_per_second:.1f} | {baseline / m.median:.2f} | {m.note} |"
            )
        lines.append("")
    return lines


TARGETS = {  # resnet50 batch 8: variant -> minimum ratio to torchvision eager fp32
    "ours eager fp32": 0.97,
    "ours optimized fp32": 1.5,
    "ours compiled fp32": 1.9,
    "ours optimized bf16": 4.0,
    "ours compiled bf16": 4.0,
}


def ratio(measurements: list[Measurement], workload: str, variant: str) -> float | None:
    rows = {m.variant: m for m in measurements if m.workload == workload}
    if variant not in rows or BASELINE not in rows:
        return None
    return rows[BASELINE].median / rows[variant].median


def write_report(results: dict[str, Any], markdown: Path, plot: Path | None = None) -> None:
    """Write RESULTS.md (and a PNG plot when matplotlib is installed), each atomically."""
    from backbones.core.files import atomic_write_text

    measurements: list[Measurement] = results["measurements"]
    env = results["environment"]
    target_workload = "resnet50 batch 8 224x224"
    lines = [
        "# Benchmark results",
        "",
        "Written by `benchmarks/bench.py` (`python -m backbones bench`). Every figure is the median of",
        "interleaved rounds in one process; ratios are to torchvision's eager fp32 model in the same run.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in env.items()],
        "",
        "## Targets (resnet50, batch 8, 224x224)",
        "",
        "| variant | target | measured | met |",
        "| --- | ---: | ---: | --- |",
    ]
    tv_compiled = ratio(measurements, target_workload, "torchvision compiled fp32")
    for variant, target in TARGETS.items():
        measured = ratio(measurements, target_workload, variant)
        if measured is None:
            continue
        met = measured >= target
        if variant == "ours compiled fp32" and tv_compiled is not None:
            met = met and measured > tv_compiled
            target_text = f">= {target} and > torchvision compiled ({tv_compiled:.2f})"
        else:
            target_text = f">= {target}"
        lines.append(f"| {variant} | {target_text} | {measured:.2f} | {'yes' if met else 'NO'} |")
    if lines[-1] == "| --- | ---: | ---: | --- |":  # no row: the run did not measure that workload
        lines[-4:] = [
            lines[-4],
            "",
            f"Not measured in this run: the targets are for {target_workload}; this run timed "
            f"{', '.join(dict.fromkeys(m.workload for m in measurements)) or 'nothing'}.",
        ]
    lines += ["", "## Speed", "", *_ratio_table(measurements)]
    lines += [
        "## Scaling (images/s)",
        "",
        "| model | variant | " + " | ".join(f"batch {b}" for b in results["config"].batches) + " |",
    ]
    lines += ["| --- | --- |" + " ---: |" * len(results["config"].batches)]
    for arch in results["config"].models:
        for variant in (BASELINE, "ours optimized fp32", "ours optimized bf16"):
            cells = []
            for batch in results["config"].batches:
                rows = [
                    m for m in measurements if m.variant == variant and m.workload.startswith(f"{arch} batch {batch} ")
                ]
                cells.append(f"{rows[0].images_per_second:.1f}" if rows else "")
            lines.append(f"| {arch} | {variant} | " + " | ".join(cells) + " |")
    lines += _int8_section(results)
    if "memory_mib" in results:
        lines += _extras(results)
    if plot is not None and _plot(measurements, plot):
        lines += ["", f"![speed-ups over torchvision eager fp32]({plot.name})"]
    atomic_write_text(markdown, "\n".join(lines) + "\n")


# Issue 15's int8 targets: (workload prefix, int8 variant, compared with, minimum ratio).
INT8_TARGETS = (
    ("resnet50 batch 8 ", "ours int8", "torchvision quantized int8", 1.0),
    ("resnet50 batch 8 ", "ours int8", "ours optimized bf16", 1.8),
    ("googlenet_v1 batch 8 ", "ours int8", "torchvision quantized int8", 1.0),
    ("inception_v3 batch 8 ", "ours int8", "torchvision quantized int8", 1.0),
    ("vgg19 batch 8 ", "ours int8", "ours optimized bf16", 1.8),
    ("resnet50_fpn ", "ours int8", "ours optimized bf16", 1.8),
    # The pt2e flow (optimize(dtype="int8", compile=True), with torchao) against the same peers.
    ("resnet50 batch 8 ", "ours compiled int8", "torchvision quantized int8", 1.0),
    ("googlenet_v1 batch 8 ", "ours compiled int8", "torchvision quantized int8", 1.0),
    ("inception_v3 batch 8 ", "ours compiled int8", "torchvision quantized int8", 1.0),
)
# Shown beside the targets (no target of their own): int8 over our fp32 path and over onnxruntime's int8.
INT8_CONTEXT = (
    ("ours int8", "ours optimized fp32"),
    ("ours int8", "onnxruntime int8"),
    ("ours compiled int8", "ours int8"),
)


def _median(measurements: list[Measurement], workload: str, variant: str) -> float | None:
    return next((m.median for m in measurements if m.workload == workload and m.variant == variant), None)


def _int8_section(results: dict[str, Any]) -> list[str]:
    """int8 targets (speed-up of one variant over another in the same run), batch-1 latency, the
    3x3-convolution ceiling with each optimized path's share of it, and model sizes."""
    measurements: list[Measurement] = results["measurements"]
    workloads = list(dict.fromkeys(m.workload for m in measurements))
    lines = ["", "## int8 (issue 15)", "", "| workload | variant | over | target | measured | met |"]
    lines.append("| --- | --- | --- | ---: | ---: | --- |")
    for prefix, variant, other, target in INT8_TARGETS:
        for workload in (w for w in workloads if w.startswith(prefix)):
            fast, slow = _median(measurements, workload, variant), _median(measurements, workload, other)
            if fast and slow:
                measured = slow / fast
                met = "yes" if measured >= target else "NO"
                lines.append(f"| {workload} | {variant} | {other} | >= {target} | {measured:.2f} | {met} |")
            elif fast and other == "ours optimized bf16":
                lines.append(f"| {workload} | {variant} | {other} | >= {target} | not run | CPU lacks oneDNN bf16 |")
    for workload in (w for w in workloads if _median(measurements, w, "ours int8")):
        for variant, other in INT8_CONTEXT:
            fast, slow = _median(measurements, workload, variant), _median(measurements, workload, other)
            if fast and slow:
                lines.append(f"| {workload} | {variant} | {other} | (none) | {slow / fast:.2f} | |")
    lines += ["", "### Batch-1 latency (median ms)", "", "| workload | variant | ms |", "| --- | --- | ---: |"]
    for m in measurements:
        if m.batch == 1:
            lines.append(f"| {m.workload} | {m.variant} | {m.median * 1e3:.1f} |")
    if "conv_gflops" in results:
        rates = results["conv_gflops"]
        lines += [
            "",
            "### Share of the 3x3-convolution ceiling",
            "",
            "Ceiling: one 3x3 convolution, 256 -> 256 channels on [8, 256, 56, 56] channels-last, per dtype: "
            + ", ".join(f"{d} {r:.0f} GFLOP/s" for d, r in rates.items())
            + ". Each path's rate is 2 x multiply-adds x batch / median time.",
            "",
            "| workload | variant | GFLOP/s | share of its dtype's ceiling |",
            "| --- | --- | ---: | ---: |",
        ]
        for m in measurements:
            if m.variant not in ("ours optimized fp32", "ours optimized bf16", "ours int8", "ours compiled int8"):
                continue
            arch = m.workload.split(" batch ")[0]
            key = f"{arch} {m.workload.rsplit(' ', 1)[-1]}" if arch == "resnet50_fpn" else arch
            macs = results.get("macs", {}).get(key)
            if macs:
                rate = 2 * macs * m.batch / m.median / 1e9
                share = rate / rates[variant_dtype(m.variant)]
                lines.append(f"| {m.workload} | {m.variant} | {rate:.0f} | {share:.2f} |")
    if "model_mb" in results:
        arch = results.get("model_mb_arch", "resnet50")
        lines += ["", f"### {arch} weights as saved (MB)", "", "| form | MB |", "| --- | ---: |"]
        lines += [f"| {name} | {mb:.1f} |" for name, mb in results["model_mb"].items()]
    return lines


def _extras(results: dict[str, Any]) -> list[str]:
    lines = ["", "## Peak memory (resident MiB of a process that runs one variant)", ""]
    for workload, per_variant in results["memory_mib"].items():
        lines += [f"### {workload}", "", "| variant | peak RSS MiB |", "| --- | ---: |"]
        lines += [f"| {name} | {mib:.0f} |" for name, mib in per_variant.items()]
        lines.append("")
    lines += ["## Loading cached resnet50 weights (median)", "", "| how | ms |", "| --- | ---: |"]
    lines += [f"| {k} | {v * 1e3:.1f} |" for k, v in results["load_seconds"].items()]
    lines += ["", "## Import time (fresh interpreter, median)", "", "| what | ms |", "| --- | ---: |"]
    lines += [f"| {k} | {v * 1e3:.0f} |" for k, v in results["import_seconds"].items()]
    lines += [
        "",
        "## torch.compile time of optimize(resnet50, compile=True), first call in a fresh process",
        "",
        "| run | seconds |",
        "| --- | ---: |",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in results["compile_seconds"].items()]
    return lines


def plot_workloads(measurements: list[Measurement]) -> list[str]:
    """The workloads the plot shows: each model at batch 8 (or its largest batch when 8 was not run), and the FPNs."""
    workloads = list(dict.fromkeys(m.workload for m in measurements))
    shown = [w for w in workloads if "fpn" in w]
    for arch in dict.fromkeys(w.split(" batch ")[0] for w in workloads if " batch " in w and "fpn" not in w):
        batches = {m.batch: m.workload for m in measurements if m.workload.startswith(f"{arch} batch ")}
        shown.append(batches[8] if 8 in batches else batches[max(batches)])
    return sorted(shown, key=workloads.index)


def variant_colours(count: int) -> list[tuple[float, ...]]:
    """``count`` distinct colours: tab20 up to 20 variants, then evenly spaced hues."""
    import matplotlib

    if count <= 20:
        palette = matplotlib.colormaps["tab20"]
        # Dark shades first, then the light ones: neighbours in the legend stay easy to tell apart.
        order = [*range(0, 20, 2), *range(1, 20, 2)]
        return [palette(order[i]) for i in range(count)]
    hues = matplotlib.colormaps["hsv"]
    return [hues(i / count) for i in range(count)]


def _plot(measurements: list[Measurement], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from backbones.core.files import atomic_path

    workloads = plot_workloads(measurements)
    variants = list(dict.fromkeys(m.variant for m in measurements))
    if not workloads:
        return False
    fig, ax = plt.subplots(figsize=(11, 2 + 0.25 * len(workloads) * len(variants)))
    height = 0.8 / len(variants)
    for i, (variant, colour) in enumerate(zip(variants, variant_colours(len(variants)), strict=True)):
        values = [ratio(measurements, w, variant) or 0 for w in workloads]
        ax.barh([j + i * height for j in range(len(workloads))], values, height=height, label=variant, color=colour)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(workloads))], workloads)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("speed-up over torchvision eager fp32 (median)")
    # Beside the axes, never over the bars.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight", format="png")
    plt.close(fig)
    return True
