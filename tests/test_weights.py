"""Pretrained weights end to end, against the loopback Hub stand-in: real huggingface_hub and torch.hub code.

Reference models (timm, torchvision) with random weights are published to the stand-in under the
manifest's own repo names; create_model(pretrained=True) must download, verify, convert and load
them, and then compute the reference's function.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

import backbones
from backbones import WeightsIntegrityError, WeightsMismatchError, WeightsUnavailableError
from backbones.core.files import save_safetensors_atomic
from backbones.hub.manifest import get_weight_spec, register_weights

from .helpers import REPO_ROOT, copy_checkout, relative_max_diff, run_python

X = torch.randn(2, 3, 64, 64)


pytestmark = pytest.mark.usefixtures("forget_registered_weights")


def _publish_timm(hub_server, arch: str, tag: str, **timm_kwargs) -> torch.nn.Module:
    """Publish timm's randomly initialised ``arch`` as ``timm/arch.tag`` model.safetensors; return the model."""
    import timm

    reference = timm.create_model(arch, **timm_kwargs).eval()
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    hub_server.publish(f"timm/{arch}.{tag}", {"model.safetensors": safetensors_bytes(state)})
    return reference


def _hf_blob(cache_env: dict[str, str]) -> list[Path]:
    return [p for p in Path(cache_env["HF_HUB_CACHE"]).rglob("blobs/*") if p.is_file()]


def test_timm_layout_hub_weights_are_downloaded_converted_and_match_timm(hub_server, caches) -> None:
    reference = _publish_timm(hub_server, "vgg11", "tv_in1k")
    model = backbones.create_model("vgg11", pretrained=True, progress=False).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert relative_max_diff(model(x), reference(x)) <= 1e-5
    assert model.pretrained_cfg["weights"] == "vgg11.tv_in1k"
    assert model.pretrained_cfg["class_names"][0] == "tench" and len(model.pretrained_cfg["class_names"]) == 1000
    # The converted weights are cached as safetensors for the next load.
    assert list(Path(caches["BACKBONES_CACHE"]).glob("converted/vgg11.tv_in1k-*.safetensors"))


def test_hub_weights_in_native_layout_load_directly(hub_server, caches) -> None:
    reference = _publish_timm(hub_server, "resnet18", "tv_in1k")
    model = backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False).eval()
    with torch.no_grad():
        assert relative_max_diff(model(X), reference(X)) <= 1e-5
    assert not Path(caches["BACKBONES_CACHE"], "converted").exists()  # nothing to convert


def _serve_torchvision_pth(hub_server, arch: str, builder: str, tag: str, **kwargs) -> torch.nn.Module:
    """Serve torchvision's random ``builder`` as a .pth at a loopback URL named like torchvision's files."""
    import hashlib

    import torchvision

    reference = torchvision.models.get_model(builder, weights=None, **kwargs).eval()
    buffer = io.BytesIO()
    torch.save(reference.state_dict(), buffer)
    content = buffer.getvalue()
    digest = hashlib.sha256(content).hexdigest()
    url = hub_server.add_static(f"{builder}-{tag}-{digest[:8]}.pth", content)
    register_weights(f"{arch}.{tag}", url=url, sha256=digest[:8], layout="torchvision", classes="imagenet-1k")
    return reference


def test_torchvision_pth_from_a_url_is_verified_converted_and_matches_torchvision(
    hub_server, caches, monkeypatch
) -> None:
    reference = _serve_torchvision_pth(hub_server, "googlenet_v1", "googlenet", "loopback", init_weights=True)
    model = backbones.create_model("googlenet_v1", pretrained="loopback", progress=False).eval()
    with torch.no_grad():
        assert relative_max_diff(model(X), reference(X)) <= 1e-5
    # The next load reads the cached safetensors: the pickle is not opened again.
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("the .pth was read again"))
    again = backbones.create_model("googlenet_v1", pretrained="loopback", progress=False).eval()
    with torch.no_grad():
        assert torch.equal(again(X), model(X))


