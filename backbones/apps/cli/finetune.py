"""The ``finetune`` and ``evaluate`` commands: train a classifier on an image folder or the digits, and score it.

The same ``finetune`` command runs data-parallel under torchrun:
``torchrun --nproc_per_node 2 -m backbones finetune resnet18 --data digits --out runs/digits``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from typing import Any

from backbones.apps.cli.models import add_model_argument, add_pretrained_option, pretrained_choice
from backbones.apps.cli.options import (
    add_device_option,
    add_dtype_option,
    add_timeout_option,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
)
from backbones.apps.finetune.config import OPTIMIZERS, TRAINING_DTYPES, FinetuneConfig

__all__ = ["add_commands"]

# FinetuneConfig fields that are not options of the command line's own (the positional model and
# --data / --out are passed by position; --quiet and the recorded command are set here).
_NOT_FORWARDED = {"model", "data", "out", "progress", "command"}


def _cmd_finetune(args: argparse.Namespace) -> int:
    from backbones.apps.cli.options import resolve_device
    from backbones.apps.finetune import finetune

    resolve_device(args.device)  # a missing GPU is one line now, not after the data is read
    # Every config field the parser defines is passed on: the dataclass is the list of options.
    options: dict[str, Any] = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(FinetuneConfig)
        if field.name not in _NOT_FORWARDED and hasattr(args, field.name)
    }
    options["pretrained"] = pretrained_choice(args.pretrained)
    command = shlex.join(["backbones", *sys.argv[1:]]) if sys.argv[1:2] == ["finetune"] else ""
    finetune(args.model, args.data, args.out, progress=not args.quiet, command=command, **options)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from backbones.apps.cli.options import resolve_device
    from backbones.apps.evaluate import evaluate_model

    resolve_device(args.device)
    report = evaluate_model(
        args.model,
        args.data,
        pretrained=pretrained_choice(args.pretrained),
        split=args.split,
        batch_size=args.batch_size,
        image_size=args.image_size,
        val_fraction=args.val_fraction,
        seed=args.seed,
        workers=args.workers,
        skip_bad_images=args.skip_bad_images,
        picture=args.out,
        device=args.device,
    )
    print(
        f"{args.model} on {report['data']} ({report['split']}, {report['images']} images): "
        f"top-1 {100 * report['top1']:.2f}%, top-5 {100 * report['top5']:.2f}%"
    )
    print(f"wrote {report['picture']} (confusion matrix)")
    return 0


def _add_data_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--data", required=True, help="'digits' (built in) or an image folder, one subfolder per class")
    cmd.add_argument("--val-fraction", type=fraction, default=0.2, help="share held out for validation (default 0.2)")
    cmd.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and shuffle (default 0)")
    cmd.add_argument("--image-size", type=positive_int, help="input size (default: 32 for digits, the crop size)")
    cmd.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader workers per process")
    cmd.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images and list them")


def add_commands(command: Any) -> None:
    """Register ``finetune`` and ``evaluate`` (``command(name, help, handler)`` comes from build_parser)."""
    cmd = command(
        "finetune",
        "fine-tune a classifier on an image folder or the built-in digits (alone or under torchrun)",
        _cmd_finetune,
    )
    add_model_argument(cmd)
    _add_data_options(cmd)
    cmd.add_argument("--out", required=True, help="output folder (save_pretrained files, metrics, curves)")
    cmd.add_argument(
        "--val-data",
        help="a validation folder with the same class subfolders (default: a --val-fraction share of --data)",
    )
    cmd.add_argument("--epochs", type=positive_int, default=5, help="epochs (default 5)")
    cmd.add_argument("--batch-size", type=positive_int, default=64, help="images per step per process (default 64)")
    cmd.add_argument("--lr", type=positive_float, help="peak learning rate (default 0.05 sgd, 0.001 adamw)")
    cmd.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="sgd (nesterov) or adamw")
    cmd.add_argument("--weight-decay", type=float, help="on weights only (default 5e-5 sgd, 0.05 adamw)")
    cmd.add_argument(
        "--warmup-epochs",
        type=float,
        help="linear warmup before the cosine, shorter than --epochs (default: 1, or a fifth of a shorter run)",
    )
    cmd.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    cmd.add_argument(
        "--clip-grad-norm", type=positive_float, help="clip the gradient norm to this (default: no clipping)"
    )
    add_dtype_option(cmd, allowed=TRAINING_DTYPES, help="bf16: autocast the forward pass")
    add_pretrained_option(cmd, default_weights=False)
    cmd.add_argument(
        "--trainable-stages",
        type=non_negative_int,
        help="train only the last K stages and the head (0: head only; default: every stage)",
    )
    cmd.add_argument("--freeze-norm", action="store_true", help="keep BatchNorm statistics and parameters fixed")
    cmd.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        help="training augmentation (default: on for folders, off for the digits)",
    )
    cmd.add_argument("--deterministic", action="store_true", help="deterministic algorithms only")
    cmd.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (CUDA only)")
    add_device_option(cmd)
    cmd.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint in --out")
    add_timeout_option(cmd)
    cmd.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")

    cmd = command("evaluate", "top-1 / top-5 of a model on a dataset, and a confusion-matrix picture", _cmd_evaluate)
    add_model_argument(cmd)
    add_pretrained_option(cmd, default_weights=True)
    _add_data_options(cmd)
    cmd.add_argument("--split", choices=("train", "val", "all"), help="default: val for digits, all for a folder")
    cmd.add_argument("--batch-size", type=positive_int, default=64, help="images per batch (default 64)")
    cmd.add_argument("--out", default="confusion.png", help="the confusion-matrix PNG (default confusion.png)")
    add_device_option(cmd)
