"""Writing files so that a reader never sees half of one: a temporary name, then a rename.

Everything the package writes (weights, checkpoints, feature shards, configs, metrics) goes
through :func:`atomic_path`: the content is written under a hidden temporary name in the same
folder and renamed over the target only when complete, so a run killed at any moment leaves
either the old file or the new one. Files get the mode the umask gives, like any other file
(``tempfile.mkstemp`` alone would make them owner-only).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from torch import Tensor

__all__ = ["TEMP_SUFFIX", "atomic_path", "atomic_write_text", "is_temporary", "save_safetensors_atomic"]

# Temporary files end with this suffix and start with a dot: never mistaken for a finished file.
TEMP_SUFFIX = ".tmp"


def _umask_mode() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.

    Example:
        >>> with atomic_path("out/metrics.json") as tmp:
        ...     tmp.write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_safetensors_atomic(state: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``state`` as safetensors through a temporary file, so a crash never leaves half a file."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)


def is_temporary(path: str | Path) -> bool:
    """True for a temporary file of :func:`atomic_path` (a leftover of a killed writer)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)
