"""``download``, ``convert`` and ``push``: weights into the caches, checkpoints into our format, folders to the Hub."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from backbones.apps.cli.options import json_object
from backbones.core.references import is_hub_repo_id

__all__ = ["add_commands"]


def add_commands(command: Any) -> None:
    """Register ``download``, ``convert`` and ``push`` (see :func:`backbones.apps.cli.main.build_parser`)."""
    cmd = command("download", "pre-fetch and verify pretrained weights or Hub repos into the caches", _cmd_download)
    cmd.add_argument(
        "names",
        nargs="+",
        help="arch or arch.tag names (resnet50.tv2_in1k), or Hub repos OWNER/NAME saved by save_pretrained",
    )
    cmd.add_argument("--revision", help="Hub repos: a branch, tag or commit (default: main)")
    cmd.add_argument("--quiet", action="store_true", help="no progress bar")

    cmd = command("convert", "convert a torchvision or timm checkpoint into our safetensors", _cmd_convert)
    cmd.add_argument("input", help="a .pth/.pt/.bin/.safetensors checkpoint")
    cmd.add_argument("--arch", required=True, help="our architecture name, e.g. vgg16")
    cmd.add_argument(
        "--layout",
        default="auto",
        choices=["auto", "torchvision", "timm", "torchvision_detection"],
        help="the checkpoint's key layout",
    )
    cmd.add_argument("--out", required=True, help="a .safetensors file, or a folder for save_pretrained")
    cmd.add_argument(
        "--model-kwargs",
        type=json_object,
        help="model options as a JSON object, e.g. '{\"num_classes\": 10}' (default: none)",
    )

    cmd = command("push", "publish a save_pretrained folder to the Hugging Face Hub", _cmd_push)
    cmd.add_argument("folder", help="a folder written by save_pretrained or `backbones convert`")
    cmd.add_argument("repo_id", help="OWNER/NAME on the Hub")
    cmd.add_argument("--private", action="store_true", help="create the repo as private")
    cmd.add_argument("--token", help="a Hub token (default: HF_TOKEN or the stored login)")


def _download_repo(repo_id: str, revision: str | None, progress: bool) -> str:
    from backbones.models.pretrained import from_pretrained

    # Loading is the proof: config.json checked, weights verified and fitted into the architecture.
    model = from_pretrained(repo_id, revision=revision, progress=progress)
    architecture = getattr(model, "model_config", {}).get("architecture", type(model).__name__)
    count = sum(t.numel() for t in model.state_dict().values())
    return f"{repo_id}: {architecture}, {count:,} values, cached and verified"


def _cmd_download(args: argparse.Namespace) -> int:
    import backbones.models  # noqa: F401  (registers every architecture, so an unknown name is named as such)
    from backbones.core.registry import split_model_name
    from backbones.hub.loading import load_spec_state_dict
    from backbones.hub.manifest import get_weight_spec

    for name in args.names:
        if is_hub_repo_id(name):
            print(_download_repo(name, args.revision, progress=not args.quiet))
            continue
        if args.revision:
            raise ValueError(f"--revision applies to Hub repos (OWNER/NAME), not to {name!r}")
        spec = get_weight_spec(*split_model_name(name))
        state = load_spec_state_dict(spec, progress=not args.quiet)
        print(f"{spec.name}: {len(state)} tensors, {sum(t.numel() for t in state.values()):,} values, verified")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from backbones.core.files import check_writable_folder, save_safetensors_atomic
    from backbones.hub.convert import convert_state_dict, detect_layout
    from backbones.hub.loading import load_fitting_state_dict, read_state_dict
    from backbones.models.factory import create_model

    source = Path(args.input)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; give a .safetensors file name or a folder for save_pretrained")
        check_writable_folder(out)  # before the checkpoint is read and converted, as save_pretrained would refuse
    state = read_state_dict(source, str(source))
    layout = detect_layout(state) if args.layout == "auto" else args.layout
    native = convert_state_dict(state, args.arch, source=layout)
    model = create_model(args.arch, **(args.model_kwargs or {}))
    load_fitting_state_dict(model, native, what=str(source))  # proves the conversion is complete
    if out.suffix == ".safetensors":
        save_safetensors_atomic(model.state_dict(), out, metadata={"format": "pt", "architecture": args.arch})
    else:
        model.save_pretrained(out)
    print(f"{source} ({layout} layout) -> {out}: {len(native)} tensors loaded into {args.arch} strictly")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from backbones.models.pretrained import from_pretrained

    model = from_pretrained(args.folder)  # refuse to publish a folder that does not load
    url = model.push_to_hub(args.repo_id, private=args.private, token=args.token)
    print(f"pushed {args.folder} to {args.repo_id}: {url}")
    return 0
