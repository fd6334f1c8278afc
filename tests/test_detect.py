"""``backbones detect``: training lowers the loss, COCO's metric, torchrun, resume after a kill, predict.

Every run is tiny (96x96 digit scenes written by ``detect make-data``, resnet18_fpn Faster R-CNN
with few proposals, one or two epochs, one thread per process): the tests check behaviour,
benchmarks/detect_digits.py checks accuracy and speed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backbones.apps.cli.main import main

from .helpers import REPO_ROOT, assert_one_line_error, killed_after_epoch_script, run_cli

# One xdist worker runs them all: the torchrun and killed runs (module fixtures) then run once.
pytestmark = pytest.mark.xdist_group("detect")

# Few proposals and sampled RoIs: a step takes a fraction of a second on one thread.
SMALL_DETECTOR = {
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 50,
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 64,
    "box_score_thresh": 0.0,  # an untrained detector still returns boxes for predict to draw
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _subprocess_env() -> dict[str, str]:
    # One thread per process: the thread count is part of the determinism contract.
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """A COCO folder of 2 training and 2 validation scenes on 96x96 canvases, written by make-data."""
    out = tmp_path_factory.mktemp("scenes") / "coco"
    result = run_cli(
        "detect", "make-data", "digit-scenes", "--out", str(out), "--canvas", "96", "--train-scenes", "2",
        "--val-scenes", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


def _train_args(scenes: Path, out: Path, epochs: int, batch_size: int = 2) -> list[str]:
    return [
        "detect", "train", "resnet18_fpn", "--data", str(scenes), "--out", str(out), "--image-size", "96",
        "--epochs", str(epochs), "--batch-size", str(batch_size), "--lr", "0.01", "--detector-options",
        json.dumps(SMALL_DETECTOR), "--quiet",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def torchrun_run(scenes, tmp_path_factory) -> Path:
    """One 2-process torchrun training: batch 1 per process on 2 scenes, one epoch."""
    out = tmp_path_factory.mktemp("torchrun") / "detector"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", str(_free_port()),
        "-m", "backbones", *_train_args(scenes, out, epochs=1, batch_size=1),
    ]  # fmt: skip
    done = subprocess.run(command, env=_subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_make_data_writes_coco_files_pycocotools_reads(scenes: Path) -> None:
    from pycocotools.coco import COCO

    for split, count in (("train", 2), ("val", 2)):
        coco = COCO(str(scenes / split / "annotations.json"))
        assert len(coco.getImgIds()) == count and coco.getAnnIds()
        assert all((scenes / split / "images" / image["file_name"]).is_file() for image in coco.dataset["images"])


def _coco_file(path: Path, area_thresholds: list[float] | None) -> Path:
    """Two images, three objects, category ids 5 and 9: not the detector's labels 1 and 2."""
    content = {
        "info": {} if area_thresholds is None else {"area_thresholds": area_thresholds},
        "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 100}, {"id": 7, "file_name": "b.png",
                   "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 9, "bbox": [50, 50, 40, 20], "area": 800, "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 9, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0},
        ],
        "categories": [{"id": 5, "name": "five"}, {"id": 9, "name": "nine"}],
    }  # fmt: skip
    path.write_text(json.dumps(content))
    return path


@pytest.mark.parametrize("area_thresholds", [None, [20.0**2, 30.0**2]], ids=["coco-areas", "scaled-areas"])
def test_evaluate_on_hand_made_predictions_equals_pycocotools_computed_directly(
    tmp_path: Path, area_thresholds: list[float] | None
) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from backbones.apps.detect.evaluate import COCO_METRICS, coco_results, score_results

    annotations = _coco_file(tmp_path / "instances.json", area_thresholds)
    # The detector's output (labels 1..2, boxes xyxy): a hit, a loose hit, a wrong class, a miss.
    outputs = {
        1: {"boxes": [[11, 9, 41, 40], [52, 48, 88, 72], [60, 0, 90, 30]], "labels": [1, 2, 1],
            "scores": [0.9, 0.8, 0.7]},
        7: {"boxes": [[20, 20, 30, 30]], "labels": [2], "scores": [0.6]},
    }  # fmt: skip
    results = []
    for image_id, out in outputs.items():
        tensors = {"boxes": torch.tensor(out["boxes"], dtype=torch.float32), "labels": torch.tensor(out["labels"]),
                   "scores": torch.tensor(out["scores"])}  # fmt: skip
        results += coco_results(tensors, image_id, {1: 5, 2: 9})
    ours = score_results(annotations, results)
    # The same predictions written by hand as COCO results (category ids, x y w h), scored by pycocotools.
    direct = [
        {"image_id": 1, "category_id": 5, "bbox": [11, 9, 30, 31], "score": 0.9},
        {"image_id": 1, "category_id": 9, "bbox": [52, 48, 36, 24], "score": 0.8},
        {"image_id": 1, "category_id": 5, "bbox": [60, 0, 30, 30], "score": 0.7},
        {"image_id": 7, "category_id": 9, "bbox": [20, 20, 10, 10], "score": 0.6},
    ]
    truth = COCO(str(annotations))
    evaluation = COCOeval(truth, truth.loadRes(direct), iouType="bbox")
    if area_thresholds is not None:  # what the digit scenes' info asks for: COCO's sizes scaled to the canvas
        small, large = area_thresholds
        evaluation.params.areaRng = [[0, 1e10], [0, small], [small, large], [large, 1e10]]
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    expected = {
        k: (None if v < 0 else pytest.approx(float(v), abs=1e-12))
        for k, v in zip(COCO_METRICS, evaluation.stats, strict=True)
    }
    assert ours == expected
    assert 0 < ours["AP50"] < 1  # some right, some wrong


