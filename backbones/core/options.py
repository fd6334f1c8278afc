"""Checking model options before anything is built: types and ranges, one clear error each.

``create_model`` checks the options it knows (``num_classes=-1``, ``"10"`` or ``True``,
``in_chans=0``...) before a model is built or a file is read; ``from_pretrained`` checks a
``config.json`` more strictly still: it may hold only the options listed here, as JSON values,
so a hostile file can describe a model and nothing else (no ``pretrained`` that fetches or
reads another file, no ``num_classes`` that allocates gigabytes).
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["CONFIG_OPTIONS", "check_flags", "check_model_options", "check_out_indices"]

MAX_CLASSES = 100_000
MAX_CHANNELS = 4096


def _integer(low: int, high: int) -> Callable[[str, Any], str | None]:
    def check(name: str, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return f"{name} must be an int from {low} to {high:,}, got {value!r} ({type(value).__name__})"
        if not low <= value <= high:
            return f"{name} must be between {low} and {high:,}, got {value}"
        return None

    return check


def _probability(name: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        return f"{name} must be a number in [0, 1), got {value!r}"
    return None


def _flag(name: str, value: Any) -> str | None:
    return None if isinstance(value, bool) else f"{name} must be True or False, got {value!r}"


def _name_or_none(name: str, value: Any) -> str | None:
    return None if value is None or isinstance(value, str) else f"{name} must be a name or None, got {value!r}"


def _flags_or_none(name: str, value: Any) -> str | None:
    if value is None or (isinstance(value, (list, tuple)) and all(isinstance(v, bool) for v in value)):
        return None
    return f"{name} must be a list of True/False or None, got {value!r}"


def _stage_list(name: str, value: Any) -> str | None:
    if isinstance(value, (list, tuple)) and value and all(type(v) is int and 1 <= v <= 4 for v in value):
        return None
    return f"{name} must be a list of stages from 1 to 4, got {value!r}"


# The options a model may be built with, each with its check. config.json may hold these and no other.
CONFIG_OPTIONS: dict[str, Callable[[str, Any], str | None]] = {
    "num_classes": _integer(0, MAX_CLASSES),
    "in_chans": _integer(1, MAX_CHANNELS),
    "out_channels": _integer(1, MAX_CHANNELS),
    "drop_rate": _probability,
    "dropout": _probability,
    "dropout_aux": _probability,
    "aux_logits": _flag,
    "aux_batch_norm": _flag,
    "transform_input": _flag,
    "zero_init_residual": _flag,
    "init_weights": _flag,
    "batch_norm": _flag,
    "norm_layer": _name_or_none,
    "stem": _name_or_none,
    "replace_stride_with_dilation": _flags_or_none,
    "trainable_layers": lambda name, value: None if value is None else _integer(0, 5)(name, value),
    "returned_layers": _stage_list,
    "extra_blocks": _name_or_none,
    "fpn_norm_layer": _name_or_none,
}
# Options whose Python-only values (a norm-layer class, a callable) the API accepts but JSON cannot hold.
_API_ANY_VALUE = {"norm_layer", "fpn_norm_layer", "extra_blocks"}


def check_model_options(options: Mapping[str, Any], *, source: str | None = None) -> None:
    """Check model options by type and range.

    Args:
        options: Keyword arguments for a model builder.
        source: ``None`` for the Python API (unknown options pass on to the builder, which
            rejects what it does not take); a file name such as ``".../config.json"`` for a saved
            config, where only :data:`CONFIG_OPTIONS` with JSON values are allowed.

    Raises:
        ValueError: An option of the wrong type or out of range, or (in a config) one that is
            not a model option; the message names it and says what is allowed.

    Example:
        >>> check_model_options({"num_classes": -1})
        Traceback (most recent call last):
        ...
        ValueError: num_classes must be between 0 and 100,000, got -1
    """
    where = f"{source}: " if source else ""
    for name, value in options.items():
        check = CONFIG_OPTIONS.get(name)
        if check is None:
            if source is None:
                continue
            hint = " (a config describes a model; weights come from the folder itself)" if name == "pretrained" else ""
            raise ValueError(
                f"{where}{name!r} is not a model option{hint}; allowed: {', '.join(sorted(CONFIG_OPTIONS))}"
            )
        if source is None and name in _API_ANY_VALUE and value is not None and not isinstance(value, str):
            continue
        problem = check(name, value)
        if problem:
            raise ValueError(where + problem)


def check_flags(flags: Mapping[str, Any]) -> None:
    """Check that each of ``flags`` (``features_only``, ``progress``...) is a bool.

    A string such as ``"no"`` is truthy: taken as it is, it would silently mean True.

    Raises:
        ValueError: The flag is named, with the value given.

    Example:
        >>> check_flags({"features_only": "no"})
        Traceback (most recent call last):
        ...
        ValueError: features_only must be True or False, got 'no'
    """
    for name, value in flags.items():
        problem = _flag(name, value)
        if problem:
            raise ValueError(problem)


def check_out_indices(out_indices: Any) -> tuple[int, ...] | None:
    """Return ``out_indices`` as a tuple of ints (numpy arrays and tensors of integers are accepted).

    Raises:
        ValueError: A single number, booleans, or non-integers; the message shows the form wanted.
    """
    if out_indices is None:
        return None
    example = "out_indices=(1, 2, 3, 4)"
    if isinstance(out_indices, (numbers.Number, str, bytes)) or getattr(out_indices, "ndim", 1) == 0:
        raise ValueError(f"out_indices must be a sequence of stage indices such as {example}, got {out_indices!r}")
    if not isinstance(out_indices, Iterable):
        raise ValueError(f"out_indices must be a sequence of stage indices such as {example}, got {out_indices!r}")
    values = list(out_indices.tolist() if hasattr(out_indices, "tolist") else out_indices)
    if any(isinstance(v, bool) for v in values):
        raise ValueError(f"out_indices must be stage indices (ints), got {values!r}")
    try:
        return tuple(operator.index(v) for v in values)
    except TypeError:
        raise ValueError(f"out_indices must be stage indices (ints) such as {example}, got {values!r}") from None
