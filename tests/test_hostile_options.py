"""Hostile inputs (issue 34): each is refused with one clear line, and a resumed run leaves no leftovers."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import backbones
import backbones.apps.finetune.run as finetune_run
from backbones.apps.cli.main import main
from backbones.apps.finetune.checkpoint import CHECKPOINT_DIR
from backbones.core.registry import UnknownModelError
from backbones.data.transforms import transforms_for

from .image_folders import make_image_folder

# --------------------------------------------------------------------------- the Python API


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: backbones.create_model("resnet18."), UnknownModelError, r"'resnet18\.' has an empty weight tag"),
        (lambda: backbones.create_model("resnet18", features_only="no"), ValueError, r"features_only must be True"),
        (lambda: backbones.create_model("resnet18", progress="yes"), ValueError, r"progress must be True or False"),
        (lambda: backbones.create_model("resnet18_fpn", num_classes=10), ValueError, r"has no classifier.*num_classes"),
        (lambda: backbones.list_models(5), TypeError, r"pattern must be a shell-style wildcard.*got 5"),
        (lambda: backbones.list_pretrained(5), TypeError, r"pattern must be a shell-style wildcard.*got 5"),
    ],
    ids=["empty-tag", "features_only-str", "progress-str", "fpn-num_classes", "list_models-int", "list_pretrained-int"],
)
def test_a_bad_argument_is_refused_by_name(call, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    ("num_classes", "message"),
    [(-1, r"num_classes must be between 0 and 100,000, got -1"), ("5", r"num_classes must be an int .* got '5'")],
)
@pytest.mark.parametrize("arch", ["resnet18", "googlenet_v1"])
def test_reset_classifier_refuses_a_bad_class_count_and_keeps_the_head(arch: str, num_classes, message: str) -> None:
    model = backbones.create_model(arch, num_classes=3)
    with pytest.raises(ValueError, match=message):
        model.reset_classifier(num_classes)
    assert model.num_classes == 3 and model.get_classifier().out_features == 3


@pytest.mark.parametrize("arch", ["resnet18", "googlenet_v1"])
def test_training_on_one_image_that_shrinks_to_1x1_is_refused_up_front(arch: str) -> None:
    model = backbones.create_model(arch, num_classes=3).train()
    with pytest.raises(ValueError, match=r"^training on a batch of 1 image of 32x32.*\[1, \d+, 1, 1\].*batches of 2"):
        model(torch.randn(1, 3, 32, 32))
    assert model(torch.randn(2, 3, 32, 32))[0].shape[-1] == 3  # two images are fine
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)  # and so is inference


def test_resnet_at_batch_1_trains_where_the_last_batchnorm_sees_more_than_one_value() -> None:
    model = backbones.create_model("resnet18", num_classes=3).train()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert all(b.item() == 1 for n, b in model.named_buffers() if n.endswith("num_batches_tracked"))


def test_an_input_on_another_device_than_the_weights_names_both() -> None:
    model = backbones.create_model("resnet18").eval()
    with pytest.raises(ValueError, match=r"^the input is on meta but the model's weights are on cpu"):
        model(torch.empty(1, 3, 64, 64, device="meta"))


# --------------------------------------------------------------------------- saved configs


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "model"
    backbones.create_model("resnet18", num_classes=2).save_pretrained(folder)
    return folder


def _with_config(saved_folder: Path, tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(saved_folder, folder)
    (folder / "config.json").write_text(text)
    return folder


def _edited_config(saved_folder: Path, edit) -> str:
    config = json.loads((saved_folder / "config.json").read_text())
    edit(config["backbones"])  # our config; timm's view beside it is not read by us
    return json.dumps(config)


def test_a_config_with_model_kwargs_null_is_refused(saved_folder: Path, tmp_path: Path) -> None:
    text = _edited_config(saved_folder, lambda config: config.update(model_kwargs=None))
    with pytest.raises(ValueError, match=r"config\.json: 'model_kwargs' must be an object of model options, got null"):
        backbones.from_pretrained(_with_config(saved_folder, tmp_path, text))


def test_a_config_nested_100000_levels_deep_is_not_a_valid_config(saved_folder: Path, tmp_path: Path) -> None:
    folder = _with_config(saved_folder, tmp_path, "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"config\.json is not a valid config: its JSON is nested too deeply"):
        backbones.from_pretrained(folder)


@pytest.mark.parametrize("field", ["mean", "std"])
def test_a_config_whose_mean_or_std_is_not_numbers_is_refused(saved_folder: Path, tmp_path: Path, field: str) -> None:
    text = _edited_config(saved_folder, lambda config: config["pretrained_cfg"].update({field: "abc"}))
    with pytest.raises(ValueError, match=rf"config\.json: pretrained_cfg\.{field} must be 3 numbers .* got 'abc'"):
        backbones.from_pretrained(_with_config(saved_folder, tmp_path, text))


def test_transforms_for_refuses_a_mean_set_on_the_model() -> None:
    pytest.importorskip("torchvision")
    model = backbones.create_model("resnet18")
    model.pretrained_cfg = dict(model.pretrained_cfg, mean="abc")
    with pytest.raises(ValueError, match=r"^pretrained_cfg\.mean must be 3 numbers .* got 'abc'"):
        transforms_for(model)


# --------------------------------------------------------------------------- the CLI


def test_summary_refuses_a_negative_depth_naming_the_value(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["summary", "resnet18", "--depth", "-5"])
    err = capsys.readouterr().err
    assert "--depth" in err and "got -5" in err and "0 or more" in err


# --------------------------------------------------------------------------- a resumed run's leftovers


class _Killed(Exception):
    """Stands for SIGKILL: the run stops where it is."""


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    return {"train": make_image_folder(root / "train"), "val": make_image_folder(root / "val", per_class=2, seed=1)}


def _finetune(images: dict[str, Path], out: Path, **options) -> backbones.apps.finetune.run.FinetuneResult:
    return backbones.finetune(
        "resnet18", images["train"], out, val_data=str(images["val"]), batch_size=4, image_size=32, epochs=2,
        deterministic=True, progress=False, **options,
    )  # fmt: skip


def _leave(path: Path, *, folder: bool = False, inside: str | None = None) -> Path:
    """A leftover of a killed writer, last touched a minute ago.

    Half a file; with ``folder``, a folder holding half a config; with ``inside``, a folder
    holding that folder (where atomic_directory moves the old one aside before renaming).
    """
    if folder or inside:
        written = path / inside if inside else path
        written.mkdir(parents=True)
        (written / "config.json").write_text('{"archi')
    else:
        path.write_bytes(b"half a file")
    a_minute_ago = time.time() - 60
    os.utime(path, (a_minute_ago, a_minute_ago))
    return path


def test_a_completed_resume_leaves_no_leftovers_of_the_killed_runs(images, tmp_path: Path, monkeypatch) -> None:
    straight = _finetune(images, tmp_path / "straight")
    out, kept = tmp_path / "model", tmp_path / "kept"
    save = finetune_run.save_checkpoint

    def save_then_die(folder, epoch, *args, **kwargs):
        save(folder, epoch, *args, **kwargs)
        if epoch == 1:  # what a kill after epoch 2's state, before epoch 1's files are removed, leaves
            shutil.copytree(folder / CHECKPOINT_DIR, kept)
        else:
            raise _Killed

    monkeypatch.setattr(finetune_run, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        _finetune(images, out)
    monkeypatch.undo()
    checkpoints = out / CHECKPOINT_DIR
    for stale in kept.iterdir():
        shutil.copy2(stale, checkpoints / stale.name)
    leftovers = [
        _leave(checkpoints / ".epoch-0002.safetensors.k1lled00.tmp"),
        _leave(checkpoints / ".epoch-0002.state.pt.k1lled01.tmp"),
        _leave(out / ".metrics.jsonl.k1lled02.tmp"),
        _leave(tmp_path / ".model.k1lled03.tmp", folder=True),
        _leave(tmp_path / ".model.old.k1lled04.tmp", inside="model"),
    ]
    others = [  # temporaries of other targets in the same folders, which another run may be writing
        _leave(tmp_path / ".model.v2.k1lled05.tmp", folder=True),
        _leave(tmp_path / ".straight.k1lled06.tmp", folder=True),
        _leave(tmp_path / ".model-copy.k1lled07.tmp"),
        _leave(tmp_path / ".model.old.k1lled08.tmp"),  # a temporary of a file named "model.old"
        _leave(tmp_path / ".model.old.k1lled09.tmp", folder=True),  # and of a folder named so
    ]

    resumed = _finetune(images, out, resume=True)

    assert [p for p in leftovers if p.exists()] == []
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "epoch-0002.json",
        "epoch-0002.safetensors",
        "epoch-0002.state.pt",
    ]
    assert all(p.exists() for p in others)
    assert [m["epoch"] for m in resumed.metrics] == [1, 2]
    assert resumed.val_top1 == straight.val_top1
    weights, reference = load_file(out / "model.safetensors"), load_file(tmp_path / "straight" / "model.safetensors")
    assert all(torch.equal(weights[k], reference[k]) for k in reference)
