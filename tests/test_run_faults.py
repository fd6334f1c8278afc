"""Faults around a run's output (issue 33, items 1-4): checkpoints verified whole, a full disk, one writer
per --out, something else where the checkpoints go.

Every run is the tiniest fine-tune there is (resnet18 at 32x32 on 8 images, one epoch); the refusals
come before any training.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from backbones.apps.finetune.checkpoint import CHECKPOINT_DIR, latest_checkpoint, save_checkpoint
from backbones.apps.output_lock import LOCK_NAME, output_lock
from backbones.apps.parallel import DistributedContext
from backbones.core.files import DiskFullError, atomic_path

from .helpers import REPO_ROOT, assert_one_line_error, run_cli

pytestmark = pytest.mark.xdist_group("finetune")


def _finetune(folders, out: Path, *extra: str):
    return run_cli(
        "finetune", "resnet18", "--data", str(folders["train"]), "--val-data", str(folders["val"]), "--out", str(out),
        "--batch-size", "4", "--image-size", "32", "--epochs", "1", "--quiet", *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(folders, tmp_path_factory) -> Path:
    """A completed one-epoch run: its folder keeps the epoch-1 checkpoint."""
    out = tmp_path_factory.mktemp("finished") / "run"
    done = _finetune(folders, out)
    assert done.returncode == 0, done.stderr
    return out


def _checkpoint_only(finished_run: Path, out: Path) -> Path:
    # What --resume reads, without the saved model: a resume that went through would write it again.
    shutil.copytree(finished_run / CHECKPOINT_DIR, out / CHECKPOINT_DIR)
    return out


@pytest.mark.parametrize("where", [0.3, 0.5, 0.7, 0.9], ids=lambda w: f"{int(100 * w)}%")
def test_a_state_file_with_one_byte_flipped_is_refused_by_name(finished_run, folders, tmp_path, where) -> None:
    out = _checkpoint_only(finished_run, tmp_path / "run")
    state = out / CHECKPOINT_DIR / "epoch-0001.state.pt"
    data = bytearray(state.read_bytes())
    data[int(where * len(data))] ^= 0xFF
    state.write_bytes(data)
    done = _finetune(folders, out, "--resume")
    assert_one_line_error(done, f"{state} does not match its recorded sha256", "without --resume")
    assert not (out / "model.safetensors").exists()


def test_a_checkpoint_without_its_index_is_not_resumed_and_says_why(finished_run, folders, tmp_path) -> None:
    out = _checkpoint_only(finished_run, tmp_path / "run")
    (out / CHECKPOINT_DIR / "epoch-0001.json").unlink()  # as a kill before it, or a backbones before 0.2.0, leaves
    assert latest_checkpoint(out) is None
    done = _finetune(folders, out, "--resume")
    assert_one_line_error(done, "holds no complete checkpoint: epoch-0001.state.pt has no index epoch-0001.json")


def _fail_like_a_full_disk(how: str):
    """``torch.save`` that writes a part of the file, then fails as a full disk makes it fail."""
    real = torch.save

    def save(obj, path, *args, **kwargs):
        real(obj, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:1000])  # what reached the disk
        if how == "ENOSPC":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 15841600 vs 15841488")

    return save


def _save_a_tiny_checkpoint(folder: Path) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_checkpoint(folder, 1, model, optimizer, schedule, DistributedContext(), run={}, metrics=[], best_top1=0.0)


@pytest.mark.parametrize("how", ["ENOSPC", "torch's zip writer"])
def test_a_full_disk_names_the_file_and_leaves_nothing_resume_would_read(tmp_path, monkeypatch, how) -> None:
    monkeypatch.setattr(torch, "save", _fail_like_a_full_disk(how))
    with pytest.raises(DiskFullError) as caught:
        _save_a_tiny_checkpoint(tmp_path)
    state = tmp_path / CHECKPOINT_DIR / "epoch-0001.state.pt"
    said = str(caught.value)
    assert said.startswith(f"cannot write the epoch-1 checkpoint's training state {state}: the disk is full")
    assert sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir()) == ["epoch-0001.safetensors"]  # no temporary
    assert latest_checkpoint(tmp_path) is None


def test_torchs_real_short_write_is_reported_as_a_full_disk(tmp_path) -> None:
    # A file size limit makes torch's zip writer fail for real, as a full disk does (the same text).
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    target = tmp_path / "big.pt"
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
        refused = pytest.raises(DiskFullError, match=r"big\.pt: the disk is full.*unexpected pos \d+ vs \d+")
        with refused, atomic_path(target) as tmp:
            torch.save(torch.zeros(100_000), tmp)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert list(tmp_path.iterdir()) == []


HOLD_THE_LOCK = """
import sys, time
from backbones.apps.output_lock import output_lock
with output_lock(sys.argv[1], command="backbones finetune resnet18 --lr 0.05"):
    time.sleep(120)
"""


def _start_holder(out: Path) -> subprocess.Popen:
    """A real second process that takes ``out``'s lock through ``output_lock`` and sleeps in it."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(out)], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while str(holder.pid) not in _read(out / LOCK_NAME):
        assert holder.poll() is None and time.monotonic() < deadline, holder.stderr.read() if holder.poll() else "hung"
        time.sleep(0.05)
    return holder


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """An output folder whose lock another process holds: (folder, that process)."""
    out = tmp_path_factory.mktemp("held") / "run"
    holder = _start_holder(out)
    yield out, holder
    holder.kill()
    holder.wait(timeout=30)


@pytest.mark.parametrize("command", ["finetune", "extract"])
def test_a_second_writer_of_one_out_is_refused_naming_the_running_one(held_out, folders, command) -> None:
    out, holder = held_out
    if command == "finetune":
        done = _finetune(folders, out)
    else:
        data = str(folders["train"])
        done = run_cli("extract", "resnet18", "--data", data, "--out", str(out), "--pretrained", "none")
    running = "backbones finetune resnet18 --lr 0.05"
    assert_one_line_error(done, f"--out {out} is being written by another run, pid {holder.pid} on", running)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # the second run wrote nothing


def test_a_killed_runs_lock_is_free_to_the_next(tmp_path) -> None:
    out = tmp_path / "run"
    holder = _start_holder(out)
    holder.kill()
    holder.wait(timeout=30)
    assert str(holder.pid) in (out / LOCK_NAME).read_text()  # what it left: no clean-up ran
    with output_lock(out):
        assert str(os.getpid()) in (out / LOCK_NAME).read_text()
    assert list(out.iterdir()) == []  # released: the lock file goes with it


@pytest.mark.parametrize("kind", ["file", "fifo"])
@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume"])
def test_something_else_where_checkpoints_go_is_named(folders, tmp_path, kind, resume) -> None:
    out = tmp_path / "run"
    out.mkdir()
    blocker = out / CHECKPOINT_DIR
    blocker.write_text("not a folder") if kind == "file" else os.mkfifo(blocker)
    done = _finetune(folders, out, *(["--resume"] if resume else []))
    what = "a file" if kind == "file" else "a FIFO (named pipe)"
    assert_one_line_error(done, f"{blocker} is {what}, not a folder: move it away")
