"""The command line: ``python -m backbones <command>`` or the ``backbones`` console script.

Every command has ``--help``. Errors are one line on stderr and exit status 2, not a traceback
(set ``BACKBONES_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backbones.apps.cli import extract

__all__ = ["build_parser", "main"]

# Command modules of their own (add_commands(command) registers their sub-commands); they import
# only argparse at module level, so `--help` stays fast.
_COMMAND_MODULES: tuple[Any, ...] = (extract,)


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape such as 1,3,224,224, got {text!r}") from None
    if len(shape) != 4 or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"expected 4 positive sizes N,C,H,W, got {text!r}")
    return shape


def _meta_model(name: str, **kwargs: Any) -> Any:
    """Build on the meta device: structure, parameter counts and MACs without allocating weights."""
    import torch

    from backbones.models.factory import create_model

    with torch.device("meta"):
        return create_model(name, **kwargs)


# ----------------------------------------------------------------------------- commands


def _cmd_list(args: argparse.Namespace) -> int:
    from backbones.models.factory import list_models

    names = list_models(args.pattern, family=args.family, kind=args.kind, pretrained=args.pretrained)
    if not names:
        raise ValueError(f"nothing matches {args.pattern!r}; `backbones list` shows every name")
    print("\n".join(names))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from backbones.apps.analysis import summary
    from backbones.core.registry import get_model_entry, split_model_name
    from backbones.hub.manifest import get_weight_spec, weight_names

    arch, _ = split_model_name(args.name)
    entry = get_model_entry(arch)
    model = _meta_model(args.name)
    size = tuple(model.pretrained_cfg["input_size"])
    table = summary(model, (1, *size), depth=0, device="meta")
    print(f"{arch}: {type(model).__name__} ({entry.family} family, {entry.kind})")
    print(f"parameters: {table.total_params:,} (trainable {table.trainable_params:,})")
    print(f"multiply-adds at {size[1]}x{size[2]}: {table.total_macs / 1e9:.2f} G")
    print(f"minimum input: {model.min_input_size}x{model.min_input_size}")
    print("stages (name, channels, stride, module):")
    for f in model.feature_info:
        print(f"  {f.name:<16} {f.channels:>5} {f.stride:>4}  {f.module}")
    tags = [n for n in weight_names() if split_model_name(n)[0] == arch]
    print("pretrained weights:" if tags else "pretrained weights: none published")
    for name in tags:
        spec = get_weight_spec(*split_model_name(name))
        metrics = ", ".join(
            f"{k} {v}" for k, v in spec.metrics.items() if k in {"top1", "top5", "box_map", "input_size"}
        )
        where = spec.hf_hub_id or spec.url
        print(f"  {name:<22} {metrics}  [{spec.license}]  {where}")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from backbones.apps.analysis import summary

    model = _meta_model(args.name)
    shape = args.input or (1, *model.pretrained_cfg["input_size"])
    table = summary(model, shape, depth=args.depth, device="meta")
    print(json.dumps(table.as_dicts(), indent=1) if args.json else table)
    return 0


def _load_for_inference(name: str, weights: str | None, progress: bool) -> Any:
    from backbones.models.factory import create_model

    pretrained: bool | str = weights if weights else True
    return create_model(name, pretrained=pretrained, progress=progress).eval()


def _cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from backbones.apps.visualize import load_image
    from backbones.data.transforms import transforms_for

    images = [load_image(path) for path in args.images]
    model = _load_for_inference(args.name, args.weights, progress=not args.quiet)
    transform = transforms_for(model)
    batch = torch.stack([transform(image) for image in images])
    with torch.inference_mode():
        probabilities = model(batch).softmax(dim=1)
    classes = model.pretrained_cfg.get("class_names") or [str(i) for i in range(probabilities.shape[1])]
    print(f"weights: {model.pretrained_cfg.get('weights', args.weights)}")
    for path, probs in zip(args.images, probabilities, strict=True):
        print(path)
        top = probs.topk(min(args.top_k, probs.numel()))
        for p, index in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            print(f"  {p * 100:6.2f}%  {classes[index]}")
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    import torch

    from backbones.apps.visualize import load_image, save_feature_picture
    from backbones.core.registry import get_model_entry
    from backbones.data.transforms import transforms_for
    from backbones.models.factory import create_model

    image = load_image(args.image)
    kind = get_model_entry(args.name).kind
    extra = {} if kind == "fpn" else {"features_only": True}
    pretrained: bool | str = args.weights or False
    model = create_model(args.name, pretrained=pretrained, progress=not args.quiet, **extra).eval()
    x = transforms_for(model)(image)[None]
    with torch.inference_mode():
        features = model(x)
    shown = torch.nn.functional.interpolate(image[None], size=x.shape[-2:], mode="bilinear")[0]
    path = save_feature_picture(
        args.out, shown, {k: v[0] for k, v in features.items()}, [f.stride for f in model.feature_info]
    )
    for info, fmap in zip(model.feature_info, features.values(), strict=True):
        print(f"{info.name:<16} {tuple(fmap.shape)!s:<22} stride {info.stride}")
    print(f"wrote {path} (weights: {'random' if not pretrained else model.pretrained_cfg.get('weights', pretrained)})")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from backbones.core.registry import split_model_name
    from backbones.hub.loading import load_spec_state_dict
    from backbones.hub.manifest import get_weight_spec

    for name in args.names:
        spec = get_weight_spec(*split_model_name(name))
        state = load_spec_state_dict(spec, progress=not args.quiet)
        print(f"{spec.name}: {len(state)} tensors, {sum(t.numel() for t in state.values()):,} values, verified")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from backbones.core.files import save_safetensors_atomic
    from backbones.hub.convert import convert_state_dict, detect_layout
    from backbones.hub.loading import load_fitting_state_dict, read_state_dict
    from backbones.models.factory import create_model

    source = Path(args.input)
    state = read_state_dict(source, str(source))
    layout = detect_layout(state) if args.layout == "auto" else args.layout
    native = convert_state_dict(state, args.arch, source=layout)
    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    model = create_model(args.arch, **kwargs)
    load_fitting_state_dict(model, native, what=str(source))  # proves the conversion is complete
    out = Path(args.out)
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


def _parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 800x1344, got {text!r}") from None
    return height, width


def _cmd_bench(args: argparse.Namespace) -> int:
    from backbones.apps.benchmark import BenchmarkConfig, run_benchmarks, write_report

    config = BenchmarkConfig(
        models=args.models,
        batches=args.batches,
        compile_batches=args.compile_batches,
        fpn_sizes=args.fpn_sizes,
        seconds_per_workload=args.seconds,
        **({"threads": args.threads} if args.threads else {}),
        extras=not args.no_extras,
    )
    results = run_benchmarks(config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_report(results, out / "RESULTS.md", out / "speedups.png")
    print(f"wrote {out / 'RESULTS.md'}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from backbones.models.factory import create_model
    from backbones.runtime.export import export

    model = create_model(args.name, pretrained=args.pretrained, progress=not args.quiet)
    example = None
    if args.input:
        import torch

        example = torch.randn(args.input)
    path = export(
        model,
        args.out,
        args.format,
        dynamic_batch=args.dynamic_batch,
        dynamic_size=args.dynamic_size,
        example_input=example,
        opset=args.opset,
        optimize=args.optimize,
    )
    dynamic = [d for d, on in (("batch", args.dynamic_batch), ("height/width", args.dynamic_size)) if on]
    weights = model.pretrained_cfg.get("weights", args.pretrained) if args.pretrained else "random"
    print(
        f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB; dynamic: {', '.join(dynamic) or 'none'}; "
        f"weights: {weights})"
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from backbones.apps.demo import run_demo

    run_demo(out_dir=args.out)
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one sub-command per job)."""
    parser = argparse.ArgumentParser(
        prog="backbones", description="Classic CNN backbones: list, inspect, run, convert and publish them."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, handler: Any) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(run=handler)
        return sub

    cmd = command("list", "list architectures, or pretrained arch.tag names", _cmd_list)
    cmd.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'resnet*'")
    cmd.add_argument("--pretrained", action="store_true", help="list weight names (arch.tag) instead")
    cmd.add_argument("--family", choices=["resnet", "vgg", "inception"], help="only this family")
    cmd.add_argument("--kind", choices=["classifier", "fpn"], help="only classifiers or only FPN models")

    cmd = command("info", "architecture, stages, parameters, MACs and available weights of a model", _cmd_info)
    cmd.add_argument("name", help="architecture or arch.tag, e.g. resnet50")

    cmd = command("summary", "the layer table: output shapes, parameters, MACs, stride, receptive field", _cmd_summary)
    cmd.add_argument("name", help="architecture, e.g. vgg19")
    cmd.add_argument("--input", type=_parse_shape, help="input shape N,C,H,W (default: the model's input size)")
    cmd.add_argument("--depth", type=int, default=1, help="how deep to list nested layers (default 1)")
    cmd.add_argument("--json", action="store_true", help="print the rows as JSON")

    for name, help_text, handler in (
        ("predict", "classify images with pretrained weights (top-k classes)", _cmd_predict),
        ("features", "save a picture of every feature / FPN level of an image", _cmd_features),
    ):
        cmd = command(name, help_text, handler)
        cmd.add_argument("name", help="architecture or arch.tag, e.g. resnet50.tv2_in1k")
        if name == "predict":
            cmd.add_argument("images", nargs="+", help="image files")
            cmd.add_argument("--top-k", type=int, default=5, help="how many classes to show (default 5)")
        else:
            cmd.add_argument("image", help="an image file")
            cmd.add_argument("--out", default="features.png", help="where to write the PNG (default features.png)")
        cmd.add_argument("--weights", help="a weight tag or file (predict: default weights; features: random)")
        cmd.add_argument("--quiet", action="store_true", help="no download progress bar")

    cmd = command("download", "pre-fetch and verify pretrained weights into the caches", _cmd_download)
    cmd.add_argument("names", nargs="+", help="arch or arch.tag names, e.g. resnet50.tv2_in1k")
    cmd.add_argument("--quiet", action="store_true", help="no progress bar")

    cmd = command("convert", "convert a torchvision or timm checkpoint into our safetensors", _cmd_convert)
    cmd.add_argument("input", help="a .pth/.pt/.bin/.safetensors checkpoint")
    cmd.add_argument("--arch", required=True, help="our architecture name, e.g. vgg16")
    cmd.add_argument("--layout", default="auto", choices=["auto", "torchvision", "timm", "torchvision_detection"])
    cmd.add_argument("--out", required=True, help="a .safetensors file, or a folder for save_pretrained")
    cmd.add_argument("--model-kwargs", help="model options as JSON, e.g. '{\"num_classes\": 10}'")

    cmd = command("push", "publish a save_pretrained folder to the Hugging Face Hub", _cmd_push)
    cmd.add_argument("folder", help="a folder written by save_pretrained or `backbones convert`")
    cmd.add_argument("repo_id", help="owner/name")
    cmd.add_argument("--private", action="store_true", help="create the repo as private")
    cmd.add_argument("--token", help="a Hub token (default: HF_TOKEN or the stored login)")

    from backbones.apps.benchmark import BenchmarkConfig
    from backbones.runtime.export import DEFAULT_OPSET, FORMATS

    bench = BenchmarkConfig()  # the one place the benchmark's defaults are written
    cmd = command("bench", "time our models against torchvision and timm; write RESULTS.md", _cmd_bench)
    cmd.add_argument("--models", nargs="+", default=list(bench.models))
    cmd.add_argument("--batches", nargs="+", type=int, default=list(bench.batches))
    cmd.add_argument(
        "--compile-batches",
        nargs="*",
        type=int,
        default=list(bench.compile_batches),
        help="batches with torch.compile variants",
    )
    cmd.add_argument("--fpn-sizes", nargs="*", type=_parse_size, default=list(bench.fpn_sizes))
    cmd.add_argument(
        "--seconds",
        type=float,
        default=bench.seconds_per_workload,
        help=f"time budget per workload (default {bench.seconds_per_workload:g})",
    )
    cmd.add_argument("--threads", type=int, help="intra-op threads (default: every core)")
    cmd.add_argument("--no-extras", action="store_true", help="skip memory, load, import and compile-time figures")
    cmd.add_argument("--out", default="benchmarks", help="folder for RESULTS.md and the plot (default benchmarks)")

    cmd = command("export", "export a model to ONNX, torch.export (.pt2) or TorchScript", _cmd_export)
    cmd.add_argument("name", help="architecture or arch.tag, e.g. resnet50_fpn")
    cmd.add_argument("--out", required=True, help="the file to write (.onnx, .pt2, .pt)")
    cmd.add_argument("--format", choices=FORMATS, help="default: from the --out suffix")
    cmd.add_argument(
        "--pretrained", nargs="?", const=True, default=False, help="load weights: the default tag, or a TAG / FILE"
    )
    cmd.add_argument(
        "--dynamic-batch", action=argparse.BooleanOptionalAction, default=True, help="let the batch vary (default on)"
    )
    cmd.add_argument("--dynamic-size", action="store_true", help="let height and width vary (ONNX and pt2)")
    cmd.add_argument(
        "--optimize", action="store_true", help="fold BatchNorm into the convolutions; ONNX: run the graph optimizer"
    )
    cmd.add_argument("--input", type=_parse_shape, help="example input shape N,C,H,W (default: 2 images)")
    cmd.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    cmd.add_argument("--quiet", action="store_true", help="no download progress bar")

    # Commands kept in modules of their own: each module has add_commands(command).
    for module in _COMMAND_MODULES:
        module.add_commands(command)

    cmd = command("demo", "the main job: resnet50_fpn through torch.hub on a sample image", _cmd_demo)
    cmd.add_argument("--out", default="demo_out", help="folder for the demo's pictures (default demo_out)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status: 0, or 2 with a one-line error."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # every failure a user can cause ends here as one clear line
        if os.environ.get("BACKBONES_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"backbones {args.command}: error: {message}", file=sys.stderr)
        return 2
