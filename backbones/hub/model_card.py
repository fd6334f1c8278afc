"""The model card (``README.md``) written next to a saved model: usage, preprocessing, metrics, licence."""

from __future__ import annotations

from typing import Any

__all__ = ["render_model_card"]


def _metrics_lines(metrics: dict[str, Any]) -> list[str]:
    if not metrics:
        return ["No evaluation is recorded for these weights."]
    shown = ", ".join(f"{k} {v}" for k, v in metrics.items() if k not in {"dataset", "reported_by"})
    source = metrics.get("reported_by", "the source")
    return [f"- {metrics.get('dataset', 'evaluation')}: {shown} (reported by {source})"]


def _training_lines(training: dict[str, Any]) -> list[str]:
    # Written by `backbones finetune` into pretrained_cfg["training"]: how these weights were made.
    if not training:
        return []
    lines = ["## Training", ""]
    lines += [f"- {key.replace('_', ' ')}: {value}" for key, value in training.items() if key != "command"]
    if training.get("command"):
        lines += ["", "Command line:", "", "```", str(training["command"]), "```"]
    return [*lines, ""]


def render_model_card(config: dict[str, Any]) -> str:
    """Render a model card from a ``config.json`` dictionary (see ``backbones.models.pretrained``)."""
    arch = config["architecture"]
    cfg = config.get("pretrained_cfg") or {}
    license_name = cfg.get("license") or "other"
    kwargs = config.get("model_kwargs") or {}
    options = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "defaults"
    kind = "feature extractor" if config.get("features_only") else "model"
    # A fine-tuned model's card says what its run started from, as the run resolved it (with any new head).
    started_from = (cfg.get("training") or {}).get("started_from")
    weights = started_from or cfg.get("weights") or "weights saved with save_pretrained"
    if cfg.get("head") and not started_from:  # a new classifier: the weights' names and metrics no longer apply
        weights = f"{weights} with a {cfg['head']}"
    lines = [
        "---",
        "library_name: backbones",
        f"license: {license_name}",
        "tags:",
        "- image-classification" if not arch.endswith("_fpn") else "- object-detection",
        "- backbones",
        f"- {arch}",
        "---",
        "",
        f"# {arch}",
        "",
        f"A `{arch}` {kind} ({options}) for the `backbones` library, starting from {weights}.",
        "",
        "## Usage",
        "",
        "```python",
        "import backbones, torch",
        "",
        'model = backbones.from_pretrained("<this repo or folder>").eval()',
        "transform = backbones.transforms_for(model)   # needs torchvision",
        "```",
        "",
        "## Preprocessing",
        "",
        "| input size | resize | crop | interpolation | mean | std |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {cfg.get('input_size')} | {cfg.get('resize_size')} | {cfg.get('crop_size')} | "
        f"{cfg.get('interpolation')} | {cfg.get('mean')} | {cfg.get('std')} |",
        "",
        *_training_lines(cfg.get("training") or {}),
        "## Metrics",
        "",
        *_metrics_lines(cfg.get("metrics") or {}),
        "",
        "## Licence",
        "",
        f"{license_name}. Check the licence of the original weights and of the data they were trained on.",
        "",
    ]
    return "\n".join(lines)
