"""Post-training static int8 quantization, the network behind ``optimize(model, dtype="int8", ...)``.

The work is done by the library PyTorch maintains in this version, ``torch.ao.quantization``'s FX
graph mode: weights per-channel symmetric int8, activations uint8 with a scale found by a
histogram observer on the calibration batches. No observers or kernels of our own. The engine
follows the CPU (:func:`select_int8_engine`): where its flags show VNNI, torch.ao's oneDNN backend with
8-bit activations, whose patterns also fuse each residual or FPN addition into the convolution
before it; elsewhere the x86 engine (fbgemm kernels, the ones torchvision's quantized models run
on) with 7-bit activations, its default.

Why FX graph mode is the default and the pt2e flow (torchao's ``X86InductorQuantizer``,
:mod:`backbones.runtime.quantize_pt2e`) only comes with ``compile=True``: pt2e is not in torch
itself (it needs the separate torchao package) and only becomes fast through ``torch.compile``
(a C++ build at the first call), while FX graph mode gives eager int8 kernels right after
calibration, the same kernels as torchvision's quantized models. The graph is traced after
BatchNorm folding (``fusion.folded_copy``), so every family quantizes the same way: classifiers,
``features_only`` extractors and FPN models.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx
import torch.nn as nn
from torch import Tensor

from backbones.core.inputs import check_image_batch
from backbones.runtime.fusion import folded_copy
from backbones.runtime.torchscript_builtins import forget_replaced_operators

__all__ = [
    "QuantizationReport",
    "calibration_tensors",
    "cpu_has_vnni",
    "drop_traced_weight_checks",
    "engine_selected",
    "forget_quantized_modules",
    "quantize_int8",
    "select_int8_engine",
    "select_x86_engine",
]

# Why an operation the graph contains is left in float32, by the kind of operation.
_FLOAT_REASONS = {
    "InputRenormalize": "input re-normalisation (a per-channel scale and shift) runs on the float input",
}
_DEFAULT_FLOAT_REASON = "the x86 quantized backend has no int8 kernel for it; it runs on dequantized values"


@dataclass
class QuantizationReport:
    """What runs in int8 and what stays in float after :func:`quantize_int8`.

    Attributes:
        engine: The quantized engine the kernels were packed for (``torch.backends.quantized.engine``).
        int8_layers: How many convolutions and linear layers run as int8 kernels.
        float_layers: ``{operation: reason}`` for each operation that still computes in float32.
        calibration_batches: How many batches the activation ranges were observed on.
    """

    engine: str
    int8_layers: int = 0
    float_layers: dict[str, str] = field(default_factory=dict)
    calibration_batches: int = 0


def cpu_has_vnni() -> bool:
    """Whether this CPU has an int8 dot-product instruction (AVX512-VNNI or AVX-VNNI), read from its flags.

    Without one, x86 int8 kernels multiply uint8 by int8 into 16-bit sums that saturate unless
    activations keep to 7 bits (``reduce_range``); with one, the sums are 32-bit.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False  # unknown: assume the safe, 7-bit activations
    return " avx512_vnni" in flags or " avx_vnni" in flags


def _qconfig_mapping(engine: str) -> Any:
    from torch.ao.quantization import (
        HistogramObserver,
        QConfig,
        default_per_channel_weight_observer,
        get_default_qconfig_mapping,
    )

    mapping = get_default_qconfig_mapping(engine)
    if engine != "onednn" and cpu_has_vnni():
        # The x86 engine's default keeps activations to 7 bits for CPUs without VNNI; with it, all
        # 8 (oneDNN's default already is).
        full_range = HistogramObserver.with_args(reduce_range=False)
        mapping.set_global(QConfig(activation=full_range, weight=default_per_channel_weight_observer))
    return mapping


