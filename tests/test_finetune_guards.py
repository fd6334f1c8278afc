"""Fine-tuning's guards: a warmup that fits the run, options that conflict, divergence, the card's start.

Every run is tiny: resnet18 at 32x32 on a few 12x12 PNGs, one or two steps an epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import backbones
from backbones.apps.finetune import loop
from backbones.apps.finetune.checkpoint import CHECKPOINT_DIR
from backbones.apps.finetune.config import FinetuneConfig
from backbones.apps.finetune.optim import build_schedule
from backbones.apps.finetune.output import METRICS_NAME, write_metrics

from .helpers import REPO_ROOT, run_cli

pytestmark = pytest.mark.xdist_group("finetune")

TINY = ["--image-size", "32", "--quiet"]


def _one_line_error(done) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("backbones finetune: error: "), lines[0]
    return lines[0]


def _lr_factors(config: FinetuneConfig, steps_per_epoch: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = build_schedule(optimizer, config, steps_per_epoch)
    factors = []
    for _ in range(config.epochs * steps_per_epoch):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return factors


def test_a_one_epoch_run_warms_up_for_a_fifth_of_it_and_then_decays(tmp_path: Path) -> None:
    config = FinetuneConfig("resnet18", "digits", str(tmp_path), epochs=1)
    assert config.warmup_epochs == pytest.approx(0.2)
    factors = _lr_factors(config, steps_per_epoch=20)
    assert factors[3] == pytest.approx(1.0)  # the peak, after 4 of 20 steps
    assert factors[-1] < 0.01  # the cosine ran down: the last step is near 0, not at the peak


def test_the_default_warmup_of_a_five_epoch_run_stays_one_epoch(tmp_path: Path) -> None:
    assert FinetuneConfig("resnet18", "digits", str(tmp_path), epochs=5).warmup_epochs == 1.0


def test_a_warmup_as_long_as_the_run_is_refused_in_one_line(tmp_path: Path) -> None:
    done = run_cli(
        "finetune", "resnet18", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"),
        "--warmup-epochs", "10", "--epochs", "2", *TINY,
    )  # fmt: skip
    line = _one_line_error(done)
    assert "--warmup-epochs 10 is not shorter than the run (--epochs 2)" in line


# CLI options -> the two options the refusal names (the data folders come from the fixture).
CONFLICTS = {
    "val data with the digits": (["--data", "digits", "--val-data", "{val}"], "--val-data {val}", "--data digits"),
    "val fraction with val data": (
        ["--data", "{train}", "--val-data", "{val}", "--val-fraction", "0.3"],
        "--val-fraction 0.3",
        "--val-data {val}",
    ),
    "skip bad images with the digits": (
        ["--data", "digits", "--skip-bad-images"],
        "--skip-bad-images",
        "--data digits",
    ),
    "sync bn with frozen norm": (["--data", "{train}", "--sync-bn", "--freeze-norm"], "--sync-bn", "--freeze-norm"),
}


@pytest.mark.parametrize("case", list(CONFLICTS))
def test_conflicting_options_are_refused_in_one_line_naming_both(case: str, folders, tmp_path: Path) -> None:
    options, first, second = (
        [o.format(train=folders["train"], val=folders["val"]) for o in part] if isinstance(part, list) else
        part.format(train=folders["train"], val=folders["val"])
        for part in CONFLICTS[case]
    )  # fmt: skip
    done = run_cli("finetune", "resnet18", *options, "--out", str(tmp_path / "out"), "--epochs", "1", *TINY)
    line = _one_line_error(done)
    assert f"{first} does not go with {second}" in line
    assert not (tmp_path / "out").exists()


def test_sgd_momentum_with_adamw_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"momentum=0\.5 does not go with optimizer='adamw'"):
        FinetuneConfig("resnet18", "digits", str(tmp_path), optimizer="adamw", momentum=0.5)


def _reject_nan(text: str) -> float:
    raise AssertionError(f"{text} in metrics.jsonl: not JSON")


@pytest.mark.parametrize(
    ("batch_size", "caught"),
    [("2", "step 2 of 4: the loss is nan"), ("4", "step 2 of 2: the validation loss and the weights are not finite")],
    ids=["a-step's-loss", "the-epoch's-weights"],
)
def test_a_diverging_run_stops_in_one_line_saving_nothing(batch_size: str, caught: str, folders, tmp_path) -> None:
    out = tmp_path / "out"
    done = run_cli(
        "finetune", "resnet18", "--data", str(folders["train"]), "--val-data", str(folders["val"]), "--out", str(out),
        "--batch-size", batch_size, "--epochs", "1", "--lr", "1e9", *TINY,
    )  # fmt: skip
    line = _one_line_error(done)
    assert f"training diverged at epoch 1, {caught}" in line
    assert "lower --lr 1e+09 or pass --clip-grad-norm 1.0" in line
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]  # no NaN model, no NaN metrics


def test_divergence_in_epoch_2_keeps_epoch_1s_checkpoint_and_valid_metrics(folders, tmp_path, monkeypatch) -> None:
    calls = []

    def loss_turning_nan_in_epoch_2(*args, **kwargs):  # 2 steps an epoch: the third call is epoch 2's first step
        calls.append(None)
        loss = compute_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    compute_loss = loop.compute_loss
    monkeypatch.setattr(loop, "compute_loss", loss_turning_nan_in_epoch_2)
    with pytest.raises(loop.DivergenceError, match=r"epoch 2, step 1 of 2: the loss is nan.*checkpoint of epoch 1"):
        backbones.finetune(
            "resnet18", folders["train"], tmp_path, val_data=str(folders["val"]), batch_size=4, image_size=32,
            epochs=2, progress=False,
        )  # fmt: skip
    assert not (tmp_path / "model.safetensors").exists()
    records = [
        json.loads(line, parse_constant=_reject_nan) for line in (tmp_path / METRICS_NAME).read_text().splitlines()
    ]
    assert [r["epoch"] for r in records] == [1]
    checkpoints = sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir())
    assert checkpoints and all(name.startswith("epoch-0001.") for name in checkpoints)


def test_metrics_write_a_figure_that_is_not_finite_as_null(tmp_path: Path) -> None:
    write_metrics(tmp_path, [{"epoch": 1, "train_loss": float("nan"), "val_loss": float("inf"), "val_top1": 0.5}])
    record = json.loads((tmp_path / METRICS_NAME).read_text(), parse_constant=_reject_nan)
    assert record == {"epoch": 1, "train_loss": None, "val_loss": None, "val_top1": 0.5}


# Rank 1 alone sees a NaN loss at its second step: rank 0's own loss stays finite.
NAN_ON_RANK_1 = """
import os, sys
import backbones.apps.finetune.loop as loop
compute_loss, calls = loop.compute_loss, []
def nan_on_rank_1(*args, **kwargs):
    calls.append(None)
    loss = compute_loss(*args, **kwargs)
    return loss * float("nan") if os.environ["RANK"] == "1" and len(calls) == 2 else loss
