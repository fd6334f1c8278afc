"""One vocabulary for precisions: every API, command and the benchmark read fp32 / bf16 / int8 alike."""

from __future__ import annotations

import argparse

import pytest
import torch

import backbones
from backbones.core.vocabulary import DTYPES, EXPORT_FORMATS, dtype_name, export_format_name

from .helpers import assert_one_line_error, run_cli

SPELLINGS = {
    "fp32": ("fp32", "float32", "FP32", torch.float32),
    "bf16": ("bf16", "bfloat16", torch.bfloat16),
    "int8": ("int8", torch.int8, torch.qint8),
}


@pytest.mark.parametrize(("canonical", "spelling"), [(c, s) for c, spellings in SPELLINGS.items() for s in spellings])
def test_each_spelling_of_a_precision_reads_as_its_short_name(canonical, spelling) -> None:
    assert dtype_name(spelling) == canonical


@pytest.mark.parametrize("wrong", ["fp16", torch.float16, 8, None, ""])
def test_a_precision_outside_the_vocabulary_is_refused_with_the_list(wrong) -> None:
    with pytest.raises(ValueError, match=r"must be 'fp32', 'bf16' or 'int8', got"):
        dtype_name(wrong)


def test_export_formats_are_named_once() -> None:
    from backbones.runtime.export import FORMATS

    assert FORMATS is EXPORT_FORMATS and export_format_name("ONNX") == "onnx"
    with pytest.raises(ValueError, match="format must be 'onnx', 'pt2', 'torchscript' or 'openvino'"):
        export_format_name("tflite")


def _optimize(dtype: object) -> object:
    from backbones.runtime.optimize import resolve_dtype

    return resolve_dtype(dtype)


def _finetune_config(dtype: object) -> object:
    from backbones.apps.finetune.config import FinetuneConfig

    return FinetuneConfig(model="resnet18", data="digits", out="unused", dtype=dtype).dtype


def _benchmark(dtype: object) -> object:
    from backbones.apps.benchmark import BenchmarkConfig

    return BenchmarkConfig(dtypes=(dtype,)).dtypes


def _cli_argument(dtype: object) -> object:
    from backbones.apps.cli.options import dtype_argument

    try:
        return dtype_argument()(str(dtype))
    except argparse.ArgumentTypeError as err:
        raise ValueError(str(err)) from None


SURFACES = {"optimize": _optimize, "finetune": _finetune_config, "bench": _benchmark, "cli": _cli_argument}


@pytest.mark.parametrize("surface", SURFACES)
def test_every_surface_reads_the_long_name_and_refuses_fp16_alike(surface) -> None:
    read = SURFACES[surface]
    assert read("bfloat16") in (torch.bfloat16, "bf16", ("bf16",))
    with pytest.raises(ValueError, match=r"must be 'fp32'(, 'bf16' or 'int8'| or 'bf16'), got 'fp16'"):
        read("fp16")


def test_export_takes_fp32_by_any_name_and_refuses_bf16(tmp_path) -> None:
    model = backbones.create_model("resnet18", num_classes=2)
    for dtype in ("fp32", "float32", torch.float32):
        path = backbones.export(model, tmp_path / "model.pt", dtype=dtype)
        assert torch.jit.load(str(path))(torch.randn(1, 3, 32, 32)).shape == (1, 2)
    with pytest.raises(backbones.ExportError, match="export's dtype must be 'fp32' or 'int8', got 'bf16'"):
        backbones.export(model, tmp_path / "model.pt", dtype="bf16")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["export", "resnet18", "--out", "x.onnx", "--dtype", "bf16"], "--dtype must be 'fp32' or 'int8'"),
        (["export", "resnet18", "--out", "x.onnx", "--dtype", "int8"], "--dtype int8 needs --calibration"),
        (["export", "resnet18", "--out", "x.onnx", "--calibration", "digits"], "applies to --dtype int8 only"),
        (["finetune", "resnet18", "--data", "digits", "--out", "x", "--dtype", "int8"], "'fp32' or 'bf16'"),
        (["predict", "resnet18", "x.png", "--dtype", "fp16"], "--dtype must be 'fp32', 'bf16' or 'int8'"),
    ],
)
def test_commands_refuse_a_precision_they_cannot_run_in_one_line(argv, fragment, tmp_path) -> None:
    assert_one_line_error(run_cli(*argv, cwd=str(tmp_path)), fragment)


def test_the_vocabulary_lists_the_precisions_the_fast_path_runs() -> None:
    from backbones.runtime.optimize import TORCH_DTYPES

    assert tuple(TORCH_DTYPES) == DTYPES
