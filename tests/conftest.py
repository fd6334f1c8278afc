"""Shared test set-up: deterministic seeds, one thread per xdist worker, and an offline Hub.

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported, so they are set
here, before any test imports it: the Hub is a loopback stand-in (tests/hub_server.py) on a port
chosen now, and every cache (Hugging Face, torch.hub, ours) lives in a temporary folder. Nothing
in the suite can reach the internet or a user's real caches.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HUB_PORT = _free_port()
_SANDBOX = Path(tempfile.mkdtemp(prefix="backbones-tests-"))
atexit.register(shutil.rmtree, _SANDBOX, ignore_errors=True)  # each process removes its own
os.environ.update(
    HF_ENDPOINT=f"http://127.0.0.1:{HUB_PORT}",
    HF_HOME=str(_SANDBOX / "hf"),
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
    HF_TOKEN="test-token",  # the stand-in accepts any token; uploads need one
    TORCH_HOME=str(_SANDBOX / "torch"),
    BACKBONES_CACHE=str(_SANDBOX / "backbones"),
    NO_PROXY="127.0.0.1,localhost",
)
for _var in ("HF_HUB_OFFLINE", "BACKBONES_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
    os.environ.pop(_var, None)

# Two xdist workers on two cores: one intra-op thread each keeps them from fighting.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def hub_server() -> Iterator:
    """The loopback Hub stand-in at HF_ENDPOINT, for this worker."""
    from .hub_server import HubStandIn

    with HubStandIn(port=HUB_PORT) as server:
        yield server


@pytest.fixture
def forget_registered_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights a test adds with ``register_weights`` are forgotten after it (the shipped manifest stays)."""
    import backbones.hub.manifest

    monkeypatch.setattr(backbones.hub.manifest, "_REGISTERED", {})
    monkeypatch.setattr(backbones.hub.manifest, "_REGISTERED_DEFAULTS", {})


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Empty Hugging Face, torch.hub and backbones caches for one test.

    Returns the environment a subprocess needs to see the same caches.
    """
    import huggingface_hub.constants

    hf_cache, torch_home, ours = tmp_path / "hf-cache", tmp_path / "torch", tmp_path / "backbones"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_cache))
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(torch_home / "hub"))
    monkeypatch.setenv("BACKBONES_CACHE", str(ours))
    yield {"HF_HUB_CACHE": str(hf_cache), "TORCH_HOME": str(torch_home), "BACKBONES_CACHE": str(ours)}
    torch.hub.set_dir(previous)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small blue/red image folders for fine-tuning: 4 training and 2 validation images a class."""
    from .image_folders import make_image_folder

    root = tmp_path_factory.mktemp("images")
    return {
        "train": make_image_folder(root / "train", per_class=4),
        "val": make_image_folder(root / "val", per_class=2, seed=1),
    }
