"""Hostile image folders (issue 33 items 5-10, issue 32 item 17): loops of links, FIFOs, broken
links and bombs among the images, 16-bit grey images, and the odd files that already held.

One data layer serves finetune, extract and predict; each behaviour is tested where it lives (the
folder walk, the decoder) and through a command where the command adds something (predict's own
listing and --skip-bad-images). Images are a few 12x12 PNGs; models are resnet18 at 32x32 with
random weights, nothing downloaded. What could hang runs under a hard bound: a fresh interpreter
with a timeout, or a FIFO whose watcher lets any reader go at once (tests/image_folders.py).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backbones.data.datasets import open_dataset
from backbones.data.folders import scan_image_folder
from backbones.data.images import MAX_IMAGE_PIXELS, BadImageError, decode_image

from .helpers import assert_one_line_error, run_cli, run_python
from .image_folders import make_image_folder, watched_fifo, write_declared_png

SMALL = ("--pretrained", "none", "--image-size", "32", "--workers", "0", "--quiet")
# A declared size over the guard (89,478,485 pixels) but under twice it, where Pillow itself only warns.
BOMB_SIDE = 10_000


def _grey_ramp() -> np.ndarray:
    """An 8x8 ramp over the whole 8-bit range, mid-grey at its centre."""
    return np.linspace(0, 255, 64).round().astype(np.uint8).reshape(8, 8)


# ----------------------------------------------------------------------------- 5. links


def test_two_links_to_the_parent_folder_end_the_walk_with_each_image_once_and_are_counted(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", per_class=2)
    (root / "red" / "up").symlink_to("..")
    (root / "blue" / "up").symlink_to("..")
    code = (
        "import json, sys, warnings\n"
        "from backbones.data.folders import scan_image_folder\n"
        "with warnings.catch_warnings(record=True) as said:\n"
        "    warnings.simplefilter('always')\n"
        "    scan = scan_image_folder(sys.argv[1])\n"
        "print(json.dumps([scan.classes, scan.samples, scan.skipped_links, [str(w.message) for w in said]]))\n"
    )
    result = run_python(code, str(root), timeout=30)  # before: 2^depth paths, a hang
    assert result.returncode == 0, result.stderr
    classes, samples, skipped, said = json.loads(result.stdout)
    assert classes == ["blue", "red"]
    assert [path for path, _ in samples] == ["blue/0.png", "blue/1.png", "red/0.png", "red/1.png"]
    assert skipped == ["blue/up", "red/up"]
    assert len(said) == 1 and "skipped 2 links to folders already scanned" in said[0]


def test_a_link_to_a_class_folder_leaves_its_images_to_the_real_folder(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", per_class=2)
    (root / "alias").symlink_to("red")  # sorts before "red": a walk in name order would reach it first
    with pytest.warns(UserWarning, match="skipped 1 link to folders already scanned"):
        scan = scan_image_folder(root)
    assert scan.classes == ["blue", "red"] and len(scan.samples) == 4 and scan.skipped_links == ["alias"]


# ----------------------------------------------------------------------------- 6. FIFOs


def test_a_fifo_among_the_images_is_never_opened_but_named_or_skipped(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", per_class=2)
    with watched_fifo(root / "red" / "pipe.png") as opened:
        dataset = open_dataset(root, "all", model="resnet18", image_size=32)
        index = [path for path, _ in dataset.samples].index("red/pipe.png")
        with pytest.raises(BadImageError, match=r"red/pipe\.png is not a regular file but a FIFO"):
            dataset[index]
        skipping = open_dataset(root, "all", model="resnet18", image_size=32, skip_bad_images=True)
    assert not opened.is_set()  # before: opening it blocked the reader (finetune and extract hung)
    assert skipping.skipped == ["red/pipe.png"] and len(skipping) == 4


# ----------------------------------------------------------------------------- 7. predict over a folder


def _unreadable(folder: Path, kind: str) -> Path:
    path = folder / f"{kind}.png"
    if kind == "dangling":
        path.symlink_to("nothing-here.png")
    elif kind == "self-link":
        path.symlink_to(path.name)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        write_declared_png(path, BOMB_SIDE, BOMB_SIDE)
    return path


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("dangling", "it is a link to nothing-here.png, which does not exist"),
        ("self-link", "which leads back to itself"),
        ("fifo", "is not a regular file but a FIFO"),
        ("bomb", f"has {BOMB_SIDE}x{BOMB_SIDE} pixels, more than the limit of {MAX_IMAGE_PIXELS:,}"),
    ],
)
def test_predict_over_a_folder_names_an_unreadable_file(tmp_path: Path, kind: str, said: str) -> None:
    root = make_image_folder(tmp_path / "data", per_class=1)
    bad = _unreadable(root / "red", kind)
    result = run_cli("predict", "resnet18", str(root), "--pretrained", "none", "--quiet")
    assert_one_line_error(result, str(bad), said, "--skip-bad-images")


def test_predict_with_skip_bad_images_leaves_out_the_unreadable_files_and_counts_them(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", per_class=1)
    bad = sorted(str(_unreadable(root / "red", kind)) for kind in ("dangling", "self-link", "fifo", "bomb"))
    result = run_cli("predict", "resnet18", str(root), "--pretrained", "none", "--quiet", "--json", "--skip-bad-images")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [row["image"] for row in report["results"]] == [str(root / "blue" / "0.png"), str(root / "red" / "0.png")]
    assert sorted(report["skipped"]) == bad
    assert "skipped 4 unreadable images" in result.stderr


# ----------------------------------------------------------------------------- 8. over the guard


def test_an_image_over_the_decompression_guard_is_named_like_any_bad_image(tmp_path: Path) -> None:
    # finetune and extract read folders through open_dataset: named when reached, listed when skipped.
    root = make_image_folder(tmp_path / "data", per_class=2)
    bomb = write_declared_png(root / "red" / "bomb.png", BOMB_SIDE, BOMB_SIDE)
    said = f"image {bomb} has {BOMB_SIDE}x{BOMB_SIDE} pixels, more than the limit of {MAX_IMAGE_PIXELS:,}"
    dataset = open_dataset(root, "all", model="resnet18", image_size=32)
    with pytest.raises(BadImageError, match=re.escape(said)):
        dataset[[path for path, _ in dataset.samples].index("red/bomb.png")]
    assert open_dataset(root, "all", model="resnet18", image_size=32, skip_bad_images=True).skipped == ["red/bomb.png"]


def test_extract_stops_at_an_image_over_the_decompression_guard_naming_it(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", per_class=1)
    bomb = write_declared_png(root / "red" / "bomb.png", BOMB_SIDE, BOMB_SIDE)
    result = run_cli("extract", "resnet18", "--data", str(root), "--out", str(tmp_path / "out"), *SMALL)
    assert_one_line_error(result, f"image {bomb} has {BOMB_SIDE}x{BOMB_SIDE} pixels", "--skip-bad-images")


# ----------------------------------------------------------------------------- 9. 16-bit grey


def _save_wide(path: Path, ramp: np.ndarray, mode: str) -> Path:
    """``ramp`` (8-bit) saved in a wider grey mode, each value at its place in that mode's range."""
    wide = ramp.astype(np.float64)
    arrays = {
        "I;16": (wide * 257).astype(np.uint16),  # 16-bit PNG
        "I;16B": (wide * 257).astype(">u2"),  # big-endian 16-bit TIFF
        "I": (wide * 257).astype(np.int32),  # 32-bit integer TIFF holding 16-bit values
        "F": (wide / 255).astype(np.float32),  # float TIFF in 0..1
    }
    Image.fromarray(arrays[mode]).save(path)
    assert Image.open(path).mode == mode
    return path


