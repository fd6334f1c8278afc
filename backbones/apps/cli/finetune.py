"""The ``finetune`` and ``evaluate`` commands: train a classifier on an image folder or the digits, and score it.

The same ``finetune`` command runs data-parallel under torchrun:
``torchrun --nproc_per_node 2 -m backbones finetune resnet18 --data digits --out runs/digits``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from backbones.apps.cli.options import positive_float, positive_int

__all__ = ["add_commands"]

# Kept here (not imported from the runner) so that --help does not import torch.
_OPTIMIZERS = ("sgd", "adamw")
_DTYPES = ("fp32", "bf16")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 (exclusive), got {value}")
    return value


def _cmd_finetune(args: argparse.Namespace) -> int:
    from backbones.apps.finetune import finetune

    options: dict[str, Any] = {
        name: getattr(args, name)
        for name in (
            "epochs",
            "batch_size",
            "lr",
            "optimizer",
            "weight_decay",
            "warmup_epochs",
            "label_smoothing",
            "clip_grad_norm",
            "dtype",
            "pretrained",
            "trainable_stages",
            "freeze_norm",
            "augment",
            "image_size",
            "val_data",
            "val_fraction",
            "seed",
            "deterministic",
            "workers",
            "skip_bad_images",
            "sync_bn",
            "device",
            "resume",
        )
    }
    command = shlex.join(["backbones", *sys.argv[1:]]) if sys.argv[1:2] == ["finetune"] else ""
    finetune(args.model, args.data, args.out, progress=not args.quiet, command=command, **options)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from backbones.apps.evaluate import evaluate_model

    report = evaluate_model(
        args.model,
        args.data,
        split=args.split,
        batch_size=args.batch_size,
        image_size=args.image_size,
        val_fraction=args.val_fraction,
        seed=args.seed,
        workers=args.workers,
        skip_bad_images=args.skip_bad_images,
        picture=args.out,
    )
    print(
        f"{args.model} on {report['data']} ({report['split']}, {report['images']} images): "
        f"top-1 {100 * report['top1']:.2f}%, top-5 {100 * report['top5']:.2f}%"
    )
    print(f"wrote {report['picture']} (confusion matrix)")
    return 0


def _add_data_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--data", required=True, help="'digits' (built in) or an image folder, one subfolder per class")
    cmd.add_argument("--val-fraction", type=_fraction, default=0.2, help="share held out for validation (default 0.2)")
    cmd.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and shuffle (default 0)")
    cmd.add_argument("--image-size", type=positive_int, help="input size (default: 32 for digits, the crop size)")
    cmd.add_argument("--workers", type=_non_negative_int, default=0, help="DataLoader workers per process")
    cmd.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images and list them")


def add_commands(command: Any) -> None:
    """Register ``finetune`` and ``evaluate`` (``command(name, help, handler)`` comes from build_parser)."""
    cmd = command(
        "finetune",
        "fine-tune a classifier on an image folder or the built-in digits (alone or under torchrun)",
        _cmd_finetune,
    )
    cmd.add_argument("model", help="architecture (resnet18, resnet50.tv2_in1k) or a save_pretrained folder")
    _add_data_options(cmd)
    cmd.add_argument("--out", required=True, help="output folder (save_pretrained files, metrics, curves)")
    cmd.add_argument("--val-data", help="a validation folder with the same class subfolders")
    cmd.add_argument("--epochs", type=positive_int, default=5, help="epochs (default 5)")
    cmd.add_argument("--batch-size", type=positive_int, default=64, help="images per step per process (default 64)")
    cmd.add_argument("--lr", type=positive_float, help="peak learning rate (default 0.05 sgd, 0.001 adamw)")
    cmd.add_argument("--optimizer", choices=_OPTIMIZERS, default="sgd", help="sgd (nesterov) or adamw")
    cmd.add_argument("--weight-decay", type=float, help="on weights only (default 5e-5 sgd, 0.05 adamw)")
    cmd.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warmup before cosine (default 1)")
    cmd.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    cmd.add_argument("--clip-grad-norm", type=positive_float, help="clip the gradient norm to this")
    cmd.add_argument("--dtype", choices=_DTYPES, default="fp32", help="bf16: autocast the forward pass")
    cmd.add_argument("--pretrained", help="start from these weights (a tag such as tv_in1k, or a file); new head")
    cmd.add_argument(
        "--trainable-stages", type=_non_negative_int, help="train only the last K stages and the head (0: head only)"
    )
    cmd.add_argument("--freeze-norm", action="store_true", help="keep BatchNorm statistics and parameters fixed")
    cmd.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        help="training augmentation (default: on for folders, off for the digits)",
    )
    cmd.add_argument("--deterministic", action="store_true", help="deterministic algorithms only")
    cmd.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (CUDA only)")
    cmd.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    cmd.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint in --out")
    cmd.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")

    cmd = command("evaluate", "top-1 / top-5 of a model on a dataset, and a confusion-matrix picture", _cmd_evaluate)
    cmd.add_argument("model", help="a save_pretrained folder (e.g. from finetune) or an arch.tag name")
    _add_data_options(cmd)
    cmd.add_argument("--split", choices=("train", "val", "all"), help="default: val for digits, all for a folder")
    cmd.add_argument("--batch-size", type=positive_int, default=64, help="images per batch (default 64)")
    cmd.add_argument("--out", default="confusion.png", help="the confusion-matrix PNG (default confusion.png)")
