"""Deployment: every model exports to torch.export and ONNX (checked in onnxruntime), dynamically.

Every registered model goes through torch.export with dynamic batch and size, the step both
formats share, and its program is checked against eager. The rest of the way (the program written
to a ``.pt2`` file and loaded back, converted to ONNX, run in onnxruntime) translates a program node
by node, and what a node becomes depends only on its operator and its non-tensor arguments (strides,
paddings, ``ceil_mode``, symbolic-size arithmetic, ...): its *call form*. That way runs for a few
representatives, and every other model's program must use no call form they lack.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import backbones
from backbones import ExportError
from backbones.runtime.export import export_program, min_dynamic_size, output_names, program_to_onnx
from backbones.runtime.torchscript_builtins import forget_replaced_operators, replaced_operator_ids

from .helpers import (
    assert_one_line_error,
    fresh_model,
    meta_model,
    relative_max_diff,
    replace_an_operator,
    run_cli,
)

ALL_MODELS = backbones.list_models()
FPN_MODELS = backbones.list_models(kind="fpn")
TOLERANCE = 1e-4

# Together they hold every call form of every registered model's program (the smallest model that
# brings each form; test_model_exports_a_dynamic_program... fails, naming the forms, when a newly
# registered model brings one they lack).
ONNX_MODELS = ["googlenet_v1", "inception_v3_fpn", "resnet18", "resnet18_fpn", "vgg11"]
# One worker runs them all, the representatives first, so their call forms are computed once.
EXPORT_GROUP = pytest.mark.xdist_group("export-programs")


def _form(value: object) -> object:
    if isinstance(value, torch.fx.Node):
        return type(value.meta.get("val")).__name__  # a tensor or a symbolic size, not its value
    if isinstance(value, (list, tuple)):
        return [_form(v) for v in value]
    if isinstance(value, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
        return str(value)
    return value


def call_forms(program: torch.export.ExportedProgram) -> set[str]:
    """Each operator call in ``program`` as a converter sees it: the operator and its non-tensor arguments."""
    return {
        json.dumps([str(node.target), _form(list(node.args)), {k: _form(v) for k, v in sorted(node.kwargs.items())}])
        for node in program.graph.nodes
        if node.op == "call_function"
    }


_REPRESENTATIVE_FORMS: dict[str, set[str]] = {}


def _representative_forms() -> set[str]:
    for name in ONNX_MODELS:
        if name not in _REPRESENTATIVE_FORMS:  # the representative's own test did not run in this worker
            program = export_program(fresh_model(name).eval(), dynamic_batch=True, dynamic_size=True)
            _REPRESENTATIVE_FORMS[name] = call_forms(program)
    return set().union(*_REPRESENTATIVE_FORMS.values())


# The FPN issue's sizes, at which an FPN's ONNX upsampling must follow the input.
FPN_ONNX_SIZES = [(224, 224), (320, 480)]


def _sizes(model: torch.nn.Module) -> list[tuple[int, int]]:
    """Two sizes inside the exported range: the smallest square and an odd, wider one."""
    base = max(96, min_dynamic_size(model))
    return [(base, base), (base + 33, base + 64)]


def _session(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _onnx_outputs(path: Path, x: torch.Tensor, session=None) -> list[np.ndarray]:
    session = session or _session(path)
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


def _check_program(name: str, model: torch.nn.Module, program_module, session=None, onnx_path=None) -> None:
    """The exported program (and the ONNX session, if any) against eager at two sizes and batches;
    an FPN's ONNX session also at the FPN issue's sizes, where its upsampling must follow the input."""
    small, large = _sizes(model)
    # ONNX at both sizes and both batches; the pt2 program (slower to run) at two of them.
    for (height, width), batch, with_pt2 in ((small, 1, True), (small, 3, False), (large, 1, False), (large, 3, True)):
        if not with_pt2 and session is None:
            continue
        x = torch.randn(batch, 3, height, width)
        with torch.no_grad():
            expected = model(x)
            if with_pt2:
                # Equal up to fp32 rounding: VGG's exported pooling sums where eager averages directly.
                assert relative_max_diff(program_module(x), expected) <= 1e-5, f"pt2 {height}x{width} batch {batch}"
        if session is not None:
            _check_onnx(session, onnx_path, x, expected)
    if session is not None and name in FPN_MODELS:
        for height, width in FPN_ONNX_SIZES:
            x = torch.randn(2, 3, height, width)
            with torch.no_grad():
                _check_onnx(session, onnx_path, x, model(x))


def _check_onnx(session, onnx_path: Path, x: torch.Tensor, expected) -> None:
    got = [torch.from_numpy(t) for t in _onnx_outputs(onnx_path, x, session)]
    diff = relative_max_diff(got, expected)
    assert diff <= TOLERANCE, f"onnx {tuple(x.shape)}: relative diff {diff:.2e}"


@EXPORT_GROUP
@pytest.mark.parametrize("name", ONNX_MODELS)
def test_representative_model_exports_to_pt2_and_onnx_that_match_eager_at_two_batches_and_sizes(
    name: str, tmp_path: Path
) -> None:
    """The ``.pt2`` file is loaded back, and the ONNX file is made from the loaded program (what
    ``program_to_onnx`` offers). ``backbones.export(..., "x.onnx")`` converts the program before saving
    instead; the loaded program has the same call forms, so one trace serves both checks."""
    import onnx

    model = fresh_model(name).eval()
    program = export_program(model, dynamic_batch=True, dynamic_size=True)
    torch.export.save(program, str(tmp_path / f"{name}.pt2"))
    loaded = torch.export.load(str(tmp_path / f"{name}.pt2"))
    assert call_forms(loaded) == call_forms(program)
    onnx_path = program_to_onnx(loaded, tmp_path / f"{name}.onnx", output_names(model))
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    assert graph.input[0].name == "images" and [o.name for o in graph.output] == output_names(model)
    assert not any("aux" in node.name.lower() for node in graph.node)  # auxiliary heads are not exported
    _REPRESENTATIVE_FORMS[name] = call_forms(program)
    _check_program(name, model, loaded.module(), _session(onnx_path), onnx_path)


@EXPORT_GROUP
@pytest.mark.parametrize("name", sorted(set(ALL_MODELS) - set(ONNX_MODELS)))
def test_model_exports_a_dynamic_program_that_matches_eager_and_only_uses_call_forms_onnx_was_checked_on(
    name: str,
) -> None:
    model = fresh_model(name).eval()
    program = export_program(model, dynamic_batch=True, dynamic_size=True)
    _check_program(name, model, program.module())
    unchecked = call_forms(program) - _representative_forms()
    assert not unchecked, f"add {name} to ONNX_MODELS: no representative's program has {sorted(unchecked)}"


def test_call_forms_tell_apart_what_converters_translate_differently() -> None:
    """The forms keep the arguments a converter reads (GoogLeNet's ceil-mode pooling is not
    ResNet's) and drop only what it does not (tensor values and sizes)."""

    def forms(name: str) -> set[str]:
        with torch.device("meta"):  # only the graph is needed
            model = backbones.create_model(name).eval()
        x = torch.empty(2, 3, 224, 224, device="meta")
        return call_forms(torch.export.export(model, (x,)))

    pooling = {f for f in forms("googlenet_v1") | forms("resnet18") if "max_pool2d" in f}
    assert any("true" in f for f in pooling) and any("true" not in f for f in pooling)
    assert forms("resnet34") == forms("resnet18")  # deeper, the same calls


def test_fpn_onnx_outputs_are_named_as_torchvision_names_fpn_levels() -> None:
    # The representatives' test checks each ONNX file's outputs against output_names.
    assert output_names(meta_model("resnet18_fpn")) == ["0", "1", "2", "3", "pool"]


def test_torchscript_export_round_trip(tmp_path: Path) -> None:
    model = fresh_model("googlenet_v1").train()  # exported as eval, whatever the mode
    path = backbones.export(model, tmp_path / "googlenet.pt")
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert relative_max_diff(torch.jit.load(str(path))(x), model.eval()(x)) <= 1e-6


def test_a_dynamic_size_export_shows_no_unreduced_inequality_traceback() -> None:
    # torch's shape solver logs a sympy traceback for VGG's size constraints, then goes on.
    shapes_log = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    shapes_log.addHandler(handler)
    try:
        export_program(fresh_model("vgg11").eval(), dynamic_batch=True, dynamic_size=True)
    finally:
        shapes_log.removeHandler(handler)
    assert not [m for m in messages if "Failed to reduce inequalities" in m]


def test_forgetting_replaced_operators_drops_only_the_freed_operators_ids() -> None:
    _library, name = replace_an_operator()
    table = torch.jit._builtins._get_builtin_table()
    live_id = id(getattr(torch.ops, name.split("::")[0]).twice._op)
    assert sorted(key for key, value in table.items() if value == name) != [live_id]  # the freed one is there
    forget_replaced_operators()
    assert [key for key, value in table.items() if value == name] == [live_id]
    assert table[id(torch.add)] == "aten::add"  # entries of other kinds stay


def test_torchscript_export_forgets_the_operators_torch_library_replaced(tmp_path: Path) -> None:
    # A freed operator's id can be reused by a module's list, which TorchScript then takes for the
    # operator ("builtin cannot be used as a value" in Conv2d._conv_forward).
    _library, _ = replace_an_operator()
    assert replaced_operator_ids()
    backbones.export(fresh_model("resnet18"), tmp_path / "resnet18.pt")
    assert replaced_operator_ids() == []


def test_optimize_folds_batchnorm_and_keeps_the_outputs(tmp_path: Path) -> None:
    import onnx

    model = fresh_model("resnet18").eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)

    def norms(path: Path) -> int:
        program = torch.export.load(str(path))
        return sum("batch_norm" in str(node.target) for node in program.graph.nodes)

    plain = backbones.export(model, tmp_path / "plain.pt2")
    folded = backbones.export(model, tmp_path / "folded.pt2", optimize=True)
    assert norms(plain) == 20 and norms(folded) == 0
    assert relative_max_diff(torch.export.load(str(folded)).module()(x), expected) <= TOLERANCE
    onnx_path = backbones.export(model, tmp_path / "folded.onnx", optimize=True)
    assert relative_max_diff(torch.from_numpy(_onnx_outputs(onnx_path, x)[0]), expected) <= TOLERANCE
    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(str(onnx_path)).graph.node)


