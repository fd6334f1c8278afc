"""``list``, ``info`` and ``summary``: what is registered, and what a model is made of.

Models are built on the meta device: structure, parameter counts and MACs without allocating weights.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from backbones.apps.cli.models import add_model_argument, resolve_cli_model
from backbones.apps.cli.options import natural_key, non_negative_int, parse_shape

__all__ = ["add_commands"]


def add_commands(command: Any) -> None:
    """Register ``list``, ``info`` and ``summary`` (see :func:`backbones.apps.cli.main.build_parser`)."""
    cmd = command("list", "list architectures, or pretrained arch.tag names", _cmd_list)
    cmd.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'resnet*' (default: everything)")
    cmd.add_argument("--pretrained", action="store_true", help="list weight names (arch.tag) instead")
    cmd.add_argument(
        "--family", choices=["resnet", "vgg", "inception"], help="only this family (default: every family)"
    )
    cmd.add_argument(
        "--kind", choices=["classifier", "fpn"], help="only classifiers or only FPN models (default: both)"
    )

    cmd = command("info", "architecture, stages, parameters, MACs and available weights of a model", _cmd_info)
    add_model_argument(cmd)

    cmd = command("summary", "the layer table: output shapes, parameters, MACs, stride, receptive field", _cmd_summary)
    add_model_argument(cmd)
    cmd.add_argument("--input", type=parse_shape, help="input shape N,C,H,W (default: 1 and the model's input size)")
    cmd.add_argument(
        "--depth", type=non_negative_int, default=1, help="how deep to list nested layers (0: top level only)"
    )
    cmd.add_argument("--json", action="store_true", help="print the rows and the totals as one JSON object")


def _cmd_list(args: argparse.Namespace) -> int:
    from backbones.models.factory import list_models

    names = list_models(args.pattern, family=args.family, kind=args.kind, pretrained=args.pretrained)
    if not names:
        wider = f"{args.pattern}*" if args.pattern and not any(c in args.pattern for c in "*?[") else None
        if wider and list_models(wider, family=args.family, kind=args.kind, pretrained=args.pretrained):
            flag = " --pretrained" if args.pretrained else ""
            raise ValueError(
                f"nothing is named {args.pattern!r}; for names starting with it: backbones list '{wider}'{flag}"
            )
        raise ValueError(f"nothing matches {args.pattern!r}; `backbones list` shows every name")
    print("\n".join(sorted(names, key=natural_key)))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from backbones.apps.analysis import summary
    from backbones.core.registry import split_model_name
    from backbones.hub.manifest import get_weight_spec, weight_names

    source = resolve_cli_model(args, default_weights=False)
    entry, arch = source.entry, source.architecture
    model = source.skeleton()
    size = tuple(model.pretrained_cfg["input_size"])
    table = summary(model, (1, *size), depth=0, device="meta")
    print(f"{arch}: {type(model).__name__} ({entry.family} family, {entry.kind})")
    if source.origin != "name":
        print(f"from: {source.reference} ({source.origin}; weights {source.describe_weights()})")
    print(f"parameters: {table.total_params:,} (trainable {table.trainable_params:,})")
    print(f"multiply-adds at {size[1]}x{size[2]}: {table.total_macs / 1e9:.2f} G")
    print(f"minimum input: {model.min_input_size}x{model.min_input_size}")
    print("stages (name, channels, stride, module):")
    for f in model.feature_info:
        print(f"  {f.name:<16} {f.channels:>5} {f.stride:>4}  {f.module}")
    tags = sorted((n for n in weight_names() if split_model_name(n)[0] == arch), key=natural_key)
    print("pretrained weights:" if tags else "pretrained weights: none published")
    default = get_weight_spec(arch).name if tags else None
    for name in tags:
        spec = get_weight_spec(*split_model_name(name))
        metrics = ", ".join(
            f"{k} {v}" for k, v in spec.metrics.items() if k in {"top1", "top5", "box_map", "input_size"}
        )
        where = spec.hf_hub_id or spec.url
        mark = "  (default)" if name == default else ""
        print(f"  {name:<22} {metrics}  [{spec.license}]  {where}{mark}")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from backbones.apps.analysis import summary

    model = resolve_cli_model(args, default_weights=False).skeleton()
    shape = args.input or (1, *model.pretrained_cfg["input_size"])
    table = summary(model, shape, depth=args.depth, device="meta")
    print(json.dumps(_summary_json(table), indent=1) if args.json else table)
    return 0


def _summary_json(table: Any) -> dict[str, Any]:
    """``summary --json``: the rows and the totals the table prints under them."""
    return {
        "model": table.model_name,
        "input_size": list(table.input_size),
        "rows": table.as_dicts(),
        "totals": {
            "params": table.total_params,
            "trainable_params": table.trainable_params,
            "frozen_params": table.frozen_params,
            "not_run": dict(table.not_run),
            "macs": table.total_macs,
            "param_bytes": table.param_bytes,
            "activation_bytes": table.activation_bytes,
        },
    }
