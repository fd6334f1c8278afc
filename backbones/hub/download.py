"""Fetching weight files: the Hugging Face Hub and plain URLs, sha256 verification, caches.

Hub files come through ``huggingface_hub`` (its cache, resumable downloads, ``HF_HUB_OFFLINE``,
``HF_TOKEN``); URL files through ``torch.hub``'s downloader into ``<torch hub dir>/checkpoints``
like ``torch.hub.load_state_dict_from_url``. Every file whose sha256 is known is hashed and
verified at every load (:mod:`backbones.hub.integrity`): against the manifest (a full digest or
torchvision's file-name prefix), or, for Hub files, the Hub's own LFS digest (the name of the
blob in the cache, or, for a cache made without links, the ETag the Hub sent when the file was
first verified, kept beside it as ``<file>.sha256``). A file that fails is removed, so nothing
corrupt stays in a cache. A completed download removes what killed attempts at the same file left.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from backbones.hub.integrity import (
    WeightsError,
    WeightsIntegrityError,
    digest_path,
    file_sha256,
    git_blob_sha1,
    is_git_sha1,
    is_sha256,
    read_digest_beside,
    remove_killed_attempts,
    remove_stale_partials,
    verify_git_blob_sha1,
    verify_sha256,
    write_digest_beside,
)

__all__ = [
    "WeightsError",
    "WeightsIntegrityError",
    "WeightsUnavailableError",
    "cache_dir",
    "fetch_hub_file",
    "fetch_url_file",
    "go_offline_hint",
    "host_reachable",
    "hub_file_cached",
    "is_offline",
    "verify_sha256",
]

_OFFLINE = "offline mode is on (HF_HUB_OFFLINE or BACKBONES_OFFLINE)"
# How long the Hub gets to accept a connection before a load gives up on the network (instead of
# huggingface_hub's ~25 s of retries).
HUB_CONNECT_TIMEOUT_S = 3.0


class WeightsUnavailableError(WeightsError):
    """The file cannot be obtained: offline with nothing cached, no such repo or file, no network."""


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``BACKBONES_OFFLINE``) forbids downloads."""
    flags = (os.environ.get(var, "").upper() for var in ("HF_HUB_OFFLINE", "BACKBONES_OFFLINE"))
    return any(flag in {"1", "ON", "YES", "TRUE"} for flag in flags)


def go_offline_hint() -> str:
    """How to work from the caches alone, in words."""
    return "to work from the caches alone, set HF_HUB_OFFLINE=1"


