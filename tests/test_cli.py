"""Every command of the command line (run in this process, see ``helpers.run_cli``), its success and its error paths."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import backbones
from backbones.apps.cli.main import build_parser

from .helpers import assert_one_line_error, relative_max_diff, run_cli

COMMANDS = ["list", "info", "summary", "predict", "features", "download", "convert", "push", "demo"]


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    from PIL import Image

    from backbones.apps.demo import sample_image

    path = tmp_path / "scene.png"
    pixels = (sample_image((120, 160)) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    assert command in build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    result = run_cli(command, "--help")
    assert result.returncode == 0 and "usage: backbones " + command in result.stdout


def test_list_prints_the_registered_names() -> None:
    result = run_cli("list", "vgg1*", "--kind", "classifier")
    assert result.returncode == 0
    assert result.stdout.split() == ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]


def test_list_pretrained_prints_weight_names() -> None:
    result = run_cli("list", "resnet50*", "--pretrained")
    assert result.stdout.split() == [
        "resnet50.a1_in1k",
        "resnet50.tv2_in1k",
        "resnet50.tv_in1k",
        "resnet50_fpn.tv_coco",
    ]


def test_list_with_no_match_is_an_error() -> None:
    assert_one_line_error(run_cli("list", "alexnet*"), "nothing matches 'alexnet*'")


def test_info_shows_stages_params_macs_and_weights() -> None:
    result = run_cli("info", "resnet50")
    assert result.returncode == 0, result.stderr
    for fragment in (
        "parameters: 25,557,032",
        "multiply-adds at 224x224: 4.09 G",
        "layer4",
        "2048",
        "resnet50.tv2_in1k",
        "top1 80.858",
    ):
        assert fragment in result.stdout, fragment


def test_unknown_model_is_one_line_with_suggestions() -> None:
    assert_one_line_error(run_cli("info", "resnet5"), "unknown model 'resnet5'", "did you mean", "resnet50")


def test_summary_prints_the_layer_table() -> None:
    result = run_cli("summary", "vgg11", "--input", "1,3,64,64", "--depth", "0")
    assert result.returncode == 0, result.stderr
    assert "features" in result.stdout and "classifier" in result.stdout and "Parameters: 132,863,336" in result.stdout


def test_summary_json_gives_the_rows_as_data() -> None:
    rows = json.loads(run_cli("summary", "resnet18", "--depth", "0", "--json").stdout)["rows"]
    assert rows[0]["name"] == "conv1" and rows[0]["output_shape"] == [1, 64, 112, 112]


def test_summary_of_a_too_small_input_is_one_line() -> None:
    assert_one_line_error(run_cli("summary", "vgg11", "--input", "1,3,16,16"), "16x16 pixels is too small")


def test_a_malformed_input_shape_is_rejected_with_usage() -> None:
    result = run_cli("summary", "vgg11", "--input", "1,3,abc")
    assert result.returncode == 2 and "expected a shape such as 1,3,224,224" in result.stderr


def _weights_file(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    model = backbones.create_model("resnet18")
    return model.save_pretrained(tmp_path / "weights"), model


def test_predict_prints_top_k_classes(image_file: Path, tmp_path: Path) -> None:
    folder, _ = _weights_file(tmp_path)
    result = run_cli("predict", "resnet18", str(image_file), "--weights", str(folder), "--top-k", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[1] == str(image_file) and len(lines) == 5 and all("%" in line for line in lines[2:])


def test_predict_with_an_unreadable_image_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    assert_one_line_error(run_cli("predict", "resnet18", str(bad)), "cannot read", "not-an-image.png")


def test_predict_offline_without_weights_is_one_line(image_file: Path, tmp_path: Path) -> None:
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty"), "TORCH_HOME": str(tmp_path / "torch")}
    result = run_cli("predict", "resnet18", str(image_file), env=env)
    assert_one_line_error(result, "resnet18.tv_in1k", "not in the local cache", "python -m backbones download")


def test_features_of_an_fpn_shows_the_whole_image_and_every_level_as_jpeg(image_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps.jpg"
    result = run_cli("features", "resnet18_fpn", str(image_file), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG bytes under a .jpg name
    lines = result.stdout.splitlines()
    # 120x160 resized to a short side of 256 and never cropped: what the network saw.
    assert lines[0] == "input as the network saw it: 256x341 (whole image)"
    assert [line.split()[0] for line in lines[1:6]] == ["0", "1", "2", "3", "pool"]
    assert "weights: random" in result.stdout


def test_features_of_a_classifier_shows_its_centre_crop(image_file: Path, tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "maps.png"
    result = run_cli("features", "resnet18", str(image_file), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "input as the network saw it: 224x224 (centre crop)"
    # The picture's first tile is the 224x224 crop, shown square (a 224-pixel tile).
    assert Image.open(out).format == "PNG" and Image.open(out).width == 3 * 224


def test_features_of_a_missing_image_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("features", "vgg11", str(tmp_path / "nope.jpg")), "no image file at")


def test_download_fetches_and_verifies_weights(hub_server, caches) -> None:
    from safetensors.torch import save

    model = backbones.create_model("resnet18")
    hub_server.publish("timm/resnet18.a1_in1k", {"model.safetensors": save(model.state_dict())})
    result = run_cli("download", "resnet18.a1_in1k", "--quiet")
    assert result.returncode == 0, result.stderr
    assert f"resnet18.a1_in1k: {len(model.state_dict())} tensors" in result.stdout and "verified" in result.stdout


def test_download_offline_without_cache_is_one_line(caches) -> None:
    result = run_cli("download", "vgg16", "--quiet", env={**caches, "HF_HUB_OFFLINE": "1"})
    assert_one_line_error(result, "vgg16.tv_in1k", "not in the local cache")


def test_convert_turns_a_torchvision_checkpoint_into_a_loadable_folder(tmp_path: Path) -> None:
    import torchvision

    reference = torchvision.models.resnet18(weights=None).eval()
    checkpoint = tmp_path / "resnet18-tv.pth"
    torch.save(reference.state_dict(), checkpoint)
    result = run_cli("convert", str(checkpoint), "--arch", "resnet18", "--out", str(tmp_path / "resnet18-ours"))
    assert result.returncode == 0, result.stderr
    model = backbones.from_pretrained(tmp_path / "resnet18-ours").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert relative_max_diff(model(x), reference(x)) <= 1e-5


def test_convert_of_a_timm_checkpoint_to_a_safetensors_file(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import load_file

    reference = timm.create_model("vgg11")
    checkpoint = tmp_path / "timm.pth"
    torch.save(reference.state_dict(), checkpoint)
    out = tmp_path / "ours.safetensors"
    result = run_cli("convert", str(checkpoint), "--arch", "vgg11", "--out", str(out))
    assert result.returncode == 0 and "(timm layout)" in result.stdout, result.stderr
    assert load_file(out)["classifier.0.weight"].shape == (4096, 25088)


def test_convert_into_the_wrong_architecture_is_one_line(tmp_path: Path) -> None:
    checkpoint = tmp_path / "r18.pth"
    torch.save(backbones.create_model("resnet18").state_dict(), checkpoint)
    result = run_cli("convert", str(checkpoint), "--arch", "resnet34", "--out", str(tmp_path / "x.safetensors"))
    assert_one_line_error(result, "does not fit ResNet", "missing keys")


def test_push_publishes_a_folder_to_the_hub(hub_server, tmp_path: Path) -> None:
    folder, _ = _weights_file(tmp_path)
    result = run_cli("push", str(folder), "tester/cli-pushed")
    assert result.returncode == 0, result.stderr
    files = hub_server.files("tester/cli-pushed")
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    assert (
        hashlib.sha256(files["model.safetensors"]).digest()
        == hashlib.sha256((folder / "model.safetensors").read_bytes()).digest()
    )


def test_push_of_a_folder_that_is_not_a_saved_model_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("push", str(tmp_path), "tester/nothing"), "has no config.json")


def test_a_failure_with_debug_set_shows_the_traceback() -> None:
    result = run_cli("info", "resnet5", env={"BACKBONES_DEBUG": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_console_script_is_declared() -> None:
    import tomllib

    from .helpers import REPO_ROOT

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["backbones"] == "backbones.apps.cli.main:main"
