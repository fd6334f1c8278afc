"""The rough edges a new user hit (issue 32's small items), one behaviour a test.

The model runs use resnet18 at 32x32 (a saved three-class folder, as a small fine-tune writes) and
a folder of eight 12x12 images, so every test takes a second or less.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
from pathlib import Path

import pytest
import torch

import backbones
from backbones.apps.cli.main import build_parser, cli_syntax, command_flags

from .helpers import assert_one_line_error, meta_model, run_cli
from .image_folders import make_image_folder

# What a fine-tune on small images saves: three classes at 32x32.
SMALL = {"input_size": (3, 32, 32), "resize_size": 32, "crop_size": 32}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A save_pretrained folder of a three-class resnet18 with 32x32 preprocessing."""
    model = backbones.create_model("resnet18", num_classes=3)
    model.pretrained_cfg = dict(model.pretrained_cfg, **SMALL)
    return model.save_pretrained(tmp_path_factory.mktemp("saved") / "small")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images") / "colours")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(subparsers.choices)


# ----------------------------------------------------------------------------- 3 and 22: export a folder


@pytest.fixture(scope="module")
def exported(saved: Path, tmp_path_factory: pytest.TempPathFactory):
    """``export resnet18 --pretrained FOLDER --out model.pt --quiet``: the architecture, the folder's weights."""
    out = tmp_path_factory.mktemp("exported") / "model.pt"
    return run_cli("export", "resnet18", "--pretrained", str(saved), "--out", str(out), "--quiet"), out


