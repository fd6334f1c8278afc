"""What Hugging Face, timm and torchvision users bring (issue 18's weights items) and the API's rough edges
(issue 17): folders before tags, heads that agree with their class names, Hub options, offline pushes,
no-network failures that are quick and say how to go offline, names and paths, option checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as safetensors_bytes

import backbones
import backbones.hub.manifest
from backbones.apps.cli.main import main as cli_main
from backbones.hub.download import WeightsUnavailableError

pytestmark = pytest.mark.usefixtures("forget_registered_weights")


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    return {k: v.clone().contiguous() for k, v in backbones.create_model("resnet18").state_dict().items()}


def _publish_resnet18(hub_server, state: dict) -> None:
    hub_server.publish("timm/resnet18.tv_in1k", {"model.safetensors": safetensors_bytes(state)})


# ----------------------------------------------------------------------------- issue 18.1: folder before tag


def test_an_existing_folder_wins_over_a_weight_tag(tmp_path, monkeypatch, hub_server) -> None:
    monkeypatch.chdir(tmp_path)
    saved = backbones.create_model("resnet18", num_classes=3)
    saved.save_pretrained("my-resnet")
    saved.save_pretrained("tv_in1k")  # a folder named like a published tag: the folder is what the user means
    hub_server.clear_requests()
    for name in ("my-resnet", "tv_in1k"):
        model = backbones.create_model("resnet18", pretrained=name, num_classes=3)
        assert torch.equal(model.fc.weight, saved.fc.weight)
    assert hub_server.requests == []


def test_a_name_that_is_neither_folder_nor_tag_says_both_were_tried(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        backbones.UnknownModelError, match=r"'my-resnt' is neither a file or folder .* nor a weight tag"
    ):
        backbones.create_model("resnet18", pretrained="my-resnt")


# ----------------------------------------------------------------------------- issue 18.4 is in test_trust.py
# ----------------------------------------------------------------------------- issue 18.5: head, names and card agree


def test_a_new_head_drops_the_weights_class_names_and_claims(resnet18_state, hub_server, caches, tmp_path) -> None:
    _publish_resnet18(hub_server, resnet18_state)
    imagenet = backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)
    assert len(imagenet.pretrained_cfg["class_names"]) == 1000 and imagenet.pretrained_cfg["metrics"]
    with pytest.warns(UserWarning, match="re-initialised for num_classes=10"):
        model = backbones.create_model("resnet18.tv_in1k", pretrained=True, num_classes=10, reinit_head=True)
    cfg = model.pretrained_cfg
    assert (cfg["num_classes"], cfg["class_names"], cfg["metrics"]) == (10, None, {})
    imagenet.reset_classifier(7)  # a head changed after building is what gets saved
    for head, folder in (
        (10, model.save_pretrained(tmp_path / "ten")),
        (7, imagenet.save_pretrained(tmp_path / "seven")),
    ):
        config = json.loads((folder / "config.json").read_text())["backbones"]
        assert config["model_kwargs"]["num_classes"] == config["pretrained_cfg"]["num_classes"] == head
        assert config["pretrained_cfg"]["class_names"] is None
        card = (folder / "README.md").read_text()
        assert "top1" not in card and f"new {head}-class classifier" in card
        assert backbones.from_pretrained(folder).num_classes == head


# ----------------------------------------------------------------------------- issue 18.11: no network


def test_without_a_network_a_load_fails_at_once_and_says_how_to_go_offline(
    resnet18_state, hub_server, caches, monkeypatch
) -> None:
    import huggingface_hub.constants

    _publish_resnet18(hub_server, resnet18_state)
    backbones.create_model("resnet34.tv_in1k")  # nothing fetched: no weights asked for
    with monkeypatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
        hub_server.clear_requests()
        with pytest.raises(WeightsUnavailableError, match=r"cannot be reached \(no network\?\).*HF_HUB_OFFLINE=1"):
            backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)
        assert hub_server.requests == []  # no download attempts, so no retries
    backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)
    with monkeypatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
        hub_server.clear_requests()
        model = backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)  # the cache serves
        assert hub_server.requests == []
    assert torch.equal(model.fc.weight, resnet18_state["fc.weight"])


# ----------------------------------------------------------------------------- Hugging Face conventions


def test_from_pretrained_takes_the_hub_mixin_options(hub_server, caches, tmp_path) -> None:
    saved = backbones.create_model("resnet18", num_classes=4)
    folder = saved.save_pretrained(tmp_path / "saved")
    sha = hub_server.publish("tester/options", {p.name: p.read_bytes() for p in folder.iterdir()})
    own_cache = tmp_path / "own-cache"
    hub_server.clear_requests()
    model = backbones.from_pretrained(
        "tester/options", revision=sha, cache_dir=own_cache, token="secret-token", progress=False
    )
    assert torch.equal(model.fc.weight, saved.fc.weight)
    assert list(own_cache.rglob("model.safetensors")) and not list(Path(caches["HF_HUB_CACHE"]).rglob("*.safetensors"))
    assert any("secret-token" in str(headers) for headers in hub_server.request_headers)
    assert any(sha in path for _, path in hub_server.requests)
    hub_server.clear_requests()
    backbones.from_pretrained("tester/options", cache_dir=own_cache, force_download=True, progress=False)
    assert any(method == "GET" and path.endswith("model.safetensors") for method, path in hub_server.requests)
    with pytest.raises(WeightsUnavailableError, match="local_files_only=True"):
        backbones.from_pretrained("tester/options", cache_dir=tmp_path / "empty", local_files_only=True)


def test_save_pretrained_with_push_to_hub_and_a_bare_name_uploads_to_your_namespace(hub_server, caches, tmp_path):
    # Issue 17 defect 8: a bare name goes to the repo create_repo made (<user>/name), not to "name".
    backbones.create_model("resnet18", num_classes=2).save_pretrained(
        tmp_path / "local", push_to_hub=True, repo_id="bare-name"
    )
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub_server.files("stand-in/bare-name"))


def test_push_to_hub_offline_is_one_clear_error(tmp_path, monkeypatch, capsys) -> None:
    folder = backbones.create_model("resnet18", num_classes=2).save_pretrained(tmp_path / "m")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="cannot push to me/m: offline mode is on"):
        backbones.from_pretrained(folder).push_to_hub("me/m")
    assert cli_main(["push", str(folder), "me/m"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "offline mode is on" in err


# ----------------------------------------------------------------------------- issue 17: Hub ids and paths


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("", ValueError, "an empty name names no folder and no Hub repo"),
        ("./my-model", FileNotFoundError, "there is no folder"),
        ("runs/my-modle", FileNotFoundError, "the folder runs exists, so this is read as a path"),
        ("a/b/c", FileNotFoundError, "there is no folder"),
        ("owner/bad name!", ValueError, "neither a local folder nor a Hub repo id"),
        ("weights.bin", FileNotFoundError, "is a file; from_pretrained takes a folder"),
    ],
)
def test_from_pretrained_names_a_path_mistake_without_asking_the_hub(
    name, error, message, tmp_path, monkeypatch, hub_server
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"x")
    hub_server.clear_requests()
    with pytest.raises(error, match=message):
        backbones.from_pretrained(name)
    assert hub_server.requests == []


def test_save_pretrained_to_an_empty_name_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="save_pretrained needs a folder name"):
        backbones.create_model("resnet18").save_pretrained("")
    assert list(tmp_path.iterdir()) == []


def test_a_revision_for_a_local_folder_is_refused(tmp_path) -> None:
    folder = backbones.create_model("resnet18", num_classes=2).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="revision='v1' applies to Hub repos"):
        backbones.from_pretrained(folder, revision="v1")


# ----------------------------------------------------------------------------- issue 17: API arguments

_BAD_ARGUMENTS = {
    "name_none": ((None,), {}, "a model name is a non-empty string"),
    "name_a_path": (("../../x",), {}, "looks like a path"),
    "pretrained_0": (("resnet18",), {"pretrained": 0}, r"pretrained must be True/False.*got 0 \(int\)"),
    "pretrained_1": (("resnet18",), {"pretrained": 1}, r"got 1 \(int\)"),
    "pretrained_empty": (("resnet18",), {"pretrained": ""}, "pretrained='' names nothing"),
    "num_classes_negative": (("resnet18",), {"num_classes": -1}, "num_classes must be between 0"),
    "num_classes_text": (("resnet18",), {"num_classes": "10"}, r"num_classes must be an int.*\(str\)"),
    "num_classes_bool": (("resnet18",), {"num_classes": True}, r"\(bool\)"),
    "in_chans_zero": (("resnet18",), {"in_chans": 0}, "in_chans must be between 1"),
    "fpn_out_channels_zero": (("resnet18_fpn",), {"out_channels": 0}, "out_channels must be between 1"),
    "out_indices_int": (("resnet18",), {"features_only": True, "out_indices": 5}, "sequence of stage indices"),
}


@pytest.mark.parametrize("case", sorted(_BAD_ARGUMENTS))
def test_a_bad_create_model_argument_is_named_before_anything_is_built(case) -> None:
    args, kwargs, message = _BAD_ARGUMENTS[case]
    with pytest.raises(ValueError, match=message):
        backbones.create_model(*args, **kwargs)


@pytest.mark.parametrize("indices", [np.array([2, 4]), torch.tensor([2, 4]), [np.int64(2), 4]])
def test_out_indices_from_numpy_or_torch_are_accepted(indices) -> None:
    extractor = backbones.create_model("resnet18", features_only=True, out_indices=indices)
    assert [info.name for info in extractor.feature_info] == ["layer2", "layer4"]


@pytest.mark.parametrize("batch", [np.zeros((1, 3, 64, 64), np.float32), [[[[0.0] * 64] * 64] * 3]])
def test_an_input_that_is_not_a_tensor_says_how_to_convert_it(batch) -> None:
    model = backbones.create_model("resnet18").eval()
    with pytest.raises(TypeError, match=r"expected a torch.Tensor batch .* torch.as_tensor"):
        model(batch)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_a_float_input_of_another_precision_says_which_cast_fixes_it(dtype) -> None:
    model = backbones.create_model("resnet18").eval()
    with pytest.raises(ValueError, match=rf"input is {dtype} but the model's weights are torch.float32; cast"):
        model(torch.zeros(1, 3, 64, 64, dtype=dtype))


@pytest.mark.parametrize("features_only", [False, True])
def test_a_model_cast_to_float64_takes_float64_input(features_only) -> None:
    # The extractor is a graph traced at float32: its check must follow the model's dtype when it runs.
    kwargs = {"features_only": True, "out_indices": (2,)} if features_only else {}
    model = backbones.create_model("resnet18", **kwargs).eval().double()
    output = model(torch.zeros(1, 3, 64, 64, dtype=torch.float64))
    assert [t.dtype for t in ([output] if isinstance(output, torch.Tensor) else output.values())] == [torch.float64]


def test_behind_a_proxy_the_network_probe_asks_the_proxy(monkeypatch) -> None:
    import socket

    from backbones.hub.download import host_reachable

    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen()
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        assert host_reachable("https://hub.invalid", timeout=1)  # only the proxy can answer for this name
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
        assert not host_reachable("https://hub.invalid", timeout=1)
