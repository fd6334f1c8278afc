"""The ``extract`` and ``probe`` commands: features of a folder of images into shards, and how good they are.

Under torchrun the same command runs on N processes:
``torchrun --nproc_per_node 2 -m backbones extract resnet50 --data photos/ --out features/``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from backbones.apps.cli.models import add_model_argument, add_pretrained_option, pretrained_choice
from backbones.apps.cli.options import add_device_option, add_dtype_option, add_timeout_option, positive_int

__all__ = ["add_commands"]


def _cmd_extract(args: argparse.Namespace) -> int:
    from backbones.apps.cli.options import resolve_device
    from backbones.apps.extract.runner import extract

    resolve_device(args.device)  # a missing GPU is one line now, not after the data is read
    manifest = extract(
        args.model,
        args.data,
        args.out,
        layers=args.layers,
        dtype=args.dtype,
        batch_size=args.batch_size,
        workers=args.workers,
        pretrained=pretrained_choice(args.pretrained),
        shard_size=args.shard_size,
        split=args.split,
        image_size=args.image_size,
        skip_bad_images=args.skip_bad_images,
        overwrite=args.overwrite,
        device=args.device,
        progress=not args.quiet,
        seed=args.seed,
        timeout=args.timeout,
    )
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, one summary line, not one per process
        shapes = ", ".join(f"{n} {tuple(s['shape'])}" for n, s in manifest["layer_shapes"].items())
        skipped = len(manifest["skipped_images"])
        print(
            f"wrote {manifest['images']} images to {args.out} in {manifest['shards']} shards "
            f"({shapes}; {manifest['dtype']}; weights {manifest['weights']})"
            + (f"; skipped {skipped} unreadable images (listed in manifest.json)" if skipped else "")
        )
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from backbones.apps.probe import probe

    result = probe(
        args.features,
        layer=args.layer,
        k=args.k,
        val_fraction=args.val_fraction,
        seed=args.seed,
        logistic=not args.no_logistic,
    )
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    print(
        f"{args.features} [{result.layer}]: {result.train_images} train / {result.val_images} val images, "
        f"{result.classes} classes"
    )
    print(f"k-NN (cosine, k={result.k}) top-1: {result.knn_top1 * 100:.2f}%")
    if result.logistic_top1 is not None:
        print(f"logistic regression top-1:     {result.logistic_top1 * 100:.2f}%")
    return 0


def add_commands(command: Any) -> None:
    """Register ``extract`` and ``probe`` with the CLI's ``command(name, help, handler)`` helper."""
    cmd = command(
        "extract", "features of every image of a folder (or the digits) into safetensors shards", _cmd_extract
    )
    add_model_argument(cmd)
    cmd.add_argument("--data", required=True, help="an image folder (class subfolders become labels) or 'digits'")
    cmd.add_argument("--out", required=True, help="output folder: shards, index.csv, manifest.json")
    cmd.add_argument(
        "--layers",
        default="pooled",
        help="pooled (pre-logits embedding), stage names from feature_info (layer3,layer4; NAME:pooled "
        "averages a map), or fpn for an _fpn model (default: pooled)",
    )
    add_dtype_option(cmd, help="compute dtype of the fast path (default fp32)")
    cmd.add_argument("--batch-size", type=positive_int, default=64, help="images per forward (default 64)")
    cmd.add_argument(
        "--workers",
        type=int,
        help="DataLoader processes decoding images (default: cores per process, at most 4; 0: none)",
    )
    add_pretrained_option(cmd, default_weights=True)
    cmd.add_argument("--shard-size", type=positive_int, default=1024, help="images per shard (default 1024)")
    cmd.add_argument(
        "--split", choices=("all", "train", "val"), default="all", help="which images of DATA (default all)"
    )
    cmd.add_argument("--image-size", type=positive_int, help="input height and width (default: the model's crop size)")
    cmd.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="skip unreadable images (listed in manifest.json) instead of stopping",
    )
    cmd.add_argument("--overwrite", action="store_true", help="replace another extraction's features in --out")
    cmd.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random initialisation with --pretrained none: the same network in every process "
        "(recorded in manifest.json)",
    )
    add_timeout_option(cmd)
    add_device_option(cmd)
    cmd.add_argument("--quiet", action="store_true", help="no progress bar")

    cmd = command(
        "probe", "k-NN and logistic-regression top-1 of extracted embeddings on a train/val split", _cmd_probe
    )
    cmd.add_argument("features", help="a folder written by `backbones extract` (labelled images)")
    cmd.add_argument("--layer", help="stored layer to probe (default: pooled, else the first)")
    cmd.add_argument("--k", type=positive_int, default=20, help="neighbours of the k-NN vote (default 20)")
    cmd.add_argument("--val-fraction", type=float, default=0.2, help="share held out for validation (default 0.2)")
    cmd.add_argument("--seed", type=int, default=0, help="seed of the stratified split (default 0)")
    cmd.add_argument("--no-logistic", action="store_true", help="skip the logistic-regression probe (no scikit-learn)")
    cmd.add_argument("--json", action="store_true", help="print the result as JSON")
