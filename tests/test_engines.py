"""Other engines behind optimize(backend=...) and export: OpenVINO, onnxruntime, auto; the same floors as torch's."""

from __future__ import annotations

import importlib.util
import sys
from collections import OrderedDict

import pytest
import torch

import backbones
from backbones.runtime.export import ExportError
from backbones.runtime.openvino_engine import compile_for_cpu
from backbones.runtime.outputs import EngineError

from .helpers import fresh_model, relative_max_diff, test_input_size
from .test_int8 import ACTIVATION_FLOOR_DB, _digits, _signal_preserving, sqnr_db
from .test_optimize import BF16_COSINE, FP32_TOLERANCE, _cosine

# Installed in `make test` (the test extra); a backend not installed is not a case, not a skip.
INSTALLED = [name for name in ("openvino", "onnxruntime") if importlib.util.find_spec(name)]


def _cpu_has_bf16_for_openvino() -> bool:
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _precisions(backend: str) -> list[str]:
    if backend == "onnxruntime":
        return ["fp32", "int8"]  # bf16 is refused (test below)
    return ["fp32", *(["bf16"] if _cpu_has_bf16_for_openvino() else []), "int8"]


CASES = [(backend, dtype) for backend in INSTALLED for dtype in _precisions(backend)]


@pytest.fixture(scope="module")
def resnet18() -> tuple[torch.nn.Module, list[torch.Tensor], torch.Tensor]:
    """resnet18 at its 32x32 minimum, weights at a trained network's scale, digits to calibrate and hold out."""
    model = _signal_preserving(fresh_model("resnet18")).eval()
    return model, _digits(model, "train", batches=2, batch_size=4), _digits(model, "val", batches=1, batch_size=4)[0]


@pytest.mark.parametrize(("backend", "dtype"), CASES, ids=[f"{b}-{d}" for b, d in CASES])
def test_every_backend_meets_the_accuracy_floor_of_its_precision(resnet18, backend: str, dtype: str) -> None:
    model, calibration, held_out = resnet18
    fast = backbones.optimize(
        model, dtype, backend=backend, calibration=calibration if dtype == "int8" else None, sample=held_out
    )
    assert fast.backend == backend and fast.dtype == dtype
    with torch.no_grad():
        expected = model(held_out)
    got = fast(held_out[:3])  # another batch size than the sample's: the batch is dynamic
    assert got.dtype == torch.float32 and got.shape == expected[:3].shape
    if dtype == "fp32":
        assert relative_max_diff(got, expected[:3]) <= FP32_TOLERANCE
    elif dtype == "bf16":
        assert _cosine(got, expected[:3]).min() >= BF16_COSINE
    else:
        assert sqnr_db(expected[:3], got) >= ACTIVATION_FLOOR_DB


def _assert_same_maps(got: object, expected: OrderedDict) -> None:
    assert type(got) is OrderedDict and list(got) == list(expected)
    assert relative_max_diff(got, expected) <= FP32_TOLERANCE


# Each backend and each exported format returns an OrderedDict once: the extractor on one, the FPN
# on the other (the unflattening is shared; what differs is how each engine orders and names outputs).
MAP_MODELS = {
    "openvino": ("resnet18", {"features_only": True, "out_indices": (1, 2)}),
    "onnxruntime": ("resnet18_fpn", {}),
}


@pytest.mark.parametrize("backend", INSTALLED)
def test_extractor_and_fpn_keep_their_ordered_maps_on_other_backends(backend: str) -> None:
    name, options = MAP_MODELS[backend]
    model = fresh_model(name, **options).eval()
    x = torch.randn(2, 3, test_input_size(model, 32), test_input_size(model, 32) + 16)
    fast = backbones.optimize(model, backend=backend, sample=x)
    with torch.no_grad():
        _assert_same_maps(fast(x), model(x))
    assert fast.feature_info == model.feature_info


@pytest.mark.parametrize("backend", INSTALLED)
def test_an_exported_file_loads_with_the_model_outputs(tmp_path, backend: str) -> None:
    """ONNX (run in onnxruntime) and OpenVINO IR: load_exported gives the eager outputs in their structure."""
    name, options = MAP_MODELS["onnxruntime" if backend == "openvino" else "openvino"]  # the other model
    model = fresh_model(name, **options).eval()
    suffix = ".xml" if backend == "openvino" else ".onnx"
    path = backbones.export(
        model, tmp_path / f"model{suffix}", dynamic_size=True, example_input=torch.randn(2, 3, 64, 64)
    )
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == (["model.bin", "model.xml"] if backend == "openvino" else ["model.onnx"])  # nothing half-written
    loaded = backbones.load_exported(path)
    assert loaded.backend == backend
    x = torch.randn(1, 3, 64, 96)  # another size: exported with dynamic_size
    with torch.no_grad():
        _assert_same_maps(loaded(x), model(x))


