"""Feeding an extraction: each process's shards cut into batches, decoded in DataLoader workers.

Batches never cross a shard boundary and start at the shard's first image, so a shard's batches
are the same whichever process runs it and however many processes there are: the forward sees
the same inputs in the same groups, and one process and N processes write the same bits.
An unreadable image does not stop a worker: it comes back as an error beside the batch, and the
caller decides (stop with the file's name, or skip it and list it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from backbones.data.images import BadImageError

__all__ = ["Batch", "ShardBatch", "extraction_loader", "shard_batches"]


class ShardBatch(NamedTuple):
    """The file-list positions of one batch, the shard they belong to, and whether it is the shard's last."""

    shard: int
    positions: list[int]
    last: bool


class Batch(NamedTuple):
    """A decoded batch: the readable images, their positions and labels, and the unreadable ones.

    Attributes:
        images: ``[n, C, H, W]``, or ``None`` when no image of the batch could be read.
        positions: File-list position of each image in ``images``.
        labels: Label of each image in ``images``.
        failures: ``(position, error message)`` of each unreadable image.
    """

    images: Tensor | None
    positions: list[int]
    labels: list[int]
    failures: list[tuple[int, str]]


def shard_batches(shards: Sequence[range], numbers: Sequence[int], batch_size: int) -> list[ShardBatch]:
    """The batches of shards ``numbers`` (in that order), each shard cut from its start into ``batch_size`` runs.

    Args:
        shards: Every shard's file-list positions (:func:`~backbones.apps.extract.store.shard_ranges`).
        numbers: The shards this process runs.
        batch_size: Images per batch.

    Returns:
        One :class:`ShardBatch` per batch; the last of each shard has ``last=True``.

    Raises:
        ValueError: ``batch_size`` below 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    batches = []
    for number in numbers:
        span = shards[number]
        starts = range(span.start, span.stop, batch_size)
        for start in starts:
            stop = min(start + batch_size, span.stop)
            batches.append(ShardBatch(number, list(range(start, stop)), stop == span.stop))
    return batches


class _Guarded(Dataset):
    """The data layer's dataset, with an unreadable image returned as its error instead of raised."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, position: int) -> tuple[int, Tensor | None, int, str | None]:
        try:
            image, label = self.dataset[position]
        except BadImageError as err:
            return position, None, -1, str(err)
        return position, image, int(label), None


def _collate(items: list[tuple[int, Tensor | None, int, str | None]]) -> Batch:
    good = [item for item in items if item[1] is not None]
    images = torch.stack([item[1] for item in good]) if good else None  # type: ignore[misc]
    failures = [(position, str(error)) for position, image, _, error in items if image is None]
    return Batch(images, [item[0] for item in good], [item[2] for item in good], failures)


def extraction_loader(dataset: Dataset, batches: Sequence[ShardBatch], workers: int) -> Any:
    """A DataLoader yielding one :class:`Batch` per entry of ``batches``, in order, decoded in ``workers`` processes.

    Raises:
        ValueError: ``workers`` below 0.
    """
    if workers < 0:
        raise ValueError(f"workers must be 0 (decode in this process) or more, got {workers}")
    return DataLoader(
        _Guarded(dataset),
        batch_sampler=[b.positions for b in batches],
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=torch.cuda.is_available(),
    )
