"""Seeded, stratified train/validation splits: the same classes in the same proportions on both sides."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["stratified_split"]


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split sample indices into train and validation, keeping each class's share.

    The validation side gets ``ceil(val_fraction * len(labels))`` samples (scikit-learn's
    ``train_test_split`` count, so the digits give 1437 / 360 at 0.2), shared among the classes
    in proportion to their sizes (largest remainders first). Which samples of a class go where is
    a seeded permutation: the same seed gives the same split on every machine and process.

    Args:
        labels: The class index of every sample.
        val_fraction: The share held out for validation, strictly between 0 and 1.
        seed: Seed of the permutation.

    Returns:
        ``(train_indices, val_indices)``, each sorted.

    Raises:
        ValueError: ``val_fraction`` is not in (0, 1), or it leaves one side empty.

    Example:
        >>> train, val = stratified_split([0, 0, 0, 0, 1, 1, 1, 1, 1, 1], 0.2, seed=0)
        >>> len(train), len(val)
        (8, 2)
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    total = len(labels)
    val_total = math.ceil(val_fraction * total - 1e-9)
    if val_total == 0 or val_total == total:
        raise ValueError(
            f"a validation fraction of {val_fraction} of {total} samples leaves one side empty; "
            f"use more images or another val_fraction"
        )
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(index)
    classes = sorted(by_class)
    exact = {c: val_fraction * len(by_class[c]) for c in classes}
    counts = {c: math.floor(exact[c]) for c in classes}
    # Largest remainder: the classes that lost most to rounding down get the missing samples.
    for c in sorted(classes, key=lambda c: (-(exact[c] - counts[c]), c))[: val_total - sum(counts.values())]:
        counts[c] += 1
    generator = torch.Generator().manual_seed(seed)
    train: list[int] = []
    val: list[int] = []
    for c in classes:
        members = by_class[c]
        order = torch.randperm(len(members), generator=generator).tolist()
        val += [members[i] for i in order[: counts[c]]]
        train += [members[i] for i in order[counts[c] :]]
    return sorted(train), sorted(val)