@pytest.mark.skipif("openvino" not in INSTALLED, reason="needs the openvino extra, which `make test` installs")
def test_int8_openvino_export_writes_an_nncf_quantized_ir(tmp_path, resnet18) -> None:
    model, calibration, held_out = resnet18
    path = backbones.export(model, tmp_path / "resnet18.xml", dtype="int8", calibration=calibration)
    assert "FakeQuantize" in path.read_text()  # NNCF's int8 operations
    loaded = backbones.load_exported(path)
    with torch.no_grad():
        assert loaded.dtype == "int8" and sqnr_db(model(held_out), loaded(held_out)) >= ACTIVATION_FLOOR_DB


def test_auto_keeps_the_fastest_backend_and_says_why_even_with_one_missing(monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    model = fresh_model("resnet18", features_only=True, out_indices=(1,)).eval()
    x = torch.randn(2, 3, 32, 32)
    with caplog.at_level("INFO", logger="backbones.runtime.engines"):
        fast = backbones.optimize(model, backend="auto", sample=x)
    assert list(fast.timings) == ["torch", "openvino", "onnxruntime"]
    assert fast.timings["openvino"] == "backend='openvino' needs OpenVINO: pip install backbones[openvino]"
    measured = {name: t for name, t in fast.timings.items() if isinstance(t, float)}
    assert set(measured) == {"torch", *INSTALLED} - {"openvino"}
    assert fast.backend == min(measured, key=measured.get)
    assert f"backend='auto' chose {fast.backend}" in caplog.text
    with torch.no_grad():
        _assert_same_maps(fast(x), model(x))


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_a_backend_that_is_not_installed_is_one_line_naming_the_install(monkeypatch, backend: str) -> None:
    monkeypatch.setitem(sys.modules, backend, None)
    install = "pip install backbones[openvino]" if backend == "openvino" else "pip install onnxruntime"
    with pytest.raises(EngineError, match=rf"^backend='{backend}' needs \w+: {install}$".replace("[", r"\[")):
        backbones.optimize(fresh_model("resnet18"), backend=backend)


def test_int8_on_openvino_without_nncf_names_the_extra(monkeypatch, resnet18) -> None:
    monkeypatch.setitem(sys.modules, "nncf", None)
    model, calibration, _ = resnet18
    with pytest.raises(EngineError, match=r"needs NNCF: pip install backbones\[openvino\]"):
        backbones.optimize(model, "int8", backend="openvino", calibration=calibration)


def test_bf16_is_refused_where_the_backend_or_the_cpu_has_none(monkeypatch) -> None:
    with pytest.raises(EngineError, match=r"onnxruntime' cannot run bf16.*use backend='openvino' or 'torch'"):
        backbones.optimize(fresh_model("resnet18"), "bf16", backend="onnxruntime")
    import openvino

    class CpuWithoutBf16(openvino.Core):
        def get_property(self, device: str, name: str) -> object:
            return ["FP32", "INT8"] if name == "OPTIMIZATION_CAPABILITIES" else super().get_property(device, name)

    monkeypatch.setattr(openvino, "Core", CpuWithoutBf16)
    with pytest.raises(EngineError, match="cannot run bf16 on this CPU: it has no bf16 instructions"):
        compile_for_cpu(None, "bf16")


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"backend": "tensorrt"}, ValueError, "backend must be 'torch', 'openvino', 'onnxruntime' or 'auto'"),
        ({"backend": "openvino", "compile": True}, ValueError, "compile=True is for backend='torch'"),
        ({"backend": "onnxruntime", "dtype": "int8"}, ValueError, "needs calibration"),
        ({"backend": "auto", "sample": torch.randn(2, 1, 32, 32)}, ValueError, "expected 3 input channels"),
    ],
    ids=["unknown", "compile", "int8-without-calibration", "bad-sample"],
)
def test_backend_misuse_is_one_clear_error(options: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        backbones.optimize(fresh_model("resnet18"), **options)


def test_an_engine_model_refuses_another_size_than_it_was_built_for_in_one_line(resnet18) -> None:
    model, _, held_out = resnet18
    fast = backbones.optimize(model, backend=INSTALLED[0], sample=held_out)
    with pytest.raises(ValueError, match=r"compiled for 32x32 images, got 48x48; .*dynamic_size=True"):
        fast(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="expected 3 input channels"):
        fast(torch.randn(1, 1, 32, 32))


@pytest.mark.parametrize("name", ["model.pt2", "missing.onnx"])
def test_load_exported_refuses_what_it_cannot_run_in_one_line(tmp_path, name: str) -> None:
    with pytest.raises(ExportError, match=r"runs \.onnx and OpenVINO \.xml files|no exported file"):
        backbones.load_exported(tmp_path / name)


def test_import_backbones_optimize_imports_no_engine() -> None:
    from .helpers import run_python

    engines = {"openvino", "nncf", "onnxruntime", "onnx"}
    code = (
        f"import sys, backbones; backbones.optimize, backbones.load_exported; print([*{engines} & sys.modules.keys()])"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
