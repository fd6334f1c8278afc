"""Bad command lines: one line on stderr, exit status 2, before any long work; pipes and odd files."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from .helpers import assert_one_line_error, run_cli

# Rejected by the argument parser itself: no model is built, no torch is imported.
USAGE_ERRORS = {
    "top-k 0": (["predict", "resnet18", "x.png", "--top-k", "0"], "--top-k: expected a whole number of at least 1"),
    "top-k -3": (["predict", "resnet18", "x.png", "--top-k", "-3"], "--top-k: expected a whole number of at least 1"),
    "bench batches 0": (["bench", "--batches", "0"], "--batches: expected a whole number of at least 1"),
    "bench seconds -1": (["bench", "--seconds", "-1"], "--seconds: expected a number above 0"),
    "convert kwargs list": (
        ["convert", "x.pth", "--arch", "vgg11", "--out", "o", "--model-kwargs", "[1,2]"],
        "expected a JSON object of named options",
    ),
    "predict json and csv": (["predict", "resnet18", "x.png", "--json", "--csv"], "not allowed with argument"),
}


@pytest.mark.parametrize("case", USAGE_ERRORS)
def test_bad_option_values_are_one_line_usage_errors(case: str) -> None:
    argv, fragment = USAGE_ERRORS[case]
    assert_one_line_error(run_cli(*argv), fragment, "see `backbones")


@pytest.mark.parametrize("command", ["bench", "demo"])
def test_bench_and_demo_refuse_an_out_that_is_a_file_before_the_work(command: str, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder")
    result = run_cli(command, "--out", str(taken), timeout=120)
    assert_one_line_error(result, f"--out {taken} is a file")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--opset", "0"], "ONNX opset 0 is not supported; choose one from 18 to"),
        (["--opset", "999"], "ONNX opset 999 is not supported"),
        (["--out", "{tmp}"], "it is a folder; give a file name such as"),
        (["--out", "{tmp}/model.bin"], "cannot tell the format from 'model.bin'"),
        (["--out", "{tmp}/m.pt", "--input", "1,3,16,16"], "16x16"),
    ],
    ids=["opset-0", "opset-999", "out-dir", "out-unknown-suffix", "torchscript-input-too-small"],
)
def test_export_refuses_bad_requests_up_front(argv: list[str], fragment: str, tmp_path: Path) -> None:
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "m.onnx")]
    result = run_cli("export", "resnet18", *argv)
    assert_one_line_error(result, fragment)
    assert not any(tmp_path.iterdir())  # nothing written


def test_bench_names_the_variants_it_knows_when_given_another(tmp_path: Path) -> None:
    result = run_cli("bench", "--variants", "ours int9", "--out", str(tmp_path / "results"))
    assert_one_line_error(result, "--variants: unknown 'ours int9'; choose from", "ours compiled int8")
    assert not (tmp_path / "results").exists()


def test_export_api_validates_the_opset_before_exporting(tmp_path: Path) -> None:
    import backbones

    with pytest.raises(backbones.ExportError, match="ONNX opset 7 is not supported"):
        backbones.export(backbones.create_model("resnet18"), tmp_path / "m.onnx", opset=7)
    assert not any(tmp_path.iterdir())


def test_output_piped_to_a_reader_that_stops_ends_quietly() -> None:
    # More output than a pipe buffers, so the writer meets the closed pipe.
    process = subprocess.Popen(
        [sys.executable, "-m", "backbones", "summary", "resnet152", "--depth", "3", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline().strip() == b"{"
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141  # 128 + SIGPIPE, as `yes | head` reports
    assert stderr == ""


def test_a_fifo_given_as_an_image_is_refused_without_reading_it(tmp_path: Path) -> None:
    fifo = tmp_path / "image.png"
    os.mkfifo(fifo)
    for command in ("predict", "features"):
        result = run_cli(command, "resnet18", str(fifo), timeout=60, fresh_process=True)  # a read would block
        assert_one_line_error(result, f"{fifo} is not a regular file")


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` pixels and holds none: only its header is ever read."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_a_100_megapixel_image_is_refused_before_decoding(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(10_000, 10_000))
    result = run_cli("features", "resnet18", str(bomb), "--out", str(tmp_path / "f.png"))
    assert_one_line_error(result, "has 10000x10000 pixels, more than the limit of 89,478,485")


def test_features_refuses_a_picture_format_it_cannot_write(tmp_path: Path) -> None:
    result = run_cli("features", "resnet18", "missing.png", "--out", str(tmp_path / "maps.gif"))
    assert_one_line_error(result, "cannot tell the format from '.gif'", ".jpg", ".png")
