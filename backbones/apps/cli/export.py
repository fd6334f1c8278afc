"""``export``: a deployable ONNX, torch.export or TorchScript file, with its progress on stderr."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from backbones.apps.cli.models import add_model_argument, add_pretrained_option, resolve_cli_model
from backbones.apps.cli.options import add_device_option, add_dtype_option, parse_shape
from backbones.core.vocabulary import EXPORT_FORMATS

__all__ = ["add_commands"]

# Kept here (not imported from backbones.runtime.export) so that --help does not import torch;
# tests/test_cli.py checks they agree.
DEFAULT_OPSET = 18


def add_commands(command: Any) -> None:
    """Register ``export`` (see :func:`backbones.apps.cli.main.build_parser`)."""
    cmd = command("export", "export a model to ONNX, torch.export (.pt2) or TorchScript", _cmd_export)
    add_model_argument(cmd)
    cmd.add_argument("--out", required=True, help="the file to write (.onnx, .pt2, .pt)")
    cmd.add_argument("--format", choices=EXPORT_FORMATS, help="the format (default: from the --out suffix)")
    add_pretrained_option(cmd, default_weights=False)
    add_dtype_option(
        cmd,
        allowed=("fp32", "int8"),
        help="fp32, or int8: an ONNX file quantized (QDQ) on --calibration images",
    )
    cmd.add_argument(
        "--calibration", help="int8 only, and needed there: calibrate on this image folder or 'digits' (no default)"
    )
    cmd.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction, default=True, help="let the batch vary")
    cmd.add_argument("--dynamic-size", action="store_true", help="let height and width vary (ONNX and pt2)")
    cmd.add_argument(
        "--optimize", action="store_true", help="fold BatchNorm into the convolutions; ONNX: run the graph optimizer"
    )
    cmd.add_argument(
        "--input", type=parse_shape, help="example input shape N,C,H,W (default: 2 images of the model's input size)"
    )
    cmd.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (18 up to what torch supports)")
    add_device_option(cmd)
    cmd.add_argument("--quiet", action="store_true", help="no progress lines or download bar")


class _Progress:
    """One line on stderr per step, with the seconds the previous step took."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.start:6.1f} s] {message}", file=sys.stderr, flush=True)


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from backbones.apps.cli.options import resolve_device
    from backbones.core.inputs import check_image_batch
    from backbones.runtime.export import check_destination, check_opset, export

    # Everything a user can get wrong is checked before the (long) build and export.
    path, format = check_destination(args.out, args.format)
    if format == "onnx":
        check_opset(args.opset)
    device = resolve_device(args.device)
    if args.input and args.input[0] == 1 and args.dynamic_batch and format != "torchscript":
        raise ValueError(
            "--input with a batch of 1 cannot give a dynamic batch (torch.export fixes a size-1 dimension); "
            "give a batch of 2 or more (--input 2,...) or --no-dynamic-batch"
        )
    if args.calibration and args.dtype != "int8":
        raise ValueError("--calibration applies to --dtype int8 only")
    if args.dtype == "int8" and not args.calibration:
        raise ValueError("--dtype int8 needs --calibration: an image folder or 'digits' to calibrate on")
    source = resolve_cli_model(args, default_weights=False)
    if args.input:
        # Checked for every format (TorchScript does not trace it, but the file must run at that
        # size), on a meta-device copy: instant, before weights are fetched.
        shape_of = source.skeleton()
        check_image_batch(torch.empty(args.input, device="meta"), shape_of.in_chans, shape_of.min_input_size)
    progress = _Progress(args.quiet)
    loads = source.weights.loads_weights
    progress(f"building {args.model}" + (" and loading its weights" if loads else ""))
    model = source.build(progress=not args.quiet).to(device)
    calibration = None
    if args.dtype == "int8":
        from backbones.data.calibration import calibration_batches

        progress(f"reading calibration images from {args.calibration}")
        calibration = calibration_batches(model, args.calibration)
    example = torch.randn(args.input, device=device) if args.input else None
    what = {"onnx": "ONNX (torch.export, then the ONNX exporter and checker)", "pt2": "torch.export"}
    progress(f"exporting to {what.get(format, 'TorchScript')}: {path}")
    path = export(
        model,
        path,
        format,
        dynamic_batch=args.dynamic_batch,
        dynamic_size=args.dynamic_size,
        example_input=example,
        opset=args.opset,
        optimize=args.optimize,
        dtype=args.dtype,
        calibration=calibration,
    )
    progress("done")
    dynamic = [d for d, on in (("batch", args.dynamic_batch), ("height/width", args.dynamic_size)) if on]
    if format == "torchscript":
        dynamic = ["batch", "height/width"]  # a scripted model takes any size the network accepts
    weights = source.describe_weights()
    print(
        f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB; dynamic: {', '.join(dynamic) or 'none'}; "
        f"weights: {weights})"
    )
    return 0
