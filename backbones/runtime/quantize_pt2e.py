"""int8 through the pt2e flow and torch.compile: ``optimize(model, dtype="int8", compile=True)``.

The flow PyTorch now maintains in torchao: the model is exported with ``torch.export`` (batch size
dynamic), annotated by torchao's ``X86InductorQuantizer`` (per-channel symmetric int8 weights,
uint8 activations from a histogram observer), calibrated, converted to quantize/dequantize pairs,
and handed to inductor, which fuses each pair with its convolution into oneDNN int8 kernels and
the residual additions and ReLUs after them. Measured on resnet50 at batch 8 it ran about 1.1x
the speed of the eager int8 kernels of :mod:`backbones.runtime.quantize` (which are torchvision's),
at the price of a compile on the first call (seconds to minutes) and of the optional torchao
package.

Two things make torchao's quantizer work on our models (and on torchvision's). A module called
at two places (a ResNet block's one ``ReLU``) is one "source partition" with two outputs, which
the quantizer refuses ("Input partition has more than one output node"): each call gets its own
copy first. And on CPUs without VNNI, activations keep to 7 bits as in the eager engine; with
8 bits the int8 products saturate and the SQNR falls well below the 7-bit one's.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
import torch.fx
import torch.nn as nn
from torch import Tensor

from backbones.runtime.fusion import folded_copy
from backbones.runtime.quantize import (
    QuantizationReport,
    calibration_tensors,
    cpu_has_vnni,
    drop_traced_weight_checks,
    forget_quantized_modules,
    select_x86_engine,
)
from backbones.runtime.torchscript_builtins import forget_replaced_operators

__all__ = ["quantize_int8_compiled", "separate_shared_modules", "torchao_available"]

_INSTALL_HINT = "install torchao (pip install torchao, or pip install 'backbones[int8]')"


def torchao_available() -> bool:
    """Whether the torchao package (the pt2e quantization flow) can be imported."""
    try:
        import torchao.quantization.pt2e  # noqa: F401
    except ImportError:
        return False
    forget_replaced_operators()
    return True


def separate_shared_modules(network: torch.fx.GraphModule) -> int:
    """Give every repeated call of a parameterless module its own copy; returns how many calls moved.

    ``torch.export`` records each operation's module by name, and torchao's quantizer groups the
    operations of one module into one pattern; a module called twice would be a pattern with two
    outputs. Only modules without parameters or buffers are copied, so no weight is duplicated.
    """
    called: set[str] = set()
    moved = 0
    for node in network.graph.nodes:
        if node.op != "call_module":
            continue
        target = str(node.target)
        module = network.get_submodule(target)
        stateless = next(iter([*module.parameters(), *module.buffers()]), None) is None
        if target in called and stateless:
            copy_name = f"{target.replace('.', '_')}_{node.name}"
            network.add_submodule(copy_name, copy.deepcopy(module))
            node.target = copy_name
            node.meta.pop("nn_module_stack", None)  # the tracer's record names the shared module
            moved += 1
        called.add(target)
    network.recompile()
    return moved


def _report(network: torch.fx.GraphModule, engine: str, batches: int) -> QuantizationReport:
    """Which convolutions and linear layers take int8 inputs (a dequantize feeds them) and which do not."""
    weighted = {torch.ops.aten.conv2d.default, torch.ops.aten.linear.default}
    report = QuantizationReport(engine=f"{engine} (pt2e, inductor)", calibration_batches=batches)
    for node in network.graph.nodes:
        if node.op != "call_function" or node.target not in weighted:
            continue
        source = node.args[0]
        if isinstance(source, torch.fx.Node) and "dequantize" in str(source.target):
            report.int8_layers += 1
        else:
            report.float_layers[f"{node.name} ({node.target})"] = "the quantizer left its input in float"
    return report


def quantize_int8_compiled(model: nn.Module, calibration: Tensor | Iterable) -> tuple[nn.Module, QuantizationReport]:
    """Quantize a copy of ``model`` to int8 with torchao's pt2e flow and compile it with inductor.

    Args:
        model: A float backbones model (classifier, ``features_only`` extractor or FPN).
        calibration: Batches of preprocessed images (see
            :func:`backbones.runtime.quantize.calibration_tensors`).

    Returns:
        The compiled int8 network (float32 in and out; it compiles on its first call) and a
        :class:`~backbones.runtime.quantize.QuantizationReport`.

    Raises:
        RuntimeError: torchao is not installed.
        ValueError: Missing or malformed calibration, or batches of more than one image size (the
            network is compiled for the calibration size; the batch size may vary).

    Example:
        >>> network, report = quantize_int8_compiled(backbones.create_model("resnet18"), torch.randn(8, 3, 224, 224))
        >>> report.int8_layers
        21
    """
    if not torchao_available():
        raise RuntimeError(f"dtype='int8' with compile=True uses torchao's pt2e quantization: {_INSTALL_HINT}")
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    batches = calibration_tensors(calibration, getattr(model, "in_chans", 3), getattr(model, "min_input_size", 1))
    engine = select_x86_engine()
    network = drop_traced_weight_checks(folded_copy(model)[0])
    separate_shared_modules(network)
    example = batches[0].contiguous(memory_format=torch.channels_last)
    sizes = sorted({tuple(batch.shape[-2:]) for batch in batches})
    if len(sizes) > 1:
        raise ValueError(
            f"calibration batches come in {len(sizes)} image sizes ({', '.join(f'{h}x{w}' for h, w in sizes)}); "
            "int8 with compile=True is compiled for one: give batches of the size you will run"
        )
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config(reduce_range=not cpu_has_vnni()))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(deprecat|register_constant).*")
        # The batch size is dynamic. Height and width are not: exported at one size, the program
        # carries shape guards of that size's pooling arithmetic (checked in FrozenCompiled).
        batch_dim = {0: torch.export.Dim.AUTO}
        exported = torch.export.export(network, (example,), dynamic_shapes=(batch_dim,)).module()
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for batch in batches:
                prepared(batch.contiguous(memory_format=torch.channels_last))
        converted = convert_pt2e(prepared)
    forget_quantized_modules()
    report = _report(converted, engine, len(batches))
    allow_exported_model_train_eval(converted)  # OptimizedModel sets eval mode, a no-op here
    return FrozenCompiled(converted, tuple(example.shape[-2:])), report


class FrozenCompiled(nn.Module):
    """``torch.compile`` of a converted pt2e network for one image size, every call (and so every compile)
    with freezing on.

    Inductor folds the int8 weights into packed oneDNN constants only when its process-wide
    ``freezing`` setting is on while it compiles (``torch.compile(options={"freezing": True})``
    fails on the int8 weight-packing op); this sets it for the calls of this network only.
    """

    def __init__(self, network: nn.Module, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.compiled = torch.compile(network)
        self.image_size = image_size

    def forward(self, x: Tensor) -> object:
        from torch._inductor import config

        if tuple(x.shape[-2:]) != self.image_size:
            height, width = self.image_size
            raise ValueError(
                f"this int8 network was compiled for {height}x{width} images (the calibration batches' size), "
                f"got {x.shape[-2]}x{x.shape[-1]}: calibrate at the size you will run, or use compile=False, "
                "whose int8 kernels take any size"
            )

        # The batch dimension is dynamic from the first call: one compile serves every batch size
        # (left to itself, torch.compile specialises on the first and compiles again for a second).
        torch._dynamo.maybe_mark_dynamic(x, 0)
        with config.patch(freezing=True):
            return self.compiled(x)
