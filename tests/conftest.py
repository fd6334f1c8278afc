"""Shared test set-up: deterministic seeds and one thread per xdist worker."""

from __future__ import annotations

import os

import pytest
import torch

# Two xdist workers on two cores: one intra-op thread each keeps them from fighting.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
