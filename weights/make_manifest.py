"""Regenerate backbones/hub/weights.json from torchvision's and timm's own weight metadata.

A maintainer's tool, not part of the package: it imports torchvision and timm (the references)
and writes plain data. Hugging Face Hub files (timm's ``model.safetensors``) are preferred;
torchvision URLs are used where no Hub copy exists. Run: ``.venv/bin/python weights/make_manifest.py``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import timm
import torchvision

OUT = Path(__file__).resolve().parents[1] / "backbones" / "hub" / "weights.json"
IMAGENET = "imagenet-1k"

# timm's own ImageNet results (results/results-imagenet.csv in pytorch-image-models), at the
# test resolution timm evaluates these weights at (288x288, crop 1.0, bicubic).
TIMM_A1_RESULTS = {
    "resnet18": (73.158, 91.026),
    "resnet34": (77.918, 93.766),
    "resnet50": (81.214, 95.102),
    "resnet101": (82.322, 95.632),
    "resnet152": (82.732, 95.720),
}
# timm's result for its copy of torchvision's Inception v3 (an earlier torchvision file).
TIMM_INCEPTION_V3_TV = (77.434, 93.474)

# (our arch, our tag, torchvision builder, torchvision weight name, timm name or None)
TORCHVISION_WEIGHTS = [
    *[
        (a, "tv_in1k", a, "IMAGENET1K_V1", f"{a}.tv_in1k")
        for a in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
    ],
    *[(a, "tv2_in1k", a, "IMAGENET1K_V2", f"{a}.tv2_in1k") for a in ("resnet50", "resnet101", "resnet152")],
    *[
        (a, "tv_in1k", a, "IMAGENET1K_V1", f"{a}.tv_in1k")
        for a in ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
    ],
    ("googlenet_v1", "tv_in1k", "googlenet", "IMAGENET1K_V1", None),
]
DEFAULT_TAGS = {"resnet50": "tv2_in1k", "resnet101": "tv2_in1k", "resnet152": "tv2_in1k"}
TORCHVISION_LICENSE = "bsd-3-clause"


def _sha256_prefix(url: str) -> str | None:
    match = re.search(r"-([0-9a-f]{8,})\.pth$", url)
    return match.group(1) if match else None


def _preprocessing_from_timm(cfg) -> dict:
    size = cfg.input_size[-1]
    return {
        "input_size": list(cfg.input_size),
        "resize_size": math.floor(size / cfg.crop_pct),
        "crop_size": size,
        "interpolation": cfg.interpolation,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
    }


def _torchvision_entry(builder: str, weight_name: str) -> tuple[dict, dict]:
    weights = torchvision.models.get_model_weights(builder)[weight_name]
    kwargs = weights.transforms.keywords
    crop = kwargs.get("crop_size", 224)
    preprocessing = {
        "input_size": [3, crop, crop],
        "resize_size": kwargs.get("resize_size", 256),
        "crop_size": crop,
        "interpolation": "bilinear",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    accuracy = weights.meta["_metrics"]["ImageNet-1K"]
    metrics = {
        "dataset": IMAGENET,
        "top1": accuracy["acc@1"],
        "top5": accuracy["acc@5"],
        "input_size": crop,
        "reported_by": "torchvision",
    }
    return {
        "url": weights.url,
        "num_params": weights.meta["num_params"],
        "preprocessing": preprocessing,
        "metrics": metrics,
        "recipe": weights.meta.get("recipe", ""),
    }, preprocessing


def _timm_hub_entry(cfg, top1: float, top5: float, input_size: int, source: str) -> dict:
    """An entry for weights timm publishes on the Hub in torchvision's key layout."""
    return {
        "hf_hub_id": cfg.hf_hub_id,
        "hf_hub_filename": "model.safetensors",
        "layout": "torchvision",
        "sha256": None,
        "preprocessing": _preprocessing_from_timm(cfg),
        "classes": IMAGENET,
        "metrics": {"dataset": IMAGENET, "top1": top1, "top5": top5, "input_size": input_size, "reported_by": "timm"},
        "license": cfg.license,
        "source": source,
    }


def build_manifest() -> dict:
    models: dict[str, dict] = {}

    def add(arch: str, tag: str, entry: dict) -> None:
        models.setdefault(arch, {"default": DEFAULT_TAGS.get(arch, tag), "weights": {}})["weights"][tag] = entry

    for arch, tag, builder, weight_name, timm_name in TORCHVISION_WEIGHTS:
        info, _ = _torchvision_entry(builder, weight_name)
        entry = {
            "layout": "torchvision",
            "sha256": _sha256_prefix(info["url"]),
            "preprocessing": info["preprocessing"],
            "classes": IMAGENET,
            "metrics": info["metrics"],
            "license": TORCHVISION_LICENSE,
            "num_params": info["num_params"],
            "source": f"torchvision {builder} {weight_name} ({info['recipe']})",
        }
        if timm_name is not None:
            # timm republished these exact weights on the Hub as safetensors; its VGG keys differ.
            cfg = timm.models.get_pretrained_cfg(timm_name)
            entry.update(
                hf_hub_id=cfg.hf_hub_id,
                hf_hub_filename="model.safetensors",
                sha256=None,
                layout="timm" if arch.startswith("vgg") else "torchvision",
            )
            entry["source"] += f"; the Hub copy is {cfg.hf_hub_id}"
        else:
            entry["url"] = info["url"]
        if arch == "googlenet_v1":
            # Trained on (x - 0.5) / 0.5 input; torchvision re-normalises ImageNet input inside forward.
            entry["preprocessing"].update(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
        add(arch, tag, entry)

    for arch, (top1, top5) in TIMM_A1_RESULTS.items():
        cfg = timm.models.get_pretrained_cfg(f"{arch}.a1_in1k")
        source = f"timm {arch}.a1_in1k (ResNet strikes back, recipe A1, {cfg.paper_ids})"
        add(arch, "a1_in1k", _timm_hub_entry(cfg, top1, top5, cfg.test_input_size[-1], source))

    cfg = timm.models.get_pretrained_cfg("inception_v3.tv_in1k")
    source = f"torchvision inception_v3_google ({cfg.url}), republished by timm as {cfg.hf_hub_id}"
    entry = _timm_hub_entry(cfg, *TIMM_INCEPTION_V3_TV, 299, source)
    add("inception_v3", "tv_in1k", {**entry, "num_params": 27_161_264})

    detection = torchvision.models.get_model_weights("fasterrcnn_resnet50_fpn")["COCO_V1"]
    add(
        "resnet50_fpn",
        "tv_coco",
        {
            "url": detection.url,
            "layout": "torchvision_detection",
            "sha256": _sha256_prefix(detection.url),
            "preprocessing": {
                "input_size": [3, 800, 1333],
                "resize_size": 800,
                "crop_size": None,
                "interpolation": "bilinear",
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
            },
            "classes": "coco",
            "metrics": {
                "dataset": "coco-val2017",
                "box_map": detection.meta["_metrics"]["COCO-val2017"]["box_map"],
                "reported_by": "torchvision (the whole Faster R-CNN)",
            },
            "license": TORCHVISION_LICENSE,
            "source": "backbone and FPN of torchvision fasterrcnn_resnet50_fpn COCO_V1 "
            f"({detection.meta['recipe']}); the detector's RPN and box heads are not loaded",
        },
    )
    return {"format": 1, "models": dict(sorted(models.items()))}


if __name__ == "__main__":
    OUT.write_text(json.dumps(build_manifest(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")