def test_export_of_an_architecture_with_a_saved_folder_as_its_weights_keeps_the_folders_head(exported) -> None:
    result, out = exported
    assert result.returncode == 0, result.stderr
    assert torch.jit.load(str(out))(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_warnings_under_quiet_print_no_source_lines(exported) -> None:
    result, _ = exported
    # torch.jit's own deprecation notice used to print here, with its file, line and source line.
    assert "warnings.warn(" not in result.stderr and ".py:" not in result.stderr, result.stderr


# ----------------------------------------------------------------------------- 4: dynamic-size export


def test_dynamic_size_export_of_a_32x32_model_traces_at_a_size_it_allows(saved: Path) -> None:
    from backbones.runtime.export import export_program, min_dynamic_size

    model = backbones.from_pretrained(saved).eval()
    low = min_dynamic_size(model)
    assert low > 32  # the model's own 32x32 lies below the dynamic range
    program = export_program(model, dynamic_size=True)
    assert program.module()(torch.randn(2, 3, low, low + 3)).shape == (2, 3)


def test_dynamic_size_export_with_a_too_small_example_names_the_size_to_pass(saved: Path) -> None:
    from backbones.runtime.export import ExportError, export_program, min_dynamic_size

    model = backbones.from_pretrained(saved).eval()
    low = min_dynamic_size(model)
    with pytest.raises(ExportError, match=rf"^the example input is 32x32, .* at least {low}x{low}$"):
        export_program(model, dynamic_size=True, example_input=torch.randn(2, 3, 32, 32))


# ----------------------------------------------------------------------------- 10: --help defaults


def _option_helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's help as ``--help`` prints it, on one line, by its first long flag."""
    text = parser.format_help()
    blocks = re.split(r"\n(?=  -)", text.split("options:", 1)[1])
    helps = {}
    for block in blocks:
        words = " ".join(block.split())
        flag = re.match(r"(?:-\w, )?(--[\w-]+)", words)
        if flag:
            helps[flag.group(1)] = words
    return helps


def _says_default(text: str) -> int:
    return len(re.findall(r"(?<!')\bdefault\b(?!')", text, re.I))


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_option_in_help_says_its_default_once(command: str) -> None:
    parser = _subcommands()[command]
    helps = _option_helps(parser)
    for action in parser._actions:
        long = [o for o in action.option_strings if o.startswith("--")]
        if not long or action.required or isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        text = helps[long[0]]
        is_flag = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
        expected = 0 if is_flag else 1  # a plain flag is off unless given
        assert _says_default(text) <= 1 and (is_flag or _says_default(text) == expected), (command, text)


def test_help_shows_defaults_that_are_zero_or_on() -> None:
    from backbones.apps.finetune.config import FinetuneConfig

    finetune = _option_helps(_subcommands()["finetune"])
    assert f"(default: {FinetuneConfig.workers})" in finetune["--workers"]
    assert f"(default: {FinetuneConfig.label_smoothing})" in finetune["--label-smoothing"]
    assert "(default: --dynamic-batch)" in _option_helps(_subcommands()["export"])["--dynamic-batch"]


# ----------------------------------------------------------------------------- 11: --device


RUNS_A_MODEL = ("predict", "features", "evaluate", "finetune", "extract", "export")


def test_every_command_that_runs_a_model_takes_the_same_device_option() -> None:
    commands = _subcommands()
    devices = [next(a for a in commands[name]._actions if a.dest == "device") for name in RUNS_A_MODEL]
    assert {(a.default, a.help, a.choices) for a in devices} == {("cpu", devices[0].help, None)}
    assert "cuda:N" in devices[0].help


@pytest.mark.parametrize("command", ["evaluate", "finetune", "extract"])
def test_device_cuda_n_without_a_gpu_is_refused_before_any_work(command, images, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = str(tmp_path / "out")
    argv = {
        "evaluate": ["evaluate", "resnet18", "--data", str(images), "--out", str(tmp_path / "c.png")],
        "finetune": ["finetune", "resnet18", "--data", str(images), "--out", out],
        "extract": ["extract", "resnet18", "--data", str(images), "--out", out],
    }[command]
    assert_one_line_error(run_cli(*argv, "--device", "cuda:1"), "--device cuda:1: no CUDA device is available")
    assert not (tmp_path / "out").exists() and not (tmp_path / "c.png").exists()


# ----------------------------------------------------------------------------- 12: list


def test_list_pretrained_of_an_architecture_lists_its_tags() -> None:
    tags = backbones.list_pretrained("resnet50.*")
    assert tags and backbones.list_pretrained("resnet50") == tags
    result = run_cli("list", "--pretrained", "resnet50")
    assert result.returncode == 0 and result.stdout.split() == tags, result.stderr


def test_list_of_a_prefix_suggests_its_wildcard() -> None:
    assert backbones.list_models("resnet") == [] and backbones.list_models("resnet*")
    assert_one_line_error(run_cli("list", "resnet"), "backbones list 'resnet*'")


# ----------------------------------------------------------------------------- 15 and 16: extract


@pytest.fixture(scope="module")
def extracted(saved: Path, images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The features of the saved folder on the eight images, in shards of four."""
    out = tmp_path_factory.mktemp("extracted") / "features"
    argv = ["extract", str(saved), "--data", str(images), "--out", str(out), "--shard-size", "4"]
    result = run_cli(*argv, "--workers", "0", "--quiet")
    assert result.returncode == 0, result.stderr
    return out


def test_extract_manifest_names_its_state_dict_digest_as_what_it_is(extracted: Path, saved: Path) -> None:
    from backbones.apps.extract.store import state_dict_sha256

    manifest = json.loads((extracted / "manifest.json").read_text())
    # config.json's weights_sha256 is the file's sha256; the manifest's digest is of the state dict.
    assert "weights_sha256" not in manifest
    assert manifest["state_dict_sha256"] == state_dict_sha256(backbones.from_pretrained(saved))


def test_extract_into_a_folder_of_an_older_manifest_says_so_and_how_to_redo_it(extracted, saved, images) -> None:
    from backbones.apps.extract.store import plan_fingerprint

    manifest = json.loads((extracted / "manifest.json").read_text())
    # As an older backbones wrote it: the digest under the other name, so another fingerprint.
    manifest["weights_sha256"] = manifest.pop("state_dict_sha256")
    manifest["fingerprint"] = plan_fingerprint(manifest)
    (extracted / "manifest.json").write_text(json.dumps(manifest))
    argv = ["extract", str(saved), "--data", str(images), "--out", str(extracted), "--shard-size", "4", "--quiet"]
    assert_one_line_error(run_cli(*argv), "written by an older backbones", "--overwrite")


def test_a_shard_written_twice_is_byte_identical(tmp_path: Path) -> None:
    from backbones.apps.extract.store import shard_path, write_shard

    tensors = {"pooled": torch.randn(3, 8)}
    written = []
    for run in ("first", "second"):  # two runs of the same extraction write the same shard
        (tmp_path / run).mkdir()
        path = write_shard(tmp_path / run, 0, tensors, [0, 1, 2], [1, 0, 1], fingerprint="f" * 64, skipped=[3])
        assert path == shard_path(tmp_path / run, 0)
        written.append(path.read_bytes())
    assert written[0] == written[1]
    header = json.loads(written[0][8 : 8 + int.from_bytes(written[0][:8], "little")])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])  # not a hash map's random order


# ----------------------------------------------------------------------------- 18: torchvision checkpoints


@pytest.fixture(scope="module")
def torchvision_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torchvision

    root = tmp_path_factory.mktemp("torchvision")
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, root / "resnet18.pth")
    torch.save({"model": state, "epoch": 3}, root / "checkpoint.pth")  # what its reference scripts save
    return {"plain": root / "resnet18.pth", "checkpoint": root / "checkpoint.pth", "state": state}


def test_a_reference_script_checkpoint_loads_its_model_key(torchvision_files) -> None:
    model = backbones.create_model("resnet18", pretrained=torchvision_files["checkpoint"])
    for name, tensor in torchvision_files["state"].items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_a_torchvision_weights_file_names_its_classes_as_imagenet(torchvision_files) -> None:
    from backbones.hub.manifest import class_names

    # What predict shows: the model's class names, no longer the indices ("238").
    model = backbones.create_model("resnet18", pretrained=torchvision_files["plain"])
    assert tuple(model.pretrained_cfg["class_names"]) == class_names("imagenet-1k")


# ----------------------------------------------------------------------------- 19: CLI words


@pytest.mark.parametrize(
    ("command", "library", "cli"),
    [
        ("export", "cannot tell the format from 'x.txt'; pass format= one of onnx, pt2", "pass --format one of"),
        (
            "finetune",
            "resume=True with other options than the checkpoint's (batch_size: 64 -> 32, world_size: 2 -> 1)",
            "--resume with other options than the checkpoint's (--batch-size: 64 -> 32, processes (torchrun "
            "--nproc_per_node): 2 -> 1)",
        ),
        (
            "predict",
            "the checkpoint's classifier has 3 outputs but the model was built with num_classes=1000; pass "
            "reinit_head=True to load everything else and start a freshly initialised classifier (fc.weight)",
            "`backbones finetune` trains a new classifier on everything else (fc.weight)",
        ),
    ],
    ids=["bare option", "changed options", "an option the command lacks"],
)
def test_library_hints_read_as_command_line_words(command: str, library: str, cli: str) -> None:
    said = cli_syntax(library, command_flags(build_parser(), command))
    assert cli in said and "=True" not in said and "format=" not in said and "world_size" not in said, said


def test_an_unknown_option_is_reported_by_its_command() -> None:
    result = run_cli("info", "resnet18", "--no-such-option")
    assert result.returncode == 2
    assert result.stderr.startswith("backbones info: error: unrecognized arguments: --no-such-option"), result.stderr


# ----------------------------------------------------------------------------- 20: URL weights offline


def _closed_port_url(name: str) -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/models/{name}"  # nothing listens there: refused at once


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "download fails"])
def test_url_weights_that_cannot_be_fetched_name_where_the_file_goes(offline, caches, monkeypatch) -> None:
    from backbones.hub.download import WeightsUnavailableError, fetch_url_file, url_cache_path

    if offline:
        monkeypatch.setenv("BACKBONES_OFFLINE", "1")
    url = _closed_port_url("resnet18-f37072fd.pth")
    with pytest.raises(WeightsUnavailableError) as caught:
        fetch_url_file(url, sha256=None, what="resnet18.tv_in1k", progress=False)
    message = str(caught.value)
    assert f"at {url_cache_path(url)}" in message and "HF_HUB_OFFLINE=1" not in message, message


# ----------------------------------------------------------------------------- 24: features.png


def test_feature_picture_captions_keep_their_words_apart() -> None:
    from backbones.apps.visualize import feature_picture

    features = {"layer1": torch.rand(64, 8, 8), "layer2": torch.rand(128, 4, 4)}
    picture = feature_picture(torch.rand(3, 64, 64), features, strides=[4, 8], tile=224)
    caption = torch.tensor(list(picture.getdata()), dtype=torch.int32).view(picture.height, picture.width, 3)[:16]
    for column in range(1, 3):  # the two feature tiles' captions
        ink = (caption[:, column * 224 : (column + 1) * 224].min(dim=2).values < 128).any(dim=0).tolist()
        text = ink[: len(ink) - ink[::-1].index(True)]
        gaps = [len(run) for run in "".join("x" if i else " " for i in text).strip().split("x") if run]
        # "layer1  |  64 ch  |  stride 4  |  8x8": seven spaces between words, each wider than a letter's gap.
        assert sum(gap >= 3 for gap in gaps) >= 7, gaps


# ----------------------------------------------------------------------------- 25: small messages


def test_a_channels_last_batch_is_told_how_to_permute() -> None:
    model = backbones.create_model("resnet18")
    with pytest.raises(ValueError, match=r"looks channels-last \(N, H, W, C\).*x\.permute\(0, 3, 1, 2\)$"):
        model(torch.rand(1, 64, 64, 3))


def test_export_under_a_file_says_the_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile.txt").write_text("")
    out = tmp_path / "afile.txt" / "x.onnx"
    assert_one_line_error(run_cli("export", "resnet18", "--out", str(out)), "afile.txt is a file, not a folder")


def test_summary_json_has_the_totals_the_table_prints() -> None:
    from backbones.apps.analysis import summary

    table = summary(meta_model("resnet18"), (1, 3, 224, 224), depth=0, device="meta")
    printed = json.loads(run_cli("summary", "resnet18", "--depth", "0", "--json").stdout)
    assert printed["rows"] == json.loads(json.dumps(table.as_dicts()))
    totals = printed["totals"]
    assert (totals["params"], totals["trainable_params"], totals["macs"]) == (
        table.total_params,
        table.trainable_params,
        table.total_macs,
    )


def test_info_marks_the_default_tag() -> None:
    from backbones.hub.manifest import get_weight_spec

    lines = run_cli("info", "resnet50").stdout.splitlines()
    marked = [line.split()[0] for line in lines if line.endswith("(default)")]
    assert marked == [get_weight_spec("resnet50").name]
