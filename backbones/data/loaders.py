"""DataLoaders that shard across torch.distributed processes and replay exactly on resume.

Training shuffles with a ``DistributedSampler`` in every case (one process is a world of one),
so ``set_loader_epoch`` gives every epoch its own seeded order and augmentation seeds, and a
resumed run sees the batches an uninterrupted run would have seen. Evaluation gives each
process a strided share with no padding, so every sample is counted once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

__all__ = ["ShardSampler", "make_loader", "process_rank_and_world", "set_loader_epoch"]


def process_rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the torch.distributed group, or ``(0, 1)`` outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: each process's share, none repeated, none padded."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    training: bool,
    seed: int = 0,
    workers: int = 0,
    drop_last: bool | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """A DataLoader for this process: shuffled and sharded for training, sharded in order for evaluation.

    Args:
        dataset: A dataset from :func:`backbones.data.datasets.open_dataset` (any sized Dataset works).
        batch_size: Images per batch in this process (the global batch is this times the world size).
        training: Shuffle (seeded, per epoch: call :func:`set_loader_epoch`) and drop the last
            incomplete batch; otherwise keep the order and every sample.
        seed: Seed of the shuffle and of the workers' random augmentation.
        workers: DataLoader worker processes (images are decoded there); 0 decodes in this process.
        drop_last: Override the default (``training``).
        collate_fn: How samples make a batch (default: stacked; detection's targets are lists).

    Returns:
        The DataLoader.

    Raises:
        ValueError: ``batch_size`` is not positive or, when training, larger than this process's
            share of the dataset (no complete batch).

    Example:
        >>> loader = make_loader(open_dataset("digits", "train", model=model), 64, training=True)
        >>> set_loader_epoch(loader, 0)
    """
    rank, world = process_rank_and_world()
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    share = math.ceil(len(dataset) / world)  # type: ignore[arg-type]
    drop_last = training if drop_last is None else drop_last
    if drop_last and batch_size > share:
        per = f" per process ({world} processes)" if world > 1 else ""
        raise ValueError(
            f"batch size {batch_size}{per} is larger than the {share} training images each process gets "
            f"(dataset of {len(dataset)}); use a batch size of at most {share}"  # type: ignore[arg-type]
        )
    sampler: Sampler[int]
    if training:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    else:
        sampler = ShardSampler(len(dataset), rank, world)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(_epoch_seed(seed, 0, rank))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,  # workers restart each epoch, seeded from the epoch's generator
        collate_fn=collate_fn,
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Seed ``loader`` for ``epoch``: its shuffle order and its workers' augmentation seeds.

    Call it before iterating each epoch; the same (seed, epoch, rank) always gives the same batches.
    """
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
        seed, rank = sampler.seed, sampler.rank
    else:
        seed, rank = 0, process_rank_and_world()[0]
    if loader.generator is not None:
        loader.generator.manual_seed(_epoch_seed(seed, epoch, rank))


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    # Distinct for every (seed, epoch, rank) and stable across runs (no hash randomisation).
    return (seed * 1_000_003 + epoch) * 65_537 + rank