def test_dynamic_size_range_starts_where_every_map_keeps_two_pixels() -> None:
    assert min_dynamic_size(fresh_model("resnet18")) == 33  # 32 pixels leave layer4 with one
    model = fresh_model("inception_v3").eval()
    low = min_dynamic_size(model)
    features = backbones.FeatureExtractor(model)
    with torch.no_grad():
        at_low = features(torch.randn(1, 3, low, low))
        below = features(torch.randn(1, 3, low - 1, low - 1))
    assert min(t.shape[-1] for t in at_low.values()) == 2
    assert min(t.shape[-1] for t in below.values()) == 1


def test_static_batch_export_has_fixed_dimensions(tmp_path: Path) -> None:
    import onnx

    path = backbones.export(fresh_model("resnet18"), tmp_path / "static.onnx", dynamic_batch=False)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 3, 224, 224]


def test_export_with_pretrained_weights_from_the_hub_matches_pytorch(hub_server, caches, tmp_path: Path) -> None:
    from safetensors.torch import save

    weights = backbones.create_model("resnet18").state_dict()
    hub_server.publish("timm/resnet18.tv_in1k", {"model.safetensors": save(weights)})
    out = tmp_path / "pretrained.onnx"
    result = run_cli("export", "resnet18.tv_in1k", "--pretrained", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "weights: resnet18.tv_in1k" in result.stdout
    model = backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False).eval()
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        assert relative_max_diff(torch.from_numpy(_onnx_outputs(out, x)[0]), model(x)) <= TOLERANCE


