"""The command line: ``python -m backbones <command>`` or the ``backbones`` console script.

Every command has ``--help`` (each option with its default). Errors are one line on stderr and
exit status 2, not a traceback (set ``BACKBONES_DEBUG=1`` for the traceback). Output piped into
a program that stops reading (``| head``) ends quietly, as with other command-line tools.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from backbones.apps.cli import catalogue, detect, export, extract, finetune, images, weights
from backbones.apps.cli.models import resolve_cli_model
from backbones.apps.cli.options import (
    add_backend_option,
    add_dtype_option,
    check_output_folder,
    parse_size,
    positive_float,
    positive_int,
)
from backbones.core.version import __version__
from backbones.core.vocabulary import DTYPES

__all__ = ["build_parser", "main"]

# Command modules (add_commands(command) registers their sub-commands); they import only argparse
# and the standard library at module level, so `--help` stays fast.
_COMMAND_MODULES: tuple[Any, ...] = (catalogue, images, weights, export, extract, finetune, detect)

# Exit status of a process killed by SIGPIPE in a shell (128 + 13): what `yes | head` reports.
_BROKEN_PIPE_STATUS = 141

# The benchmark's defaults, mirrored so that `bench --help` does not import torch;
# tests/test_cli.py checks they equal BenchmarkConfig's.
BENCH_DEFAULT_OUT = "bench_results"


# Hints the library writes in Python syntax, and how to say them on the command line.
_CLI_HINTS = (
    (re.compile(r"\(backbones\.list_models\(\) lists them all\)"), "(`backbones list` lists them all)"),
    (
        re.compile(
            r"load a saved folder with backbones\.from_pretrained\(.*?\), or a weights file with create_model\(.*?\)"
        ),
        "give a saved folder as the model, or a weights file with --pretrained FILE",
    ),
    # No command but finetune replaces a classifier, and finetune does it by itself.
    (
        re.compile(r"pass reinit_head=True to load everything else and start a freshly initialised classifier"),
        "`backbones finetune` trains a new classifier on everything else",
    ),
)
# Library names a command says in other words (no flag of its own): a resume's "world_size: 2 -> 1".
_CLI_WORDS = {"world_size": "processes (torchrun --nproc_per_node)"}
# A changed setting, as a resume refusal lists them: "batch_size: 64 -> 32".
_CHANGED_OPTION = re.compile(r"\b([a-z][a-z_]*)(?=: [^,()]*? -> )")
# An option named with nothing after it: "pass format= one of onnx, pt2".
_BARE_OPTION = re.compile(r"\b([a-z][a-z_]*)=(?=\s|$)")
# The library names its options as Python does (overwrite=True, layers='fpn'); a command says
# them as its own flags. Only options the running command has are rewritten: a library hint for an
# option the command lacks (reinit_head=True) stays as it is rather than naming a flag that does not exist.
# A number is a value too (lr=1e+09 becomes --lr 1e+09).
_PYTHON_OPTION = re.compile(r"\b([a-z][a-z_]*)=(True|'[^']*'|\"[^\"]*\"|-?\d+(?:\.\d+)?(?:e[+-]?\d+)?\b)")


def cli_syntax(message: str, flags: dict[str, str] | None = None) -> str:
    """``message`` with its Python-syntax hints rewritten as command-line ones.

    Args:
        message: The library's error message.
        flags: The running command's options, by the name the library uses (``{"skip_bad_images":
            "--skip-bad-images"}``): ``NAME=True`` becomes the flag, ``NAME='VALUE'`` the flag and
            its value.
    """
    for pattern, replacement in _CLI_HINTS:
        message = pattern.sub(replacement, message)

    def as_flag(match: re.Match[str]) -> str:
        name, value = match.groups()
        if flags is None or name not in flags:
            return match.group(0)
        if value == "True":
            return flags[name]
        quoted = value[0] in ("'", '"')
        return f"{flags[name]} {value[1:-1] if quoted else value}"

    def named(match: re.Match[str]) -> str:
        name = match.group(1)
        if flags is not None and name in flags:
            return flags[name]
        return _CLI_WORDS.get(name, match.group(0))

    message = _CHANGED_OPTION.sub(named, message)
    message = _BARE_OPTION.sub(named, message)
    return _PYTHON_OPTION.sub(as_flag, message)


def command_flags(parser: argparse.ArgumentParser, command: str) -> dict[str, str]:
    """The options of sub-command ``command``, by destination: ``{"skip_bad_images": "--skip-bad-images"}``.

    A nested job is named with its group: ``"detect train"``.
    """
    sub = parser
    for name in command.split():
        subparsers = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction))
        sub = subparsers.choices[name]
    return {
        action.dest: next(o for o in action.option_strings if o.startswith("--"))
        for action in sub._actions
        if any(o.startswith("--") for o in action.option_strings)
    }


class _ArgumentParser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (exit status 2), like every other error here."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Each option's default, said once: the help's own words, else ``(default: VALUE)`` from argparse.

    The one rule for every command (tests/test_new_user.py checks it on every sub-command's help):
    a help that states its default in words (``default 64``, ``default: the crop size``) is left as
    it is; otherwise an option that takes a value gets its default appended, 0 and 0.0 included; an
    on/off switch (``--dynamic-batch / --no-dynamic-batch``) says which is the default; a plain flag
    is off unless given and says nothing. An option whose default is ``None`` must say in its help
    what happens without it.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if not text or text == argparse.SUPPRESS or not action.option_strings or states_default(text):
            return text
        if isinstance(action, argparse.BooleanOptionalAction):
            if isinstance(action.default, bool):
                return f"{text} (default: {action.option_strings[0 if action.default else 1]})"
            return text
        if action.nargs == 0 or action.default is None or action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


# A help states its default in words: "default 64", "(default: off)", "default: cuda" (a quoted
# 'default', a value of --pretrained, is no statement of one).
_STATES_DEFAULT = re.compile(r"(?<!')\bdefault\b(?!')", re.I)


def states_default(help_text: str) -> bool:
    """Whether an option's help already says its default (so the formatter adds none)."""
    return bool(_STATES_DEFAULT.search(help_text))


