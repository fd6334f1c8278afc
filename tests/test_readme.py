"""The README cannot go stale: its Python blocks run, its zoo table is the manifest's; LICENSE, py.typed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import tomllib

from .helpers import REPO_ROOT, copy_checkout, run_python

README = REPO_ROOT / "README.md"
# A python block, with the `<!-- not-run: reason -->` comment right above it when it has one.
BLOCK = re.compile(r"(?:<!--\s*not-run:(?P<reason>[^>]*)-->\n)?```python\n(?P<code>.*?)```", re.S)


def python_blocks() -> list[tuple[int, str, str | None]]:
    """Every ```python block of the README: (line, code, the not-run reason or None)."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("code"))
        reason = match.group("reason")
        blocks.append((line, match.group("code"), None if reason is None else reason.strip()))
    return blocks


def test_the_readme_starts_with_make_demo_and_make_test() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    commands = [line.split("#")[0].strip() for line in lines[2:6] if line.startswith("make")]
    assert commands == ["make demo", "make test"]


def test_every_block_left_out_says_why() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 8
    assert all(reason for _, _, reason in blocks if reason is not None)
    assert sum(reason is None for _, _, reason in blocks) >= 4  # most blocks run


RUNNER = """
import json, sys, traceback
blocks = json.load(open(sys.argv[1]))
namespace = {}
for line, code in blocks:
    try:
        exec(compile(code, f"README.md, the python block at line {line}", "exec"), namespace)
    except Exception:
        print(f"README.md block at line {line} failed:\\n{traceback.format_exc()}", file=sys.stderr)
        raise SystemExit(1)
print(f"{len(blocks)} blocks ran")
"""


def test_the_readme_python_blocks_run_in_order(hub_server, caches, tmp_path: Path) -> None:
    from safetensors.torch import save

    import backbones

    # The Hub repo the README loads from: a ResNet saved as save_pretrained saves it.
    saved = backbones.create_model("resnet18").save_pretrained(tmp_path / "saved")
    files = {name: (saved / name).read_bytes() for name in ("config.json", "model.safetensors")}
    files["model.safetensors"] = save(backbones.from_pretrained(saved).state_dict())
    hub_server.publish("someone/my-finetuned-resnet", files)
    checkout = tmp_path / "checkout"  # torch.hub.load(".", source="local") needs a hubconf.py here
    copy_checkout(checkout)
    runnable = [(line, code) for line, code, reason in python_blocks() if reason is None]
    (tmp_path / "blocks.json").write_text(json.dumps(runnable))
    result = run_python(RUNNER, str(tmp_path / "blocks.json"), env=caches, cwd=str(checkout), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"{len(runnable)} blocks ran"
    assert {"config.json", "model.safetensors"} <= set(hub_server.files("me/my-resnet"))  # push_to_hub ran


def test_the_model_zoo_table_is_generated_from_the_manifest() -> None:
    from backbones.apps.zoo import render_zoo_table, with_zoo_table

    readme = README.read_text(encoding="utf-8")
    assert with_zoo_table(readme, render_zoo_table()) == readme, "stale: run python -m backbones.apps.zoo README.md"


def test_the_zoo_table_has_a_row_per_weight_with_reported_accuracy() -> None:
    from backbones.apps.zoo import render_zoo_table
    from backbones.hub.manifest import get_weight_spec, weight_names

    rows = {row.split("|")[1].strip(" `"): row for row in render_zoo_table().splitlines()[2:]}
    assert set(rows) == set(weight_names())
    for name, row in rows.items():
        metrics = get_weight_spec(*name.split(".")).metrics
        reported = f"top-1 {metrics['top1']:.2f}" if "top1" in metrics else f"box mAP {metrics['box_map']}"
        assert reported in row, (name, row)
    assert "25.6 M | 4.09 G | 224x224 (evaluated at 288x288)" in rows["resnet50.a1_in1k"]


def test_the_license_file_is_the_bsd_3_clause_pyproject_declares() -> None:
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["license"]["text"]
    text = (REPO_ROOT / "LICENSE").read_text(encoding="utf-8")
    assert declared == "BSD-3-Clause" and text.startswith("BSD 3-Clause License")
    assert "Neither the name of the copyright holder nor the names of its" in text


def test_the_package_ships_py_typed() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["backbones"]
    assert (REPO_ROOT / "backbones" / "py.typed").is_file()