@pytest.mark.parametrize(("mode", "suffix"), [("I;16", ".png"), ("I;16B", ".tif"), ("I", ".tif"), ("F", ".tif")])
def test_a_wide_grey_image_decodes_to_its_8bit_twins_pixels(tmp_path: Path, mode: str, suffix: str) -> None:
    ramp = _grey_ramp()
    Image.fromarray(ramp).save(tmp_path / "twin.png")
    wide = _save_wide(tmp_path / f"wide{suffix}", ramp, mode)
    expected = np.asarray(decode_image(tmp_path / "twin.png"), dtype=np.int16)
    got = np.asarray(decode_image(wide), dtype=np.int16)
    assert np.abs(got - expected).max() <= 1  # before: clipped to white (I;16, I) or black (F)


def test_a_16bit_grey_image_gives_the_same_input_tensor_as_its_8bit_twin(tmp_path: Path) -> None:
    ramp = _grey_ramp()
    Image.fromarray(ramp).save(tmp_path / "a-twin.png")
    _save_wide(tmp_path / "b-wide.png", ramp, "I;16")
    dataset = open_dataset(tmp_path, "all", model="resnet18", image_size=32)
    assert [path for path, _ in dataset.samples] == ["a-twin.png", "b-wide.png"]
    twin, wide = dataset[0][0], dataset[1][0]
    std = torch.tensor(dataset.preprocessing["std"]).view(-1, 1, 1)
    assert ((wide - twin).abs() * std).max() <= 1 / 255 + 1e-6  # one 8-bit step, in [0, 1] units


