"""The ``detect`` commands: train, evaluate, predict and make-data (torchvision's detectors on our FPNs).

``train`` and ``evaluate`` run data-parallel under torchrun as they run alone:
``torchrun --nproc_per_node 2 -m backbones detect train resnet18_fpn --data digit-scenes --out runs/scenes``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from collections import Counter
from typing import Any

from backbones.apps.cli.options import (
    add_dtype_option,
    add_timeout_option,
    json_object,
    non_negative_int,
    positive_float,
    positive_int,
)
from backbones.apps.detect.config import (
    COCO_METRICS,
    DETECTOR_KINDS,
    DIGIT_SCENES,
    INVALID_BOXES,
    DetectConfig,
    coco_percent,
)

__all__ = ["add_commands"]

_DATA_HELP = (
    f"'{DIGIT_SCENES}' (built in: real handwritten digits pasted at many scales) or a COCO folder holding "
    "train/ and val/, each with images/ and annotations.json (the layout `detect make-data` writes)"
)
# --json alone: print the results.
_PRINT = "-"
# DetectConfig fields the command line does not set by their own flag.
_NOT_FORWARDED = {"model", "data", "out", "progress", "command"}


def _pretrained_backbone(text: str) -> bool | str:
    return True if text.lower() in ("default", "true") else text


def _cmd_train(args: argparse.Namespace) -> int:
    from backbones.apps.detect import detect_train

    options = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(DetectConfig)
        if f.name not in _NOT_FORWARDED and hasattr(args, f.name)
    }
    command = shlex.join(["backbones", *sys.argv[1:]]) if sys.argv[1:3] == ["detect", "train"] else ""
    detect_train(args.model, args.data, args.out, progress=not args.quiet, command=command, **options)
    return 0


def _summary(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {coco_percent(metrics[k])}" for k in COCO_METRICS)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from backbones.apps.detect import detect_evaluate

    metrics = detect_evaluate(
        args.folder,
        args.data,
        split=args.split,
        batch_size=args.batch_size,
        dtype=args.dtype,
        canvas=args.canvas,
        train_scenes=args.train_scenes,
        val_scenes=args.val_scenes,
        invalid_boxes=args.invalid_boxes,
        workers=args.workers,
        device=args.device,
        timeout=args.timeout,
    )
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, one summary, not one per process
        print(f"{args.folder} on {args.data} ({args.split}, {metrics['images']} images): {_summary(metrics)}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from backbones.apps.detect import detect_predict

    printed = args.json == _PRINT
    report = detect_predict(
        args.folder,
        args.images,
        score=args.score,
        draw=args.json is None or args.out is not None,
        out=args.out,
        json_file=None if args.json is None or printed else args.json,
    )
    if printed:
        print(json.dumps(report["results"], indent=1))
        return 0
    counts = Counter(r["file"] for r in report["results"])
    for image, count in counts.items():
        print(f"{image}: {count} detection(s) scoring at least {args.score}")
    for path in report["written"]:
        print(f"wrote {path}")
    return 0


def _cmd_make_data(args: argparse.Namespace) -> int:
    from backbones.apps.cli.options import check_output_folder
    from backbones.apps.detect.data import write_scenes

    out = check_output_folder(args.out)
    sizes = {k: v for k in ("canvas", "train_scenes", "val_scenes") if (v := getattr(args, k)) is not None}
    write_scenes(out, seed=args.seed, **sizes)
    print(f"wrote {out}/train and {out}/val (images/ + annotations.json, COCO format)")
    return 0


def _add_scene_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--canvas", type=positive_int, help="digit scenes: canvas side in pixels (default: 256)")
    cmd.add_argument("--train-scenes", type=positive_int, help="digit scenes: training scenes (default: 200)")
    cmd.add_argument("--val-scenes", type=positive_int, help="digit scenes: validation scenes (default: 50)")


def _add_data_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--data", required=True, help=_DATA_HELP)
    cmd.add_argument(
        "--invalid-boxes",
        choices=INVALID_BOXES,
        default="refuse",
        help="a box outside its image or without area: refuse (an error naming it) or drop it",
    )
    cmd.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader workers per process")
    cmd.add_argument("--device", choices=("cpu", "cuda"), help="where to run (default: cuda when available)")
    add_timeout_option(cmd)


def add_commands(command: Any) -> None:
    """Register ``detect`` and its sub-commands (``command(name, help, handler)`` comes from build_parser)."""
    detect = command("detect", "object detection on our FPNs: train, evaluate (COCO mAP), predict, make-data", None)
    formatter = detect.formatter_class
    jobs = detect.add_subparsers(dest="detect_command", required=True, metavar="JOB")

    def job(name: str, help_text: str, handler: Any) -> argparse.ArgumentParser:
        sub = jobs.add_parser(name, help=help_text, description=help_text, formatter_class=formatter)
        # "command" names the job in one-line errors ("backbones detect train: error: ...") and its flags.
        sub.set_defaults(run=handler, command=f"detect {name}")
        return sub

    cmd = job("train", "train torchvision's detector on an FPN (alone or under torchrun)", _cmd_train)
    cmd.add_argument("model", metavar="MODEL", help="an FPN architecture, e.g. resnet18_fpn or resnet50_fpn")
    _add_data_options(cmd)
    _add_scene_options(cmd)
    cmd.add_argument("--out", required=True, help="output folder (the detector, metrics, curves, checkpoints)")
    cmd.add_argument("--kind", choices=DETECTOR_KINDS, default="fasterrcnn", help="torchvision's detector")
    cmd.add_argument("--epochs", type=positive_int, default=12, help="epochs")
    cmd.add_argument("--batch-size", type=positive_int, default=4, help="images per step per process")
    cmd.add_argument(
        "--image-size",
        type=positive_int,
        help="the detector's min_size, max_size scaled 800:1333 (default: the canvas for digit scenes, else 800)",
    )
    cmd.add_argument("--lr", type=positive_float, default=0.01, help="peak learning rate (warmup, then cosine)")
    cmd.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd", help="sgd (momentum 0.9) or adamw")
    cmd.add_argument("--weight-decay", type=float, default=1e-4, help="on weights only")
    cmd.add_argument(
        "--warmup-epochs",
        type=float,
        help="linear warmup, shorter than --epochs (default: a fifth of the run, at most 1)",
    )
    cmd.add_argument(
        "--clip-grad-norm", type=positive_float, help="clip the gradient norm to this (default: no clipping)"
    )
    add_dtype_option(cmd, allowed=("fp32", "bf16"), help="bf16: autocast the forward pass")
    cmd.add_argument(
        "--pretrained-backbone",
        type=_pretrained_backbone,
        default=False,
        metavar="WEIGHTS",
        help="ImageNet weights for the FPN's body: 'default' or a tag (default: random weights)",
    )
    cmd.add_argument(
        "--trainable-layers",
        type=non_negative_int,
        help="body stages that train with --pretrained-backbone (default: torchvision's 3; all without weights)",
    )
    cmd.add_argument(
        "--detector-options",
        type=json_object,
        help="more options of torchvision's detector class as a JSON object, e.g. "
        "'{\"rpn_post_nms_top_n_test\": 300}' (default: torchvision's)",
    )
    cmd.add_argument(
        "--augment", action=argparse.BooleanOptionalAction, default=True, help="flips and scale jitter on training"
    )
    cmd.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the shuffle")
    cmd.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint in --out")
    cmd.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")

    cmd = job("evaluate", "COCO mAP (pycocotools) of a detector folder; into its metrics.jsonl and card", _cmd_evaluate)
    cmd.add_argument("folder", metavar="DIR", help="a detector folder (what `detect train` writes)")
    _add_data_options(cmd)
    _add_scene_options(cmd)
    cmd.add_argument("--split", choices=("val", "train"), default="val", help="which split to score")
    cmd.add_argument("--batch-size", type=positive_int, default=4, help="images per batch per process")
    add_dtype_option(cmd, allowed=("fp32", "bf16"), help="bf16: autocast the forward pass")

    cmd = job("predict", "draw a detector's boxes on images, or list them as COCO-style JSON", _cmd_predict)
    cmd.add_argument("folder", metavar="DIR", help="a detector folder (what `detect train` writes)")
    cmd.add_argument("images", metavar="IMAGE", nargs="+", help="image files or folders of images")
    cmd.add_argument("--score", type=float, default=0.5, help="keep detections scoring at least this")
    cmd.add_argument(
        "--json",
        nargs="?",
        const=_PRINT,
        metavar="FILE",
        help="COCO-style results (bbox x, y, w, h): printed, or written to FILE; no drawing unless --out is given "
        "(default: a drawing only)",
    )
    cmd.add_argument(
        "--out",
        help="the drawing: a PNG for one image, a folder for several (default: boxes.png / boxes)",
    )

    cmd = job("make-data", "write the built-in digit scenes as COCO JSON + PNGs for any other tool", _cmd_make_data)
    cmd.add_argument("dataset", choices=(DIGIT_SCENES,), help="the data set to write")
    cmd.add_argument("--out", required=True, help="the folder (train/ and val/, each images/ + annotations.json)")
    cmd.add_argument("--seed", type=int, default=0, help="seed of the scenes")
    _add_scene_options(cmd)