# ----------------------------------------------------------------------------- bench and demo


def _load_targets(path: str) -> Callable[[list[Any]], list[str]]:
    """The ``report_sections(measurements)`` of the Python file ``path``: the targets a run is judged against.

    Args:
        path: A Python file such as ``benchmarks/targets.py``.

    Returns:
        Its ``report_sections``, which turns a run's measurements into Markdown lines.

    Raises:
        ValueError: No such file, or it defines no ``report_sections``.
    """
    import importlib.util
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--targets {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"backbones_bench_targets_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    sections = getattr(module, "report_sections", None)
    if not callable(sections):
        raise ValueError(f"--targets {path}: defines no report_sections(measurements)")
    return sections


def _cmd_bench(args: argparse.Namespace) -> int:
    from backbones.apps.benchmark import VARIANTS, BenchmarkConfig, run_benchmarks, write_report

    unknown = [name for name in args.variants or () if name not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(VARIANTS)}")
    # Both before minutes of timing, not after.
    out = check_output_folder(args.out)
    judge = _load_targets(args.targets) if args.targets else None
    defaults = BenchmarkConfig()
    # The benchmark times architectures (random weights shared with the references): a folder, file
    # or Hub repo is timed as the architecture it names.
    models = [resolve_cli_model(args, default_weights=False, reference=m).architecture for m in args.models or ()]
    config = BenchmarkConfig(
        models=models or defaults.models,
        batches=args.batches or defaults.batches,
        compile_batches=defaults.compile_batches if args.compile_batches is None else args.compile_batches,
        fpn_sizes=defaults.fpn_sizes if args.fpn_sizes is None else args.fpn_sizes,
        seconds_per_workload=args.seconds or defaults.seconds_per_workload,
        **({"threads": args.threads} if args.threads else {}),
        extras=not args.no_extras,
        dtypes=args.dtype or defaults.dtypes,
        variants=args.variants,
        backend=args.backend,
    )
    results = run_benchmarks(config)
    sections = judge(results["measurements"]) if judge else ()
    write_report(results, out / "RESULTS.md", out / "speedups.png", sections=sections)
    print(f"wrote {out / 'RESULTS.md'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    check_output_folder(args.out)  # before torch is even imported
    from backbones.apps.demo import run_demo

    run_demo(out_dir=args.out)
    return 0


def _add_bench_and_demo(command: Any) -> None:
    cmd = command("bench", "time our models against torchvision and timm; write RESULTS.md", _cmd_bench)
    cmd.add_argument(
        "--models",
        nargs="+",
        metavar="MODEL",
        help="models to time, each as every command takes it (a folder, file or Hub repo is timed as its "
        "architecture; default: the benchmark's set)",
    )
    cmd.add_argument("--batches", nargs="+", type=positive_int, help="batch sizes (default: 1 8 32)")
    cmd.add_argument(
        "--compile-batches", nargs="*", type=positive_int, help="batches with torch.compile variants (default: 8)"
    )
    cmd.add_argument("--fpn-sizes", nargs="*", type=parse_size, help="FPN input sizes HxW (default: the benchmark's)")
    cmd.add_argument("--seconds", type=positive_float, help="time budget per workload in seconds (default: 40)")
    cmd.add_argument("--threads", type=positive_int, help="intra-op threads (default: every core)")
    cmd.add_argument("--no-extras", action="store_true", help="skip memory, load, import and compile-time figures")
    add_dtype_option(
        cmd,
        nargs="+",
        default=None,
        help=f"variants to time besides torchvision's eager fp32 baseline (default: {' '.join(DTYPES)})",
    )
    cmd.add_argument(
        "--variants",
        nargs="+",
        metavar="NAME",
        help="time only these variants besides the baseline, e.g. 'ours int8' 'torchvision quantized int8' "
        "(default: every variant of the chosen --dtype)",
    )
    add_backend_option(
        cmd,
        help="the engine our optimized and int8 variants run on through optimize(backend=...) "
        "(the compiled ones are torch's); the engines' own rows are timed whatever it is",
    )
    cmd.add_argument(
        "--targets",
        metavar="FILE",
        help="a Python file whose report_sections(measurements) judges the run against its targets "
        "(benchmarks/bench.py passes benchmarks/targets.py; default: no judgement, the figures only)",
    )
    cmd.add_argument(
        "--out",
        default=BENCH_DEFAULT_OUT,
        help="folder for RESULTS.md and the plot (benchmarks/bench.py writes the committed benchmarks/RESULTS.md)",
    )

    cmd = command(
        "demo",
        "the main job: fine-tune resnet18 on the digits, then resnet50_fpn through torch.hub on a sample image",
        _cmd_demo,
    )
    cmd.add_argument("--out", default="demo_out", help="folder for the demo's pictures")


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one sub-command per job); building it imports no torch."""
    parser = _ArgumentParser(
        prog="backbones",
        description="Classic CNN backbones: list, inspect, run, convert and publish them.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"backbones {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, handler: Any) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter)
        sub.set_defaults(run=handler)
        return sub

    for module in _COMMAND_MODULES:
        module.add_commands(command)
    _add_bench_and_demo(command)
    return parser


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub-)command that ``args`` ran: ``backbones detect train``'s, not ``backbones``'."""
    while True:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subparsers[0].dest, None) if subparsers else None
        if chosen is None:
            return parser
        parser = subparsers[0].choices[chosen]