loop.compute_loss = nan_on_rank_1
from backbones.apps.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_under_torchrun_every_rank_stops_at_the_step_one_rank_diverged(folders, tmp_path: Path) -> None:
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", str(_free_port()),
        str(script), "finetune", "resnet18", "--data", str(folders["train"]), "--val-data", str(folders["val"]),
        "--out", str(tmp_path / "out"), "--batch-size", "2", "--epochs", "1", *TINY,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    # Without the reduction rank 0 would wait in the gradients' all-reduce for a rank that left.
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode != 0
    # Both ranks write to one pipe, so their lines may interleave: count the messages, not the lines.
    stopped = re.findall(
        r"training diverged at epoch 1, step 2 of 2: (the loss is nan|the loss is not finite in another process)",
        done.stderr,
    )
    assert sorted(stopped) == ["the loss is nan", "the loss is not finite in another process"], done.stderr[-3000:]


@pytest.mark.parametrize("start", ["random", "weights file"])
def test_the_model_card_states_what_the_run_started_from(start: str, folders, tmp_path: Path) -> None:
    options: dict = {"seed": 3}
    if start == "weights file":
        path = tmp_path / "start.pth"
        torch.save(backbones.create_model("resnet18", num_classes=2).state_dict(), path)
        options = {"pretrained": str(path)}
        expected = f"the weights file {path.resolve()} (sha256 {hashlib.sha256(path.read_bytes()).hexdigest()})"
    else:
        expected = "random initialisation (seed 3)"
    out = tmp_path / "out"
    backbones.finetune(
        "resnet18", folders["train"], out, val_data=str(folders["val"]), batch_size=8, image_size=32, epochs=1,
        progress=False, **options,
    )  # fmt: skip
    card = (out / "README.md").read_text()
    assert f"for the `backbones` library, starting from {expected}." in card
    assert "save_pretrained" not in card.split("## Usage")[0]