def test_second_load_offline_makes_zero_requests(hub_server, caches) -> None:
    _publish_timm(hub_server, "resnet18", "a1_in1k")
    model = backbones.create_model("resnet18.a1_in1k", pretrained=True, progress=False).eval()
    hub_server.clear_requests()
    code = (
        "import torch, backbones; torch.manual_seed(0); x = torch.randn(2, 3, 64, 64);"
        "m = backbones.create_model('resnet18.a1_in1k', pretrained=True).eval();"
        "print(repr(m(x).sum().item()))"
    )
    result = run_python(code, env={**caches, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert hub_server.requests == []
    torch.manual_seed(0)
    with torch.no_grad():
        assert float(result.stdout.strip()) == pytest.approx(model(torch.randn(2, 3, 64, 64)).sum().item(), rel=1e-6)


def test_offline_with_an_empty_cache_says_what_to_prefetch(hub_server, caches) -> None:
    hub_server.clear_requests()
    code = "import backbones; backbones.create_model('resnet34.tv_in1k', pretrained=True)"
    result = run_python(code, env={**caches, "HF_HUB_OFFLINE": "1"})
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "WeightsUnavailableError" in last and "not in the local cache and offline mode is on (HF_HUB_OFFLINE" in last
    assert "python -m backbones download resnet34.tv_in1k" in last and "timm/resnet34.tv_in1k" in last
    assert hub_server.requests == []


def test_offline_url_weights_with_an_empty_cache_say_what_to_prefetch(caches, monkeypatch) -> None:
    monkeypatch.setenv("BACKBONES_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match=r"googlenet-1378be20.pth is not in the cache.*pre-fetch"):
        backbones.create_model("googlenet_v1", pretrained=True)


def test_corrupted_cached_hub_file_is_detected_and_removed(hub_server, caches) -> None:
    _publish_timm(hub_server, "resnet18", "tv_in1k")
    backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)
    [blob] = _hf_blob(caches)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match=r"resnet18.tv_in1k: the sha256 .* removed from the cache"):
        backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)
    assert not blob.exists()
    # Running again downloads a good copy.
    backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)


def test_truncated_cached_hub_file_is_detected_and_removed(hub_server, caches) -> None:
    _publish_timm(hub_server, "resnet18", "tv_in1k")
    backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)
    [blob] = _hf_blob(caches)
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.truncate(blob.stat().st_size // 3)
    with pytest.raises(WeightsIntegrityError, match="truncated, corrupt or not the published one"):
        backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)
    assert not blob.exists()


def test_a_download_cut_short_is_resumed_by_the_hub_client(hub_server, caches) -> None:
    reference = _publish_timm(hub_server, "resnet18", "tv_in1k")
    hub_server.truncate_next_download("resnet18.tv_in1k/resolve/main/model.safetensors", 1000)
    model = backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False).eval()
    with torch.no_grad():
        assert relative_max_diff(model(X), reference(X)) <= 1e-5


def test_a_url_download_cut_short_fails_its_sha256_and_leaves_nothing(hub_server, caches) -> None:
    _serve_torchvision_pth(hub_server, "resnet18", "resnet18", "cut")
    spec = get_weight_spec("resnet18", "cut")
    hub_server.truncate_next_download(Path(spec.url).name, 4096)
    with pytest.raises(WeightsIntegrityError, match=r"resnet18.cut: the sha256 .* expected"):
        backbones.create_model("resnet18", pretrained="cut", progress=False)
    assert not any(Path(caches["TORCH_HOME"]).rglob("*.pth"))


def test_sha256_mismatch_of_a_url_file_names_the_file_and_removes_it(hub_server, caches) -> None:
    _serve_torchvision_pth(hub_server, "resnet18", "resnet18", "badsha")
    spec = get_weight_spec("resnet18", "badsha")
    register_weights("resnet18.badsha", url=spec.url, sha256="00000000", layout="torchvision")
    with pytest.raises(WeightsIntegrityError, match=r"expected 00000000.*removed from the cache"):
        backbones.create_model("resnet18", pretrained="badsha", progress=False)
    assert not any(Path(caches["TORCH_HOME"]).rglob("*.pth"))


