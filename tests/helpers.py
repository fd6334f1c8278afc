"""Small helpers the tests share: comparisons, inputs and model traversal."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn


def flatten_outputs(output: object) -> list[Tensor]:
    """Every tensor in a model output (a tensor, a tuple/named tuple, or a dict of maps)."""
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for value in output.values() for t in flatten_outputs(value)]
    if isinstance(output, Iterable):
        return [t for value in output for t in flatten_outputs(value)]
    raise TypeError(f"unexpected output type {type(output).__name__}")


def relative_max_diff(actual: object, expected: object) -> float:
    """max |actual - expected| over all outputs, divided by max |expected| (the output scale)."""
    pairs = list(zip(flatten_outputs(actual), flatten_outputs(expected), strict=True))
    for a, e in pairs:
        assert a.shape == e.shape, f"shape {tuple(a.shape)} != reference {tuple(e.shape)}"
    diff = max((a.double() - e.double()).abs().max().item() for a, e in pairs)
    scale = max(e.double().abs().max().item() for _, e in pairs)
    return diff / max(scale, 1e-12)


def test_input_size(model: nn.Module, preferred: int = 64, train: bool = False) -> int:
    """A small square input size the model accepts (its minimum, or ``preferred`` if larger).

    With ``train``, large enough for auxiliary heads that only run in training (Inception v3's), and
    for a deepest map wider than 1x1: a trainable BatchNorm cannot normalise one value per channel
    (a batch of one at the minimum size, as torchvision's models too).
    """
    minimum = int(getattr(model, "min_input_size", 1))
    if train:
        minimum = max(minimum, 2 * minimum - 1, int(getattr(model, "aux_min_input_size", 0)))
    return max(minimum, preferred)


test_input_size.__test__ = False  # a helper, not a test


def images(batch: int, height: int, width: int | None = None, channels: int = 3) -> Tensor:
    return torch.randn(batch, channels, height, width or height)


REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def run_python(code: str, *args: str, env: dict[str, str] | None = None, cwd: str | None = None, timeout: int = 300):
    """Run ``code`` in a fresh interpreter of this venv; returns the CompletedProcess (text)."""
    return _fresh_interpreter(["-c", code, *args], env, cwd, timeout)


def _fresh_interpreter(argv: list[str], env: dict[str, str] | None, cwd: str | None, timeout: int):
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        cwd=cwd,
        timeout=timeout,
    )


def copy_checkout(destination) -> None:
    """Copy this checkout's sources (no venv, git or caches) to ``destination``."""
    import shutil

    shutil.copytree(
        REPO_ROOT,
        destination,
        ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", ".*_cache", ".hypothesis"),
    )


def per_model(cases: Iterable[str | tuple], id: Callable[..., str] | None = None) -> list:
    """``parametrize`` values grouped by model: with ``--dist loadgroup`` all of a model's tests (in
    every file that uses this, and test_models' shared instances) run on one worker in a row,
    where :func:`fresh_model`'s cached build serves them all.

    Args:
        cases: Model names, or tuples of a model name and the test's other parameters.
        id: Names a case from its values (default: the model name).

    Example:
        >>> @pytest.mark.parametrize("name", per_model(backbones.list_models()))  # doctest: +SKIP
        >>> @pytest.mark.parametrize(("name", "features_only"), per_model([("vgg11", True)]))  # doctest: +SKIP
    """
    import pytest

    values = [case if isinstance(case, tuple) else (case,) for case in cases]
    return [
        pytest.param(*case, id=id(*case) if id else case[0], marks=pytest.mark.xdist_group(case[0])) for case in values
    ]


def compiling(test: Callable) -> Callable:
    """Mark a test that runs torch.compile: such tests share one worker, which warms Inductor up once."""
    import pytest

    return pytest.mark.xdist_group("torch-compile")(test)


_PRISTINE: dict[tuple[str, tuple], nn.Module] = {}


def fresh_model(name: str, **kwargs) -> nn.Module:
    """A freshly built registered model, copied from a per-process cache (VGG takes seconds to build)."""
    import copy

    import backbones

    key = (name, tuple(sorted(kwargs.items())))
    if key not in _PRISTINE:
        if len(_PRISTINE) >= 2:  # VGG is 550 MB; keep at most two around
            _PRISTINE.pop(next(iter(_PRISTINE)))
        _PRISTINE[key] = backbones.create_model(name, **kwargs)
    return copy.deepcopy(_PRISTINE[key])


def meta_model(name: str, **kwargs) -> nn.Module:
    """A registered model built on the meta device: structure and keys only, built instantly."""
    import backbones

    with torch.device("meta"):
        return backbones.create_model(name, **kwargs)


def zeroed_model(name: str, **kwargs) -> nn.Module:
    """A registered model with every weight zero: for tests of shapes and structure, built without
    drawing random weights (VGG's 138M take a second)."""
    model = meta_model(name, **kwargs).to_empty(device="cpu")
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            tensor.zero_()
    return model


def killed_after_epoch_script(module: str, epoch: int = 1) -> str:
    """A ``python -c`` script that runs the CLI (``sys.argv[1:]``) and SIGKILLs itself right after the
    epoch-``epoch`` checkpoint, which ``module`` (e.g. ``"backbones.apps.finetune.run"``) writes
    through its ``save_checkpoint``: a run killed at the worst moment, for resume tests."""
    return f"""
import os, signal, sys
import {module} as job
save = job.save_checkpoint
def save_then_die(folder, epoch, *args, **kwargs):
    save(folder, epoch, *args, **kwargs)
    if epoch == {epoch}:
        os.kill(os.getpid(), signal.SIGKILL)
job.save_checkpoint = save_then_die
from backbones.apps.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def assert_same_detections(got: list[dict], expected: list[dict]) -> None:
    """Two detectors' outputs on the same images agree: each image has detections, the same labels,
    boxes within 1e-4 px, scores within 1e-6 (and masks within 1e-5 where there are masks)."""
    for mine, theirs in zip(got, expected, strict=True):
        assert len(theirs["boxes"]) > 0
        assert torch.equal(mine["labels"], theirs["labels"])
        torch.testing.assert_close(mine["boxes"], theirs["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(mine["scores"], theirs["scores"], atol=1e-6, rtol=0)
        if "masks" in theirs:
            torch.testing.assert_close(mine["masks"], theirs["masks"], atol=1e-5, rtol=0)


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout: int = 300,
    fresh_process: bool = False,
):
    """Run the command line ``backbones ARGS``; returns a CompletedProcess (text).

    By default in this process: ``main(ARGS)`` with stdout, stderr, warnings, the working folder
    and torch's thread count as a fresh process would have them, without the ~2.5 s a new
    interpreter spends importing torch. A fresh ``python -m backbones`` runs instead when
    ``env`` is given (libraries read the environment when they are imported) or when
    ``fresh_process`` asks for one: for what only a real process shows (the entry point, signals,
    pipes, a read that could block, where ``timeout`` applies).
    """
    if env is not None or fresh_process:
        return _fresh_interpreter(["-m", "backbones", *args], env, cwd, timeout)
    return _run_cli_in_process(list(args), cwd)


def _run_cli_in_process(argv: list[str], cwd: str | None):
    import contextlib
    import io
    import subprocess
    import sys
    import warnings

    from backbones.apps.cli.main import main

    def stream() -> io.TextIOWrapper:  # with a .buffer, as sys.stdout has
        return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    out, err = stream(), stream()
    threads = torch.get_num_threads()
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        stack.enter_context(warnings.catch_warnings())  # pytest's recorder would swallow them
        warnings.resetwarnings()
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)  # a fresh interpreter's default filters
        warnings.showwarning = show_warning
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        try:
            status = main(argv)
        except SystemExit as stop:  # argparse: --help, --version and usage errors
            status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if isinstance(stop.code, str):
                print(stop.code, file=sys.stderr)
        finally:
            torch.set_num_threads(threads)
    text = [s.buffer.getvalue().decode() for s in (out, err)]
    return subprocess.CompletedProcess(["backbones", *argv], status, *text)


def assert_one_line_error(result, *fragments: str) -> None:
    """A CLI failure: exit status 2, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def replace_an_operator() -> tuple[object, str]:
    """Make ``torch.library`` replace an operator object, as importing torch's quantization does.

    Defining a second overload of an operator whose ``torch.ops`` packet exists gives the packet a
    new operator object; TorchScript's builtin table keeps the freed one's id. Returns the library
    (keep it alive for the test) and the operator's qualified name.
    """
    import uuid

    namespace = f"backbones_test_{uuid.uuid4().hex[:12]}"
    library = torch.library.Library(namespace, "DEF")
    library.define("twice(Tensor x) -> Tensor")
    library.define("twice.scaled(Tensor x, float scale) -> Tensor")
    return library, f"{namespace}::twice"


def markdown_python_blocks(path) -> list[tuple[int, str, str | None]]:
    """Every ```python block of a Markdown file: (line, code, the not-run reason or None).

    A block is left out of the runs when the line right above it is ``<!-- not-run: reason -->``;
    the README and every docs page follow this one convention.
    """
    import re

    block = re.compile(r"(?:<!--\s*not-run:(?P<reason>[^>]*)-->\n)?```python\n(?P<code>.*?)```", re.S)
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in block.finditer(text):
        line = text.count("\n", 0, match.start("code"))
        reason = match.group("reason")
        blocks.append((line, match.group("code"), None if reason is None else reason.strip()))
    return blocks


_MARKDOWN_RUNNER = """
import json, sys, traceback
documents = json.load(open(sys.argv[1]))
for name, blocks in documents.items():
    namespace = {}
    for line, code in blocks:
        try:
            exec(compile(code, f"{name}, the python block at line {line}", "exec"), namespace)
        except Exception:
            print(f"{name} block at line {line} failed:\\n{traceback.format_exc()}", file=sys.stderr)
            raise SystemExit(1)
    print(f"{name}: {len(blocks)} blocks ran")
"""


def run_markdown_python_blocks(paths, hub_server, caches: dict[str, str], tmp_path):
    """Run the runnable python blocks of each Markdown file, in order, one namespace per file.

    They run in a fresh interpreter inside a copy of this checkout (``torch.hub.load(".",
    source="local")`` needs its ``hubconf.py``; files the examples write land in the copy), with
    the test's caches, against the loopback Hub, where the repo the examples load from,
    ``someone/my-finetuned-resnet``, is published first. Returns the CompletedProcess and, per
    file (named relative to the checkout), how many blocks ran.
    """
    import json

    from safetensors.torch import save

    import backbones

    saved = backbones.create_model("resnet18").save_pretrained(tmp_path / "saved")
    files = {name: (saved / name).read_bytes() for name in ("config.json", "model.safetensors")}
    files["model.safetensors"] = save(backbones.from_pretrained(saved).state_dict())
    hub_server.publish("someone/my-finetuned-resnet", files)
    checkout = tmp_path / "checkout"
    copy_checkout(checkout)
    documents = {
        str(path.relative_to(REPO_ROOT)): [
            (line, code) for line, code, reason in markdown_python_blocks(path) if reason is None
        ]
        for path in paths
    }
    (tmp_path / "blocks.json").write_text(json.dumps(documents))
    result = run_python(_MARKDOWN_RUNNER, str(tmp_path / "blocks.json"), env=caches, cwd=str(checkout), timeout=600)
    return result, {name: len(blocks) for name, blocks in documents.items()}