def _backend_config(engine: str) -> Any:
    """torch.ao's backend config for ``engine``: the patterns it fuses and the ops it quantizes."""
    from torch.ao.quantization.backend_config import get_native_backend_config, get_onednn_backend_config

    return get_onednn_backend_config() if engine == "onednn" else get_native_backend_config()


def select_int8_engine() -> str:
    """Select, for the whole process, the quantized engine :func:`quantize_int8` packs for on this CPU; return it.

    ``onednn`` where the CPU has VNNI and this PyTorch has the engine: torch.ao's oneDNN backend
    fuses a convolution with the residual (or FPN) addition after it, and its ReLU, into one
    ``quantized::conv2d_add_relu`` kernel. The x86 engine has no such kernel; on VNNI CPUs it runs
    the same oneDNN convolutions and each addition as a separate ``quantized::add_relu``, an extra
    pass over every residual's activations (benchmarks/INT8_PROFILE.md has the timings). Elsewhere
    ``x86`` (see :func:`select_x86_engine`): oneDNN's int8 kernels are built for VNNI.

    Raises:
        RuntimeError: This PyTorch build has no x86 or fbgemm quantized engine.
    """
    if cpu_has_vnni() and "onednn" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "onednn"
        return "onednn"
    return select_x86_engine()


@contextlib.contextmanager
def engine_selected(engine: str | None) -> Iterator[None]:
    """Run the block with ``engine`` as torch's quantized engine (None: as it is), restoring the previous one after.

    The engine is a process-wide setting that some int8 kernels check at every call
    (``quantized::conv2d_add_relu`` exists for ``onednn`` only), and other code sets it too
    (torchvision's quantized models select ``x86``); an int8 network selects its own for its call.
    """
    previous = torch.backends.quantized.engine
    if engine is None or previous == engine:
        yield
        return
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def select_x86_engine() -> str:
    """Select, for the whole process, torch's ``x86`` quantized engine (``fbgemm`` on older builds); return it.

    The engine is a process-wide torch setting; int8 weights are packed for the engine set when
    they are converted, so it is selected before conversion.

    Raises:
        RuntimeError: This PyTorch build has no x86 or fbgemm quantized engine.
    """
    supported = torch.backends.quantized.supported_engines
    for engine in ("x86", "fbgemm"):
        if engine in supported:
            if torch.backends.quantized.engine != engine:
                torch.backends.quantized.engine = engine
            return engine
    raise RuntimeError(f"int8 needs PyTorch's x86 or fbgemm quantized engine; this build has only {supported}")


def calibration_tensors(calibration: Tensor | Iterable, in_chans: int, min_size: int) -> list[Tensor]:
    """The calibration batches as a list of checked float image batches.

    Args:
        calibration: One batch ``[N, C, H, W]``, or an iterable of batches, or of ``(images, labels)``
            pairs as a DataLoader yields them.
        in_chans: The channels the model takes.
        min_size: The model's smallest input side.

    Returns:
        The image batches, float32.

    Raises:
        ValueError: No batch at all, or a batch that is not an image batch the model accepts.
    """
    if calibration is None:
        raise ValueError(
            'dtype="int8" needs calibration: pass calibration= a few batches of preprocessed images, '
            "e.g. backbones.calibration_batches(model, 'digits')"
        )
    items = [calibration] if isinstance(calibration, Tensor) else list(calibration)
    batches = []
    for item in items:
        images = item if isinstance(item, Tensor) else item[0] if isinstance(item, (tuple, list)) and item else item
        if not isinstance(images, Tensor):
            raise ValueError(
                f"calibration batches must be image tensors [N, C, H, W] or (images, labels) pairs, got {type(item)}"
            )
        batches.append(check_image_batch(images, in_chans, min_size).float())
    if not batches:
        raise ValueError("calibration is empty: give at least one batch of preprocessed images")
    return batches


# Nodes that compute no tensor values (shapes, the input check, tuple access).
_BOOKKEEPING = {"size", "getitem", "getattr", "check_image_batch", "dequantize", "contiguous"}


