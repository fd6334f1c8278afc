"""Weights you can trust (issue 17): legacy checkpoints, cache integrity at every load, impossible values,
hostile configs, atomic saves, file modes, and one clear error for each file problem.

Hub and URL paths run against the loopback stand-in (tests/hub_server.py) with real huggingface_hub and
torch.hub code; nothing is mocked but the one case a root user cannot produce (an unreadable file).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

import backbones
import backbones.hub.loading
import backbones.hub.manifest
from backbones.apps.cli.main import main as cli_main
from backbones.core.files import save_safetensors_atomic
from backbones.hub.download import WeightsUnavailableError
from backbones.hub.integrity import STALE_PARTIAL_AGE_S, digest_path
from backbones.hub.loading import WeightsFileError, converted_cache_path
from backbones.hub.manifest import get_weight_spec, register_weights

X = torch.randn(1, 3, 64, 64)


pytestmark = pytest.mark.usefixtures("forget_registered_weights")


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    """A resnet18 state dict with non-trivial values everywhere (BatchNorm statistics included)."""
    torch.manual_seed(1)
    model = backbones.create_model("resnet18")
    for buffer in model.buffers():
        if buffer.is_floating_point():
            buffer.copy_(torch.rand_like(buffer) + 0.5)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _torch_save_bytes(state: dict, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def _assert_holds(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def _serve_pth(hub_server, tag: str, state: dict, legacy: bool = False) -> str:
    """Serve ``state`` as a .pth at a loopback URL and register it as ``resnet18.<tag>``; returns the URL."""
    content = _torch_save_bytes(state, legacy)
    digest = hashlib.sha256(content).hexdigest()
    url = hub_server.add_static(f"resnet18-{tag}-{digest[:8]}.pth", content)
    register_weights(f"resnet18.{tag}", url=url, sha256=digest[:8], layout="torchvision")
    return url


# ----------------------------------------------------------------------------- defect 1: legacy .pth files


@pytest.mark.parametrize("route", ["local_path", "hub", "url", "cli_convert"])
def test_a_legacy_format_pth_loads_through_every_route(route, resnet18_state, hub_server, caches, tmp_path) -> None:
    content = _torch_save_bytes(resnet18_state, legacy=True)
    assert not content.startswith(b"PK")  # really the pre-1.6 format, which mmap refuses
    path = tmp_path / "resnet18-legacy.pth"
    path.write_bytes(content)
    if route == "local_path":
        model = backbones.create_model("resnet18", pretrained=path)
    elif route == "hub":
        hub_server.publish("tester/legacy-pth", {"model.pth": content})
        register_weights("resnet18.legacyhub", hf_hub_id="tester/legacy-pth", hf_hub_filename="model.pth")
        model = backbones.create_model("resnet18", pretrained="legacyhub", progress=False)
    elif route == "url":
        _serve_pth(hub_server, "legacyurl", resnet18_state, legacy=True)
        model = backbones.create_model("resnet18", pretrained="legacyurl", progress=False)
    else:
        out = tmp_path / "converted.safetensors"
        assert cli_main(["convert", str(path), "--arch", "resnet18", "--out", str(out)]) == 0
        model = backbones.create_model("resnet18", pretrained=out)
    _assert_holds(model, resnet18_state)


# ----------------------------------------------------------------------------- defect 2: cache integrity


@pytest.mark.parametrize("damage", ["flipped_byte", "zeros"])
def test_a_changed_converted_file_is_detected_and_converted_afresh(damage, resnet18_state, hub_server, caches) -> None:
    _serve_pth(hub_server, "conv", resnet18_state)
    backbones.create_model("resnet18", pretrained="conv", progress=False)
    converted = converted_cache_path(get_weight_spec("resnet18", "conv"))
    assert converted.is_file() and digest_path(converted).is_file()
    stat = converted.stat()
    data = bytearray(converted.read_bytes())
    if damage == "flipped_byte":
        data[-100] ^= 0x01
    else:
        data = bytearray(b"\0" * len(data))
    converted.write_bytes(bytes(data))
    os.utime(converted, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    with pytest.warns(UserWarning, match="was changed since it was written; converting afresh"):
        model = backbones.create_model("resnet18", pretrained="conv", progress=False)
    _assert_holds(model, resnet18_state)
    assert converted.read_bytes() != bytes(data)


def _publish_native(hub_server, repo: str, state: dict) -> None:
    hub_server.publish(repo, {"model.safetensors": safetensors_bytes({k: v.contiguous() for k, v in state.items()})})


def _snapshot_file(cache: Path) -> Path:
    [path] = [p for p in cache.rglob("snapshots/*/model.safetensors")]
    return path


def _corrupt_in_place(path: Path) -> None:
    """Flip one byte, keeping size and modification time (what a size+mtime record cannot see)."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_blob_corrupted_in_place_with_its_size_and_mtime_kept_is_caught(resnet18_state, hub_server, caches) -> None:
    _publish_native(hub_server, "timm/resnet18.tv_in1k", resnet18_state)
    backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)
    backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)  # a second, "already verified" load
    blob = Path(os.path.realpath(_snapshot_file(Path(caches["HF_HUB_CACHE"]))))
    _corrupt_in_place(blob)
    with pytest.raises(backbones.WeightsIntegrityError, match=r"resnet18.tv_in1k: the sha256 of .* expected"):
        backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)


