"""Checking that a weight file is the one expected: sha256 digests, digests kept beside files, leftovers.

Every cached weight file is hashed again at every load and compared with a digest from a source
the file itself cannot change: the manifest, the Hub (the name of an LFS blob, or the ETag it
sends), or a ``<file>.sha256`` written beside a file we produced ourselves (converted weights)
once its content was known to be right. A size + modification-time record is not enough: a
file corrupted in place keeps both. ``benchmarks/integrity_cost.py`` measures what the hashing
costs per load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path

from backbones.core.files import atomic_write_text, is_temporary

__all__ = [
    "DIGEST_SUFFIX",
    "KILLED_ATTEMPT_GRACE_S",
    "STALE_PARTIAL_AGE_S",
    "WeightsError",
    "WeightsIntegrityError",
    "file_sha256",
    "git_blob_sha1",
    "is_git_sha1",
    "is_sha256",
    "read_digest_beside",
    "remove_killed_attempts",
    "remove_stale_partials",
    "verify_git_blob_sha1",
    "verify_sha256",
    "write_digest_beside",
]

DIGEST_SUFFIX = ".sha256"
# A partial download untouched this long belongs to a killed process: a live one writes every second.
STALE_PARTIAL_AGE_S = 24 * 3600
_PARTIAL_SUFFIXES = (".incomplete", ".partial")
# An attempt that stopped writing this long before a later download of the same file began was
# killed: a live download in another process writes every second, even over a slow network.
KILLED_ATTEMPT_GRACE_S = 60.0
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GIT_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_CHUNK = 1 << 20


class WeightsError(RuntimeError):
    """A pretrained-weights problem the user can act on; the message says how."""


class WeightsIntegrityError(WeightsError):
    """The file is corrupt, truncated or not the expected one (its sha256 differs)."""


def is_sha256(text: str) -> bool:
    """Whether ``text`` is a full lower-case sha256 hex digest."""
    return bool(_SHA256.match(text))


def is_git_sha1(text: str) -> bool:
    """Whether ``text`` is a git object id (40 hex digits): the Hub's name for a regular (non-LFS) file."""
    return bool(_GIT_SHA1.match(text))


def git_blob_sha1(path: str | Path) -> str:
    """The git blob id of a file: sha1 of ``b"blob <size>\\0"`` + content (how the Hub names config.json)."""
    path = Path(path)
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_git_blob_sha1(path: Path, expected: str, *, what: str, remove: list[Path] | None = None) -> None:
    """Check a regular Hub file against its git blob id; on a mismatch it and ``remove`` are deleted.

    Raises:
        WeightsIntegrityError: The id differs; the message names the file.
    """
    real = Path(os.path.realpath(path))
    actual = git_blob_sha1(real)
    if actual != expected:
        _remove([real, Path(path), *(remove or [])])
        raise WeightsIntegrityError(
            f"{what}: the git blob id of {real} is {actual}, expected {expected}; the file is truncated or corrupt. "
            f"It has been removed from the cache: run again to download it afresh."
        )


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _remove(paths: Iterable[Path]) -> None:
    for stale in paths:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.remove(stale)


def verify_sha256(
    path: Path, expected: str, *, what: str, remove: list[Path] | None = None, advice: str | None = None
) -> str:
    """Hash ``path`` and check that its sha256 equals or starts with ``expected``; return the full digest.

    The file is hashed on every call (see the module docstring for why and what it costs). On a
    mismatch the file (the real file behind a link too) and ``remove`` are deleted.

    Args:
        path: The file (a link is followed).
        expected: A full hex digest or a prefix of one (torchvision file names carry 8+ digits).
        what: The weights' name, for the message.
        remove: More paths to delete on a mismatch (a cache link, a digest file).
        advice: What the user does next; by default, run again to download a fresh copy.

    Raises:
        WeightsIntegrityError: The digest differs; the message names the file and the fix.
    """
    expected = expected.lower()
    real = Path(os.path.realpath(path))
    digest = file_sha256(real)
    if not digest.startswith(expected):
        _remove([real, Path(path), *(remove or [])])
        raise WeightsIntegrityError(
            f"{what}: the sha256 of {real} is {digest}, expected {expected}. The file is truncated, corrupt or not "
            f"the published one; it has been removed from the cache. " + (advice or "Run again to download it afresh.")
        )
    return digest


