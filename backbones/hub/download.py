"""Fetching weight files: the Hugging Face Hub and plain URLs, sha256 verification, caches.

Hub files come through ``huggingface_hub`` (its cache, resumable downloads, ``HF_HUB_OFFLINE``,
``HF_TOKEN``); URL files through ``torch.hub``'s downloader into ``<torch hub dir>/checkpoints``
like ``torch.hub.load_state_dict_from_url``. Every file whose sha256 is known is verified before
use: from the manifest (a full digest or torchvision's file-name prefix), or, for Hub files,
the Hub's own LFS digest (the name of the blob in the cache). A file that fails is removed, so
nothing corrupt stays in a cache. Verified files are remembered by size and modification time
so the digest is not recomputed on every load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = [
    "WeightsError",
    "WeightsIntegrityError",
    "WeightsUnavailableError",
    "cache_dir",
    "fetch_hub_file",
    "fetch_url_file",
    "host_reachable",
    "hub_file_cached",
    "is_offline",
    "verify_sha256",
]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_OFFLINE = "offline mode is on (HF_HUB_OFFLINE or BACKBONES_OFFLINE)"
_CHUNK = 1 << 20


class WeightsError(RuntimeError):
    """A pretrained-weights problem the user can act on; the message says how."""


class WeightsUnavailableError(WeightsError):
    """The file cannot be obtained: offline with nothing cached, no such repo or file, no network."""


class WeightsIntegrityError(WeightsError):
    """The file is corrupt, truncated or not the expected one (its sha256 differs)."""


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``BACKBONES_OFFLINE``) forbids downloads."""
    flags = (os.environ.get(var, "").upper() for var in ("HF_HUB_OFFLINE", "BACKBONES_OFFLINE"))
    return any(flag in {"1", "ON", "YES", "TRUE"} for flag in flags)


def cache_dir() -> Path:
    """Where converted weights and verification records live: ``$BACKBONES_CACHE`` or
    ``<torch hub dir>/backbones`` (``TORCH_HOME`` moves it)."""
    explicit = os.environ.get("BACKBONES_CACHE")
    if explicit:
        return Path(explicit)
    import torch.hub

    return Path(torch.hub.get_dir()) / "backbones"


# ----------------------------------------------------------------------------- verification

_RECORD_LOCK = threading.Lock()


def _records_path() -> Path:
    return cache_dir() / "verified.json"


def _load_records() -> dict[str, Any]:
    try:
        return json.loads(_records_path().read_text())
    except (OSError, ValueError):
        return {}


def _stat_key(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, *, what: str, remove: list[Path] | None = None) -> str:
    """Check that ``path``'s sha256 equals or starts with ``expected``; return the full digest.

    A file verified before, and unchanged since (same size and modification time), is not
    hashed again. On a mismatch the file and ``remove`` (e.g. a cache symlink) are deleted.

    Raises:
        WeightsIntegrityError: The digest differs; the message names the file and the fix.
    """
    expected = expected.lower()
    real = Path(os.path.realpath(path))
    key = str(real)
    with _RECORD_LOCK:
        record = _load_records().get(key)
    if record and record[:2] == _stat_key(real) and record[2].startswith(expected):
        return record[2]
    digest = file_sha256(real)
    if not digest.startswith(expected):
        for stale in (real, path, *(remove or [])):
            with contextlib.suppress(FileNotFoundError):
                os.remove(stale)
        raise WeightsIntegrityError(
            f"{what}: the sha256 of the downloaded file is {digest}, expected {expected}. The file is truncated, "
            f"corrupt or not the published one; it has been removed from the cache ({real}). Run again to "
            f"download it afresh."
        )
    with _RECORD_LOCK:
        records = _load_records()
        records[key] = [*_stat_key(real), digest]
        _atomic_write_text(_records_path(), json.dumps(records))
    return digest


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the Hub


def _progress_class(progress: bool) -> Any:
    from huggingface_hub.utils import tqdm

    if progress:
        return tqdm

    class SilentTqdm(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return SilentTqdm


def fetch_hub_file(
    repo_id: str, filename: str, *, revision: str | None = None, what: str, progress: bool = True
) -> Path:
    """Download ``filename`` of Hub repo ``repo_id`` (or find it in the cache) and verify it.

    Raises:
        WeightsUnavailableError: Offline with nothing cached, no such repo/revision/file, or the
            Hub cannot be reached; the message says how to pre-fetch the file.
        WeightsIntegrityError: The file's sha256 is not the Hub's.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    source = f"{repo_id}/{filename}" + (f"@{revision}" if revision else "")
    prefetch = (
        f"pre-fetch it where the Hub is reachable with `python -m backbones download {what}` "
        f"(or `hf download {repo_id} {filename}`) and copy the Hugging Face cache (HF_HOME) here"
    )
    try:
        path = Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                tqdm_class=_progress_class(progress),
                local_files_only=is_offline(),
            )
        )
    except RepositoryNotFoundError:
        raise WeightsUnavailableError(
            f"{what}: the Hub has no repository {repo_id!r} (or it is private: log in with `hf auth login` "
            f"or set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise WeightsUnavailableError(f"{what}: repository {repo_id!r} has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        reason = _OFFLINE if is_offline() else "the Hub cannot be reached"
        raise WeightsUnavailableError(f"{what}: {source} is not in the local cache and {reason}; {prefetch}") from None
    except EntryNotFoundError:
        raise WeightsUnavailableError(f"{what}: repository {repo_id!r} has no file {filename!r}") from None
    except (HfHubHTTPError, OSError) as err:
        raise WeightsUnavailableError(f"{what}: downloading {source} failed ({err}); {prefetch}") from None
    # In the Hub cache an LFS file's blob is named by its sha256: verify against it.
    blob = Path(os.path.realpath(path))
    if _SHA256.match(blob.name):
        verify_sha256(path, blob.name, what=what, remove=[path])
    return path


def hub_file_cached(repo_id: str, filename: str, revision: str | None = None) -> bool:
    """Whether the Hugging Face cache already holds ``filename`` of ``repo_id`` (no request made)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str)


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds."""
    import socket

    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- plain URLs


def url_cache_path(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` would keep ``url``: ``<hub dir>/checkpoints/<name>``."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def fetch_url_file(url: str, *, sha256: str | None, what: str, progress: bool = True) -> Path:
    """Download ``url`` into torch.hub's checkpoint cache (or reuse it there) and verify it.

    Raises:
        WeightsUnavailableError: Offline with nothing cached, or the download failed.
        WeightsIntegrityError: The file's sha256 does not match ``sha256``.
    """
    import torch.hub

    path = url_cache_path(url)
    if not path.exists():
        if is_offline():
            raise WeightsUnavailableError(
                f"{what}: {path.name} is not in the cache ({path.parent}) and {_OFFLINE}; pre-fetch it "
                f"with `python -m backbones download {what}` where {urlparse(url).netloc} is reachable, or put "
                f"the file from {url} there"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Downloads to a temporary file and renames it: an interrupted download leaves nothing.
            torch.hub.download_url_to_file(url, str(path), progress=progress)
        except Exception as err:  # urllib raises many kinds; all mean the same to the user
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise WeightsUnavailableError(f"{what}: downloading {url} failed ({err})") from None
    if sha256:
        verify_sha256(path, sha256, what=what)
    return path