@pytest.mark.parametrize("cache_kind", ["HF_HUB_DISABLE_SYMLINKS", "copied_with_cp_rL"])
def test_a_hub_cache_without_links_is_still_verified(
    cache_kind, resnet18_state, hub_server, caches, monkeypatch, tmp_path
) -> None:
    import huggingface_hub.constants

    _publish_native(hub_server, "timm/resnet18.tv_in1k", resnet18_state)
    if cache_kind == "HF_HUB_DISABLE_SYMLINKS":
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_SYMLINKS", True)
        backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)
    else:
        backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)
        copy = tmp_path / "copied-cache"
        shutil.copytree(caches["HF_HUB_CACHE"], copy, symlinks=False)  # cp -rL: links become plain files
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(copy))
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _snapshot_file(Path(huggingface_hub.constants.HF_HUB_CACHE))
    assert not snapshot.is_symlink()
    _assert_holds(backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False), resnet18_state)
    _corrupt_in_place(snapshot)
    with pytest.raises(backbones.WeightsIntegrityError, match=r"resnet18\.tv_in1k"):
        backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)


def test_a_regular_git_file_of_a_hub_repo_is_verified_against_its_git_blob_id(hub_server, caches) -> None:
    backbones.create_model("resnet18", num_classes=2).push_to_hub("tester/git-files")
    backbones.from_pretrained("tester/git-files", progress=False)
    [config] = Path(caches["HF_HUB_CACHE"]).rglob("snapshots/*/config.json")
    blob = Path(os.path.realpath(config))
    assert len(blob.name) == 40  # config.json is a regular git file on the Hub, named by its git blob sha1
    _corrupt_in_place(blob)
    with pytest.raises(backbones.WeightsIntegrityError, match=r"the git blob id of .* expected"):
        backbones.from_pretrained("tester/git-files", progress=False)


def test_converted_weights_load_offline_after_their_source_left_the_cache(
    resnet18_state, hub_server, caches, monkeypatch
) -> None:
    url = _serve_pth(hub_server, "gone", resnet18_state)
    backbones.create_model("resnet18", pretrained="gone", progress=False)
    from backbones.hub.download import url_cache_path

    url_cache_path(url).unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _assert_holds(backbones.create_model("resnet18", pretrained="gone", progress=False), resnet18_state)


def test_hub_weights_registered_without_a_file_name_are_read_natively(resnet18_state, hub_server, caches) -> None:
    _publish_native(hub_server, "tester/default-name", resnet18_state)
    register_weights("resnet18.defaultname", hf_hub_id="tester/default-name")  # model.safetensors by default
    _assert_holds(backbones.create_model("resnet18", pretrained="defaultname", progress=False), resnet18_state)
    assert not Path(caches["BACKBONES_CACHE"], "converted").exists()  # safetensors in our layout: no copy


# ----------------------------------------------------------------------------- defect 3: a wrong converted file


def test_a_converted_file_that_does_not_fit_is_replaced(resnet18_state, hub_server, caches) -> None:
    from backbones.hub.integrity import file_sha256, write_digest_beside

    _serve_pth(hub_server, "stale", resnet18_state)
    converted = converted_cache_path(get_weight_spec("resnet18", "stale"))
    # A file an older converter could have written: valid, with a matching digest, but not these weights' layout.
    wrong = {f"old.{k}": v for k, v in resnet18_state.items()}
    save_safetensors_atomic(wrong, converted)
    write_digest_beside(converted, file_sha256(converted))
    model = backbones.create_model("resnet18", pretrained="stale", progress=False)
    _assert_holds(model, resnet18_state)
    assert set(backbones.hub.loading.read_state_dict(converted, "x")) == set(resnet18_state)


def test_weights_of_another_architecture_are_named_as_such_not_as_a_class_count(resnet18_state, tmp_path) -> None:
    path = tmp_path / "r18.safetensors"
    save_safetensors_atomic(resnet18_state, path)
    with pytest.raises(backbones.WeightsMismatchError, match=r"1000 outputs .* num_classes=10; pass reinit_head=True"):
        backbones.create_model("resnet18", pretrained=path, num_classes=10)
    with pytest.raises(
        backbones.WeightsMismatchError,
        match=r"fit ResNet \(resnet50\) as built: it holds weights of another architecture \(resnet18\)",
    ) as err:
        backbones.create_model("resnet50", pretrained=path)
    assert "reinit_head" not in str(err.value) and "num_classes" not in str(err.value)


