"""The engine peers: OpenVINO (f32, its default precision, NNCF int8) and onnxruntime (fp32, int8 QDQ).

Each is built from our model with the weights every other variant of the workload runs, so the
ratios compare engines, not weights; the int8 ones calibrate on the batches our int8 takes
(:func:`~backbones.apps.benchmark.quantized.calibration`). Both run on as many threads as torch
(``INFERENCE_NUM_THREADS``, ``intra_op_num_threads``), one synchronous request at a time, with a
dynamic batch as :func:`backbones.optimize` has. openvino, nncf and onnxruntime are optional: a
variant whose package is missing is not built (:func:`engine_packages`).

Also here: which backends this build's :func:`backbones.optimize` takes (``bench --backend``,
the ``ours auto`` rows), read from its signature, so the benchmark follows the library as it grows.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

# The engines' variants: OpenVINO forced to f32, at its default precision (bf16 where the CPU has
# bf16 instructions; on other CPUs its default is f32 and the row would repeat "OpenVINO f32"), and
# quantized by NNCF; onnxruntime on our ONNX export, float and int8 QDQ.
ENGINE_VARIANTS = (
    "OpenVINO f32",
    "OpenVINO default bf16",
    "OpenVINO NNCF int8",
    "onnxruntime fp32",
    "onnxruntime int8",
)

__all__ = [
    "ENGINE_VARIANTS",
    "OnnxRuntimeModel",
    "OpenVinoModel",
    "check_backend",
    "convert_to_openvino",
    "engine_factories",
    "engine_packages",
    "openvino_default_is_bf16",
    "optimize_backends",
]


def engine_packages() -> dict[str, bool]:
    """Which optional engine packages are importable: ``{"openvino", "nncf", "onnxruntime": bool}``."""
    return {name: importlib.util.find_spec(name) is not None for name in ("openvino", "nncf", "onnxruntime")}


def optimize_backends() -> tuple[str, ...]:
    """The ``backend=`` values this build's :func:`backbones.optimize` takes: ``("torch",)`` without the option."""
    from backbones.core.vocabulary import ENGINES
    from backbones.runtime.optimize import optimize

    return ENGINES if "backend" in inspect.signature(optimize).parameters else ("torch",)


def check_backend(backend: str) -> str:
    """``backend`` checked against :func:`optimize_backends`.

    Args:
        backend: The engine the benchmark's own variants are to run on.

    Returns:
        Its canonical name.

    Raises:
        ValueError: A backend this build's ``optimize`` does not take (one line naming those it does).
    """
    from backbones.core.vocabulary import ENGINES, engine_name, one_of

    known = optimize_backends()
    name = backend.lower() if isinstance(backend, str) else backend
    if name in ENGINES and name not in known:
        raise ValueError(
            f"backend={backend!r}: this build's optimize() runs on {one_of(known)} only "
            "(its other engines are not in yet); use backend='torch'"
        )
    return engine_name(backend, allowed=known, what="the benchmark's backend")


def _quiet_nncf() -> None:
    # nncf logs each step and draws progress bars: noise in the benchmark's log.
    import nncf

    nncf.set_log_level(logging.ERROR)


def convert_to_openvino(model: nn.Module, example: torch.Tensor) -> Any:
    """``openvino.convert_model`` of ``model`` traced on ``example``, with a dynamic batch.

    Args:
        model: Our float model in eval mode (OpenVINO folds its BatchNorm itself).
        example: An input of the workload's size.

    Returns:
        The ``openvino.Model``.
    """
    import openvino

    with warnings.catch_warnings(), torch.no_grad():
        # The trace warns about every Python-level shape check of the model's input.
        warnings.simplefilter("ignore")
        return openvino.convert_model(model, example_input=example, input=[[-1, *example.shape[1:]]])