@pytest.fixture(scope="module")
def straight_run(scenes, tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch run in this process, one thread."""
    out = tmp_path_factory.mktemp("straight") / "detector"
    threads = torch.get_num_threads()
    # main() itself, not run_cli, which gives the run a fresh process's threads: the kill test's processes have one.
    torch.set_num_threads(1)
    try:
        assert main(_train_args(scenes, out, epochs=2)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_training_steps_lower_the_loss(straight_run: Path) -> None:
    first, second = _records(straight_run)
    assert second["train_loss"] < first["train_loss"]
    assert {"train_classifier", "train_box_reg", "train_objectness", "train_rpn_box_reg", "AP", "AP_s"} <= set(first)


KILL_AFTER_FIRST_EPOCH = killed_after_epoch_script("backbones.apps.detect.train")


def test_a_run_killed_after_epoch_1_resumes_to_the_uninterrupted_weights(
    scenes: Path, straight_run: Path, tmp_path: Path, one_thread
) -> None:
    out = tmp_path / "detector"
    command = [sys.executable, "-c", KILL_AFTER_FIRST_EPOCH, *_train_args(scenes, out, epochs=2)]
    killed = subprocess.run(command, env=_subprocess_env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (out / "model.safetensors").exists() and (out / "checkpoints" / "epoch-0001.state.pt").exists()
    assert main([*_train_args(scenes, out, epochs=2), "--resume"]) == 0
    resumed, straight = load_file(out / "model.safetensors"), load_file(straight_run / "model.safetensors")
    assert max((resumed[k].double() - straight[k].double()).abs().max().item() for k in straight) <= 1e-6
    assert [r["epoch"] for r in _records(out)] == [1, 2]
    assert _records(out)[1]["AP"] == _records(straight_run)[1]["AP"]


def test_torchrun_two_processes_write_a_folder_that_detect_evaluate_scores(torchrun_run: Path, scenes: Path) -> None:
    import backbones.models.detection as detection

    model = detection.detector(torchrun_run)
    assert model.detector_config["num_classes"] == 11 and model.detector_config["min_size"] == 96
    (trained,) = _records(torchrun_run)
    assert trained["processes"] == 2
    result = run_cli("detect", "evaluate", str(torchrun_run), "--data", str(scenes))
    assert result.returncode == 0, result.stderr
    assert "AP50" in result.stdout and "(val, 2 images)" in result.stdout
    evaluated = _records(torchrun_run)[-1]
    # One process scoring every image gives what the two processes' gathered predictions gave.
    for name in ("AP", "AP50", "AP75", "AP_s", "AP_m", "AR_1", "AR_10", "AR_100"):
        assert evaluated[name] == pytest.approx(trained[name], abs=1e-9), name
    card = (torchrun_run / "README.md").read_text()
    assert "| AP | AP50 |" in card and f"{scenes} val split (2 images)" in card
    assert (torchrun_run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in torchrun_run.rglob("*") if p.name.startswith(".")]  # no temporary file left


def test_predict_writes_a_drawing_and_coco_style_json(torchrun_run: Path, scenes: Path, tmp_path: Path) -> None:
    from torchvision.io import decode_png, read_file

    image = sorted((scenes / "val" / "images").iterdir())[0]
    drawing, listing = tmp_path / "boxes.png", tmp_path / "boxes.json"
    result = run_cli(
        "detect", "predict", str(torchrun_run), str(image), "--score", "0", "--out", str(drawing),
        "--json", str(listing),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"wrote {drawing}" in result.stdout and f"wrote {listing}" in result.stdout
    assert tuple(decode_png(read_file(str(drawing))).shape) == (3, 96, 96)
    results = json.loads(listing.read_text())
    categories = {c["id"] for c in json.loads((scenes / "val" / "annotations.json").read_text())["categories"]}
    assert results and all(r["file"] == str(image) and len(r["bbox"]) == 4 for r in results)
    assert {r["category_id"] for r in results} <= categories
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)


def test_a_coco_folder_without_its_val_split_is_one_line_naming_the_layout(scenes: Path, tmp_path: Path) -> None:
    shutil.copytree(scenes / "train", tmp_path / "coco" / "train")
    result = run_cli(*_train_args(tmp_path / "coco", tmp_path / "out", epochs=1))
    assert_one_line_error(result, "no val/annotations.json", "train/ and val/")
