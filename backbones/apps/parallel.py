"""torch.distributed for the jobs (fine-tuning, extraction): set-up from torchrun, reductions, shutdown.

The same command runs alone or under ``torchrun``: torchrun sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, and :func:`distributed_session` joins that
group (gloo on CPU, nccl on CUDA); without them it is a world of one and nothing is initialised.
The group is always destroyed on the way out: a process that exits with it alive can abort in
the C++ destructors after its results are printed (seen as SIGABRT about once in 40 launches).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = [
    "DistributedContext",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "distributed_session",
    "main_process_progress",
]


_CPU = torch.device("cpu")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank, the world size and its device.

    Attributes:
        rank: This process's rank (0 alone).
        world_size: Number of processes (1 alone).
        local_rank: Rank on this machine (selects the GPU).
        device: ``cuda:<local_rank>`` on CUDA, else ``cpu``.
        backend: ``"gloo"`` or ``"nccl"``, ``None`` outside torch.distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = _CPU
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0: the process that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group is in use (under torchrun, even with one process)."""
        return self.backend is not None


def _launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


@contextlib.contextmanager
def distributed_session(*, device: str | None = None) -> Iterator[DistributedContext]:
    """Join torchrun's process group (or run alone), and always leave it cleanly.

    Args:
        device: ``"cpu"`` or ``"cuda"``; default CUDA when available. CPU uses gloo, CUDA nccl.

    Yields:
        The :class:`DistributedContext` of this process.

    Raises:
        ValueError: ``device="cuda"`` without a GPU, or an unknown device.

    Example:
        >>> with distributed_session() as ctx:
        ...     print(ctx.rank, ctx.world_size)
    """
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no GPU; use device 'cpu'")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    torch_device = torch.device("cuda", local_rank) if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(torch_device)
    owned = False
    if _launched_by_torchrun() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
        owned = True
    if dist.is_initialized():
        context = DistributedContext(
            dist.get_rank(), dist.get_world_size(), local_rank, torch_device, dist.get_backend()
        )
    else:
        context = DistributedContext(device=torch_device)
    try:
        yield context
    finally:
        if owned:
            dist.destroy_process_group()


def all_reduce_sum(values: Sequence[float], context: DistributedContext) -> list[float]:
    """Sum numbers over all processes (float64); alone, return them unchanged.

    Example:
        >>> correct, seen = all_reduce_sum([correct, seen], ctx)
    """
    if not context.distributed:
        return [float(v) for v in values]
    device = context.device if context.backend == "nccl" else torch.device("cpu")
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def barrier(context: DistributedContext) -> None:
    """Wait for every process (a no-op alone)."""
    if context.distributed:
        dist.barrier()


def broadcast_buffers(module: nn.Module, context: DistributedContext, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every process.

    Plain BatchNorm keeps per-process statistics; broadcasting rank 0's before evaluation makes
    every process evaluate the network rank 0 will save.
    """
    if not context.distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)


def main_process_progress(iterable: Iterable[Any], context: DistributedContext, **tqdm_kwargs: Any) -> Iterable[Any]:
    """``tqdm(iterable)`` on rank 0 when tqdm is installed and the output is a terminal or forced; else as is.

    Args:
        iterable: What to iterate.
        context: This process.
        **tqdm_kwargs: Passed to ``tqdm`` (``desc``, ``total``, ``leave``, ``disable``...).
    """
    if not context.is_main:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, **tqdm_kwargs)