def openvino_default_is_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes in bf16 by default here (the CPU has bf16 instructions)."""
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoModel:
    """An ``openvino.Model`` compiled for the CPU, called like a model (its outputs are not looked at).

    Args:
        converted: What :func:`convert_to_openvino` returned (left untouched: NNCF works on a copy).
        precision: ``"f32"`` forces float32 (``INFERENCE_PRECISION_HINT``); None keeps OpenVINO's
            default (bf16 on CPUs with bf16 instructions).
        calibration: For int8: the calibration batches ``nncf.quantize`` takes, else None.

    Attributes:
        precision: The precision the compiled model reports (``"f32"``, ``"bf16"``).
        note: What the report prints beside its timings.
    """

    def __init__(
        self, converted: Any, precision: str | None = None, calibration: list[torch.Tensor] | None = None
    ) -> None:
        import openvino

        if calibration is not None:
            import nncf

            _quiet_nncf()
            dataset = nncf.Dataset([batch.numpy() for batch in calibration])
            # Its progress bars (rich, on the current stdout) are not the benchmark's log.
            with contextlib.redirect_stdout(io.StringIO()):
                converted = nncf.quantize(converted.clone(), dataset, subset_size=sum(len(b) for b in calibration))
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"}
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = openvino.Core().compile_model(converted, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.note = f"OpenVINO {openvino.__version__.split('-')[0]}, computes in {self.precision}" + (
            f" around int8 (nncf {importlib.import_module('nncf').__version__})" if calibration is not None else ""
        )

    def __call__(self, x: torch.Tensor) -> Any:
        """OpenVINO's outputs for the batch ``x``."""
        return self.request.infer({0: x.numpy()})


class OnnxRuntimeModel:
    """Our model exported to ONNX (``export``; int8 QDQ with ``calibration``), run by onnxruntime's CPU provider.

    Called like a model. The file is read into the session and its folder removed.

    Args:
        ours: Our float model.
        example: An input of the workload's size, or None for the model's own input size.
        calibration: For int8: the calibration batches (the file is quantized by
            :mod:`backbones.runtime.onnx_int8`), else None for fp32.

    Attributes:
        file_mb: Size of the exported ONNX file in MB.
        note: What the report prints beside its timings.
    """

    def __init__(
        self, ours: nn.Module, example: torch.Tensor | None = None, calibration: list[torch.Tensor] | None = None
    ) -> None:
        import onnxruntime

        from backbones.runtime.export import export

        if calibration is not None:
            options: dict[str, Any] = {"dtype": "int8", "calibration": calibration}
        else:
            # Folded BatchNorm and constant folding: the graph a deployment would ship. Traced on
            # two images: a batch of one would fix the batch at one.
            options = {"optimize": True, "check": False}
            if example is not None:
                options["example_input"] = example.expand(2, *example.shape[1:]).contiguous()
        with tempfile.TemporaryDirectory(prefix="backbones-bench-") as folder:
            path = export(ours, Path(folder) / "model.onnx", dynamic_size=False, **options)
            program = path.read_bytes()
        self.file_mb = len(program) / 1e6
        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(program, session_options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.note = f"onnxruntime {onnxruntime.__version__}" + (", QDQ" if calibration is not None else "")

    def __call__(self, x: torch.Tensor) -> Any:
        """onnxruntime's outputs (numpy arrays) for the batch ``x``."""
        return self.session.run(None, {self.input_name: x.numpy()})


def engine_factories(
    ours: nn.Module, example: torch.Tensor, batches: list[torch.Tensor] | None = None
) -> dict[str, Callable[[], Any]]:
    """The installed engines' variants of ``ours``, by name, each built when called.

    Args:
        ours: Our float model in eval mode (the weights every variant of the workload runs).
        example: An input of the workload's size: what OpenVINO traces and the ONNX file is exported at.
        batches: The calibration batches for the int8 variants, or None for none.

    Returns:
        ``{name in ENGINE_VARIANTS: factory}`` for the engines whose packages are installed; all
        OpenVINO variants share one conversion.
    """
    packages = engine_packages()
    factories: dict[str, Callable[[], Any]] = {}
    if packages["openvino"]:
        converted: list[Any] = []

        def openvino_model() -> Any:
            # One conversion serves the three OpenVINO variants (it takes as long as compiling them).
            if not converted:
                converted.append(convert_to_openvino(ours, example))
            return converted[0]

        factories["OpenVINO f32"] = lambda: OpenVinoModel(openvino_model(), precision="f32")
        if openvino_default_is_bf16():
            factories["OpenVINO default bf16"] = lambda: OpenVinoModel(openvino_model())
        if batches is not None and packages["nncf"]:
            factories["OpenVINO NNCF int8"] = lambda: OpenVinoModel(openvino_model(), calibration=batches)
    if packages["onnxruntime"]:
        factories["onnxruntime fp32"] = lambda: OnnxRuntimeModel(ours, example)
        if batches is not None:
            factories["onnxruntime int8"] = lambda: OnnxRuntimeModel(ours, example, calibration=batches)
    return factories
