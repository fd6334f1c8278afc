"""Feature extraction (``backbones extract``, ``backbones.extract``, ``load_features``) and the probes.

The extractions run on a folder of ten small generated images in three class folders (one of them
nested), resnet18 with random weights at 32x32, shards of three images and batches of two, so a
run has four shards (the last one short) and shards of two batches (the second one short).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import backbones
from backbones.apps.cli.main import main
from backbones.apps.extract.store import INDEX_NAME, MANIFEST_NAME, shard_path
from backbones.apps.probe import knn_top1, probe
from backbones.data.datasets import open_dataset

from .helpers import REPO_ROOT, relative_max_diff

SIZE = "32"
# Shards of 3 images, batches of 2: shards [0 1 2] [3 4 5] [6 7 8] [9]; two processes take 0, 2 and 1, 3.
COMMON_ARGS = ["--shard-size", "3", "--batch-size", "2", "--image-size", SIZE, "--quiet"]
SHARDS = 4
ONE_THREAD = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# The tests compared with the reference run share one worker under `--dist loadgroup`: it is built once.
uses_reference = pytest.mark.xdist_group("extract-reference")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    generator = torch.Generator().manual_seed(0)
    names = ["bird/0.png", "bird/nest/1.png", "cat/2.png", "cat/3.png", "cat/4.png", "cat/5.jpg"]
    names += ["dog/6.png", "dog/7.png", "dog/8.png", "dog/9.png"]
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (40, 48, 3), dtype=torch.uint8, generator=generator)
        Image.fromarray(pixels.numpy()).save(path)
    return root


def _saved_resnet18(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    backbones.create_model("resnet18", num_classes=3).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _saved_resnet18(tmp_path_factory.mktemp("model"), seed=1)


def _run(*command: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, env={**os.environ, **ONE_THREAD}, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run in this process with one intra-op thread, as the subprocesses run (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory, image_folder: Path, model_dir: Path) -> Path:
    """One process, one thread, two DataLoader workers: the reference output."""
    out = tmp_path_factory.mktemp("single")
    args = ["--data", str(image_folder), "--out", str(out), "--layers", "pooled,layer3", "--workers", "2"]
    with one_thread():
        assert main(["extract", str(model_dir), *args, *COMMON_ARGS]) == 0
    return out


def _assert_same_output(actual: Path, expected: Path) -> None:
    from safetensors.torch import load_file

    for shard in range(SHARDS):
        got, want = load_file(shard_path(actual, shard)), load_file(shard_path(expected, shard))
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), f"shard {shard}: {key} differs"
    assert (actual / INDEX_NAME).read_text() == (expected / INDEX_NAME).read_text()
    manifest = json.loads((actual / MANIFEST_NAME).read_text())
    assert manifest == json.loads((expected / MANIFEST_NAME).read_text())
    assert sorted(p.name for p in actual.iterdir()) == sorted(p.name for p in expected.iterdir())


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["extract", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@uses_reference
def test_two_torchrun_processes_write_what_one_process_writes(
    single_run: Path, image_folder: Path, model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "two"
    args = ["--data", str(image_folder), "--out", str(out), "--layers", "pooled,layer3"]
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    result = _run(*launcher, "-m", "backbones", "extract", str(model_dir), *args, *COMMON_ARGS)
    assert result.stdout.count("wrote 10 images") == 1  # one summary, from rank 0
    _assert_same_output(out, single_run)


@uses_reference
def test_shards_read_back_without_backbones_match_load_features(single_run: Path) -> None:
    from safetensors.numpy import load_file

    loaded = backbones.load_features(single_run)
    with (single_run / INDEX_NAME).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["path"] for r in rows] == loaded.paths and len(rows) == 10
    assert loaded.paths[1] == "bird/nest/1.png"  # any depth; labelled by the top-level folder
    assert loaded.labels.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    for name in ("pooled", "layer3"):
        plain = [load_file(single_run / f"shard-{int(r['shard']):05d}.safetensors")[name][int(r["row"])] for r in rows]
        assert torch.equal(torch.stack([torch.from_numpy(p) for p in plain]), loaded.features[name])
    assert loaded.features["pooled"].shape == (10, 512) and loaded.features["layer3"].shape == (10, 256, 2, 2)


@uses_reference
def test_a_run_killed_after_the_first_shard_resumes_to_the_uninterrupted_output(
    single_run: Path, image_folder: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "killed"
    args = ["--data", str(image_folder), "--out", str(out), "--layers", "pooled,layer3", "--workers", "0"]
    # The second shard's writer is killed (SIGKILL) after writing its temporary file, before the rename.
    dies_writing_shard_1 = """
