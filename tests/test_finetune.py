"""Fine-tuning: torchrun end to end, DDP equals one process, resume after a kill, aux losses, bad inputs.

Every run is tiny (a few 12x12 PNGs, resnet18 at 32x32, one or two epochs, one thread per process):
the tests check behaviour, the benchmarks (benchmarks/finetune_digits.py) check accuracy and speed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import backbones
from backbones.apps.cli.main import main
from backbones.apps.finetune.checkpoint import CHECKPOINT_DIR, CheckpointError
from backbones.apps.finetune.loop import compute_loss
from backbones.models.inception import googlenet_loss

from .helpers import REPO_ROOT, killed_after_epoch_script
from .image_folders import make_image_folder, write_corrupt_image

# One xdist worker runs them all: the torchrun and killed runs (module fixtures) then run once, not once a worker.
pytestmark = pytest.mark.xdist_group("finetune")

# The recipe of the equivalence check: plain SGD steps with nothing random in them.
STEP_OPTIONS = {"image_size": 32, "epochs": 1, "lr": 0.1, "warmup_epochs": 0.0, "augment": False, "freeze_norm": True}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _subprocess_env() -> dict[str, str]:
    # One thread per process: the thread count is part of the determinism contract.
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def torchrun_run(folders, tmp_path_factory) -> Path:
    """One 2-process torchrun fine-tune: batch 4 per process on 8 training images, i.e. one step of 8."""
    out = tmp_path_factory.mktemp("torchrun") / "model"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", str(_free_port()),
        "-m", "backbones", "finetune", "resnet18", "--data", str(folders["train"]), "--val-data", str(folders["val"]),
        "--out", str(out), "--batch-size", "4", "--image-size", "32", "--epochs", "1", "--lr", "0.1",
        "--warmup-epochs", "0", "--no-augment", "--freeze-norm", "--quiet",
    ]  # fmt: skip
    done = subprocess.run(command, env=_subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_torchrun_two_processes_write_a_folder_that_from_pretrained_loads(torchrun_run: Path, folders) -> None:
    model = backbones.from_pretrained(torchrun_run).eval()
    assert model.pretrained_cfg["class_names"] == ["blue", "red"] and model.num_classes == 2
    assert tuple(model.pretrained_cfg["input_size"]) == (3, 32, 32)
    records = [json.loads(line) for line in (torchrun_run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1
    assert {"epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "images_per_s", "seconds"} <= set(
        records[0]
    )
    assert records[0]["processes"] == 2 and records[0]["lr"] == pytest.approx(0.1)
    assert (torchrun_run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    card = (torchrun_run / "README.md").read_text()
    assert "backbones finetune resnet18" in card and "epochs: 1" in card and str(folders["train"]) in card
    assert f"final validation top1: {100 * records[0]['val_top1']:.2f}%" in card
    assert not [p for p in torchrun_run.rglob("*") if p.name.startswith(".")]  # no temporary file left


def test_one_ddp_step_on_two_halves_equals_one_step_on_the_whole_batch(
    torchrun_run: Path, folders, tmp_path: Path, one_thread
) -> None:
    single = backbones.finetune(
        "resnet18",
        folders["train"],
        tmp_path,
        val_data=str(folders["val"]),
        batch_size=8,
        progress=False,
        **STEP_OPTIONS,
    )
    assert single.metrics[0]["processes"] == 1
    ddp, alone = load_file(torchrun_run / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    torch.manual_seed(0)
    initial = backbones.create_model("resnet18", num_classes=2).state_dict()
    assert max((ddp[k] - initial[k]).abs().max().item() for k in ddp) > 1e-3  # the step moved the weights
    assert max((ddp[k] - alone[k]).abs().max().item() for k in ddp) <= 1e-6


KILL_AFTER_FIRST_EPOCH = killed_after_epoch_script("backbones.apps.finetune.run")


def _resume_args(folders, out: Path) -> list[str]:
    return [
        "finetune", "resnet18", "--data", str(folders["train"]), "--val-data", str(folders["val"]), "--out", str(out),
        "--batch-size", "4", "--image-size", "32", "--epochs", "2", "--deterministic", "--quiet",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def killed_run(folders, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A run (with augmentation) killed by SIGKILL right after its epoch-1 checkpoint."""
    out = tmp_path_factory.mktemp("killed") / "model"
    command = [sys.executable, "-c", KILL_AFTER_FIRST_EPOCH, *_resume_args(folders, out)]
    return out, subprocess.run(command, env=_subprocess_env(), capture_output=True, text=True, timeout=600)


def test_a_run_killed_after_epoch_1_resumes_to_the_uninterrupted_weights(
    killed_run, folders, tmp_path: Path, one_thread
) -> None:
    killed_out, killed = killed_run
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (killed_out / "model.safetensors").exists()
    assert (killed_out / CHECKPOINT_DIR / "epoch-0001.state.pt").exists()
    out = tmp_path / "resumed"
    shutil.copytree(killed_out, out)  # the killed folder stays as it was for the other tests
    assert main([*_resume_args(folders, out), "--resume"]) == 0
    assert main(_resume_args(folders, tmp_path / "straight")) == 0
    resumed, straight = load_file(out / "model.safetensors"), load_file(tmp_path / "straight" / "model.safetensors")
    assert max((resumed[k].double() - straight[k].double()).abs().max().item() for k in straight) <= 1e-6
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]


