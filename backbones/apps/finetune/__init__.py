"""Fine-tuning on torch.distributed: ``backbones.finetune`` and ``python -m backbones finetune``.

One file a job: ``config`` (the options), ``model_setup`` (build, head, freezing), ``optim``
(optimizer and schedule), ``loop`` (an epoch, an evaluation), ``checkpoint`` (save, resume),
``output`` (the saved folder, metrics, curves) and ``run`` (the whole run).

The runner is imported on first use (PEP 562): the command line reads the options' names and
choices from ``config``, which imports no torch, while it builds its ``--help``.
"""

from typing import Any

from backbones.apps.finetune.config import FinetuneConfig

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "run_finetune"]

# The names the runner defines; the rest of the package is torch-free until one of them is used.
_RUNNER_NAMES = ("FinetuneResult", "finetune", "run_finetune")


def __getattr__(name: str) -> Any:
    """Import the runner's public names on first use."""
    if name not in _RUNNER_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from backbones.apps.finetune import run

    value = getattr(run, name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value
