"""What a detection run leaves: the detector folder (save_detector), its model card, and evaluations.

``config.json`` holds, besides the library's ``"detector"`` object, a ``"detection"`` object of
ours: the dataset's category ids by label, how the detector was trained and its validation
figures. ``README.md`` (the card) is rendered from it and from the evaluations in ``metrics.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backbones.apps.detect.config import COCO_METRICS, coco_percent
from backbones.apps.finetune.output import METRICS_NAME, write_metrics
from backbones.core.files import atomic_write_text

__all__ = [
    "CARD_NAME",
    "detection_panels",
    "read_detection_config",
    "read_records",
    "record_evaluation",
    "render_card",
    "write_card",
]

CARD_NAME = "README.md"
# The COCO figures curves.png shows beside the losses.
_CURVE_FIGURES = (("AP", "AP"), ("AP50", "AP50"), ("AP_s", "AP small"), ("AR_100", "AR@100"))


def detection_panels(records: list[dict[str, Any]]) -> tuple[Any, ...]:
    """curves.png's panels for a detection run: the training loss and its parts, and the COCO figures.

    The parts are the detector's own (``train_classifier``, ``train_box_reg``... for Faster R-CNN,
    ``train_classification``, ``train_bbox_regression`` for RetinaNet).
    """
    parts = sorted({k for r in records for k in r if k.startswith("train_") and k != "train_loss"})
    losses = [("train_loss", "total", 1.0)] + [(k, k.removeprefix("train_").replace("_", " "), 1.0) for k in parts]
    figures = [(key, label, 100.0) for key, label in _CURVE_FIGURES]
    return (("training loss", "loss", losses), ("validation (COCO)", "%", figures))


def read_detection_config(folder: Path) -> dict[str, Any]:
    """The whole ``config.json`` of a detector folder (``{}`` when it is not JSON)."""
    try:
        content = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def read_records(folder: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (none when there is no file)."""
    path = folder / METRICS_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _figures(metrics: dict[str, Any]) -> str:
    cells = [coco_percent(metrics.get(k)) for k in COCO_METRICS]
    return f"| {' | '.join(cells)} |"


def render_card(config: dict[str, Any], evaluations: list[dict[str, Any]]) -> str:
    """The model card of a detector folder from its ``config.json`` and its evaluation records."""
    detector = config.get("detector") or {}
    detection = config.get("detection") or {}
    training = detection.get("training") or {}
    name = f"{detector.get('kind', 'detector')} on {detector.get('backbone', '?')}"
    lines = [
        "---",
        "library_name: backbones",
        "license: other",
        "tags:",
        "- object-detection",
        "- backbones",
        f"- {detector.get('backbone', 'fpn')}",
        "---",
        "",
        f"# {name}",
        "",
        f"torchvision's {detector.get('kind')} on the `backbones` FPN `{detector.get('backbone')}`, "
        f"{detector.get('num_classes')} classes with the background, images resized to min_size "
        f"{detector.get('min_size')} / max_size {detector.get('max_size')}.",
        "",
        "## Usage",
        "",
        "```python",
        "import backbones",
        "",
        'model = backbones.detector("<this folder>").eval()',
        "detections = model([image])   # image: float CHW in [0, 1]; boxes xyxy, labels, scores",
        "```",
        "",
        "or `backbones detect predict <this folder> IMAGE --out boxes.png`.",
        "",
    ]
    if training:
        lines += ["## Training", ""]
        lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in training.items() if k != "command"]
        if training.get("command"):
            lines += ["", "Command line:", "", "```", str(training["command"]), "```"]
        lines.append("")
    header = "| data | " + " | ".join(COCO_METRICS) + " |"
    lines += ["## Metrics", "", "COCO bounding-box metrics in percent (pycocotools), n/a: no object of that size.", ""]
    lines += [header, "|" + " --- |" * (len(COCO_METRICS) + 1)]
    final = detection.get("validation")
    if final:
        lines.append(f"| {final.get('dataset', 'validation')} (end of training) " + _figures(final))
    for record in evaluations:
        lines.append(f"| {record['evaluated']} " + _figures(record))
    return "\n".join([*lines, "", "## Licence", "", "Check the licence of the data the detector was trained on.", ""])


def write_card(folder: Path) -> Path:
    """(Re)write ``README.md`` of a detector folder from its config and its ``metrics.jsonl`` evaluations."""
    evaluations = [r for r in read_records(folder) if "evaluated" in r]
    return atomic_write_text(folder / CARD_NAME, render_card(read_detection_config(folder), evaluations))


def record_evaluation(folder: Path, record: dict[str, Any]) -> None:
    """Append an evaluation record to the folder's ``metrics.jsonl`` and show it in its model card."""
    write_metrics(folder, [*read_records(folder), record])
    write_card(folder)