import os, signal, sys
import backbones.apps.extract.store as store
from safetensors.torch import save_file
from backbones.core.files import atomic_path
real = store.save_safetensors_atomic
def dying(state, path, metadata=None):
    if path.name == "shard-00001.safetensors":
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
            os.kill(os.getpid(), signal.SIGKILL)
    real(state, path, metadata=metadata)
store.save_safetensors_atomic = dying
from backbones.apps.cli.main import main
sys.exit(main(sys.argv[1:]))
"""
    killed = subprocess.run(
        [sys.executable, "-c", dies_writing_shard_1, "extract", str(model_dir), *args, *COMMON_ARGS],
        capture_output=True,
        text=True,
        env={**os.environ, **ONE_THREAD},
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert shard_path(out, 0).exists() and not shard_path(out, 1).exists()
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".shard-00001.safetensors.")]
    assert len(leftovers) == 1 and leftovers[0].endswith(".tmp")
    assert json.loads((out / MANIFEST_NAME).read_text())["complete"] is False
    with pytest.raises(ValueError, match=r"unfinished \(1 of 4 shards\)"):
        backbones.load_features(out)
    # A stray temporary file holding a complete shard's bytes is still not a shard.
    shutil.copy(shard_path(out, 0), out / ".shard-00002.safetensors.stray.tmp")
    first = shard_path(out, 0).stat()

    with one_thread():
        code, _, err = _cli(capsys, str(model_dir), *args, *COMMON_ARGS)
    assert code == 0, err
    again = shard_path(out, 0).stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # skipped, not redone
    _assert_same_output(out, single_run)  # also: no temporary file is left


@pytest.mark.parametrize(
    ("arch", "layers", "dtype"),
    [
        ("resnet18", "pooled,layer2,layer4:pooled", "fp32"),
        ("resnet18", "pooled", "bf16"),
        ("resnet18", "pooled,layer3", "int8"),
        ("resnet18_fpn", "fpn", "fp32"),
    ],
)
def test_each_stored_feature_is_the_models_own_forward_of_the_preprocessed_image(
    arch: str, layers: str, dtype: str, image_folder: Path, tmp_path: Path
) -> None:
    model = backbones.create_model(arch).eval()
    size = max(32, model.min_input_size)
    manifest = backbones.extract(
        model,
        image_folder,
        tmp_path,
        layers=layers,
        dtype=dtype,
        batch_size=4,
        workers=0,
        image_size=size,
        progress=False,
    )
    stored = backbones.load_features(tmp_path)
    dataset = open_dataset(image_folder, model=model, image_size=size)
    assert stored.paths == [path for path, _ in dataset.samples]
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.inference_mode():
        if arch.endswith("_fpn"):
            expected = dict(model(images))
        else:
            maps = model.feature_extractor()(images)
            expected = {
                "pooled": model.forward_head(model.forward_features(images), pre_logits=True),
                "layer2": maps["layer2"],
                "layer3": maps["layer3"],
                "layer4:pooled": maps["layer4"].mean(dim=(2, 3)),
            }
    assert list(stored.features) == manifest["layers"]
    for name, tensor in stored.features.items():
        if dtype == "bf16":
            assert tensor.dtype == torch.bfloat16
            assert F.cosine_similarity(tensor.float(), expected[name], dim=1).min() >= 0.999
        elif dtype == "int8":  # calibrated on the folder itself; float32 out
            assert tensor.dtype == torch.float32 and manifest["calibration"]["batches"] == 4
            assert F.cosine_similarity(tensor.flatten(1), expected[name].flatten(1), dim=1).min() >= 0.99
        else:
            assert tensor.dtype == torch.float32
            assert relative_max_diff(tensor, expected[name]) <= 1e-4, name  # the fast path's fp32 tolerance
        assert list(tensor.shape[1:]) == manifest["layer_shapes"][name]["shape"]


def test_an_empty_folder_is_one_clear_error(tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = _cli(capsys, str(model_dir), "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    _assert_one_line_error(code, err, "no images in", "empty")


def _copy_with_a_bad_image(image_folder: Path, tmp_path: Path) -> Path:
    """A copy of ``image_folder`` in which ``cat/4.png`` is not an image."""
    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    (data / "cat" / "4.png").write_bytes(b"not a png")
    return data


def test_an_unreadable_image_is_named_or_skipped_and_listed(
    image_folder: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = _copy_with_a_bad_image(image_folder, tmp_path)
    args = [str(model_dir), "--data", str(data), "--workers", "1", *COMMON_ARGS]
    code, _, err = _cli(capsys, *args, "--out", str(tmp_path / "stop"))
    _assert_one_line_error(code, err, "cat/4.png", "--skip-bad-images")

    code, out, err = _cli(capsys, *args, "--out", str(tmp_path / "skip"), "--skip-bad-images")
    assert code == 0, err
    assert "skipped 1 unreadable images" in out
    result = backbones.load_features(tmp_path / "skip")
    assert result.manifest["skipped_images"] == ["cat/4.png"] and result.manifest["images"] == 9
    assert "cat/4.png" not in result.paths and result.features["pooled"].shape[0] == 9
    assert [(r.shard, r.row) for r in result.index if r.path.startswith("cat/")] == [(0, 2), (1, 0), (1, 1)]


def test_following_the_bad_image_hint_in_the_same_folder_works(
    image_folder: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = _copy_with_a_bad_image(image_folder, tmp_path)
    args = [str(model_dir), "--data", str(data), "--out", str(tmp_path / "out"), "--workers", "0", *COMMON_ARGS]
    code, _, err = _cli(capsys, *args)
    _assert_one_line_error(code, err, "cat/4.png")
    hint = re.search(r"pass (--[a-z-]+)", err)
    assert hint, err
    code, _, err = _cli(capsys, *args, hint.group(1))  # what the message says, in the folder the stopped run left
    assert code == 0, err
    assert backbones.load_features(tmp_path / "out").manifest["skipped_images"] == ["cat/4.png"]


def test_a_run_without_skip_bad_images_redoes_the_shards_that_left_images_out(
    image_folder: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    good = (image_folder / "cat" / "4.png").read_bytes()
    data = _copy_with_a_bad_image(image_folder, tmp_path)
    args = [str(model_dir), "--data", str(data), "--workers", "0", *COMMON_ARGS]
    assert _cli(capsys, *args, "--out", str(tmp_path / "out"), "--skip-bad-images")[0] == 0
    code, _, err = _cli(capsys, *args, "--out", str(tmp_path / "out"))  # as an uninterrupted run would, it stops
    _assert_one_line_error(code, err, "cat/4.png")
    (data / "cat" / "4.png").write_bytes(good)
    assert _cli(capsys, *args, "--out", str(tmp_path / "out"))[0] == 0
    assert _cli(capsys, *args, "--out", str(tmp_path / "fresh"))[0] == 0
    _assert_same_output(tmp_path / "out", tmp_path / "fresh")


def test_an_unknown_layer_lists_the_valid_ones(
    image_folder: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, _, err = _cli(
        capsys, str(model_dir), "--data", str(image_folder), "--out", str(tmp_path), "--layers", "layer9"
    )
    _assert_one_line_error(code, err, "unknown layer 'layer9'", "pooled, stem, layer1, layer2, layer3, layer4")
    code, _, err = _cli(capsys, str(model_dir), "--data", str(image_folder), "--out", str(tmp_path), "--layers", "fpn")
    _assert_one_line_error(code, err, "needs an FPN model such as resnet50_fpn")


@uses_reference
def test_features_of_another_model_are_refused_unless_overwrite(
    single_run: Path, image_folder: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    other = _saved_resnet18(tmp_path / "other-model", seed=2)
    out = tmp_path / "features"
    shutil.copytree(single_run, out)  # features of model_dir
    args = ["--data", str(image_folder), "--out", str(out), "--layers", "pooled,layer3", *COMMON_ARGS]
    code, _, err = _cli(capsys, str(other), *args)
    _assert_one_line_error(code, err, "holds other features", "differing: model, weights", "--overwrite")
    _assert_same_output(out, single_run)  # untouched
    code, _, err = _cli(capsys, str(other), *args, "--overwrite")
    assert code == 0, err
    assert backbones.load_features(out).manifest["model"] == str(other)


def test_knn_votes_by_cosine_similarity() -> None:
    # Two directions, not two positions: cosine k-NN must ignore each row's length.
    train = torch.tensor([[1.0, 0.1], [5.0, 0.0], [0.1, 1.0], [0.0, 7.0]])
    labels = torch.tensor([0, 0, 1, 1])
    val = torch.tensor([[9.0, 1.0], [0.01, 0.2], [1.0, 0.0]])
    assert knn_top1(train, labels, val, torch.tensor([0, 1, 0]), k=1) == 1.0
    assert knn_top1(train, labels, val, torch.tensor([1, 0, 0]), k=1) == pytest.approx(1 / 3)


def test_probe_on_extracted_digits_beats_chance_by_far(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    model = backbones.create_model("resnet18", num_classes=10)
    backbones.extract(model, "digits", tmp_path, split="val", batch_size=90, shard_size=180, workers=0, progress=False)
    result = probe(tmp_path)
    assert (result.train_images, result.val_images, result.classes) == (288, 72, 10)
    # Random convolutional features of the digits are far from chance (10%) when labels stay aligned with rows.
    assert result.knn_top1 > 0.5 and result.logistic_top1 is not None and result.logistic_top1 > 0.5
    assert main(["probe", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == result.as_dict()