def _float_operations(network: torch.fx.GraphModule) -> dict[str, str]:
    """The operations of a converted graph that compute on float32 tensors, each with the reason.

    Float flows from the input and out of every ``dequantize``; ``quantize_per_tensor`` and the
    quantized modules and ops produce int8; any other operation passes on what it takes.
    """
    is_float: dict[torch.fx.Node, bool] = {}
    floats = {}
    for node in network.graph.nodes:
        inputs = node.all_input_nodes
        if node.op == "placeholder" or node.target == "dequantize":
            is_float[node] = True
            continue
        if node.target is torch.quantize_per_tensor or node.op == "output":
            is_float[node] = False
            continue
        module = network.get_submodule(node.target) if node.op == "call_module" else None
        quantized_op = (module is not None and type(module).__module__.startswith("torch.ao.nn")) or (
            "quantized" in str(node.target)
        )
        is_float[node] = not quantized_op and any(is_float.get(a, False) for a in inputs)
        kind = type(module).__name__ if module is not None else getattr(node.target, "__name__", str(node.target))
        if is_float[node] and kind not in _BOOKKEEPING:
            floats[f"{node.name} ({kind})"] = _FLOAT_REASONS.get(kind, _DEFAULT_FLOAT_REASON)
    return floats


def drop_traced_weight_checks(network: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Remove the weight a traced input check compares the input's dtype with.

    A model's own ``check_image_batch`` may take one of its weights to check the input's dtype;
    traced, that is a ``get_attr`` of a convolution's weight, which no longer exists once the
    convolution is fused or quantized. The optimized model checks its input itself and converts
    it to the dtype its network runs in, so the traced check keeps its other checks only.
    """
    for node in network.graph.nodes:
        if node.op == "call_function" and getattr(node.target, "__name__", "") == "check_image_batch":
            node.args = node.args[:3]
            node.kwargs = {k: v for k, v in node.kwargs.items() if k != "weight"}
    network.graph.eliminate_dead_code()
    network.recompile()
    return network


def forget_quantized_modules() -> None:
    """Empty the cache in which torch.ao keeps every module it prepared or converted.

    ``torch.ao.quantization.fx.utils.assert_and_get_unique_device`` is an unbounded
    ``functools.lru_cache`` keyed by the module: without this, each quantized network (and its
    float copy with observers) stays in memory until the process ends, about 0.6 GB per VGG-11.
    torchao's pt2e flow goes through it too.
    """
    from torch.ao.quantization.fx import utils

    cache_clear = getattr(getattr(utils, "assert_and_get_unique_device", None), "cache_clear", None)
    if cache_clear is not None:
        cache_clear()


class _WithoutPlaceholderWork(torch.overrides.TorchFunctionMode):
    """Skip the work ``convert_fx`` does on placeholder weights it then overwrites.

    ``convert_fx`` builds each layer twice over: a float reference module (``nn.Linear.__init__``
    draws torch's default weights) whose weights are copied from the float network, then a
    quantized module whose ``__init__`` packs an empty int8 weight of the full size for the x86
    kernels (``linear_prepack``) before ``from_reference`` packs the real one. For a large
    classifier (VGG's) that wasted work is a large share of the conversion, as random draws and
    packing scale with the weights. This mode returns the initialisers' tensors untouched and packs a
    placeholder as a 1x1 weight; every weight of the quantized network still comes from the float
    network (the SQNR test over every registered model checks the outputs). A torch function mode
    is thread-local, so other threads keep their initialisation and packing.
    """

    _INITIALISERS = frozenset(
        {
            nn.init.kaiming_uniform_,
            nn.init.kaiming_normal_,
            nn.init.uniform_,
            nn.init.normal_,
            nn.init.xavier_uniform_,
            nn.init.xavier_normal_,
        }
    )

    def __init__(self) -> None:
        super().__init__()
        # By id, checked through a weak reference: a set of tensors would compare them elementwise.
        self._placeholders: dict[int, weakref.ref[Tensor]] = {}

    def _is_placeholder(self, tensor: object) -> bool:
        entry = self._placeholders.get(id(tensor))
        return entry is not None and entry() is tensor

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._INITIALISERS:
            return args[0] if args else kwargs["tensor"]
        if func is torch.ops.quantized.linear_prepack and args and self._is_placeholder(args[0]):
            weight = args[0]
            small = torch._empty_affine_quantized([1, 1], scale=1.0, zero_point=0, dtype=weight.dtype)
            return func(small, None)
        result = func(*args, **kwargs)
        if func is torch._empty_affine_quantized:
            self._placeholders[id(result)] = weakref.ref(result)
        return result


def _drop_observer_constructors(network: torch.fx.GraphModule) -> None:
    """Free the float layers torch.ao leaves reachable from a converted graph.

    Each node keeps the observer constructors prepare used (``meta["target_dtype_info"]``), and
    each constructor holds, in a closure, the float layer it observed (to read its device): a
    converted resnet50 kept 99 MB of float32 weights alive beside its 26 MB of int8 ones. The
    converted network never reads them.
    """
    for node in network.graph.nodes:
        node.meta.pop("target_dtype_info", None)


def _int8_layer_count(network: nn.Module) -> int:
    from torch.ao.nn import intrinsic as nni
    from torch.ao.nn import quantized as nnq

    weighted = (nnq.Conv2d, nnq.Linear, nni.quantized.ConvReLU2d, nni.quantized.LinearReLU)
    return sum(isinstance(m, weighted) for m in network.modules())


def quantize_int8(model: nn.Module, calibration: Tensor | Iterable) -> tuple[torch.fx.GraphModule, QuantizationReport]:
    """Quantize a copy of ``model`` to int8 (post-training static quantization; ``model`` is untouched).

    Args:
        model: A float backbones model (classifier, ``features_only`` extractor or FPN).
        calibration: Batches of preprocessed images (see :func:`calibration_tensors`); their
            activation ranges set the int8 scales. Use images like the ones the model will see.

    Returns:
        The int8 network (float32 in, float32 out, the float model's output structure) and a
        :class:`QuantizationReport`.

    Raises:
        ValueError: Missing or malformed calibration.

    Example:
        >>> network, report = quantize_int8(backbones.create_model("resnet18"), torch.randn(8, 3, 224, 224))
        >>> report.int8_layers
        21
    """
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from backbones.models.inception import InputRenormalize

    forget_replaced_operators()

    batches = calibration_tensors(calibration, getattr(model, "in_chans", 3), getattr(model, "min_input_size", 1))
    engine = select_int8_engine()
    backend_config = _backend_config(engine)
    network = drop_traced_weight_checks(folded_copy(model)[0])
    with warnings.catch_warnings():
        # torch.ao.quantization and quantized tensors announce their deprecation (the move to
        # torchao) on every call; they are what this torch ships, and the tests check the result.
        for message in (".*torch.ao.quantization.*", ".*reduce_range will be deprecated.*", ".*quantize_per_tensor.*"):
            warnings.filterwarnings("ignore", message=message)
        prepared = prepare_fx(
            network,
            _qconfig_mapping(engine),
            example_inputs=(batches[0][:1],),
            # Our own leaf layers stay whole, so the report can name them.
            prepare_custom_config=PrepareCustomConfig().set_non_traceable_module_classes([InputRenormalize]),
            backend_config=backend_config,
        )
        with torch.no_grad():
            for batch in batches:
                prepared(batch.contiguous(memory_format=torch.channels_last))
        with _WithoutPlaceholderWork():
            quantized = convert_fx(prepared, backend_config=backend_config)
    _drop_observer_constructors(quantized)
    forget_quantized_modules()
    report = QuantizationReport(engine, _int8_layer_count(quantized), _float_operations(quantized), len(batches))
    return quantized, report
