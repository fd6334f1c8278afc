"""What the benchmark times: every way of running one architecture, ours and the references'.

torchvision's and timm's models, ours eager, optimized and compiled in each dtype, the int8 peers
(:mod:`backbones.apps.benchmark.quantized`) and the engines' (:mod:`backbones.apps.benchmark.engines`:
OpenVINO, onnxruntime), all with the same weights. torchvision and timm are needed here only
(``pip install backbones[test]``), the engines where installed; ``import backbones`` never imports them.
"""

from __future__ import annotations

import copy
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from backbones.apps.benchmark.config import BASELINE
from backbones.apps.benchmark.engines import ENGINE_VARIANTS, engine_factories, optimize_backends
from backbones.apps.benchmark.quantized import TORCHVISION_QUANTIZED, calibration, torchvision_quantized
from backbones.core.vocabulary import DTYPES, dtype_name
from backbones.runtime.fusion import mkldnn_fusion_available
from backbones.runtime.quantize_pt2e import torchao_available

__all__ = ["AUX_HEAD_ARCHITECTURES", "ENGINE_VARIANTS", "VARIANTS", "Runner", "build_variants", "variant_dtype"]

# Every variant a run can time (those of one workload depend on the model, the dtypes, whether
# it compiles, the CPU's bf16 support, whether torchao and the engines are installed, and whether
# optimize() takes backend="auto").
VARIANTS = (
    BASELINE,
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
    *ENGINE_VARIANTS,
    "ours auto fp32",
    "ours auto bf16",
    "ours auto int8",
)

# A timed variant: called on a batch; what it returns is not looked at.
Runner = Callable[[torch.Tensor], Any]

# Architectures with auxiliary classifiers: the benchmark builds them without (inference only).
AUX_HEAD_ARCHITECTURES = frozenset({"googlenet_v1", "inception_v3"})


def variant_dtype(variant: str) -> str:
    """What a variant computes in, from its name.

    Args:
        variant: One of :data:`VARIANTS`.

    Returns:
        The dtype its name states (``"int8"``, ``"bf16"``), else ``"fp32"``.
    """
    return next((word for word in variant.split() if word in DTYPES), "fp32")


def _references(arch: str) -> tuple[nn.Module, nn.Module | None]:
    """torchvision's and timm's model for ``arch`` (timm has no googlenet_v1: None), randomly initialised."""
    import torchvision

    tv_name = {"googlenet_v1": "googlenet"}.get(arch, arch)
    kwargs = {"aux_logits": False, "init_weights": True} if arch in AUX_HEAD_ARCHITECTURES else {}
    tv = torchvision.models.get_model(tv_name, weights=None, **kwargs).eval()
    timm_model = None
    if arch != "googlenet_v1":
        import timm

        timm_model = timm.create_model(arch, pretrained=False).eval()
    return tv, timm_model


def _models(arch: str, fpn_size: tuple[int, int]) -> tuple[nn.Module, nn.Module, nn.Module | None, torch.Tensor | None]:
    """torchvision's model, ours with the same weights, timm's (or None), and the example input.

    The example input is what the optimized variants pack their weights for and int8 calibrates at:
    None (the model's own input size) for a classifier, the workload's size for the FPN.
    """
    from backbones.models.factory import create_model

    if arch == "resnet50_fpn":
        from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

        tv, timm_model = resnet_fpn_backbone(backbone_name="resnet50", weights=None).eval(), None
        example: torch.Tensor | None = torch.randn(1, 3, *fpn_size)
    else:
        (tv, timm_model), example = _references(arch), None
    ours = create_model(arch, **({"aux_logits": False} if arch in AUX_HEAD_ARCHITECTURES else {})).eval()
    ours.load_state_dict(tv.state_dict())
    return tv, ours, timm_model, example


def _compiled(model: nn.Module) -> nn.Module:
    # A copy of its own: compiling never touches the module the eager variants run.
    return torch.compile(copy.deepcopy(model), options={"freezing": True})


def _autocast(model: nn.Module) -> Runner:
    def run(x: torch.Tensor) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)

    return run


def _channels_last(model: nn.Module) -> Runner:
    model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    return lambda x: model(x.contiguous(memory_format=torch.channels_last))


def _noted(run: Any, note: str) -> Any:
    """``run`` with ``note`` (what the report prints beside its timings) attached."""
    run.note = note
    return run


def _picked(run: Any) -> Any:
    """An ``optimize(backend=...)`` result, noted with the engine it runs on (and auto's timings)."""
    timings = getattr(run, "timings", None) or {}
    # A backend auto could not use is recorded with its reason: its first words fit a table cell.
    tried = ", ".join(
        f"{k} {v * 1e3:.0f} ms" if isinstance(v, float) else f"{k} failed: {textwrap.shorten(str(v), 60)}"
        for k, v in timings.items()
    )
    return _noted(run, f"engine {run.backend}" + (f" (auto timed {tried})" if tried else ""))


