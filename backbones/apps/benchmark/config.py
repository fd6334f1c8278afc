"""What a benchmark run measures, and what one measurement is.

Every ratio the benchmark reports is one variant's median over another's in the same run; the
default denominator is :data:`BASELINE`.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from backbones.core.vocabulary import DTYPES, dtype_name

__all__ = [
    "BASELINE",
    "BenchmarkConfig",
    "Measurement",
    "image_side",
    "measurement_of",
    "ratio",
    "workloads_of",
]

# Every ratio's default denominator: always timed, whatever the run selects.
BASELINE = "torchvision eager fp32"


@dataclass
class Measurement:
    """Timings of one variant on one workload (seconds per batch)."""

    workload: str
    variant: str
    batch: int
    times: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median(self) -> float:
        """The median of :attr:`times`, in seconds per batch."""
        return statistics.median(self.times)

    @property
    def images_per_second(self) -> float:
        """Throughput at the median time."""
        return self.batch / self.median


@dataclass
class BenchmarkConfig:
    """What to measure.

    Attributes:
        models: Classification architectures to time.
        batches: Batch sizes for them.
        compile_batches: Batch sizes at which the torch.compile variants run (each compiles anew).
        fpn_sizes: Input sizes (H, W) for resnet50_fpn at batch 1.
        seconds_per_workload: Target wall time per workload, split into rounds.
        min_rounds, max_rounds: Bounds on the number of interleaved rounds.
        threads: Intra-op threads (default: every core).
        extras: Also measure peak memory, load, import and compile times (several subprocesses).
        dtypes: Which variants to time besides the baseline, in the shared vocabulary
            (:data:`~backbones.core.vocabulary.DTYPES`; any spelling :func:`dtype_name` reads).
        variants: Only these variants (names as in :data:`~backbones.apps.benchmark.variants.VARIANTS`)
            besides the baseline; all by default.
        backend: The engine ``optimize`` runs our optimized and int8 variants on: ``"torch"``
            (its own kernels), or another backend this build's ``optimize`` takes.

    Raises:
        ValueError: A dtype outside the vocabulary, or a backend ``optimize`` does not take.
    """

    models: Sequence[str] = ("resnet50", "vgg19", "googlenet_v1", "inception_v3")
    batches: Sequence[int] = (1, 8, 32)
    compile_batches: Sequence[int] = (8,)
    fpn_sizes: Sequence[tuple[int, int]] = ((800, 1344), (512, 864))
    seconds_per_workload: float = 40.0
    min_rounds: int = 3
    max_rounds: int = 15
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    extras: bool = True
    dtypes: Sequence[str] = DTYPES
    variants: Sequence[str] | None = None
    backend: str = "torch"

    def __post_init__(self) -> None:
        from backbones.apps.benchmark.engines import check_backend

        # Canonical names from here on: the variants' names and the report use them.
        self.dtypes = tuple(dtype_name(d, what="the benchmark's dtypes") for d in self.dtypes)
        self.backend = check_backend(self.backend)


def image_side(arch: str) -> int:
    """The side of the square images a classifier's workloads feed ``arch``: its training size.

    Args:
        arch: A classification architecture.

    Returns:
        299 for inception_v3, 224 for the others.
    """
    return 299 if arch == "inception_v3" else 224


def workloads_of(measurements: Sequence[Measurement]) -> list[str]:
    """The workloads of ``measurements``, each once, in the order they were timed."""
    return list(dict.fromkeys(m.workload for m in measurements))


def measurement_of(measurements: Sequence[Measurement], workload: str, variant: str) -> Measurement | None:
    """The measurement of ``variant`` on ``workload``, or None when the run did not time it."""
    return next((m for m in measurements if m.workload == workload and m.variant == variant), None)


def ratio(measurements: Sequence[Measurement], workload: str, variant: str, over: str = BASELINE) -> float | None:
    """How many times faster ``variant`` ran than ``over`` on ``workload``: their medians' ratio.

    Args:
        measurements: One run's measurements.
        workload: The workload both ran on.
        variant: The variant whose speed-up is wanted.
        over: The variant it is compared with (the baseline by default).

    Returns:
        ``over``'s median over ``variant``'s, or None when either was not timed on ``workload``.
    """
    fast, slow = measurement_of(measurements, workload, variant), measurement_of(measurements, workload, over)
    if fast is None or slow is None:
        return None
    return slow.median / fast.median
