"""The names users give for precisions, export formats and inference engines: one vocabulary, torch-free.

``optimize``, ``export``, ``extract``, ``finetune``, every CLI command and the benchmark read a
precision through :func:`dtype_name`, so ``"fp32"``, ``"float32"`` and ``torch.float32`` mean the
same thing everywhere and a wrong value gets the same message everywhere. Nothing here imports
torch: the CLI offers these as ``choices`` before torch is loaded.

Example:
    >>> dtype_name("bfloat16"), dtype_name("fp32")
    ('bf16', 'fp32')
    >>> dtype_name("int8", allowed=("fp32", "bf16"), what="finetune's dtype")
    Traceback (most recent call last):
    ...
    ValueError: finetune's dtype must be 'fp32' or 'bf16', got 'int8'
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BACKENDS",
    "DTYPES",
    "ENGINES",
    "EXPORT_FORMATS",
    "dtype_name",
    "engine_name",
    "export_format_name",
    "one_of",
]

# The precisions a network computes in, by the short names the CLI and the docs use.
DTYPES = ("fp32", "bf16", "int8")
# File formats ``export`` writes: ONNX, torch.export's program, TorchScript, OpenVINO's IR (.xml + .bin).
EXPORT_FORMATS = ("onnx", "pt2", "torchscript", "openvino")
# Who runs an optimized network: torch's own kernels, OpenVINO, onnxruntime (BACKENDS); "auto"
# times the installed ones and keeps the fastest.
BACKENDS = ("torch", "openvino", "onnxruntime")
ENGINES = (*BACKENDS, "auto")

# Other spellings of the same precision (torch dtypes arrive as their str(), e.g. "torch.bfloat16").
_DTYPE_ALIASES = {
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "int8": "int8",
    "qint8": "int8",
}


def one_of(choices: Sequence[str]) -> str:
    """``'a', 'b' or 'c'``: the allowed values, as an error message lists them."""
    quoted = [repr(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def dtype_name(value: object, *, allowed: Sequence[str] = DTYPES, what: str = "dtype") -> str:
    """The canonical name (``"fp32"``, ``"bf16"`` or ``"int8"``) of a precision given as a name or torch dtype.

    Args:
        value: ``"fp32"`` / ``"float32"``, ``"bf16"`` / ``"bfloat16"``, ``"int8"``, or
            ``torch.float32``, ``torch.bfloat16``, ``torch.int8`` / ``torch.qint8``.
        allowed: The names the caller supports (``export`` writes no bf16 files, fine-tuning
            does not train in int8).
        what: How the error message names the value (``"export's dtype"``, ``"--dtype"``).

    Returns:
        One of ``allowed``.

    Raises:
        ValueError: Anything else; the message lists ``allowed``.
    """
    text = str(value) if _is_torch_dtype(value) else value
    name = _DTYPE_ALIASES.get(text.lower().removeprefix("torch.")) if isinstance(text, str) else None
    if name not in allowed:
        raise ValueError(f"{what} must be {one_of(allowed)}, got {value!r}")
    return name


def export_format_name(value: object, *, what: str = "format") -> str:
    """``value`` checked against :data:`EXPORT_FORMATS` (case-insensitive).

    Raises:
        ValueError: Not one of them; the message lists them.
    """
    return _choice(value, EXPORT_FORMATS, what)


def engine_name(value: object, *, allowed: Sequence[str] = ENGINES, what: str = "backend") -> str:
    """``value`` checked against the engines ``allowed`` (case-insensitive).

    Raises:
        ValueError: Not one of them; the message lists them.
    """
    return _choice(value, allowed, what)


def _choice(value: object, allowed: Sequence[str], what: str) -> str:
    name = value.lower() if isinstance(value, str) else None
    if name not in allowed:
        raise ValueError(f"{what} must be {one_of(allowed)}, got {value!r}")
    return name


def _is_torch_dtype(value: object) -> bool:
    # torch.dtype without importing torch: its class lives in the torch module.
    return type(value).__module__ == "torch" and type(value).__name__ == "dtype"