def test_unsupported_format_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"unsupported export format 'tflite'; use one of onnx, pt2, torchscript"):
        backbones.export(fresh_model("resnet18"), tmp_path / "m.tflite", format="tflite")
    with pytest.raises(ExportError, match=r"cannot tell the format from 'm.bin'"):
        backbones.export(fresh_model("resnet18"), tmp_path / "m.bin")


def test_unwritable_paths_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"the folder .*no-such-folder does not exist"):
        backbones.export(fresh_model("resnet18"), tmp_path / "no-such-folder" / "m.onnx")
    folder = tmp_path / "a-folder.onnx"
    folder.mkdir()
    with pytest.raises(ExportError, match="it is a folder"):
        backbones.export(fresh_model("resnet18"), folder)


@pytest.mark.parametrize(("suffix", "writer"), [(".pt2", "torch.export.save"), (".pt", "torch.jit.save")])
def test_an_export_killed_while_writing_leaves_no_file(
    suffix: str, writer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed_halfway(_program, destination, *args, **kwargs) -> None:
        if hasattr(destination, "write"):
            destination.write(b"half a file")
        else:
            Path(destination).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        backbones.export(fresh_model("resnet18"), tmp_path / f"model{suffix}")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_errors_are_one_line(tmp_path: Path) -> None:
    result = run_cli("export", "resnet18", "--out", str(tmp_path / "missing" / "m.onnx"))
    assert_one_line_error(result, "cannot write", "does not exist")
    result = run_cli("export", "resnet18", "--out", str(tmp_path / "m.bin"))
    assert_one_line_error(result, "cannot tell the format")


def test_the_docs_have_a_deployment_page() -> None:
    from .helpers import REPO_ROOT

    page = (REPO_ROOT / "docs" / "deployment.md").read_text()
    assert "# Deployment" in page and "backbones export" in page and "onnxruntime" in page
