"""How the benchmark times: interleaved rounds of every variant, and medians of repeated calls.

Each round runs every variant once, so a slow spell of the machine hits all variants alike; the
figures reported are medians, with min and max beside them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from backbones.apps.benchmark.config import BASELINE, BenchmarkConfig, Measurement
from backbones.apps.benchmark.variants import Runner

__all__ = ["median_seconds", "time_interleaved"]

# A first call slower than this (compilation, weight packing) is noted beside the variant's timings.
_NOTED_FIRST_CALL_SECONDS = 5.0


def median_seconds(call: Callable[[], Any], repeats: int) -> float:
    """The median wall time of ``call()`` over ``repeats`` calls, after one untimed warm-up call.

    Args:
        call: What to time.
        repeats: How many timed calls.

    Returns:
        Seconds.
    """
    call()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _timed(run: Runner, x: torch.Tensor) -> float:
    start = time.perf_counter()
    run(x)
    return time.perf_counter() - start


def time_interleaved(
    workload: str, variants: dict[str, Runner], x: torch.Tensor, config: BenchmarkConfig, log: Callable[[str], None]
) -> list[Measurement]:
    """Warm every variant up (compiling where needed), then time them in interleaved rounds.

    Args:
        workload: The workload's name, as the report shows it.
        variants: The runners to time, by name; the baseline among them. A runner's ``note``
            attribute (the engine it runs on, say) goes into its measurement's note.
        x: The batch every variant runs on.
        config: The time budget per workload and the bounds on the number of rounds.
        log: Where each variant's median and ratio to the baseline are written.

    Returns:
        One measurement per variant.
    """
    measurements = {name: Measurement(workload, name, x.shape[0]) for name in variants}
    with torch.inference_mode():
        for name, run in variants.items():
            first = _timed(run, x)
            run(x)
            notes = [getattr(run, "note", "")]
            if first > _NOTED_FIRST_CALL_SECONDS:
                notes.append(f"first call {first:.1f} s")
            measurements[name].note = "; ".join(n for n in notes if n)
        # One timed pass sizes the number of rounds to the time budget.
        one_round = 0.0
        for name, run in variants.items():
            elapsed = _timed(run, x)
            measurements[name].times.append(elapsed)
            one_round += elapsed
        rounds = int(
            min(config.max_rounds, max(config.min_rounds, config.seconds_per_workload // max(one_round, 1e-9)))
        )
        for _ in range(rounds - 1):
            for name, run in variants.items():
                measurements[name].times.append(_timed(run, x))
    baseline = measurements[BASELINE].median
    for m in measurements.values():
        log(f"  {m.variant:<38} {m.median * 1e3:9.1f} ms  x{baseline / m.median:5.2f}  ({len(m.times)} rounds)")
    return list(measurements.values())