# ----------------------------------------------------------------------------- defect 4: file modes


@pytest.mark.parametrize("writer", ["save_pretrained", "convert_out", "url_download_and_converted_cache"])
def test_files_we_write_get_the_mode_the_umask_gives(writer, resnet18_state, hub_server, caches, tmp_path) -> None:
    previous = os.umask(0o027)
    try:
        if writer == "save_pretrained":
            folder = backbones.create_model("resnet18").save_pretrained(tmp_path / "saved")
            written = [folder / "config.json", folder / "model.safetensors", folder / "README.md"]
            assert folder.stat().st_mode & 0o777 == 0o750
        elif writer == "convert_out":
            source = tmp_path / "in.pth"
            source.write_bytes(_torch_save_bytes(resnet18_state))
            written = [tmp_path / "out.safetensors"]
            assert cli_main(["convert", str(source), "--arch", "resnet18", "--out", str(written[0])]) == 0
        else:
            url = _serve_pth(hub_server, "mode", resnet18_state)
            backbones.create_model("resnet18", pretrained="mode", progress=False)
            converted = converted_cache_path(get_weight_spec("resnet18", "mode"))
            from backbones.hub.download import url_cache_path

            written = [url_cache_path(url), converted, digest_path(converted)]
    finally:
        os.umask(previous)
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o640)}


# ----------------------------------------------------------------------------- defect 5: atomic save_pretrained


def test_a_failed_save_pretrained_leaves_the_old_folder_whole(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "model"
    old = backbones.create_model("resnet18", num_classes=3)
    old.save_pretrained(folder)
    (folder / "metrics.jsonl").write_text('{"epoch": 1}\n')
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(backbones.core.files, "save_safetensors_atomic", fail)
    with pytest.raises(OSError, match="disk full"):
        backbones.create_model("resnet18", num_classes=5).save_pretrained(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folder left
    monkeypatch.undo()
    backbones.create_model("resnet18", num_classes=5).save_pretrained(folder)
    assert backbones.from_pretrained(folder).num_classes == 5
    assert (folder / "metrics.jsonl").read_text() == '{"epoch": 1}\n'  # other files are kept


def test_a_saved_folder_whose_weights_were_damaged_or_swapped_is_named(tmp_path) -> None:
    folder = backbones.create_model("resnet18", num_classes=3).save_pretrained(tmp_path / "m")
    other = backbones.create_model("resnet18", num_classes=3).save_pretrained(tmp_path / "other")
    shutil.copy(other / "model.safetensors", folder / "model.safetensors")  # the weights of another save
    with pytest.raises(backbones.WeightsIntegrityError, match=r"is not the file its config\.json was saved with"):
        backbones.from_pretrained(folder)


# ----------------------------------------------------------------------------- defect 6: hostile config.json

_HOSTILE_CONFIGS = {
    "pretrained_true": ({"architecture": "resnet18", "model_kwargs": {"pretrained": True}}, "'pretrained' is not"),
    "pretrained_path": ({"architecture": "resnet18", "model_kwargs": {"pretrained": "/etc/passwd"}}, "'pretrained'"),
    "huge_num_classes": ({"architecture": "resnet18", "model_kwargs": {"num_classes": 3000000}}, "num_classes must"),
    "string_num_classes": ({"architecture": "resnet18", "model_kwargs": {"num_classes": "10"}}, "num_classes must"),
    "backbone_pretrained": (
        {"architecture": "resnet18_fpn", "model_kwargs": {"backbone_pretrained": True}},
        "'backbone_pretrained' is not a model option",
    ),
    "a_list": ([1, 2], "holds a JSON list"),
    "a_string": ("resnet18", "holds a JSON str"),
    "null": (None, "holds a JSON NoneType"),
    "kwargs_not_an_object": ({"architecture": "resnet18", "model_kwargs": [1]}, "'model_kwargs' must be an object"),
    "path_as_architecture": ({"architecture": "../../x"}, "'architecture' must be a registered name"),
    "out_indices_text": ({"architecture": "resnet18", "features_only": True, "out_indices": "12"}, "out_indices"),
}


@pytest.mark.parametrize("case", sorted(_HOSTILE_CONFIGS))
def test_a_hostile_config_json_is_refused_before_anything_is_built(case, tmp_path, hub_server) -> None:
    config, message = _HOSTILE_CONFIGS[case]
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    hub_server.clear_requests()
    with pytest.raises(ValueError, match=message):
        backbones.from_pretrained(folder)
    assert hub_server.requests == []


# ----------------------------------------------------------------------------- defect 7: impossible weights


_IMPOSSIBLE = {
    "int8": ("conv1.weight", lambda t: t.to(torch.int8), "conv1.weight is torch.int8"),
    "bool": ("fc.weight", lambda t: t > 0, "fc.weight is torch.bool"),
    "nan_everywhere": ("layer1.0.conv1.weight", lambda t: torch.full_like(t, float("nan")), "NaN or infinite"),
    "one_inf": ("fc.bias", lambda t: t.index_fill(0, torch.tensor([3]), float("inf")), "fc.bias holds NaN or inf"),
    "negative_variance": ("bn1.running_var", lambda t: -t, "bn1.running_var holds negative BatchNorm variances"),
}


@pytest.mark.parametrize("case", sorted(_IMPOSSIBLE))
def test_impossible_weights_are_refused_naming_the_tensor(case, resnet18_state, tmp_path) -> None:
    key, change, message = _IMPOSSIBLE[case]
    state = dict(resnet18_state, **{key: change(resnet18_state[key])})
    path = tmp_path / "bad.safetensors"
    save_safetensors_atomic(state, path)
    with pytest.raises(backbones.WeightsIntegrityError, match=message):
        backbones.create_model("resnet18", pretrained=path)


# ----------------------------------------------------------------------------- defect 8: push_to_hub with a bare name
# is test_save_pretrained_with_push_to_hub_and_a_bare_name_uploads_to_your_namespace in test_hub_conventions.py


# ----------------------------------------------------------------------------- local files: say what it really is


def _unreadable(path: Path, monkeypatch) -> None:
    path.write_bytes(b"x")
    os.chmod(path, 0)
    if os.geteuid() == 0:  # root reads any file: stand in for the permission check the OS would refuse
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == path else real_access(p, mode, **k))


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "there is no file"),
        ("folder", "is a folder without model.safetensors"),
        ("text_file", "is not a weights file"),
        ("blocked_pickle", "holds Python objects besides tensors, which are never unpickled"),
        ("unreadable", r"cannot be read \(permission denied\)"),
    ],
)
def test_a_local_file_problem_is_named_for_what_it_is(case, message, tmp_path, monkeypatch, capsys) -> None:
    path = tmp_path / "weights.pth"
    if case == "folder":
        path.mkdir()
    elif case == "text_file":
        path.write_text("these are my weights\n")
    elif case == "blocked_pickle":
        torch.save({"conv1.weight": _Evil()}, path)
    elif case == "unreadable":
        _unreadable(path, monkeypatch)
    with pytest.raises(WeightsFileError, match=message) as err:
        backbones.create_model("resnet18", pretrained=path)
    assert "download it afresh" not in str(err.value) and "truncated" not in str(err.value)
    assert "this must never run" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- cache


