"""The Hub stand-in works with the real ``huggingface_hub`` client and ``torch.hub``, without the internet.

``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_OFFLINE`` when it is imported, so the client
runs in a subprocess while the server runs in this process.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .hub_server import HubStandIn, git_blob_sha1

REPO = "acme/tiny-net"


@pytest.fixture
def hub() -> Iterator[HubStandIn]:
    with HubStandIn() as server:
        yield server


def run_client(hub: HubStandIn, hf_home: Path, code: str, *, offline: bool = False) -> Any:
    """Run ``code`` in a fresh interpreter pointed at ``hub``; returns the JSON it prints on its last line."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "HUGGING")) and "proxy" not in key.lower()
    }
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_PROXY="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"client failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_code(*names: str) -> str:
    """Client code: ``hf_hub_download`` each of ``names`` from ``REPO``; prints ``{name: {path, sha256}}``."""
    return f"""
        import hashlib, json
        from huggingface_hub import hf_hub_download
        out = {{}}
        for name in {list(names)!r}:
            path = hf_hub_download({REPO!r}, name)
            out[name] = {{"path": path, "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest()}}
        print(json.dumps(out))
    """


def test_download_then_offline_cache_hit(hub: HubStandIn, tmp_path: Path) -> None:
    files = {"config.json": b'{"depth": 18}', "weights/model.bin": os.urandom(300_000)}
    commit = hub.publish(REPO, files)

    online = run_client(hub, tmp_path, download_code(*files))
    for name, content in files.items():
        assert online[name]["sha256"] == sha256(content)
        assert f"/snapshots/{commit}/" in online[name]["path"]
    assert ("HEAD", f"/{REPO}/resolve/main/config.json") in hub.requests
    assert ("GET", f"/{REPO}/resolve/main/weights/model.bin") in hub.requests

    hub.clear_requests()
    offline = run_client(hub, tmp_path, download_code(*files), offline=True)
    assert offline == online
    assert hub.requests == []


def test_not_found_errors_map_to_hf_exceptions(hub: HubStandIn, tmp_path: Path) -> None:
    hub.publish(REPO, {"config.json": b"{}"})
    code = """
        import json
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
        calls = {
            "repo": lambda: hf_hub_download("acme/missing", "config.json"),
            "file": lambda: hf_hub_download("acme/tiny-net", "nope.bin"),
            "revision": lambda: hf_hub_download("acme/tiny-net", "config.json", revision="v9"),
            "info": lambda: HfApi().model_info("acme/missing"),
        }
        out = {}
        for name, call in calls.items():
            try:
                call()
                out[name] = None
            except Exception as error:
                out[name] = [type(error).__name__, isinstance(error, EntryNotFoundError)]
        print(json.dumps(out))
    """
    assert run_client(hub, tmp_path, code) == {
        "repo": ["RepositoryNotFoundError", False],
        "file": ["RemoteEntryNotFoundError", True],
        "revision": ["RevisionNotFoundError", False],
        "info": ["RepositoryNotFoundError", False],
    }
    assert len(hub.requests) == 4  # 404s are logged too


def test_create_repo_and_upload_folder_round_trip(hub: HubStandIn, tmp_path: Path) -> None:
    folder = tmp_path / "export"
    (folder / "sub").mkdir(parents=True)
    config = b'{"arch": "resnet18"}'
    weights = os.urandom(2 * 1024 * 1024)
    (folder / "config.json").write_bytes(config)
    (folder / "sub" / "model.safetensors").write_bytes(weights)
    code = f"""
        import hashlib, json
        from huggingface_hub import HfApi, hf_hub_download
        api = HfApi(token="dummy")
        api.create_repo("acme/uploaded", exist_ok=True)
        api.create_repo("acme/uploaded", exist_ok=True)  # second call: 409 from the server, tolerated
        info = api.upload_folder(repo_id="acme/uploaded", folder_path={str(folder)!r})
        again = api.upload_folder(repo_id="acme/uploaded", folder_path={str(folder)!r})  # unchanged: no commit
        out = {{"oid": info.oid, "again": again.oid}}
        for name in ["config.json", "sub/model.safetensors"]:
            out[name] = hashlib.sha256(open(hf_hub_download("acme/uploaded", name), "rb").read()).hexdigest()
        print(json.dumps(out))
    """
    out = run_client(hub, tmp_path / "home", code)

    assert hub.files("acme/uploaded") == {"config.json": config, "sub/model.safetensors": weights}
    assert out["config.json"] == sha256(config)
    assert out["sub/model.safetensors"] == sha256(weights)
    assert out["oid"] == out["again"]
    commits = [path for method, path in hub.requests if path.startswith("/api/models/acme/uploaded/commit/")]
    assert commits == ["/api/models/acme/uploaded/commit/main"]  # one commit, nothing through LFS or Xet
    assert not any("lfs" in path or "xet" in path for _, path in hub.requests)


