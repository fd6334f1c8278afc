"""The command line: ``python -m backbones <command>`` or the ``backbones`` console script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _cmd_list(args: argparse.Namespace) -> int:
    from . import list_models

    for name in list_models(args.pattern, pretrained=args.pretrained):
        print(name)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out_dir=args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backbones", description="Classic CNN backbones: list, inspect, run.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cmd = commands.add_parser("list", help="list architectures (or pretrained arch.tag names)")
    cmd.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'resnet*'")
    cmd.add_argument("--pretrained", action="store_true", help="list weight names instead of architectures")
    cmd.set_defaults(run=_cmd_list)

    cmd = commands.add_parser("demo", help="the main job: load a backbone through torch.hub and run it")
    cmd.add_argument("--out", default="demo_out", help="folder for the demo's pictures (default: demo_out)")
    cmd.set_defaults(run=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (errors: one line on stderr, status 2)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError, RuntimeError) as err:
        print(f"backbones {args.command}: error: {err}", file=sys.stderr)
        return 2
