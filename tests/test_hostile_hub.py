"""Hostile inputs to the Hub layer and to saving (issue 34): caches without links, read-only folders,
leftovers of killed downloads, impossible save paths and unknown names given to ``download``.

Downloads run against the loopback Hub stand-in (tests/hub_server.py) with the real huggingface_hub
and torch.hub code. Tests run as root, which ignores permission bits, so a read-only folder is one
whose mode has no write bit, as the library judges it.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

import backbones
import backbones.hub.manifest
from backbones.hub.manifest import register_weights

from .helpers import assert_one_line_error, run_cli

pytestmark = pytest.mark.usefixtures("forget_registered_weights")


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {k: v.clone() for k, v in backbones.create_model("resnet18").state_dict().items()}


def _publish(hub_server, repo: str, state: dict) -> bytes:
    content = safetensors_bytes({k: v.contiguous() for k, v in state.items()})
    hub_server.publish(repo, {"model.safetensors": content})
    return content


def _assert_holds(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def _age(path: Path, seconds: float) -> None:
    """Date ``path`` back: a leftover of a download killed that long ago (well under the 24-hour sweep)."""
    when = time.time() - seconds
    os.utime(path, (when, when))


# ----------------------------------------------------------------------------- item 2: caches without links


def test_a_cache_made_without_links_loads_offline_and_still_refuses_a_changed_file(
    resnet18_state, hub_server, caches, monkeypatch
) -> None:
    import huggingface_hub.constants

    _publish(hub_server, "timm/resnet18.tv_in1k", resnet18_state)
    # huggingface_hub reads the constant when it links a snapshot, so patching it here is enough.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_SYMLINKS", True)
    backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)
    [snapshot] = Path(caches["HF_HUB_CACHE"]).rglob("snapshots/*/model.safetensors")
    assert not snapshot.is_symlink()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_server.clear_requests()
    _assert_holds(backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False), resnet18_state)
    assert hub_server.requests == []

    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0x01
    snapshot.write_bytes(bytes(data))
    with pytest.raises(backbones.WeightsIntegrityError, match=r"resnet18\.tv_in1k: the sha256 of .* expected"):
        backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)


# ----------------------------------------------------------------------------- item 3: read-only folders


def test_save_pretrained_into_a_read_only_folder_is_refused_and_the_folder_kept(tmp_path) -> None:
    folder = tmp_path / "frozen"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    folder.chmod(0o555)
    before = folder.stat()
    with pytest.raises(PermissionError) as err:
        backbones.create_model("resnet18", num_classes=2).save_pretrained(folder)
    assert str(folder) in str(err.value) and "read-only" in str(err.value) and "\n" not in str(err.value)
    after = folder.stat()
    assert (after.st_ino, after.st_mode, after.st_uid) == (before.st_ino, before.st_mode, before.st_uid)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_convert_out_a_read_only_folder_is_one_line_and_the_folder_kept(resnet18_state, tmp_path) -> None:
    checkpoint = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, checkpoint)
    folder = tmp_path / "frozen"
    folder.mkdir()
    folder.chmod(0o555)
    before = folder.stat()
    result = run_cli("convert", str(checkpoint), "--arch", "resnet18", "--out", str(folder))
    assert_one_line_error(result, str(folder), "read-only")
    after = folder.stat()
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert list(folder.iterdir()) == []


# ----------------------------------------------------------------------------- item 4b: leftovers of killed downloads


def test_a_hub_re_download_removes_that_files_killed_attempts_only(resnet18_state, hub_server, caches) -> None:
    content = _publish(hub_server, "timm/resnet18.tv_in1k", resnet18_state)
    blobs = Path(caches["HF_HUB_CACHE"], "models--timm--resnet18.tv_in1k", "blobs")
    blobs.mkdir(parents=True)
    digest = hashlib.sha256(content).hexdigest()
    killed = blobs / f"{digest}.0badf00d.incomplete"  # huggingface_hub names each attempt <etag>.<8 hex>.incomplete
    other = blobs / f"{'e' * 64}.0badf00d.incomplete"  # another file's download
    for path in (killed, other):
        path.write_bytes(b"x")
        _age(path, 600)
    backbones.create_model("resnet18.tv_in1k", pretrained=True, progress=False)
    assert not killed.exists()
    assert other.exists()


def test_a_url_re_download_removes_that_files_killed_attempts_only(resnet18_state, hub_server, caches) -> None:
    from backbones.hub.download import url_cache_path

    buffer = io.BytesIO()
    torch.save(resnet18_state, buffer)
    content = buffer.getvalue()
    name = f"resnet18-killed-{hashlib.sha256(content).hexdigest()[:8]}.pth"
    url = hub_server.add_static(name, content)
    register_weights("resnet18.killed", url=url, sha256=hashlib.sha256(content).hexdigest()[:8], layout="torchvision")
    checkpoints = url_cache_path(url).parent
    checkpoints.mkdir(parents=True)
    # torch.hub names each attempt <file>.<32 hex>.partial
    killed = checkpoints / f"{name}.{'a' * 32}.partial"
    other = checkpoints / f"resnet50-0676ba61.pth.{'b' * 32}.partial"
    live = checkpoints / f"{name}.{'c' * 32}.partial"
    for path in (killed, other):
        path.write_bytes(b"x")
        _age(path, 600)
    live.write_bytes(b"y")
    future = time.time() + 600  # still being written by another process after this download began
    os.utime(live, (future, future))
    backbones.create_model("resnet18", pretrained="killed", progress=False)
    assert not killed.exists()
    assert other.exists() and live.exists()


# ----------------------------------------------------------------------------- item 6a: impossible save paths


def test_save_pretrained_none_is_one_clear_line(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match=r"^save_pretrained needs a folder .*got None$"):
        backbones.create_model("resnet18", num_classes=2).save_pretrained(None)
    assert list(tmp_path.iterdir()) == []


def test_save_pretrained_under_a_file_is_one_clear_line(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError) as err:
        backbones.create_model("resnet18", num_classes=2).save_pretrained(blocker / "sub")
    message = str(err.value)
    assert "\n" not in message and str(blocker) in message and "is a file, not a folder" in message
    assert blocker.read_text() == "x"


# ----------------------------------------------------------------------------- item 7b: download of an unknown name


def test_download_of_an_unknown_architecture_says_unknown_model() -> None:
    result = run_cli("download", "nope")
    assert_one_line_error(result, "unknown model 'nope'")
    assert "no pretrained weights" not in result.stderr
    assert_one_line_error(run_cli("download", "resnt18"), "unknown model 'resnt18'", "resnet18")


def test_download_of_a_registered_architecture_without_weights_says_so() -> None:
    assert_one_line_error(run_cli("download", "inception_v2"), "no pretrained weights are published for 'inception_v2'")
