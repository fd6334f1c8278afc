"""torch.distributed for the jobs (fine-tuning, extraction): set-up from torchrun, reductions, shutdown.

The same command runs alone or under ``torchrun``: torchrun sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, and :func:`distributed_session` joins that
group (gloo on CPU, nccl on CUDA); without them it is a world of one and nothing is initialised.
The group is always destroyed on the way out: a process that exits with it alive can abort in
the C++ destructors after its results are printed (seen as SIGABRT about once in 40 launches).

Faults: the group waits at most ``timeout`` seconds (default :data:`DEFAULT_TIMEOUT`, not the
backend's 30 minutes) for a process that stopped answering. Each process beats a counter in
torchrun's store once a second from a thread, so when a collective fails (a peer's connection
closed, or the timeout passed) the others tell which rank went silent and stop with
:class:`RankLostError` naming it, instead of a backend error about a socket. Under
``torchrun --max-restarts K`` a restarted group sees :func:`restarted_by_torchrun`, and the jobs
resume from what the killed attempt completed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = [
    "DEFAULT_TIMEOUT",
    "DistributedContext",
    "RankLostError",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "distributed_session",
    "main_process_progress",
    "restarted_by_torchrun",
    "wrap_for_training",
]


_CPU = torch.device("cpu")
# Seconds a process waits in a collective (or at start-up) for the others: long enough for a rank
# writing a checkpoint or an index, short enough that a lost machine does not hold the rest for the
# backend's default half hour.
DEFAULT_TIMEOUT = 300.0
# The liveness counters: beaten every interval; a rank whose count stands still over the wait is gone.
_HEARTBEAT_INTERVAL = 1.0
_HEARTBEAT_WAIT = 2.5


class RankLostError(RuntimeError):
    """A process of the group died or stopped answering; the message names its rank and what to do."""


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


class _Heartbeat:
    """A daemon thread adding 1 to this rank's counter in the store every second, and the check of the others'."""

    def __init__(self, context: DistributedContext) -> None:
        self.rank, self.world_size = context.rank, context.world_size
        # One key space per group incarnation (a restarted group starts from fresh counters).
        token = torch.tensor([secrets.randbits(62) if context.is_main else 0], dtype=torch.int64)
        token = token.to(context.device) if context.backend == "nccl" else token
        dist.broadcast(token, src=0)
        self.prefix = f"backbones/heartbeat/{int(token.item())}"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, args=(self._store(),), daemon=True, name="heartbeat")
        self.thread.start()

    @staticmethod
    def _store() -> dist.TCPStore:
        # Its own connection to the store torchrun serves (the process group's is not shared across threads).
        return dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timedelta(seconds=5)
        )

    def _beat(self, store: dist.TCPStore) -> None:
        while True:
            try:
                store.add(f"{self.prefix}/{self.rank}", 1)
            except Exception:  # the store is gone: silent_ranks says so
                return
            if self.stop.wait(_HEARTBEAT_INTERVAL):
                return

    def silent_ranks(self) -> list[int] | None:
        """The other ranks whose counter stood still for a few beats (``None``: the store itself is unreachable)."""
        try:
            store = self._store()
            keys = [f"{self.prefix}/{rank}" for rank in range(self.world_size)]
            before = [store.add(key, 0) for key in keys]
            time.sleep(_HEARTBEAT_WAIT)
            after = [store.add(key, 0) for key in keys]
        except Exception:
            return None
        return [rank for rank in range(self.world_size) if rank != self.rank and before[rank] == after[rank]]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def _lost_rank_error(heartbeat: _Heartbeat, recovery: str) -> RankLostError | None:
    """The one-line error naming the rank that is gone, when a failed collective was that (else ``None``)."""
    silent = heartbeat.silent_ranks()
    size = heartbeat.world_size
    if silent is None:
        what = "a process of the group is gone, and the rendezvous store with it (its launcher served the store)"
    elif silent:
        names = ", ".join(str(rank) for rank in silent)
        ranks = f"rank {names} of {size} is" if len(silent) == 1 else f"ranks {names} of {size} are"
        what = f"{ranks} gone (killed, out of memory, or its machine lost)"
    else:
        return None
    return RankLostError(f"{what}; this process (rank {heartbeat.rank}) stopped too. {recovery}".strip())


@contextlib.contextmanager
def distributed_session(
    *, device: str | None = None, timeout: float | None = None, recovery: str = ""
) -> Iterator[DistributedContext]:
    """Join torchrun's process group (or run alone), and always leave it cleanly.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (one process only: under torchrun each
            process takes the GPU of its ``LOCAL_RANK``); default CUDA when available. CPU uses
            gloo, CUDA nccl.
        timeout: Seconds a process waits for the others (start-up, every collective) before it
            stops with an error; default :data:`DEFAULT_TIMEOUT`.
        recovery: What to do when a rank is lost (the end of :class:`RankLostError`'s message).

    Yields:
        The :class:`DistributedContext` of this process.

    Raises:
        ValueError: ``device="cuda"`` without a GPU, an unknown device, or a timeout not above 0.
        RankLostError: Another process died or stopped answering (its rank is named).

    Example:
        >>> with distributed_session(timeout=120) as ctx:
        ...     print(ctx.rank, ctx.world_size)
    """
    timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    if not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds above 0, got {timeout}")
    kind, _, index = (device or ("cuda" if torch.cuda.is_available() else "cpu")).partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no GPU; use device 'cpu'")
    if index and _launched_by_torchrun():
        raise ValueError(
            f"device {device!r}: under torchrun each process takes the GPU of its LOCAL_RANK; "
            "use device 'cuda' (and CUDA_VISIBLE_DEVICES to choose the GPUs)"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    torch_device = torch.device("cuda", int(index or local_rank)) if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(torch_device)
    owned = False
    if _launched_by_torchrun() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo", timeout=timedelta(seconds=timeout))
        owned = True
    if dist.is_initialized():
        context = DistributedContext(
            dist.get_rank(), dist.get_world_size(), local_rank, torch_device, dist.get_backend()
        )
    else:
        context = DistributedContext(device=torch_device)
    watched = context.world_size > 1 and "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ
    heartbeat = _Heartbeat(context) if watched else None
    try:
        yield context
    except RuntimeError as err:  # the backends' failures (a closed connection, a timeout) are RuntimeErrors
        lost = _lost_rank_error(heartbeat, recovery) if heartbeat is not None else None
        if lost is None:
            raise
        raise lost from err
    finally:
        if heartbeat is not None:
            heartbeat.close()
        if owned:
            dist.destroy_process_group()


def restarted_by_torchrun(context: DistributedContext) -> bool:
    """Whether torchrun restarted this group after a failure (``TORCHELASTIC_RESTART_COUNT`` > 0 on any process).

    Collective: every process calls it. Under several launchers only the one whose worker failed
    counts a restart (the others restart for the new membership), so the processes agree here.
    """
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    return all_reduce_sum([restarts], context)[0] > 0


def wrap_for_training(model: nn.Module, context: DistributedContext) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel under torchrun (on this process's GPU), else ``model`` itself."""
    if not context.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


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
