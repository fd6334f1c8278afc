"""Argument types and checks every command shares; standard library only, so ``--help`` stays fast.

A bad value is an ``argparse.ArgumentTypeError``: argparse prints it as one line with the usage
and exits with status 2, before any work starts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from backbones.core.vocabulary import DTYPES, ENGINES, dtype_name

__all__ = [
    "add_device_option",
    "add_dtype_option",
    "add_timeout_option",
    "check_output_file",
    "check_output_folder",
    "dtype_argument",
    "json_object",
    "natural_key",
    "parse_shape",
    "parse_size",
    "positive_float",
    "positive_int",
    "resolve_device",
]


def _number_type(convert: Callable[[str], Any], accept: Callable[[Any], bool], expected: str, name: str) -> Any:
    """An argparse ``type``: ``convert`` the text, keep it if ``accept``, else say what was ``expected``."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    parse.__name__ = name  # argparse names the type in its messages
    parse.__doc__ = f"{expected[0].upper()}{expected[1:]}."
    return parse


# --top-k, --batches, --threads
positive_int: Callable[[str], int] = _number_type(int, lambda v: v >= 1, "a whole number of at least 1", "positive_int")
# --seconds
positive_float: Callable[[str], float] = _number_type(
    float, lambda v: 0 < v < float("inf"), "a number above 0", "positive_float"
)
# --workers, --trainable-stages
non_negative_int: Callable[[str], int] = _number_type(
    int, lambda v: v >= 0, "a whole number of 0 or more", "non_negative_int"
)
# --val-fraction
fraction: Callable[[str], float] = _number_type(
    float, lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)", "fraction"
)


def parse_shape(text: str) -> tuple[int, ...]:
    """``N,C,H,W`` (or ``NxCxHxW``) of positive sizes."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape such as 1,3,224,224, got {text!r}") from None
    if len(shape) != 4 or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"expected 4 positive sizes N,C,H,W, got {text!r}")
    return shape


def parse_size(text: str) -> tuple[int, int]:
    """``HEIGHTxWIDTH`` of positive sizes, e.g. ``800x1344``."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 800x1344, got {text!r}") from None
    if min(height, width) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive sizes such as 800x1344, got {text!r}")
    return height, width


def json_object(text: str) -> dict[str, Any]:
    """A JSON object such as ``'{"num_classes": 10}'`` (model options are named, never positional)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"num_classes\": 10}}': {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object of named options such as '{{\"num_classes\": 10}}', got a "
            f"{type(value).__name__}: {text}"
        )
    return value


def natural_key(name: str) -> list[Any]:
    """Sort key that orders digit runs by value: ``resnet18`` before ``resnet101``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def check_output_folder(path: str | Path) -> Path:
    """Make sure results can be written into the folder ``path`` (created if missing) before any work.

    Raises:
        ValueError: ``path`` is a file, cannot be created, or is not writable.
    """
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file; give a folder to write the results into")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {folder} cannot be created ({err.strerror}); choose another folder") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--out {folder} is not writable; choose another folder")
    return folder


def check_output_file(path: str | Path, suffixes: dict[str, str]) -> tuple[Path, str]:
    """Check a file to write before any work: its suffix names a known format and its folder is writable.

    Args:
        path: The file the command will write.
        suffixes: Known suffixes (lower case, with the dot) -> format name.

    Returns:
        The path and its format.

    Raises:
        ValueError: ``path`` is a folder, has an unknown suffix, or cannot be written.
    """
    out = Path(path).expanduser()
    known = ", ".join(sorted(suffixes))
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name ending in one of {known}")
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"--out {out}: cannot tell the format from {out.suffix or 'no suffix'!r}; use one of {known}")
    folder = out.parent
    if not folder.is_dir():
        raise ValueError(f"--out {out}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ValueError(f"--out {out}: permission denied")
    return out, suffixes[out.suffix.lower()]


def add_device_option(command: argparse.ArgumentParser) -> None:
    """``--device cpu|cuda|cuda:N``: where the model runs."""
    command.add_argument(
        "--device",
        default="cpu",
        help="where to run: cpu, cuda or cuda:N (CUDA needs a PyTorch build with CUDA and a visible GPU)",
    )


def add_timeout_option(command: argparse.ArgumentParser) -> None:
    """``--timeout SECONDS``: how long a process of a torchrun job waits for the others (the process-group timeout)."""
    command.add_argument(
        "--timeout",
        type=positive_float,
        metavar="SECONDS",
        help="under torchrun: seconds a process waits for the others before it stops with an error naming the "
        "rank that is gone (default 300)",
    )


def dtype_argument(allowed: Sequence[str] = DTYPES) -> Any:
    """An argparse ``type`` reading a precision through :func:`~backbones.core.vocabulary.dtype_name`.

    ``--dtype bfloat16`` and ``--dtype bf16`` are the same; a bad value is one argparse line.
    """

    def parse(text: str) -> str:
        try:
            return dtype_name(text, allowed=allowed, what="--dtype")
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = "dtype"  # argparse names the type in its messages
    return parse


def add_dtype_option(
    command: argparse.ArgumentParser,
    *,
    allowed: Sequence[str] = DTYPES,
    default: str | None = "fp32",
    nargs: str | None = None,
    help: str,
) -> None:
    """``--dtype`` with the shared vocabulary (fp32, bf16, int8 and their long names), limited to ``allowed``."""
    command.add_argument(
        "--dtype",
        type=dtype_argument(allowed),
        default=default,
        nargs=nargs,
        metavar="{" + ",".join(allowed) + "}",
        help=help,
    )


def add_backend_option(command: argparse.ArgumentParser, *, help: str | None = None) -> None:
    """``--backend {torch,openvino,onnxruntime,auto}``: the engine ``optimize`` runs the model on."""
    command.add_argument(
        "--backend",
        type=str.lower,
        choices=ENGINES,
        default="torch",
        help=help
        or "engine that runs the model: torch's own kernels, openvino (pip install backbones[openvino]), "
        "onnxruntime, or auto (the fastest installed one, timed here)",
    )


def resolve_device(name: str) -> Any:
    """The ``torch.device`` for ``--device``, checked now rather than inside the first convolution.

    Raises:
        ValueError: Not a device name, or CUDA asked for where none is available.
    """
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type not in {"cpu", "cuda"}:
        raise ValueError(f"--device {name!r}: only cpu and cuda are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: no CUDA device is available (torch.cuda.is_available() is False); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device