def test_missing_repo_and_missing_file_get_their_own_errors(hub_server, caches) -> None:
    register_weights("resnet18.norepo", hf_hub_id="nobody/no-such-repo", hf_hub_filename="model.safetensors")
    with pytest.raises(WeightsUnavailableError, match="the Hub has no repository 'nobody/no-such-repo'"):
        backbones.create_model("resnet18", pretrained="norepo", progress=False)
    hub_server.publish("someone/empty-repo", {"config.json": b"{}"})
    register_weights("resnet18.nofile", hf_hub_id="someone/empty-repo", hf_hub_filename="model.safetensors")
    with pytest.raises(
        WeightsUnavailableError, match=r"repository 'someone/empty-repo' has no file 'model.safetensors'"
    ):
        backbones.create_model("resnet18", pretrained="nofile", progress=False)


def test_unknown_weight_tag_lists_the_available_ones() -> None:
    with pytest.raises(backbones.UnknownModelError, match=r"weight tag for resnet50 'tv3_in1k'.*tv2_in1k"):
        backbones.create_model("resnet50.tv3_in1k", pretrained=True)


def test_every_manifest_entry_is_complete() -> None:
    for name in backbones.list_pretrained():
        spec = get_weight_spec(*name.split("."))
        assert spec.hf_hub_id or spec.url, name
        assert spec.layout in {"torchvision", "timm", "torchvision_detection"}, name
        assert {"input_size", "mean", "std", "interpolation"} <= set(spec.preprocessing), name
        assert spec.license and spec.metrics.get("reported_by"), name
        assert spec.url is None or spec.sha256, f"{name}: a URL without its sha256 prefix"
        assert backbones.split_model_name(name)[0] in backbones.list_models(), name


def _saved_resnet18(tmp_path: Path, **kwargs) -> Path:
    model = backbones.create_model("resnet18", **kwargs)
    return model.save_pretrained(tmp_path / "saved")


def test_num_classes_differing_from_the_checkpoint_fails_unless_asked(tmp_path: Path) -> None:
    folder = _saved_resnet18(tmp_path)
    with pytest.raises(
        WeightsMismatchError, match=r"1000 outputs but the model was built with num_classes=10.*reinit_head=True"
    ):
        backbones.create_model("resnet18", pretrained=folder, num_classes=10)
    with pytest.warns(UserWarning, match=r"classifier layers fc re-initialised for num_classes=10"):
        model = backbones.create_model("resnet18", pretrained=folder, num_classes=10, reinit_head=True)
    saved = backbones.from_pretrained(folder)
    assert torch.equal(model.layer4[1].conv2.weight, saved.layer4[1].conv2.weight)
    assert model.fc.out_features == 10


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    state = backbones.create_model("resnet18").state_dict()
    state.pop("layer1.0.conv1.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    save_safetensors_atomic(state, path)
    with pytest.raises(
        WeightsMismatchError, match=r"missing keys: layer1.0.conv1.weight; unexpected keys: extra.weight"
    ):
        backbones.create_model("resnet18", pretrained=path)


def test_a_single_channel_model_adapts_rgb_weights_by_summing(tmp_path: Path) -> None:
    folder = _saved_resnet18(tmp_path)
    with pytest.warns(UserWarning, match="adapted from 3 to 1 input channels"):
        gray = backbones.create_model("resnet18", pretrained=folder, in_chans=1).eval()
    rgb = backbones.from_pretrained(folder).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert relative_max_diff(gray(x), rgb(x.expand(1, 3, 64, 64))) <= 1e-5


def test_a_corrupt_local_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_safetensors_atomic(backbones.create_model("resnet18").state_dict(), path)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(WeightsIntegrityError, match="truncated or corrupt"):
        backbones.create_model("resnet18", pretrained=path)


@pytest.mark.parametrize("name", ["resnet18", "googlenet_v1", "resnet18_fpn"])
def test_save_pretrained_push_to_hub_from_pretrained_is_bit_identical(hub_server, caches, tmp_path, name) -> None:
    model = backbones.create_model(name)
    repo = f"tester/{name}-roundtrip"
    model.push_to_hub(repo)
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub_server.files(repo))
    loaded = backbones.from_pretrained(repo)
    assert type(loaded) is type(model)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    card = hub_server.files(repo)["README.md"].decode()
    assert "backbones.from_pretrained" in card and "## Preprocessing" in card and "license:" in card


