"""``predict`` and ``features``: run a model on image files, folders or a saved fine-tuned model.

Only argparse and the shared option types are imported here; the work is imported in the handlers.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backbones.apps.cli.models import add_model_argument, add_pretrained_option, resolve_cli_model
from backbones.apps.cli.options import (
    add_device_option,
    add_dtype_option,
    check_output_file,
    natural_key,
    positive_int,
)

__all__ = ["add_commands"]

PICTURE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def add_commands(command: Any) -> None:
    """Register ``predict`` and ``features`` (see :func:`backbones.apps.cli.main.build_parser`)."""
    cmd = command("predict", "classify images (files or folders) with pretrained or fine-tuned weights", _cmd_predict)
    add_model_argument(cmd)
    cmd.add_argument("images", nargs="+", help="image files, or folders searched recursively for images")
    cmd.add_argument("--top-k", type=positive_int, default=5, help="how many classes to show per image")
    add_pretrained_option(cmd, default_weights=True, aliases=("--weights",))
    output = cmd.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the results as one JSON object")
    output.add_argument("--csv", action="store_true", help="print CSV rows: image,rank,index,class,probability")
    cmd.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass")
    add_dtype_option(
        cmd,
        help="fp32: the model as it is; bf16: backbones.optimize in bfloat16; int8: quantized, calibrated on "
        "the given images (or --calibration)",
    )
    cmd.add_argument(
        "--calibration", help="int8 only: calibrate on this image folder or 'digits' (default: the given images)"
    )
    cmd.add_argument(
        "--skip-bad-images", action="store_true", help="skip unreadable images and list them (on stderr, and in --json)"
    )
    add_device_option(cmd)
    cmd.add_argument("--quiet", action="store_true", help="no download progress bar")

    cmd = command("features", "save a picture of what the network saw and every feature / FPN level", _cmd_features)
    add_model_argument(cmd)
    cmd.add_argument("image", help="an image file")
    cmd.add_argument("--out", default="features.png", help="the picture to write: .png, .jpg or .jpeg")
    add_pretrained_option(cmd, default_weights=False, aliases=("--weights",))
    add_device_option(cmd)
    cmd.add_argument("--quiet", action="store_true", help="no download progress bar")


# ----------------------------------------------------------------------------- inputs


def image_paths(arguments: list[str]) -> list[Path]:
    """The image files the arguments name: files as given, folders walked as the data layer walks them.

    A folder gives every image-named entry at any depth (natural order), links followed but each
    real folder walked once (:func:`backbones.data.folders.walk_image_files`). Nothing is opened
    here: a FIFO, a broken link or a bad image is named (or skipped) by :func:`check_images`.

    Raises:
        FileNotFoundError: An argument does not exist.
        ValueError: A folder holds no images.
    """
    from backbones.data.folders import walk_image_files

    paths: list[Path] = []
    for argument in arguments:
        path = Path(argument).expanduser()
        if path.is_dir():
            found = sorted(walk_image_files(path).files, key=natural_key)
            if not found:
                raise ValueError(f"the folder {path} holds no image files (.jpg, .png, ...)")
            paths += [path / relative for relative in found]
        elif not path.exists() and not path.is_symlink():  # a broken link is an unreadable image, named later
            raise FileNotFoundError(f"no image file at {path}")
        else:
            paths.append(path)
    return paths


def check_images(paths: list[Path], skipped: dict[Path, str] | None = None) -> list[Path]:
    """Read each image's header now (format and size), so a bad file fails before the model is loaded.

    Args:
        paths: The image files.
        skipped: Where to note each unreadable file (path -> reason) instead of raising: ``--skip-bad-images``.

    Returns:
        The readable files, in order.

    Raises:
        ValueError: Without ``skipped``: a file is not a regular file (a FIFO is never opened), cannot be
            opened, is not an image Pillow recognises, or has more pixels than the decoding limit.
    """
    from backbones.data.images import SKIP_HINT, BadImageError, check_image

    readable = []
    for path in paths:
        try:
            check_image(path, fix_hint=SKIP_HINT)
        except BadImageError as err:
            if skipped is None:
                raise
            skipped[path] = str(err)
            continue
        readable.append(path)
    return readable


def load_model(args: argparse.Namespace, *, default_weights: bool) -> tuple[Any, str]:
    """The model the command line names (``MODEL`` and ``--pretrained``), and in words which weights it carries."""
    source = resolve_cli_model(args, default_weights=default_weights)
    return source.build(progress=not args.quiet), source.describe_weights()


def _batches(
    paths: list[Path], transform: Any, size: int, skipped: dict[Path, str] | None = None
) -> Iterator[tuple[list[Path], Any]]:
    """Batches of decoded, transformed images; one whose pixels do not decode (its header did) is noted
    in ``skipped`` and left out, or raised without it."""
    import torch

    from backbones.apps.visualize import load_image

    for start in range(0, len(paths), size):
        chunk, images = [], []
        for path in paths[start : start + size]:
            if skipped is not None and path in skipped:
                continue
            try:
                images.append(transform(load_image(path)))
            except ValueError as err:  # a BadImageError naming the file
                if skipped is None:
                    raise
                skipped[path] = str(err)
                continue
            chunk.append(path)
        if chunk:
            yield chunk, torch.stack(images)


# ----------------------------------------------------------------------------- predict


def _refuse_non_classifiers(source: Any, name: str) -> None:
    """Before any weights are fetched: predict needs class logits."""
    if source.is_classifier:
        return
    arch = source.architecture
    if source.entry.kind == "fpn":
        raise ValueError(
            f"{arch} is a feature pyramid (a detection backbone) and does not classify; "
            f"see its levels with `backbones features {name} IMAGE`"
        )
    raise ValueError(
        f"{arch} has no classifier (num_classes=0 or features_only); see its features with "
        f"`backbones features {name} IMAGE`"
    )


def _fast_model(model: Any, dtype: str, calibration: Any) -> Any:
    if dtype == "fp32":
        return model
    from backbones.runtime.optimize import optimize

    return optimize(model, dtype=dtype, calibration=calibration)


def _calibration(
    model: Any, args: argparse.Namespace, paths: list[Path], transform: Any, skipped: dict[Path, str] | None
) -> Any:
    if args.dtype != "int8":
        return None
    if args.calibration:
        from backbones.data.calibration import calibration_batches

        return calibration_batches(model, args.calibration)
    # The images being classified, preprocessed as they will be classified.
    return [batch for _, batch in _batches(paths, transform, args.batch_size, skipped)]


def _cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from backbones.apps.cli.options import resolve_device
    from backbones.data.transforms import transforms_for

    if args.calibration and args.dtype != "int8":
        raise ValueError("--calibration applies to --dtype int8 only")
    device = resolve_device(args.device)
    if args.dtype != "fp32" and device.type != "cpu":
        raise ValueError(f"--dtype {args.dtype} is backbones.optimize's CPU path; use --dtype fp32 with --device cuda")
    source = resolve_cli_model(args, default_weights=True)
    _refuse_non_classifiers(source, args.model)
    skipped: dict[Path, str] | None = {} if args.skip_bad_images else None
    paths = check_images(image_paths(args.images), skipped)
    if not paths:
        raise ValueError(f"none of the {len(skipped or ())} images given can be read; check the files")
    model, weights = source.build(progress=not args.quiet).eval(), source.describe_weights()
    transform = transforms_for(model)
    network = _fast_model(model, args.dtype, _calibration(model, args, paths, transform, skipped)).to(device)
    classes = model.pretrained_cfg.get("class_names") or [str(i) for i in range(model.num_classes)]
    results = []
    with torch.inference_mode():
        for chunk, batch in _batches(paths, transform, args.batch_size, skipped):
            probabilities = network(batch.to(device)).float().softmax(dim=1).cpu()
            top = probabilities.topk(min(args.top_k, probabilities.shape[1]), dim=1)
            for path, values, indices in zip(chunk, top.values.tolist(), top.indices.tolist(), strict=True):
                ranked = [
                    {"index": i, "class": classes[i], "probability": round(p, 6)}
                    for p, i in zip(values, indices, strict=True)
                ]
                results.append({"image": str(path), "predictions": ranked})
    _print_predictions(results, weights, args, [str(path) for path in skipped or ()])
    if skipped:  # on stderr, so that --json and --csv output stays what it says
        names = [str(path) for path in skipped]
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        print(f"skipped {len(names)} unreadable images: {', '.join(names[:10])}{more}", file=sys.stderr)
    return 0


def _print_predictions(
    results: list[dict[str, Any]], weights: str, args: argparse.Namespace, skipped: list[str]
) -> None:
    if args.json:
        document = {"model": args.model, "weights": weights, "dtype": args.dtype, "results": results}
        print(json.dumps({**document, "skipped": skipped} if args.skip_bad_images else document, indent=1))
        return
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["image", "rank", "index", "class", "probability"])
        for result in results:
            for rank, p in enumerate(result["predictions"], start=1):
                writer.writerow([result["image"], rank, p["index"], p["class"], p["probability"]])
        return
    print(f"weights: {weights}")
    for result in results:
        print(result["image"])
        for p in result["predictions"]:
            print(f"  {p['probability'] * 100:6.2f}%  {p['class']}")


# ----------------------------------------------------------------------------- features


def _cmd_features(args: argparse.Namespace) -> int:
    out, picture_format = check_output_file(args.out, PICTURE_FORMATS)  # before torch is even imported
    import torch

    from backbones.apps.cli.options import resolve_device
    from backbones.apps.visualize import load_image, network_view, save_feature_picture
    from backbones.data.transforms import transforms_for

    device = resolve_device(args.device)
    image = load_image(args.image)
    model, weights = load_model(args, default_weights=False)
    pyramid = hasattr(model, "out_channels")
    if not pyramid and not hasattr(model, "out_indices"):
        model = model.feature_extractor()
    cfg = model.pretrained_cfg
    # Detection backbones see the whole image (resized, never cropped); classifiers their crop.
    view_cfg = dict(cfg, crop_size=None) if pyramid else cfg
    x = transforms_for(view_cfg)(image)[None]
    model = model.eval().to(device)
    with torch.inference_mode():
        features = {k: v[0].float().cpu() for k, v in model(x.to(device)).items()}
    shown = network_view(x[0], cfg)
    path = save_feature_picture(out, shown, features, model.feature_info.stride(), image_format=picture_format)
    print(f"input as the network saw it: {x.shape[-2]}x{x.shape[-1]} ({'whole image' if pyramid else 'centre crop'})")
    for info, fmap in zip(model.feature_info, features.values(), strict=True):
        print(f"{info.name:<16} {(1, *fmap.shape)!s:<22} stride {info.stride}")
    print(f"wrote {path} (weights: {weights})")
    return 0
