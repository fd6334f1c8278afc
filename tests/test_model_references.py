"""Every command takes every kind of model reference, and says the same thing when one is wrong.

One resolver (``backbones.models.reference.resolve_model``) reads an architecture, an ``arch.tag``,
a ``save_pretrained`` folder, a weights file and an ``OWNER/NAME`` Hub repo for every command;
these tests run each command on each kind, with the same two-class weights behind all five.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import backbones
from backbones.models.reference import resolve_model

from .helpers import assert_one_line_error, run_cli
from .image_folders import make_image_folder

HUB_REPO = "tester/resnet18-two-colours"
WEIGHTS_REPO = "tester/resnet18-two-colours-weights"
TAG = "resnet18.two_colours"
# 32x32 inputs keep every command quick; the tag's preprocessing says so, and the saved copies keep it.
PREPROCESSING = {"input_size": [3, 32, 32], "resize_size": 32, "crop_size": 32}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One two-class resnet18, as a saved folder, a bare weights file and the images it runs on."""
    root = tmp_path_factory.mktemp("references")
    model = backbones.create_model("resnet18", num_classes=2)
    model.pretrained_cfg = dict(model.pretrained_cfg, **{**PREPROCESSING, "input_size": (3, 32, 32)})
    folder = model.save_pretrained(root / "saved")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "weights.safetensors")
    return {"folder": folder, "file": root / "weights.safetensors", "data": make_image_folder(root / "colours")}


@pytest.fixture
def references(trained: dict[str, Path], hub_server, caches, forget_registered_weights) -> dict[str, str]:
    """The same weights behind each kind of reference: a tag (the architecture's default), a folder, a
    file and a Hub repo on the loopback stand-in."""
    folder = trained["folder"]
    saved = {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors")}
    hub_server.publish(HUB_REPO, saved)
    hub_server.publish(WEIGHTS_REPO, {"model.safetensors": saved["model.safetensors"]})
    backbones.register_weights(
        TAG,
        default=True,
        hf_hub_id=WEIGHTS_REPO,
        hf_hub_filename="model.safetensors",
        model_kwargs={"num_classes": 2},
        preprocessing=PREPROCESSING,
    )
    return {
        "architecture": "resnet18",
        "arch.tag": TAG,
        "folder": str(folder),
        "weights file": str(trained["file"]),
        "hub repo": HUB_REPO,
    }


def _command(name: str, reference: str, trained: dict[str, Path], out: Path) -> list[str]:
    image = str(next(trained["data"].rglob("*.png")))
    data = str(trained["data"])
    return {
        "predict": ["predict", reference, image, "--json", "--quiet"],
        "features": ["features", reference, image, "--out", str(out / "features.png"), "--quiet"],
        "evaluate": ["evaluate", reference, "--data", data, "--split", "all", "--out", str(out / "confusion.png")],
        "finetune": [
            *("finetune", reference, "--data", data, "--out", str(out / "run")),
            *("--epochs", "1", "--batch-size", "4", "--quiet"),
        ],
        "extract": ["extract", reference, "--data", data, "--out", str(out / "features"), "--workers", "0", "--quiet"],
        "export": ["export", reference, "--out", str(out / "model.pt"), "--quiet"],
        "bench": [
            *("bench", "--models", reference, "--batches", "1", "--compile-batches", "--fpn-sizes"),
            *("--seconds", "0.1", "--no-extras", "--dtype", "fp32", "--variants", "ours eager fp32"),
            *("--out", str(out / "bench")),
        ],
        "info": ["info", reference],
        "summary": ["summary", reference],
    }[name]


COMMANDS = ("predict", "features", "evaluate", "finetune", "extract", "export", "bench", "info", "summary")
KINDS = ("architecture", "arch.tag", "folder", "weights file", "hub repo")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_every_kind_of_model_reference(command, kind, references, trained, tmp_path) -> None:
    result = run_cli(*_command(command, references[kind], trained, tmp_path))
    assert result.returncode == 0, (command, kind, result.stderr)
    assert "resnet18" in result.stdout or command not in ("info", "summary") or "conv1" in result.stdout


def test_the_same_weights_give_the_same_predictions_whichever_way_they_are_named(references, trained) -> None:
    image = str(next(trained["data"].rglob("*.png")))

    def predictions(*argv: str) -> list:
        result = run_cli("predict", *argv, image, "--json", "--quiet")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["results"]

    # The tag, the folder and the Hub repo carry the weights and the 32x32 preprocessing alike.
    expected = predictions(references["architecture"])
    for kind in ("arch.tag", "folder", "hub repo"):
        assert predictions(references[kind]) == expected, kind
    # A bare weights file has no preprocessing: it is the architecture with the file as its weights.
    as_weights = predictions("resnet18", "--pretrained", references["weights file"])
    assert predictions(references["weights file"]) == as_weights


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("resnt18", "unknown model 'resnt18': did you mean resnet18"),
        ("./no-such-model", "there is no file or folder"),
        ("runs/a/b", "there is no file or folder"),
    ],
)
def test_every_command_says_the_same_thing_about_a_wrong_reference(reference, message, trained, tmp_path) -> None:
    said = set()
    for command in COMMANDS:
        result = run_cli(*_command(command, reference, trained, tmp_path))
        assert_one_line_error(result, message)
        said.add(result.stderr.split("error: ", 1)[1])
    assert len(said) == 1, said


def test_a_folder_is_refused_where_its_weights_would_be_replaced(references) -> None:
    with pytest.raises(ValueError, match="carries its own weights"):
        resolve_model(references["folder"], pretrained="tv_in1k")


def test_a_saved_folder_given_as_an_architectures_weights_is_the_saved_model(references) -> None:
    source = resolve_model("resnet18", pretrained=references["folder"])
    assert source.origin == "folder" and source.saved_num_classes == 2
    with pytest.raises(ValueError, match="holds a resnet18, not a resnet50"):
        resolve_model("resnet50", pretrained=references["folder"])


def test_a_weights_file_several_architectures_fit_asks_for_the_architecture(tmp_path) -> None:
    trunk = {k: v for k, v in backbones.create_model("resnet18").state_dict().items() if not k.startswith("layer")}
    path = tmp_path / "stem-only.safetensors"
    save_file(trunk, path)
    with pytest.raises(ValueError, match="name the architecture and give the file as its weights"):
        resolve_model(str(path))


def test_resolving_builds_nothing_and_fetches_no_weights(references, hub_server) -> None:
    hub_server.clear_requests()
    for kind in ("architecture", "arch.tag", "folder"):
        source = resolve_model(references[kind])
        assert source.architecture == "resnet18" and source.is_classifier
    assert hub_server.requests == []
    skeleton = resolve_model(references["arch.tag"]).skeleton()
    assert next(skeleton.parameters()).device == torch.device("meta") and skeleton.num_classes == 2
