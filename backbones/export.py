"""Deployment: ONNX, torch.export (``.pt2``) and TorchScript files of any backbones model.

Exports always use an eval-mode copy (auxiliary heads are never in the graph). ONNX goes through
the exporter torch recommends in this version (``torch.onnx.export(..., dynamo=True)``, which is
torch.export underneath), with a dynamic batch and, on request, dynamic height and width: FPN
upsampling follows the input size because it interpolates to each lateral's runtime size.

Example:
    >>> backbones.export(backbones.create_model("resnet50"), "resnet50.onnx", dynamic_size=True)
    >>> session = onnxruntime.InferenceSession("resnet50.onnx")
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = ["DEFAULT_OPSET", "FORMATS", "ExportError", "export", "export_dynamic_shapes"]

FORMATS = ("onnx", "pt2", "torchscript")
_SUFFIXES = {".onnx": "onnx", ".pt2": "pt2", ".pt": "torchscript", ".ts": "torchscript"}
DEFAULT_OPSET = 18
INPUT_NAME = "images"
MAX_BATCH = 1024
MAX_SIZE = 4096


class ExportError(RuntimeError):
    """An export that cannot be done as asked; the message says why and what to change."""


def _format_for(path: Path, format: str | None) -> str:
    if format is None:
        try:
            return _SUFFIXES[path.suffix.lower()]
        except KeyError:
            raise ExportError(
                f"cannot tell the format from {path.name!r}; pass format= one of {', '.join(FORMATS)} "
                f"(or use a .onnx, .pt2 or .pt file name)"
            ) from None
    if format not in FORMATS:
        raise ExportError(f"unsupported export format {format!r}; use one of {', '.join(FORMATS)}")
    return format


def _check_writable(path: Path) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ExportError(f"cannot write {path}: it is a folder; give a file name such as {path / 'model.onnx'}")
    if not folder.is_dir():
        raise ExportError(f"cannot write {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ExportError(f"cannot write {path}: permission denied")


def _example_input(model: nn.Module, batch: int) -> torch.Tensor:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    channels, height, width = cfg.get("input_size", (getattr(model, "in_chans", 3), 224, 224))
    return torch.randn(batch, channels, height, width)


def export_dynamic_shapes(
    model: nn.Module, dynamic_batch: bool, dynamic_size: bool
) -> dict[str, dict[int, Any]] | None:
    """The ``dynamic_shapes`` for torch.export / the ONNX exporter.

    The batch may range over 1..1024; height and width over what the model accepts, with the
    exact range left to torch.export (``Dim.AUTO``): a network can constrain it further (a
    ResNet's last map must stay wider than one pixel for one compiled graph to cover all sizes).
    """
    dims: dict[int, Any] = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    if dynamic_size:
        dims[2] = torch.export.Dim.AUTO
        dims[3] = torch.export.Dim.AUTO
    return {"x": dims} if dims else None


def _output_names(model: nn.Module) -> list[str]:
    info = getattr(model, "feature_info", None)
    if info and not hasattr(model, "num_classes"):
        return [f.name for f in info]  # feature extractors and FPNs return a dict of levels
    return ["logits"]


def _prepare(model: nn.Module, fold_norms: bool) -> nn.Module:
    model = copy.deepcopy(model).eval()
    if not fold_norms:
        return model
    from .fusion import InferenceTracer, fold_batch_norm

    traced = torch.fx.GraphModule(model, InferenceTracer().trace(model), class_name=type(model).__name__)
    fold_batch_norm(traced)
    for name in ("feature_info", "num_classes", "pretrained_cfg", "in_chans", "min_input_size"):
        if hasattr(model, name):
            setattr(traced, name, getattr(model, name))
    return traced


def export(
    model: nn.Module,
    path: str | Path,
    format: str | None = None,
    *,
    dynamic_batch: bool = True,
    dynamic_size: bool = False,
    example_input: torch.Tensor | None = None,
    opset: int = DEFAULT_OPSET,
    fold_norms: bool = False,
    check: bool = True,
) -> Path:
    """Export ``model`` for deployment.

    Args:
        model: Any backbones model (classifier, ``features_only`` extractor, FPN).
        path: The file to write.
        format: ``"onnx"``, ``"pt2"`` (torch.export) or ``"torchscript"``; by default from the
            suffix (``.onnx``, ``.pt2``, ``.pt``).
        dynamic_batch: Let the batch size vary (ONNX and pt2).
        dynamic_size: Let height and width vary too (ONNX and pt2).
        example_input: The input traced with; by default 2 images of the model's input size.
        opset: The ONNX opset (default 18).
        fold_norms: Fold BatchNorm into the convolutions first: a smaller inference graph whose
            outputs equal the model's within fp32 rounding.
        check: Validate the ONNX file with ``onnx.checker`` after writing it.

    Returns:
        The path written.

    Raises:
        ExportError: Unsupported format, unwritable path, or a missing exporter package.
    """
    path = Path(path).expanduser()
    format = _format_for(path, format)
    _check_writable(path)
    network = _prepare(model, fold_norms)
    x = example_input if example_input is not None else _example_input(network, batch=2)
    shapes = export_dynamic_shapes(network, dynamic_batch, dynamic_size)
    if format == "torchscript":
        torch.jit.save(torch.jit.script(network), str(path))
    elif format == "pt2":
        program = torch.export.export(network, (x,), dynamic_shapes=shapes)
        torch.export.save(program, str(path))
    else:
        _export_onnx(network, x, path, shapes, opset, check)
    return path


def _export_onnx(
    network: nn.Module, x: torch.Tensor, path: Path, shapes: dict[str, Any] | None, opset: int, check: bool
) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401
    except ImportError:
        raise ExportError(
            "ONNX export needs the onnx and onnxscript packages: `pip install onnx onnxscript` "
            "(or `pip install backbones[test]`)"
        ) from None
    torch.onnx.export(
        network,
        (x,),
        str(path),
        dynamo=True,
        dynamic_shapes=shapes,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=_output_names(network),
        external_data=False,
        verbose=False,
    )
    if check:
        import onnx

        onnx.checker.check_model(str(path), full_check=True)