def test_upload_file_then_snapshot_download(hub: HubStandIn, tmp_path: Path) -> None:
    hub.publish(REPO, {"config.json": b"{}"})
    code = """
        import json, os
        from huggingface_hub import HfApi, snapshot_download
        HfApi(token="dummy").upload_file(path_or_fileobj=b"abc", path_in_repo="notes/a.txt", repo_id="acme/tiny-net")
        root = snapshot_download("acme/tiny-net")
        print(json.dumps(sorted(
            os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/") for d, _, fs in os.walk(root) for f in fs
        )))
    """
    assert run_client(hub, tmp_path, code) == ["config.json", "notes/a.txt"]
    assert hub.files(REPO)["notes/a.txt"] == b"abc"


def test_torch_hub_download_url_to_file(hub: HubStandIn, tmp_path: Path) -> None:
    import torch.hub

    content = os.urandom(100_000)
    url = hub.add_static("models/resnet18-0123abcd.pth", content)
    destination = tmp_path / "resnet18.pth"
    torch.hub.download_url_to_file(url, str(destination), hash_prefix=sha256(content)[:8], progress=False)
    assert destination.read_bytes() == content
    assert hub.requests == [("GET", "/static/models/resnet18-0123abcd.pth")]


def test_truncated_static_download(hub: HubStandIn, tmp_path: Path) -> None:
    import torch.hub

    content = os.urandom(50_000)
    url = hub.add_static("cut.pth", content)

    # http.client's read(amt) returns b"" at an early EOF instead of raising IncompleteRead, so torch.hub keeps a
    # truncated file unless it checks a hash.
    hub.truncate_next_download("cut.pth", 1_000)
    torch.hub.download_url_to_file(url, str(tmp_path / "unchecked.pth"), progress=False)
    assert (tmp_path / "unchecked.pth").read_bytes() == content[:1_000]

    hub.truncate_next_download("cut.pth", 1_000)
    with pytest.raises(RuntimeError, match="invalid hash value"):
        torch.hub.download_url_to_file(url, str(tmp_path / "checked.pth"), hash_prefix=sha256(content)[:8])
    assert not (tmp_path / "checked.pth").exists()


MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("size", "cut", "resume_range"),
    [
        # huggingface_hub reads the body in 10 MiB chunks (DOWNLOAD_CHUNK_SIZE): a cut inside the first chunk loses
        # what was buffered, so the retry starts over without a Range header ...
        (500_000, 123_456, None),
        # ... while a cut after a full chunk resumes from that chunk's end with `Range: bytes=N-` (a 206 answer).
        (12 * MIB, 11 * MIB, "bytes=10485760-"),
    ],
    ids=["within-first-chunk", "after-first-chunk"],
)
def test_truncated_hf_download_is_retried(
    hub: HubStandIn, tmp_path: Path, size: int, cut: int, resume_range: str | None
) -> None:
    weights = os.urandom(size)
    hub.publish(REPO, {"weights/model.bin": weights})
    hub.truncate_next_download("model.bin", cut)

    out = run_client(hub, tmp_path, download_code("weights/model.bin"))
    assert out["weights/model.bin"]["sha256"] == sha256(weights)
    gets = [i for i, (method, _) in enumerate(hub.requests) if method == "GET"]
    assert len(gets) == 2  # the cut one, then the retry
    assert hub.request_headers[gets[0]].get("Range") is None
    assert hub.request_headers[gets[1]].get("Range") == resume_range


def test_regular_git_files_are_served_with_their_git_blob_sha1_as_etag(hub: HubStandIn) -> None:
    content = b'{"architecture": "resnet18"}'
    commit = hub.publish(REPO, {"config.json": content})
    url = f"{hub.url}/{REPO}/resolve/{commit}/config.json"
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as response:
        headers = response.headers
    assert headers["ETag"] == f'"{git_blob_sha1(content)}"' and "X-Linked-Etag" not in headers


def test_resolve_headers_and_ranges(hub: HubStandIn) -> None:
    content = b"0123456789"
    commit = hub.publish(REPO, {"dir/file name.bin": content})
    url = f"{hub.url}/{REPO}/resolve/{commit}/dir/file%20name.bin"

    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as response:
        headers = response.headers
    assert headers["X-Repo-Commit"] == commit
    assert headers["ETag"] == headers["X-Linked-Etag"] == f'"{sha256(content)}"'
    assert headers["X-Linked-Size"] == headers["Content-Length"] == "10"
    assert "X-Xet-Hash" not in headers

    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=4-"})) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == "bytes 4-9/10"
        assert response.read() == b"456789"

    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{hub.url}/{REPO}/resolve/main/absent.txt")
    assert error.value.code == 404
    assert error.value.headers["X-Error-Code"] == "EntryNotFound"
    assert error.value.headers["X-Repo-Commit"] == commit
