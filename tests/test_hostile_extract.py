"""Hostile inputs to extraction and image reading (issue 34): names that are not UTF-8, a rerun
with one changed setting, and an image whose header declares more pixels than the guard allows.

Extractions run resnet18 (random weights, passed as a module, so nothing is downloaded) at 32x32
on a few 12x12 images, in this process (``workers=0``).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import pytest
import torch

import backbones
from backbones.apps.extract.store import INDEX_NAME, shard_path
from backbones.data.images import MAX_IMAGE_PIXELS, BadImageError, decode_image

from .helpers import assert_one_line_error, run_cli
from .image_folders import make_image_folder

SMALL = {"image_size": 32, "batch_size": 2, "shard_size": 2, "workers": 0, "progress": False}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return backbones.create_model("resnet18", num_classes=2, pretrained=False)


def _png_bytes(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (12, 12), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb(path: Path) -> Path:
    """A real, valid 1-bit PNG of 10000x10000 pixels (a few KB): more pixels than the guard allows."""
    from PIL import Image

    side = 10_000
    assert side * side > MAX_IMAGE_PIXELS
    Image.new("1", (side, side)).save(path)
    return path


def test_non_utf8_file_and_class_names_round_trip_through_the_index(tmp_path: Path) -> None:
    # Linux hands Python such bytes as str with surrogate escapes: b"caf\xe9" -> "caf\udce9".
    root = tmp_path / "data"
    raw_root = os.fsencode(root)
    os.makedirs(raw_root + b"/caf\xe9")
    os.makedirs(raw_root + b"/plain")
    for name, colour in ((b"caf\xe9/\xff\xfe.png", (200, 30, 30)), (b"caf\xe9/ok.png", (190, 40, 40))):
        with open(raw_root + b"/" + name, "wb") as handle:
            handle.write(_png_bytes(colour))
    for name in (b"plain/na\xefve.png", b"plain/1.png"):
        with open(raw_root + b"/" + name, "wb") as handle:
            handle.write(_png_bytes((30, 40, 200)))

    manifest = backbones.extract(_model(), root, tmp_path / "out", **SMALL)
    assert manifest["complete"] and manifest["images"] == 4
    assert "caf\udce9" in manifest["classes"]

    result = backbones.load_features(tmp_path / "out")
    assert len(result.paths) == 4 and result.features["pooled"].shape[0] == 4
    assert "caf\udce9/\udcff\udcfe.png" in result.paths and "plain/na\udcefve.png" in result.paths
    for path in result.paths:  # the same str the folder scan gave: it opens the same file
        assert (root / path).is_file(), path
    # On disk the index holds the original bytes, as any byte-oriented tool reads them.
    assert b"caf\xe9/\xff\xfe.png," in (tmp_path / "out" / INDEX_NAME).read_bytes()


def test_a_rerun_with_one_changed_setting_names_only_that_setting(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=2)
    model = _model()
    first = backbones.extract(model, data, tmp_path / "out", **SMALL)
    written = shard_path(tmp_path / "out", 0).stat()
    with pytest.raises(FileExistsError) as caught:
        backbones.extract(model, data, tmp_path / "out", **{**SMALL, "shard_size": 3})
    assert "differing: shard size);" in str(caught.value)  # not "preprocessing, shard size"

    again = backbones.extract(model, data, tmp_path / "out", **SMALL)  # the same call: already complete
    assert again == first and again["complete"]
    kept = shard_path(tmp_path / "out", 0).stat()
    assert (kept.st_ino, kept.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)  # skipped, not redone


def test_decoding_an_image_over_the_guard_refuses_it_without_a_pillow_warning(tmp_path: Path) -> None:
    bomb = _bomb(tmp_path / "bomb.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning (Pillow's DecompressionBombWarning) fails here
        with pytest.raises(BadImageError, match="has 10000x10000 pixels, more than the limit of 89,478,485"):
            decode_image(bomb)


def test_predict_on_an_image_over_the_guard_prints_one_error_line(tmp_path: Path) -> None:
    bomb = _bomb(tmp_path / "bomb.png")
    result = run_cli("predict", "resnet18", str(bomb), "--pretrained", "none", "--quiet")
    assert_one_line_error(result, f"image {bomb} has 10000x10000 pixels, more than the limit of 89,478,485")
