"""Other engines behind optimize(backend=...) and export: OpenVINO, onnxruntime, auto; the same floors as torch's."""

from __future__ import annotations

import importlib.util
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

import backbones
from backbones.runtime.export import ExportError
from backbones.runtime.openvino_engine import check_precision
from backbones.runtime.outputs import EngineError, OutputStructure

from .helpers import fresh_model, relative_max_diff
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
def tiny() -> tuple[torch.nn.Module, list[torch.Tensor], torch.Tensor]:
    """resnet18's stem and first stage (a features_only extractor: an OrderedDict of one map), weights at a
    trained network's scale, digits at 32x32 to calibrate and to hold out. Converting the whole
    network is 5x the time, for the same operators."""
    model = _signal_preserving(fresh_model("resnet18", features_only=True, out_indices=(1,))).eval()
    return model, _digits(model, "train", batches=2, batch_size=4), _digits(model, "val", batches=1, batch_size=4)[0]


# Built once per module: the size check below reuses the accuracy test's fp32 builds.
_BUILT: dict[tuple[str, str], torch.nn.Module] = {}


def _optimized(tiny, backend: str, dtype: str) -> torch.nn.Module:
    model, calibration, held_out = tiny
    if (backend, dtype) not in _BUILT:
        int8 = {"calibration": calibration} if dtype == "int8" else {}
        _BUILT[backend, dtype] = backbones.optimize(model, dtype, backend=backend, sample=held_out, **int8)
    return _BUILT[backend, dtype]


@pytest.mark.parametrize(("backend", "dtype"), CASES, ids=[f"{b}-{d}" for b, d in CASES])
def test_every_backend_meets_the_accuracy_floor_of_its_precision(tiny, backend: str, dtype: str) -> None:
    model, _, held_out = tiny
    fast = _optimized(tiny, backend, dtype)
    assert fast.backend == backend and fast.dtype == dtype
    with torch.no_grad():
        expected = model(held_out[:3])
    got = fast(held_out[:3])  # another batch size than the sample's: the batch is dynamic
    assert type(got) is OrderedDict and list(got) == list(expected)
    for mine, reference in zip(got.values(), expected.values(), strict=True):
        assert mine.dtype == torch.float32 and mine.shape == reference.shape
        if dtype == "fp32":
            assert relative_max_diff(mine, reference) <= FP32_TOLERANCE
        elif dtype == "bf16":
            assert _cosine(mine, reference).min() >= BF16_COSINE
        else:
            assert sqnr_db(reference, mine) >= ACTIVATION_FLOOR_DB


def test_an_engine_model_refuses_another_size_than_it_was_built_for_in_one_line(tiny) -> None:
    for backend in INSTALLED:
        fast = _optimized(tiny, backend, "fp32")
        with pytest.raises(ValueError, match=r"compiled for 32x32 images, got 48x48; .*dynamic_size=True"):
            fast(torch.randn(1, 3, 48, 48))
        with pytest.raises(ValueError, match="expected 3 input channels"):
            fast(torch.randn(1, 1, 32, 32))


def _assert_same_maps(got: object, expected: OrderedDict) -> None:
    assert type(got) is OrderedDict and list(got) == list(expected)
    assert relative_max_diff(got, expected) <= FP32_TOLERANCE


def _two_stages() -> torch.nn.Module:
    return fresh_model("resnet18", features_only=True, out_indices=(1, 2)).eval()


@pytest.mark.parametrize("backend", INSTALLED)
def test_several_maps_keep_their_names_and_order_on_other_backends(backend: str) -> None:
    model = _two_stages()
    x = torch.randn(2, 3, 32, 48)
    fast = backbones.optimize(model, backend=backend, sample=x)
    with torch.no_grad():
        _assert_same_maps(fast(x), model(x))
    assert fast.feature_info == model.feature_info


@pytest.mark.parametrize("backend", INSTALLED)
def test_an_exported_file_loads_with_the_model_outputs(tmp_path, backend: str) -> None:
    """ONNX (run in onnxruntime) and OpenVINO IR: load_exported gives the eager outputs in their structure."""
    model = _two_stages()
    suffix = ".xml" if backend == "openvino" else ".onnx"
    path = backbones.export(
        model, tmp_path / f"model{suffix}", dynamic_size=True, example_input=torch.randn(2, 3, 64, 64)
    )
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == (["model.bin", "model.xml"] if backend == "openvino" else ["model.onnx"])  # nothing half-written
    loaded = backbones.load_exported(path)
    assert loaded.backend == backend and loaded.dtype == "fp32"
    x = torch.randn(1, 3, 64, 96)  # another size: exported with dynamic_size
    with torch.no_grad():
        _assert_same_maps(loaded(x), model(x))


@pytest.mark.skipif("openvino" not in INSTALLED, reason="needs the openvino extra, which `make test` installs")
def test_int8_openvino_export_writes_an_nncf_quantized_ir(tmp_path, tiny) -> None:
    model, calibration, held_out = tiny
    path = backbones.export(model, tmp_path / "tiny.xml", dtype="int8", calibration=calibration)
    assert "FakeQuantize" in path.read_text()  # NNCF's int8 operations
    loaded = backbones.load_exported(path)
    assert loaded.dtype == "int8"
    with torch.no_grad():
        for reference, mine in zip(model(held_out).values(), loaded(held_out).values(), strict=True):
            assert sqnr_db(reference, mine) >= ACTIVATION_FLOOR_DB


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


def test_int8_on_openvino_without_nncf_names_the_extra(monkeypatch, tiny) -> None:
    monkeypatch.setitem(sys.modules, "nncf", None)
    model, calibration, _ = tiny
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
        check_precision("bf16")


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


@pytest.mark.parametrize("name", ["model.pt2", "missing.onnx"])
def test_load_exported_refuses_what_it_cannot_run_in_one_line(tmp_path, name: str) -> None:
    with pytest.raises(ExportError, match=r"runs \.onnx and OpenVINO \.xml files|no exported file"):
        backbones.load_exported(tmp_path / name)


def test_the_engines_are_imported_only_inside_the_functions_that_need_them() -> None:
    """So `import backbones` (and backbones.optimize) never loads OpenVINO, NNCF or onnxruntime."""
    import ast
    import inspect

    import backbones.runtime as runtime

    for path in sorted(Path(inspect.getfile(runtime)).parent.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & {"openvino", "nncf", "onnxruntime", "onnx"}, path.name


def test_the_output_structure_round_trips_through_the_files_metadata() -> None:
    logits = OutputStructure.of(torch.zeros(2, 10), min_input_size=32)
    maps = OutputStructure.of(OrderedDict(layer2=torch.zeros(1), layer4=torch.zeros(1)))
    assert [OutputStructure.from_json(s.to_json()) for s in (logits, maps)] == [logits, maps]
    assert OutputStructure.from_names(["logits"]).named is False  # a file without our metadata
    assert torch.equal(logits.unflatten([torch.ones(2, 10)]), torch.ones(2, 10))
    assert list(maps.unflatten([torch.zeros(1), torch.ones(1)])) == ["layer2", "layer4"]