def _optimizer(backend: str) -> Callable[..., Any]:
    """``optimize`` on ``backend``: torch's path unchanged, else through the engine, its result noted."""
    from backbones.runtime.optimize import optimize

    if backend == "torch":
        return optimize
    return lambda model, **options: _picked(optimize(model, backend=backend, **options))


def build_variants(
    arch: str,
    with_compile: bool,
    only: Sequence[str] | None = None,
    dtypes: Sequence[str] = DTYPES,
    fpn_size: tuple[int, int] = (800, 1344),
    backend: str = "torch",
    sample: torch.Tensor | None = None,
) -> dict[str, Runner]:
    """Every way of running ``arch`` the benchmark compares, by name, built and ready to time.

    Args:
        arch: A classification architecture or ``"resnet50_fpn"``.
        with_compile: Also build the torch.compile variants.
        only: Build just these names (the baseline too only when listed); all by default.
        dtypes: Build the variants of these dtypes (the baseline is fp32 and always kept).
        fpn_size: The FPN's input (height, width), which its optimized and int8 variants are prepared for.
        backend: The engine ``optimize`` runs "ours optimized" and "ours int8" on (``"torch"``, or
            one :func:`~backbones.apps.benchmark.engines.optimize_backends` names); the compiled
            variants are torch's whatever it is.
        sample: The workload's batch, which ``optimize(backend="auto")`` times the engines on
            (default: one image of the workload's size).

    Returns:
        ``{variant name: runner}``; a runner with a ``note`` attribute has it printed beside its timings.

    Raises:
        ValueError: A dtype outside the shared vocabulary.
    """
    from backbones.runtime.optimize import optimize

    dtypes = [dtype_name(d, what="the benchmark's dtypes") for d in dtypes]
    tv, ours, timm_model, example = _models(arch, fpn_size)
    optimized = _optimizer(backend)
    factories: dict[str, Callable[[], Runner]] = {
        BASELINE: lambda: tv,
        "torchvision channels_last": lambda: _channels_last(tv),
        "torchvision bf16 autocast": lambda: _autocast(tv),
        "ours eager fp32": lambda: ours,
        "ours optimized fp32": lambda: optimized(ours, example_input=example),
        "ours optimized bf16": lambda: optimized(ours, dtype="bf16", example_input=example),
    }
    if timm_model is not None:
        factories["timm eager fp32"] = lambda: timm_model
    if with_compile:
        factories["torchvision compiled fp32"] = lambda: _compiled(tv)
        if arch != "resnet50_fpn":
            factories["torchvision compiled bf16 autocast"] = lambda: _autocast(_compiled(tv))
        factories["ours compiled fp32"] = lambda: optimize(ours, compile=True, example_input=example)
        factories["ours compiled bf16"] = lambda: optimize(ours, dtype="bf16", compile=True, example_input=example)
    batches = calibration(ours, example) if "int8" in dtypes else None
    if batches is not None:
        factories["ours int8"] = lambda: optimized(ours, dtype="int8", calibration=batches)
        if with_compile and torchao_available():
            factories["ours compiled int8"] = lambda: optimize(
                ours, dtype="int8", compile=True, calibration=batches, example_input=example
            )
        if arch in TORCHVISION_QUANTIZED:
            factories["torchvision quantized int8"] = lambda: torchvision_quantized(arch, tv, batches)
    side = ours.pretrained_cfg["input_size"][-1]
    engine_example = torch.randn(1, 3, side, side) if example is None else example
    factories.update(engine_factories(ours, engine_example, batches))
    if "auto" in optimize_backends():
        auto = _optimizer("auto")
        # auto keeps the engine fastest on the batch it times: the workload's own.
        timed_on = {"sample": engine_example if sample is None else sample}
        factories["ours auto fp32"] = lambda: auto(ours, example_input=example, **timed_on)
        factories["ours auto bf16"] = lambda: auto(ours, dtype="bf16", example_input=example, **timed_on)
        if batches is not None:
            factories["ours auto int8"] = lambda: auto(ours, dtype="int8", calibration=batches, **timed_on)
    if not mkldnn_fusion_available(torch.bfloat16):
        # oneDNN's bf16 kernels need AVX-512 (bw, vl, dq) or AVX-NE-CONVERT; without them ours runs on
        # the fp32 kernels (backbones.runtime.bf16): fp32's speed, no bf16 speed to measure.
        factories = {n: f for n, f in factories.items() if not (n.startswith("ours") and variant_dtype(n) == "bf16")}
    assert set(factories) <= set(VARIANTS), sorted(set(factories) - set(VARIANTS))
    wanted = [n for n in factories if (only is None or n in only) and (n == BASELINE or variant_dtype(n) in dtypes)]
    return {name: factories[name]() for name in wanted}