def digest_path(path: Path) -> Path:
    """Where the digest of ``path`` is kept: ``<path>.sha256`` beside it."""
    return path.with_name(path.name + DIGEST_SUFFIX)


def write_digest_beside(path: Path, digest: str, **facts: str) -> None:
    """Record ``digest`` (and ``facts`` such as the source's digest) in ``<path>.sha256``."""
    atomic_write_text(digest_path(path), json.dumps({"sha256": digest, **facts}) + "\n")


def read_digest_beside(path: Path) -> dict[str, str] | None:
    """The record :func:`write_digest_beside` made for ``path``, or ``None`` when there is none.

    Raises:
        WeightsIntegrityError: Something that is not a digest record (a folder, garbage) sits where
            the record belongs; the message names it.
    """
    record_path = digest_path(path)
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError, ValueError) as err:
        raise WeightsIntegrityError(
            f"{record_path} should hold the sha256 of {path.name} but cannot be read ({type(err).__name__}); "
            f"delete it (and {path.name}) so the file is made afresh"
        ) from None
    if not isinstance(record, dict) or not is_sha256(str(record.get("sha256", ""))):
        return None
    return {str(k): str(v) for k, v in record.items()}


def remove_stale_partials(folder: Path, older_than_s: float = STALE_PARTIAL_AGE_S) -> list[Path]:
    """Delete partial downloads and temporary files in ``folder`` left by killed processes.

    Only files untouched for ``older_than_s`` seconds go: a download in progress in another
    process keeps writing to its file, so it is never removed under it.

    Returns:
        The removed files.
    """
    if not folder.is_dir():
        return []
    cutoff = time.time() - older_than_s
    removed = []
    for entry in folder.iterdir():
        if not (entry.name.endswith(_PARTIAL_SUFFIXES) or is_temporary(entry)):
            continue
        with contextlib.suppress(OSError):
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                entry.unlink()
                removed.append(entry)
    return removed


def remove_killed_attempts(folder: Path, name: str, started: float) -> list[Path]:
    """Delete the partial downloads of the file ``name`` left in ``folder`` by earlier, killed attempts.

    Called once a download of ``name`` has completed, which makes them obsolete: huggingface_hub
    names each attempt ``<etag>.<8 hex>.incomplete`` (older versions ``<etag>.incomplete``),
    torch.hub ``<file>.<32 hex>.partial``. Only those exact names are touched, so no other file's
    download is; and only those untouched since :data:`KILLED_ATTEMPT_GRACE_S` before ``started``
    (when this download began), so a download of the same file still running elsewhere is kept.

    Args:
        folder: Where the partial files lie (``blobs`` of a Hub repo, torch.hub's ``checkpoints``).
        name: The finished file's name (the blob's etag, or the checkpoint's file name).
        started: ``time.time()`` when the download that completed began.

    Returns:
        The removed files.
    """
    if not folder.is_dir():
        return []
    attempt = re.compile(re.escape(name) + r"(\.[0-9a-f]{8}|\.[0-9a-f]{32})?(\.incomplete|\.partial)")
    cutoff = started - KILLED_ATTEMPT_GRACE_S
    removed = []
    for entry in folder.iterdir():
        if not attempt.fullmatch(entry.name):
            continue
        with contextlib.suppress(OSError):
            if entry.is_file() and not entry.is_symlink() and entry.stat().st_mtime < cutoff:
                entry.unlink()
                removed.append(entry)
    return removed
