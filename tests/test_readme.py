"""The README cannot go stale: its Python blocks run, its links resolve, its zoo table is the manifest's.

And the LICENSE and py.typed the package declares.
"""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

from .helpers import REPO_ROOT, markdown_python_blocks, run_markdown_python_blocks

README = REPO_ROOT / "README.md"


def test_the_readme_starts_with_make_demo_and_make_test() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    commands = [line.split("#")[0].strip() for line in lines[2:6] if line.startswith("make")]
    assert commands == ["make demo", "make test"]


def test_every_block_left_out_says_why() -> None:
    blocks = markdown_python_blocks(README)
    assert len(blocks) >= 3  # the quick start, pretrained weights, saving and publishing
    assert all(reason for _, _, reason in blocks if reason is not None)
    assert sum(reason is None for _, _, reason in blocks) >= 2  # most blocks run


def test_the_readme_python_blocks_run_in_order(hub_server, caches, tmp_path: Path) -> None:
    requests_before = len(hub_server.requests)
    result, counts = run_markdown_python_blocks([README], hub_server, caches, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"README.md: {counts['README.md']} blocks ran"
    # This run pushed (an earlier test's push may have published the same files already).
    pushes = [(method, path) for method, path in hub_server.requests[requests_before:] if method == "POST"]
    assert any("/me/my-resnet" in path for _, path in pushes), pushes
    assert {"config.json", "model.safetensors"} <= set(hub_server.files("me/my-resnet"))


def test_the_readme_links_point_at_files_of_the_checkout() -> None:
    # mkdocs --strict checks the docs pages' links; the README's (GitHub's view) are checked here.
    readme = README.read_text(encoding="utf-8")
    targets = {target for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme) if "://" not in target}
    assert {"docs/cli.md", "docs/weights.md", "docs/architecture.md", "CONTRIBUTING.md"} <= targets
    assert not [target for target in sorted(targets) if not (REPO_ROOT / target).exists()]


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