def cache_dir() -> Path:
    """Where converted weights live: ``$BACKBONES_CACHE`` or ``<torch hub dir>/backbones`` (``TORCH_HOME`` moves it).

    Raises:
        WeightsUnavailableError: The path exists and is not a folder.
    """
    explicit = os.environ.get("BACKBONES_CACHE")
    if explicit:
        path = Path(explicit).expanduser()
        source = f"BACKBONES_CACHE={explicit}"
    else:
        import torch.hub

        path = Path(torch.hub.get_dir()) / "backbones"
        source = f"the cache folder {path}"
    if path.exists() and not path.is_dir():
        raise WeightsUnavailableError(
            f"{source} is a file, not a folder; point BACKBONES_CACHE at a folder (or remove the file)"
        )
    return path


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
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    what: str,
    progress: bool = True,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    sha256: str | None = None,
) -> Path:
    """Download ``filename`` of Hub repo ``repo_id`` (or find it in the cache) and verify it.

    Args:
        repo_id: ``"owner/name"``.
        filename: The file in the repo.
        revision: A branch, tag or commit; ``None`` is the default branch.
        what: The weights' name, for messages.
        progress: Show a progress bar.
        token: A Hub token (``None``: ``HF_TOKEN`` or the stored login).
        cache_dir: The Hugging Face cache to use instead of ``HF_HUB_CACHE``.
        local_files_only: Use the cache only (as ``HF_HUB_OFFLINE=1`` does).
        force_download: Download again even when cached.
        sha256: The expected digest when the manifest knows it.

    Raises:
        WeightsUnavailableError: Offline with nothing cached, no such repo/revision/file, or the
            Hub cannot be reached; the message says how to pre-fetch the file or go offline.
        WeightsIntegrityError: The file's sha256 is not the Hub's (or the manifest's).
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.file_download import repo_folder_name

    source = f"{repo_id}/{filename}" + (f"@{revision}" if revision else "")
    prefetch = (
        f"pre-fetch it where the Hub is reachable with `python -m backbones download {what}` "
        f"(or `hf download {repo_id} {filename}`) and copy the Hugging Face cache (HF_HOME) here with its "
        f"links kept (`cp -a`)"
    )
    hub_cache = Path(cache_dir or constants.HF_HUB_CACHE)
    storage = hub_cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    remove_stale_partials(storage / "blobs")
    started = time.time()
    cache_only = local_files_only or is_offline()
    if not cache_only and not host_reachable(constants.ENDPOINT, HUB_CONNECT_TIMEOUT_S):
        host = urlparse(constants.ENDPOINT).netloc
        if force_download or not hub_file_cached(repo_id, filename, revision, cache_dir=cache_dir):
            raise WeightsUnavailableError(
                f"{what}: {source} is not in the local cache and {host} cannot be reached (no network?); "
                f"{prefetch}; {go_offline_hint()}"
            )
        cache_only = True  # the cached copy serves; no retries against a network that is not there
    # Only a call that downloads holds huggingface_hub's lock for the file while it writes, so only
    # then can nobody else be writing an attempt at it.
    downloads = not cache_only and (
        force_download or not hub_file_cached(repo_id, filename, revision, cache_dir=cache_dir)
    )
    try:
        path = Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                force_download=force_download,
                tqdm_class=_progress_class(progress),
                local_files_only=cache_only,
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
        reason = "the Hub cannot be reached"
        if is_offline() or local_files_only:
            reason = _OFFLINE if is_offline() else "local_files_only=True"
        raise WeightsUnavailableError(f"{what}: {source} is not in the local cache and {reason}; {prefetch}") from None
    except EntryNotFoundError:
        raise WeightsUnavailableError(f"{what}: repository {repo_id!r} has no file {filename!r}") from None
    except (HfHubHTTPError, OSError) as err:
        raise WeightsUnavailableError(
            f"{what}: downloading {source} failed ({err}); {prefetch}; {go_offline_hint()}"
        ) from None
    etag = _verify_hub_file(path, storage, repo_id, filename, revision, what, token, cache_only, sha256)
    if downloads and etag:
        remove_killed_attempts(storage / "blobs", etag, started)
    return path


def _verify_hub_file(
    path: Path,
    storage: Path,
    repo_id: str,
    filename: str,
    revision: str | None,
    what: str,
    token: str | bool | None,
    cache_only: bool,
    sha256: str | None,
) -> str | None:
    """Check a Hub file against the Hub's own digest; return the Hub's name for its content (its ETag).

    A cached file is a link to a blob named by that digest: the sha256 of an LFS file, the git
    blob sha1 of a regular one (config.json). A cache made without links (HF_HUB_DISABLE_SYMLINKS,
    or copied with ``cp -rL``) holds plain copies: one is trusted when its content names a blob of
    the same cache, when it matches the record kept beside it, or, online, when it matches the ETag
    the Hub sends for it; that ETag is then recorded beside the file (``<file>.sha256``), so later
    loads, offline ones included, verify against it. The record lies in the snapshot of one commit,
    whose content never changes, so it cannot go out of date.
    """
    blob = Path(os.path.realpath(path))
    if sha256:
        digest = verify_sha256(path, sha256, what=what, remove=[path])
        return blob.name if is_sha256(blob.name) or is_git_sha1(blob.name) else digest
    if is_sha256(blob.name):
        verify_sha256(path, blob.name, what=what, remove=[path])
        return blob.name
    if is_git_sha1(blob.name):
        verify_git_blob_sha1(path, blob.name, what=what, remove=[path])
        return blob.name
    record = read_digest_beside(path)
    if record is not None:
        verify_sha256(path, record["sha256"], what=what, remove=[path, digest_path(path)])
        return record.get("hub_etag") or record["sha256"]
    content_sha256 = file_sha256(blob)
    digests = {content_sha256, git_blob_sha1(blob)}
    for digest in digests:
        if (storage / "blobs" / digest).is_file():
            return digest  # the content is exactly what the Hub named by that digest
    hub_digest = None if cache_only else _hub_etag(repo_id, filename, revision, token)
    if hub_digest is None:
        raise WeightsIntegrityError(
            f"{what}: {path} is a plain copy (not a link to a blob named by its digest, as a cache made with "
            f"HF_HUB_DISABLE_SYMLINKS=1 or copied with `cp -rL` holds) with no digest recorded beside it, so it "
            f"cannot be verified offline. Load it once with the Hub reachable (the Hub's digest is then kept beside "
            f"it as {digest_path(path).name}, for every later load), or copy the Hugging Face cache with its links "
            f"kept (`cp -a`)"
        )
    if hub_digest not in digests:
        _remove_quietly(path)
        raise WeightsIntegrityError(
            f"{what}: {path} does not match the Hub's digest {hub_digest}; the file is truncated, corrupt or not the "
            f"published one. It has been removed from the cache: run again to download it afresh."
        )
    with contextlib.suppress(OSError):  # a read-only cache still loads; it is verified online each time
        write_digest_beside(path, content_sha256, hub_etag=hub_digest)
    return hub_digest


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _hub_etag(repo_id: str, filename: str, revision: str | None, token: str | bool | None) -> str | None:
    """The digest the Hub reports for a file (its ETag: sha256 for LFS, git blob sha1 otherwise)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    metadata = get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision), token=token)
    etag = (metadata.etag or "").removeprefix("W/").strip('"')
    return etag if is_sha256(etag) or is_git_sha1(etag) else None


def hub_file_cached(
    repo_id: str, filename: str, revision: str | None = None, *, cache_dir: str | Path | None = None
) -> bool:
    """Whether the Hugging Face cache already holds ``filename`` of ``repo_id`` (no request made)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision), str)


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds.

    Behind a proxy (``HTTPS_PROXY`` and the like, unless ``NO_PROXY`` covers the host) the proxy
    is what must answer, so the proxy's host is tried instead.
    """
    import socket
    import urllib.request

    parsed = urlparse(url)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(parsed.hostname or ""):
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
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
    remove_stale_partials(path.parent)
    if not path.exists():
        if is_offline():
            raise WeightsUnavailableError(
                f"{what}: {path.name} is not in the cache and {_OFFLINE}; pre-fetch it with "
                f"`python -m backbones download {what}` where {urlparse(url).netloc} is reachable, or put the file "
                f"from {url} at {path}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.time()
        try:
            # Downloads to a temporary <file>.<32 hex>.partial and renames it; only a killed process
            # leaves that behind, which the completed download below makes obsolete.
            torch.hub.download_url_to_file(url, str(path), progress=progress)
        except Exception as err:  # urllib raises many kinds; all mean the same to the user
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise WeightsUnavailableError(
                f"{what}: downloading {url} failed ({err}); download it where {urlparse(url).netloc} is "
                f"reachable and put it at {path}"
            ) from None
        remove_killed_attempts(path.parent, path.name, started)
    if sha256:
        verify_sha256(path, sha256, what=what)
    return path