# ----------------------------------------------------------------------------- 10. what held


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("empty", "the file is empty (0 bytes)"),
        ("cut in its pixels", "cannot read image"),
        ("declared over twice the guard", "is over the decompression-bomb guard"),
    ],
)
def test_an_unreadable_file_is_named(tmp_path: Path, kind: str, said: str) -> None:
    path = tmp_path / "bad.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "cut in its pixels":
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        write_declared_png(path, 3 * BOMB_SIDE, 3 * BOMB_SIDE)
    with pytest.raises(BadImageError, match=str(path)) as caught:
        decode_image(path)
    assert said in str(caught.value)


@pytest.mark.parametrize(("mode", "suffix"), [("CMYK", ".jpg"), ("RGBA", ".png"), ("P", ".png"), ("LA", ".png")])
def test_other_colour_modes_decode_to_their_rgb_colour(tmp_path: Path, mode: str, suffix: str) -> None:
    colour = (200, 40, 90)
    path = tmp_path / f"image{suffix}"
    source = Image.new("RGB", (12, 12), colour)
    if mode == "LA":
        colour = (source.convert("L").getpixel((0, 0)),) * 3
    (source.convert(mode) if mode != "P" else source.quantize(4)).save(path, quality=95)
    assert Image.open(path).mode == mode
    pixels = np.asarray(decode_image(path), dtype=np.int16)
    assert pixels.shape == (12, 12, 3) and np.abs(pixels - np.array(colour)).max() <= 6  # JPEG's rounding


def test_an_animated_gif_decodes_to_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (12, 12), colour) for colour in ((220, 20, 20), (20, 20, 220))]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(tmp_path / "moving.gif").n_frames == 2
    red, _, blue = (int(v) for v in np.asarray(decode_image(tmp_path / "moving.gif"))[0, 0])
    assert red > 200 and blue < 40


def test_a_file_name_with_a_newline_is_listed_and_decoded(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", per_class=1)
    (root / "red" / "0.png").rename(root / "red" / "two\nlines.png")
    dataset = open_dataset(root, "all", model="resnet18", image_size=32)
    assert [path for path, _ in dataset.samples] == ["blue/0.png", "red/two\nlines.png"]
    assert dataset[1][0].shape == (3, 32, 32)


def test_empty_class_folders_are_not_classes(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", per_class=1)
    for index in range(100):  # 10,000 scan in 0.4 s, but deleting them takes seconds on a busy disk
        (root / f"empty-{index}").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and nothing to say about them
        scan = scan_image_folder(root)
    assert scan.classes == ["blue", "red"] and len(scan.samples) == 2


# ----------------------------------------------------------------------------- 32.17 evaluate --out


def test_evaluate_refuses_a_picture_name_whose_suffix_is_no_picture_format(tmp_path: Path) -> None:
    out = tmp_path / "afile.txt"
    result = run_cli("evaluate", "resnet18", "--data", "digits", "--pretrained", "none", "--out", str(out))
    assert_one_line_error(result, f"cannot write the confusion matrix to {out}", "'.txt'", ".png")
    assert not out.exists()


def test_the_confusion_picture_is_written_in_the_format_its_suffix_names(tmp_path: Path) -> None:
    from backbones.apps.evaluate import save_confusion_picture

    written = save_confusion_picture(tmp_path / "confusion.svg", torch.eye(2, dtype=torch.long), ["a", "b"])
    assert written.read_bytes().startswith(b"<?xml") and b"<svg" in written.read_bytes()
