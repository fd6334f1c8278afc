"""Writing files so that a reader never sees half of one: a temporary name, then a rename.

Everything the package writes (weights, checkpoints, feature shards, configs, metrics) goes
through :func:`atomic_path`: the content is written under a hidden temporary name in the same
folder and renamed over the target only when complete, so a run killed at any moment leaves
either the old file or the new one. Files get the mode the umask gives, like any other file
(``tempfile.mkstemp`` alone would make them owner-only). A write that fails for want of space
raises :class:`DiskFullError` naming the file, whatever the writer said (``No space left on
device``, or torch's zip writer's ``unexpected pos``), and leaves no temporary behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from torch import Tensor

__all__ = [
    "TEMP_SUFFIX",
    "DiskFullError",
    "atomic_directory",
    "atomic_path",
    "atomic_write_text",
    "check_writable_folder",
    "is_temporary",
    "save_safetensors_atomic",
]

# Temporary files end with this suffix and start with a dot: never mistaken for a finished file.
TEMP_SUFFIX = ".tmp"

# How a full disk reads through the writers: the OS's errors, safetensors' text of them, and torch's
# zip writer (torch.save), whose failed write is only "[enforce fail at inline_container.cc:672] .
# unexpected pos 15841600 vs 15841488" (the bytes it expected to have written vs those it wrote).
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXT = re.compile(r"No space left on device|Disk quota exceeded|os error (?:28|122)\b")
_TORCH_SHORT_WRITE = re.compile(r"enforce fail at inline_container\.cc.*?(unexpected pos \d+ vs \d+)", re.S)


class DiskFullError(OSError):
    """A file could not be written for want of space; the message names it (``errno`` is ``ENOSPC``)."""


def _disk_full(err: BaseException, path: Path, what: str | None) -> DiskFullError | None:
    """The :class:`DiskFullError` that ``err``, raised writing ``path``, means; ``None`` for another failure."""
    if isinstance(err, DiskFullError):  # said already, by the innermost writer, which names the file
        return None
    text = str(err)
    torch_short = _TORCH_SHORT_WRITE.search(text)
    if (isinstance(err, OSError) and err.errno in _NO_SPACE_ERRNOS) or _NO_SPACE_TEXT.search(text):
        cause = "the disk is full (no space left on device)"
    elif torch_short:
        cause = f"the disk is full, or a file size limit was hit (torch's zip writer stopped short: {torch_short[1]})"
    else:
        return None
    name = f"{what} {path}" if what else str(path)
    full = DiskFullError(
        f"cannot write {name}: {cause}; nothing half-written was left. Free some space on that disk (or choose a "
        f"folder on another one) and run again"
    )
    full.errno = errno.ENOSPC  # set alone: with a filename too, str() would become "[Errno 28] None: ..."
    return full


def _umask_bits() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _umask_mode() -> int:
    return 0o666 & ~_umask_bits()


@contextlib.contextmanager
def atomic_path(path: str | Path, what: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.

    Args:
        path: The file to write.
        what: What the file is, in words (``"the checkpoint's training state"``), for the error of a full disk.

    Raises:
        DiskFullError: The write failed for want of space (the writer's own error is its cause).

    Example:
        >>> with atomic_path("out/metrics.json") as tmp:
        ...     tmp.write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as err:  # no inode left is a full disk too
        raise _disk_full(err, path, what) or err from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except Exception as err:
        full = _disk_full(err, path, what)
        if full is None:
            raise
        raise full from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it takes the place of ``path`` in one step.

    A reader of ``path`` sees the old folder or the new one, never a mix of their files: where
    Linux allows (``renameat2`` with ``RENAME_EXCHANGE``) the two folders swap atomically;
    elsewhere the old folder is renamed away just before the new one is renamed in, so for an
    instant there is no folder, which a reader reports as missing rather than mixing. Files and
    folders of the old ``path`` that the new one does not write (a ``metrics.jsonl`` beside a
    saved model) are carried over as hard links. On an exception ``path`` is left as it was.

    Raises:
        NotADirectoryError: ``path``, or a folder above it, is an existing file.
        PermissionError: ``path``, or the existing folder it would be made in, is read-only.

    Example:
        >>> with atomic_directory("my-model") as tmp:
        ...     (tmp / "config.json").write_text("{}")
    """
    path = Path(os.path.realpath(Path(path).expanduser()))
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a folder; give a folder to write to")
    check_writable_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask_bits())  # mkdtemp makes it owner-only
        if path.is_dir():
            _carry_over(path, tmp)
            if not _exchange(tmp, path):
                old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old.", suffix=TEMP_SUFFIX))
                os.rename(path, old / path.name)
                os.rename(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except Exception as err:  # the files of the folder are written straight into tmp, not through atomic_path
        full = _disk_full(err, path, "the folder")
        if full is None:
            raise
        raise full from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _read_only(folder: Path) -> bool:
    # The mode is read as well as os.access: root passes every access check, and replacing a
    # folder its owner made read-only would hand it a new mode and owner without a word.
    return not folder.stat().st_mode & 0o222 or not os.access(folder, os.W_OK | os.X_OK)


def check_writable_folder(path: str | Path) -> None:
    """Check before any work that :func:`atomic_directory` may write the folder ``path``.

    Refused are a folder its owner made read-only (even for root, who could write it) and a path
    under a file, each in one line naming the folder.

    Args:
        path: The folder to write (it need not exist yet).

    Raises:
        NotADirectoryError: A folder above ``path`` is a file.
        PermissionError: ``path`` is a read-only folder, or the nearest existing folder above it is.
    """
    path = Path(os.path.realpath(Path(path).expanduser()))
    if path.is_dir() and _read_only(path):
        raise PermissionError(
            f"cannot write {path}: the folder is read-only (mode {path.stat().st_mode & 0o777:o}); make it writable "
            f"or choose another folder"
        )
    above = path.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {above} is a file, not a folder; give a folder to write to")
    if _read_only(above):
        raise PermissionError(
            f"cannot write {path}: the folder {above} it goes in is read-only (mode {above.stat().st_mode & 0o777:o}); "
            f"make it writable or choose another folder"
        )


def _carry_over(old: Path, new: Path) -> None:
    for entry in old.iterdir():
        target = new / entry.name
        if target.exists() or is_temporary(entry):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, target)


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2(RENAME_EXCHANGE); False where that is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def atomic_write_text(path: str | Path, text: str, what: str | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path (``what``: see :func:`atomic_path`)."""
    with atomic_path(path, what) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_safetensors_atomic(
    state: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None, what: str | None = None
) -> None:
    """Write ``state`` as safetensors through a temporary file, so a crash never leaves half a file.

    The metadata is written in sorted key order, so equal tensors and metadata give the same bytes
    (safetensors itself writes it in a hash map's random order, different every time).

    Raises:
        DiskFullError: The disk is full (``what``, in words, says what the file is).
    """
    from safetensors.torch import save_file

    with atomic_path(path, what) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
        if metadata and len(metadata) > 1:
            _sort_safetensors_metadata(Path(tmp))


def _sort_safetensors_metadata(path: Path) -> None:
    """Rewrite a safetensors header in place with its ``__metadata__`` keys sorted.

    The header is the same JSON reordered, so it keeps its length (the padding safetensors adds
    stays spaces) and the tensor bytes after it do not move.
    """
    import json

    with open(path, "r+b") as file:
        length = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(length))
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
        if len(text) > length:  # never: the same keys and values, reordered
            raise RuntimeError(f"rewriting the safetensors header of {path} would move its tensors")
        file.seek(8)
        file.write(text.ljust(length))


def is_temporary(path: str | Path) -> bool:
    """True for a temporary file of :func:`atomic_path` (a leftover of a killed writer)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)