def _one_line_warnings(command: str, flags: dict[str, str]) -> None:
    """Warnings as the errors are: one line naming the command, in its own words, no source line.

    torch's notices of its own deprecations (``torch.jit.script is deprecated``) speak to this
    package's code, not to what the user typed, and are left out.
    """

    def show(message: Any, category: type[Warning], *_: Any, **__: Any) -> None:
        lines = str(message).strip().splitlines()
        text = cli_syntax(lines[0] if lines else category.__name__, flags)
        sys.stderr.write(f"backbones {command}: warning: {text}\n")

    warnings.showwarning = show
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"torch(\.|$)")


def _quiet_broken_pipe() -> int:
    # The reader is gone: point stdout at /dev/null so the interpreter's final flush stays silent.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return _BROKEN_PIPE_STATUS


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status: 0, or 2 with a one-line error."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse's own message would name `backbones`, not the command that lacks the option
        _command_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        with warnings.catch_warnings():
            if not os.environ.get("BACKBONES_DEBUG"):
                _one_line_warnings(args.command, command_flags(parser, args.command))
            status = args.run(args)
        sys.stdout.flush()  # a closed pipe shows up here rather than at exit
        return status
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # every failure a user can cause ends here as one clear line
        if os.environ.get("BACKBONES_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        flags = command_flags(parser, args.command)
        print(f"backbones {args.command}: error: {cli_syntax(message, flags)}", file=sys.stderr)
        return 2
