"""What users of other command-line tools expect: fast help with defaults, --version, natural order,
folders of images with JSON/CSV output, saved and Hub models, devices, named ONNX axes, progress."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
import torch

import backbones

from .helpers import assert_one_line_error, run_cli, run_python

CLASS_NAMES = ["cat", "dog", "eel"]


def test_help_imports_no_torch_and_shows_every_default() -> None:
    code = """
import json, runpy, sys
sys.argv = ["backbones", "--help"]
try:
    runpy.run_module("backbones", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
from backbones.apps.cli.main import build_parser
commands = build_parser()._subparsers._group_actions[0].choices
helps = {name: sub.format_help() for name, sub in commands.items()}
sys.stderr.write(json.dumps({"torch": "torch" in sys.modules, "helps": helps}))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "usage: backbones" in result.stdout
    report = json.loads(result.stderr)
    assert report["torch"] is False
    helps = {name: " ".join(text.split()) for name, text in report["helps"].items()}
    assert "--top-k TOP_K how many classes to show per image (default: 5)" in helps["predict"]
    assert "(default: 18)" in helps["export"] and "(default: bench_results)" in helps["bench"]
    assert "--device DEVICE" in helps["predict"] and "--device DEVICE" in helps["export"]


def test_cli_defaults_mirror_the_library() -> None:
    from backbones.apps.benchmark import BenchmarkConfig
    from backbones.apps.cli import export as export_command
    from backbones.runtime import export as export_module

    assert export_command.DEFAULT_OPSET == export_module.DEFAULT_OPSET
    assert BenchmarkConfig().seconds_per_workload == 40 and tuple(BenchmarkConfig().batches) == (1, 8, 32)


def test_version_prints_the_package_version() -> None:
    result = run_cli("--version", fresh_process=True)  # `python -m backbones` itself, once
    assert result.returncode == 0 and result.stdout.strip() == f"backbones {backbones.__version__}"


def test_names_are_listed_in_natural_order_and_hints_use_cli_syntax() -> None:
    result = run_cli("list", "resnet*", "--kind", "classifier")
    expected = sorted(backbones.list_models("resnet*", kind="classifier"), key=lambda n: int(re.sub(r"\D", "", n)))
    assert result.stdout.split() == expected == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
    unknown = run_cli("info", "resnet5")
    assert_one_line_error(unknown, "`backbones list` lists them all")
    assert "list_models()" not in unknown.stderr


@pytest.fixture
def fine_tuned(tmp_path: Path) -> Path:
    """A 3-class resnet18 saved as a fine-tuned model would be: its own head, classes and preprocessing."""
    model = backbones.create_model("resnet18", num_classes=len(CLASS_NAMES))
    model.pretrained_cfg = dict(model.pretrained_cfg, class_names=CLASS_NAMES, resize_size=72, crop_size=64)
    return model.save_pretrained(tmp_path / "pets-resnet18")


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "photos"
    for relative in ("a/img10.png", "a/img2.png", "b/img1.jpg"):
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (90, 120, 3), dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(path)
    return folder


def _expected_probabilities(folder: Path, images: list[Path]) -> torch.Tensor:
    from backbones.apps.visualize import load_image

    model = backbones.from_pretrained(folder).eval()
    transform = backbones.transforms_for(model)
    with torch.no_grad():
        return model(torch.stack([transform(load_image(p)) for p in images])).softmax(dim=1)


def test_predict_a_folder_with_a_saved_model_as_json(fine_tuned: Path, photos: Path) -> None:
    result = run_cli("predict", str(fine_tuned), str(photos), "--json", "--top-k", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    images = [Path(r["image"]) for r in report["results"]]
    assert [p.relative_to(photos).as_posix() for p in images] == ["a/img2.png", "a/img10.png", "b/img1.jpg"]
    expected = _expected_probabilities(fine_tuned, images)
    for result_row, probabilities in zip(report["results"], expected, strict=True):
        top = probabilities.topk(2)
        assert [p["class"] for p in result_row["predictions"]] == [CLASS_NAMES[i] for i in top.indices]
        assert [p["probability"] for p in result_row["predictions"]] == pytest.approx(top.values.tolist(), abs=1e-5)


def test_predict_with_weights_from_a_saved_folder_as_csv(fine_tuned: Path, photos: Path) -> None:
    result = run_cli("predict", "resnet18", str(photos / "b"), "--weights", str(fine_tuned), "--csv", "--top-k", "1")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 1 and rows[0]["rank"] == "1" and rows[0]["class"] in CLASS_NAMES
    mismatch = run_cli("predict", "resnet50", str(photos / "b"), "--weights", str(fine_tuned))
    assert_one_line_error(mismatch, "holds a resnet18, not a resnet50", "use the folder itself as the model")


def test_predict_on_an_fpn_points_to_features(photos: Path) -> None:
    result = run_cli("predict", "resnet50_fpn", str(photos))
    assert_one_line_error(result, "does not classify", "backbones features resnet50_fpn IMAGE")


def _predicted(folder: Path, photos: Path, dtype: str) -> list[dict[str, float]]:
    result = run_cli("predict", str(folder), str(photos), "--json", "--top-k", "3", "--dtype", dtype)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dtype"] == dtype
    return [{p["class"]: p["probability"] for p in r["predictions"]} for r in report["results"]]


def test_predict_in_int8_calibrated_on_the_images_agrees_with_fp32(fine_tuned: Path, photos: Path) -> None:
    reference = _predicted(fine_tuned, photos, "fp32")
    for ours, expected in zip(_predicted(fine_tuned, photos, "int8"), reference, strict=True):
        assert max(abs(ours[name] - expected[name]) for name in CLASS_NAMES) <= 0.05, (ours, expected)


def test_predict_in_bf16_agrees_with_fp32(fine_tuned: Path, photos: Path) -> None:
    # On every CPU: oneDNN's fused bf16 kernels where the CPU has them, PyTorch's own elsewhere.
    reference = _predicted(fine_tuned, photos, "fp32")
    for ours, expected in zip(_predicted(fine_tuned, photos, "bf16"), reference, strict=True):
        assert max(abs(ours[name] - expected[name]) for name in CLASS_NAMES) <= 0.05, (ours, expected)


def test_device_cuda_runs_there_or_says_there_is_none(fine_tuned: Path, photos: Path) -> None:
    result = run_cli("predict", str(fine_tuned), str(photos), "--json", "--device", "cuda")
    if not torch.cuda.is_available():
        assert_one_line_error(result, "--device cuda: no CUDA device is available", "use --device cpu")
        return
    assert result.returncode == 0, result.stderr
    cpu = json.loads(run_cli("predict", str(fine_tuned), str(photos), "--json").stdout)["results"]
    gpu = json.loads(result.stdout)["results"]
    for on_gpu, on_cpu in zip(gpu, cpu, strict=True):
        assert [p["class"] for p in on_gpu["predictions"]] == [p["class"] for p in on_cpu["predictions"]]


def test_download_accepts_a_hub_repo_and_it_then_loads_offline(hub_server, caches, fine_tuned: Path, photos) -> None:
    files = {name: (fine_tuned / name).read_bytes() for name in ("config.json", "model.safetensors")}
    hub_server.publish("tester/pets-resnet18", files)
    result = run_cli("download", "tester/pets-resnet18", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "tester/pets-resnet18: resnet18" in result.stdout and "cached and verified" in result.stdout
    offline = run_cli(
        "predict", "tester/pets-resnet18", str(photos / "b"), "--csv", env={**caches, "HF_HUB_OFFLINE": "1"}
    )
    assert offline.returncode == 0, offline.stderr
    assert len(list(csv.DictReader(io.StringIO(offline.stdout)))) == len(CLASS_NAMES)  # top-5 of 3 classes


def test_onnx_export_names_its_dynamic_axes_and_shows_progress(tmp_path: Path) -> None:
    import onnx

    out = tmp_path / "resnet18.onnx"
    batch_of_one = run_cli("export", "resnet18", "--out", str(out), "--input", "1,3,64,64")
    assert_one_line_error(batch_of_one, "--input with a batch of 1 cannot give a dynamic batch", "--no-dynamic-batch")
    result = run_cli("export", "resnet18", "--out", str(out), "--dynamic-size", "--input", "2,3,64,64")
    assert result.returncode == 0, result.stderr
    steps = [line.split("] ", 1)[1] for line in result.stderr.splitlines()]
    assert steps[0] == "building resnet18" and steps[1].startswith("exporting to ONNX") and steps[-1] == "done"
    graph = onnx.load(str(out)).graph

    def dims(value) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert dims(graph.input[0]) == ["batch", 3, "height", "width"]
    assert dims(graph.output[0]) == ["batch", 1000]


def test_library_hints_name_python_options_and_the_cli_says_its_own_flags() -> None:
    from backbones.apps.cli.main import build_parser, cli_syntax, command_flags

    flags = command_flags(build_parser(), "extract")
    message = "pass overwrite=True to replace them; layers='fpn' needs an FPN; or reinit_head=True"
    said = cli_syntax(message, flags)
    # The command's own options become its flags; an option it lacks is left in Python's words.
    assert said == "pass --overwrite to replace them; --layers fpn needs an FPN; or reinit_head=True"
    assert cli_syntax(message) == message