def test_stale_partial_downloads_are_removed_and_live_ones_kept(resnet18_state, hub_server, caches) -> None:
    from backbones.hub.download import url_cache_path

    _publish_native(hub_server, "timm/resnet18.tv_in1k", resnet18_state)
    blobs = Path(caches["HF_HUB_CACHE"], "models--timm--resnet18.tv_in1k", "blobs")
    url = _serve_pth(hub_server, "partial", resnet18_state)
    checkpoints = url_cache_path(url).parent
    old_time = time.time() - STALE_PARTIAL_AGE_S - 60
    leftovers = {}
    for folder, suffix in ((blobs, ".incomplete"), (checkpoints, ".partial")):
        folder.mkdir(parents=True, exist_ok=True)
        stale, live = folder / f"killed{suffix}", folder / f"downloading{suffix}"
        stale.write_bytes(b"x"), live.write_bytes(b"y")
        os.utime(stale, (old_time, old_time))
        leftovers[stale], leftovers[live] = False, True
    backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)
    backbones.create_model("resnet18", pretrained="partial", progress=False)
    assert {p: p.exists() for p in leftovers} == leftovers


def test_a_file_at_backbones_cache_is_named(monkeypatch, tmp_path, resnet18_state, hub_server) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("BACKBONES_CACHE", str(blocker))
    _serve_pth(hub_server, "blocked", resnet18_state)
    with pytest.raises(WeightsUnavailableError, match=r"BACKBONES_CACHE=.* is a file, not a folder"):
        backbones.create_model("resnet18", pretrained="blocked", progress=False)


def test_a_folder_where_a_digest_belongs_is_named(resnet18_state, hub_server, caches) -> None:
    _serve_pth(hub_server, "digestdir", resnet18_state)
    converted = converted_cache_path(get_weight_spec("resnet18", "digestdir"))
    digest_path(converted).mkdir(parents=True)
    with pytest.raises(backbones.WeightsIntegrityError, match=r"should hold the sha256 .* delete it"):
        backbones.create_model("resnet18", pretrained="digestdir", progress=False)
