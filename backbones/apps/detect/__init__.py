"""Detection on our FPNs with torchvision's detectors: ``python -m backbones detect train | evaluate | predict``.

One file a job: ``config`` (the training options), ``data`` (what ``--data`` names), ``loop``
(the detection head of the fine-tuning loop), ``evaluate`` (COCO's metric), ``output`` (the
card, the evaluations), ``train`` (the whole run) and ``predict`` (boxes on images).

Imported on first use (PEP 562): the command line reads the options from ``config``, which
imports no torch, while it builds its ``--help``.
"""

from typing import Any

from backbones.apps.detect.config import DetectConfig

__all__ = ["DetectConfig", "DetectResult", "detect_evaluate", "detect_predict", "detect_train"]

_LAZY = {
    "DetectResult": "train",
    "detect_train": "train",
    "detect_evaluate": "evaluate",
    "detect_predict": "predict",
}


def __getattr__(name: str) -> Any:
    """Import the jobs' public names on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"backbones.apps.detect.{_LAZY[name]}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value
