"""The speed-up plot beside RESULTS.md: each shown workload's variants as bars over the baseline."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from backbones.apps.benchmark.config import Measurement, ratio, workloads_of

__all__ = ["plot_speedups", "plot_workloads", "variant_colours"]

# The batch the plot shows for a classifier, when the run timed it.
_PLOTTED_BATCH = 8


def plot_workloads(measurements: Sequence[Measurement]) -> list[str]:
    """The workloads the plot shows: each model at batch 8 (or its largest batch when 8 was not run), and the FPNs.

    Args:
        measurements: One run's measurements.

    Returns:
        Workload names, in the order they were timed.
    """
    workloads = workloads_of(measurements)
    shown = [w for w in workloads if "fpn" in w]
    for arch in dict.fromkeys(w.split(" batch ")[0] for w in workloads if " batch " in w and "fpn" not in w):
        batches = {m.batch: m.workload for m in measurements if m.workload.startswith(f"{arch} batch ")}
        shown.append(batches.get(_PLOTTED_BATCH, batches[max(batches)]))
    return sorted(shown, key=workloads.index)


def variant_colours(count: int) -> list[tuple[float, ...]]:
    """``count`` distinct colours: tab20 up to 20 variants, then evenly spaced hues.

    Args:
        count: How many variants the plot shows.

    Returns:
        RGBA tuples.
    """
    import matplotlib

    if count <= 20:
        palette = matplotlib.colormaps["tab20"]
        # Dark shades first, then the light ones: neighbours in the legend stay easy to tell apart.
        order = [*range(0, 20, 2), *range(1, 20, 2)]
        return [palette(order[i]) for i in range(count)]
    hues = matplotlib.colormaps["hsv"]
    return [hues(i / count) for i in range(count)]


def plot_speedups(measurements: Sequence[Measurement], path: Path) -> bool:
    """Write the speed-up plot as a PNG, atomically.

    Args:
        measurements: One run's measurements.
        path: The PNG to write.

    Returns:
        Whether a plot was written: False without matplotlib or without a workload to show.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from backbones.core.files import atomic_path

    workloads = plot_workloads(measurements)
    variants = list(dict.fromkeys(m.variant for m in measurements))
    if not workloads:
        return False
    fig, ax = plt.subplots(figsize=(11, 2 + 0.25 * len(workloads) * len(variants)))
    height = 0.8 / len(variants)
    for i, (variant, colour) in enumerate(zip(variants, variant_colours(len(variants)), strict=True)):
        values = [ratio(measurements, w, variant) or 0 for w in workloads]
        ax.barh([j + i * height for j in range(len(workloads))], values, height=height, label=variant, color=colour)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(workloads))], workloads)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("speed-up over torchvision eager fp32 (median)")
    # Beside the axes, never over the bars.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight", format="png")
    plt.close(fig)
    return True