@pytest.mark.parametrize("cut", ["state", "weights"])
def test_a_checkpoint_cut_short_is_refused(killed_run, folders, tmp_path: Path, cut: str) -> None:
    out = tmp_path / "model"
    shutil.copytree(killed_run[0], out)
    name = "epoch-0001.state.pt" if cut == "state" else "epoch-0001.safetensors"
    path = out / CHECKPOINT_DIR / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut short.*start again without resume=True"):
        backbones.finetune(
            "resnet18", folders["train"], out, val_data=str(folders["val"]), batch_size=4, image_size=32, epochs=2,
            deterministic=True, resume=True, progress=False,
        )  # fmt: skip


def test_googlenet_trains_its_auxiliary_heads_with_googlenet_loss(folders, tmp_path: Path, one_thread) -> None:
    model = backbones.create_model("googlenet_v1", num_classes=2).train()
    images, target = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 1, 0])
    outputs = model(images)
    assert len(outputs) == 3 and torch.equal(compute_loss(outputs, target), googlenet_loss(outputs, target))
    backbones.finetune(
        "googlenet_v1", folders["train"], tmp_path, val_data=str(folders["val"]), batch_size=4, image_size=32,
        epochs=1, trainable_stages=0, progress=False,
    )  # fmt: skip
    trained = load_file(tmp_path / "model.safetensors")
    torch.manual_seed(0)
    initial = backbones.create_model("googlenet_v1", num_classes=2).state_dict()

    def moved(prefix: str) -> float:
        return max((trained[k] - initial[k]).abs().max().item() for k in trained if k.startswith(prefix))

    assert moved("inception4a.") == 0 and moved("conv1.") == 0  # frozen trunk: the initialisation is the same
    assert moved("aux1.") > 0 and moved("aux2.") > 0 and moved("fc.") > 0


def _empty(root: Path) -> Path:
    (root / "empty").mkdir()
    return root / "empty"


def _with_corrupt_image(root: Path) -> Path:
    folder = make_image_folder(root / "bad")
    write_corrupt_image(folder / "red" / "9.png")
    return folder


# problem -> (make the data folder, extra options, the message expected)
BAD_INPUTS = {
    "missing folder": (lambda root: root / "nowhere", [], "does not exist"),
    "empty folder": (_empty, [], "no images in"),
    "one class only": (lambda root: make_image_folder(root / "one", ("red",)), [], "has one class only"),
    "corrupt image": (
        _with_corrupt_image,
        ["--batch-size", "2", "--image-size", "32", "--epochs", "1"],
        r"cannot read image .*red/9\.png",
    ),
    "batch larger than the dataset": (
        lambda root: make_image_folder(root / "small"),
        ["--batch-size", "64"],
        "batch size 64 is larger than the 6 training images",
    ),
    "image size below the minimum": (
        lambda root: make_image_folder(root / "tiny"),
        ["--image-size", "16"],
        "image size 16 is below the model's minimum input of 32x32",
    ),
}


@pytest.mark.parametrize("problem", list(BAD_INPUTS))
def test_bad_input_is_one_clear_line_and_exit_status_2(problem: str, tmp_path: Path, capsys) -> None:
    make_data, options, message = BAD_INPUTS[problem]
    data = make_data(tmp_path)
    status = main(["finetune", "resnet18", "--data", str(data), "--out", str(tmp_path / "out"), "--quiet", *options])
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("backbones finetune: error: ")
    assert re.search(message, err), err


def test_sync_bn_on_cpu_is_refused_with_the_reason(tmp_path: Path, capsys) -> None:
    assert (
        main(["finetune", "resnet18", "--data", "digits", "--out", str(tmp_path), "--sync-bn", "--device", "cpu"]) == 2
    )
    assert "--sync-bn needs CUDA" in capsys.readouterr().err


def test_evaluate_prints_top1_top5_and_draws_the_confusion_matrix(
    torchrun_run: Path, folders, tmp_path, capsys
) -> None:
    picture = tmp_path / "confusion.png"
    assert main(["evaluate", str(torchrun_run), "--data", str(folders["val"]), "--out", str(picture)]) == 0
    out = capsys.readouterr().out
    # The validation folder is the one the run validated on: the same model scores what metrics.jsonl recorded.
    record = json.loads((torchrun_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"(all, 4 images): top-1 {100 * record['val_top1']:.2f}%, top-5 {100 * record['val_top5']:.2f}%" in out
    assert picture.read_bytes()[:4] == b"\x89PNG"


def _finetune_parser():
    from backbones.apps.cli.main import build_parser

    return build_parser()._subparsers._group_actions[0].choices["finetune"]


def test_every_finetune_option_is_a_config_field() -> None:
    import dataclasses

    from backbones.apps.finetune.config import FinetuneConfig

    dests = {action.dest for action in _finetune_parser()._actions} - {"help", "quiet"}
    assert dests <= {field.name for field in dataclasses.fields(FinetuneConfig)}


def test_finetune_dtype_reads_the_shared_vocabulary_and_refuses_int8(tmp_path: Path, capsys) -> None:
    from backbones.apps.finetune.config import FinetuneConfig

    args = ["resnet18", "--data", "digits", "--out", str(tmp_path)]
    assert _finetune_parser().parse_args([*args, "--dtype", "bfloat16"]).dtype == "bf16"
    assert FinetuneConfig("resnet18", "digits", str(tmp_path), dtype="float32").dtype == "fp32"
    with pytest.raises(ValueError, match="dtype must be 'fp32' or 'bf16', got 'int8'"):
        FinetuneConfig("resnet18", "digits", str(tmp_path), dtype="int8")
    with pytest.raises(SystemExit) as stop:  # argparse refuses it before any work starts
        main(["finetune", *args, "--dtype", "int8"])
    assert stop.value.code == 2
    assert "--dtype must be 'fp32' or 'bf16', got 'int8'" in capsys.readouterr().err