def test_features_only_models_round_trip_through_a_folder(tmp_path: Path) -> None:
    extractor = backbones.create_model("vgg11_bn", features_only=True, out_indices=(1, 3))
    restored = backbones.from_pretrained(extractor.save_pretrained(tmp_path / "fe"))
    assert restored.feature_info == extractor.feature_info
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        assert all(
            torch.equal(a, b) for a, b in zip(extractor.eval()(x).values(), restored.eval()(x).values(), strict=True)
        )


def test_from_pretrained_on_the_wrong_class_says_which_class_it_is(tmp_path: Path) -> None:
    folder = _saved_resnet18(tmp_path)
    with pytest.raises(TypeError, match=r"holds a ResNet, not a VGG; load it with backbones.from_pretrained"):
        backbones.VGG.from_pretrained(folder)


def test_saving_a_model_with_an_unserialisable_option_is_refused(tmp_path: Path) -> None:
    model = backbones.create_model("resnet18", norm_layer=torch.nn.BatchNorm2d)
    with pytest.raises(TypeError, match=r"norm_layer=.*cannot be written to config.json"):
        model.save_pretrained(tmp_path / "x")


def test_torch_hub_load_with_pretrained_fetches_from_the_stand_in(hub_server, caches, tmp_path: Path) -> None:
    reference = _publish_timm(hub_server, "resnet18", "tv_in1k")
    hub_dir = tmp_path / "hub"
    copy_checkout(hub_dir / "testorg_backbones_main")
    code = (
        "import sys, torch; torch.hub.set_dir(sys.argv[1]); torch.manual_seed(0); x = torch.randn(2, 3, 64, 64);"
        "m = torch.hub.load('testorg/backbones:main', 'resnet18', pretrained='tv_in1k', progress=False,"
        " trust_repo=True).eval(); print(repr(m(x).sum().item()))"
    )
    result = run_python(code, str(hub_dir), env=caches, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert any("resnet18.tv_in1k" in path for _, path in hub_server.requests)
    torch.manual_seed(0)
    with torch.no_grad():
        expected = reference(torch.randn(2, 3, 64, 64)).sum().item()
    assert float(result.stdout.strip().splitlines()[-1]) == pytest.approx(expected, rel=1e-5)


def test_transforms_for_matches_torchvisions_preset() -> None:
    from PIL import Image
    from torchvision.models import ResNet50_Weights

    image = Image.fromarray((torch.rand(300, 400, 3) * 255).to(torch.uint8).numpy())
    ours = backbones.transforms_for("resnet50.tv2_in1k")(image)
    theirs = ResNet50_Weights.IMAGENET1K_V2.transforms()(image)
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert (ours - theirs).abs().max() < 0.02  # uint8 rounding differs between the two pipelines


def test_transforms_for_without_torchvision_says_how_to_install_it(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.transforms", None)
    with pytest.raises(ImportError, match="pip install torchvision"):
        backbones.transforms_for("resnet50")


def test_readme_documents_pretrained_offline_and_publishing() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    for topic in ("pretrained=True", "HF_HUB_OFFLINE", "push_to_hub", "backbones download", "from_pretrained"):
        assert topic in readme, topic


def test_manifest_is_valid_json_data() -> None:
    manifest = json.loads((REPO_ROOT / "backbones" / "hub" / "weights.json").read_text())
    assert manifest["format"] == 1 and manifest["models"]


def test_backbones_offline_keeps_the_hub_client_to_its_cache(hub_server, caches, monkeypatch) -> None:
    _publish_timm(hub_server, "resnet18", "tv_in1k")
    backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)
    monkeypatch.setenv("BACKBONES_OFFLINE", "1")
    hub_server.clear_requests()
    backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)
    assert hub_server.requests == []
