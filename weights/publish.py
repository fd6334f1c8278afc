"""Turn an upstream checkpoint into a Hub model repo (config.json, model.safetensors, model card) and push it.

The upstream file is the one the manifest names for ``arch.tag`` (a torchvision URL or a timm Hub
file), or a local copy of it given with ``--checkpoint``; a local copy is checked against the
manifest's sha256 first. The weights go through the package's own loading path (layout detection
and conversion to our keys, ``strict=True``), so what is published is exactly what
``create_model(arch.tag, pretrained=True)`` builds, and ``backbones.from_pretrained(repo)`` loads it.

Usage:
    python weights/publish.py resnet50.tv2_in1k --repo someone/resnet50.tv2_in1k
    python weights/publish.py googlenet_v1.tv_in1k --checkpoint googlenet-1378be20.pth --repo me/googlenet
    python weights/publish.py vgg19.tv_in1k --checkpoint vgg19.pth --out staged/   # stage only, no push

The Hub endpoint and token come from huggingface_hub's usual settings (HF_ENDPOINT, HF_TOKEN or
``huggingface-cli login``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch.nn as nn

from backbones.core.registry import split_model_name
from backbones.hub.download import WeightsIntegrityError, file_sha256
from backbones.hub.loading import load_pretrained
from backbones.hub.manifest import get_weight_spec
from backbones.hub.weight_source import WeightSource
from backbones.models.factory import create_model


def build_published_model(name: str, checkpoint: Path | None = None, *, progress: bool = True) -> nn.Module:
    """The model ``name`` (``arch.tag``) with its upstream weights, ready for ``save_pretrained``.

    Args:
        name: A manifest entry, e.g. ``"resnet50.tv2_in1k"``.
        checkpoint: A local copy of the upstream file; ``None`` downloads it as ``pretrained=True`` does.
        progress: Show download progress.

    Raises:
        WeightsIntegrityError: The local copy's sha256 differs from the manifest's.
    """
    arch, tag = split_model_name(name)
    spec = get_weight_spec(arch, tag)
    if checkpoint is None:
        model = create_model(spec.name, pretrained=True, progress=progress)
    else:
        # Checked here rather than by the download path's verifier, which deletes a mismatching file:
        # this is the publisher's own copy.
        digest = file_sha256(checkpoint) if spec.sha256 else ""
        if spec.sha256 and not digest.startswith(spec.sha256.lower()):
            raise WeightsIntegrityError(
                f"{checkpoint} has sha256 {digest}, but the manifest's {spec.name} is {spec.sha256}: not the upstream "
                f"file; download it again from {spec.url or spec.hf_hub_id}"
            )
        # Built from the tag (the manifest's preprocessing, class names and metrics for the card),
        # then filled from the local file through the same conversion a download takes.
        model = create_model(spec.name)
        load_pretrained(model, WeightSource(arch, "file", path=checkpoint))
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    """Build the repo for one ``arch.tag`` and push it (or only stage it with ``--out``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="arch.tag from the manifest, e.g. resnet50.tv2_in1k")
    parser.add_argument("--checkpoint", type=Path, help="a local copy of the upstream file (default: download it)")
    parser.add_argument("--repo", help="the Hub repo to push to, owner/name")
    parser.add_argument("--out", type=Path, help="also write the repo's files to this folder")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    args = parser.parse_args(argv)
    if not args.repo and not args.out:
        parser.error("give --repo to push, --out to stage, or both")
    try:
        model = build_published_model(args.name, args.checkpoint)
        if args.out:
            print(f"staged {args.name} in {model.save_pretrained(args.out)}")
        if args.repo:
            print(f"pushed {args.name} to {args.repo}: {model.push_to_hub(args.repo, private=args.private)}")
    except Exception as err:  # one line for the person publishing, as the CLI does
        print(f"publish: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
