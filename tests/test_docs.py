"""The documentation site builds with ``mkdocs build --strict``, and every Python block of its pages runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import REPO_ROOT, copy_checkout, markdown_python_blocks, run_markdown_python_blocks

DOCS = REPO_ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
GUIDE = ["index", "models", "weights", "cli", "finetuning", "extraction", "deployment", "performance", "architecture"]


def build_site(checkout: Path, site: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of ``checkout``'s mkdocs.yml into ``site``, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=checkout,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's notice about its successor
        timeout=300,
    )


# Both builds on one worker, one after the other: MkDocs loads the hooks from docs/hooks/, and Python
# writes their bytecode into the checkout.
@pytest.mark.xdist_group("docs")
def test_the_site_builds_in_strict_mode_with_the_api_reference_and_the_reports(tmp_path: Path) -> None:
    result = build_site(REPO_ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    reference = (tmp_path / "site" / "api" / "models" / "index.html").read_text(encoding="utf-8")
    assert 'id="backbones.models.factory.create_model"' in reference  # generated from the docstrings
    assert (tmp_path / "site" / "benchmarks" / "RESULTS" / "index.html").is_file()  # published by the hook
    assert (tmp_path / "site" / "benchmarks" / "speedups.png").is_file()  # the picture RESULTS.md shows
    for page in GUIDE:
        assert (tmp_path / "site" / ("" if page == "index" else page) / "index.html").is_file(), page


@pytest.mark.xdist_group("docs")
def test_strict_mode_fails_on_a_broken_link_and_a_missing_anchor(tmp_path: Path) -> None:
    # The build above can fail: the validation settings in mkdocs.yml make these errors, not notes.
    checkout = tmp_path / "checkout"
    copy_checkout(checkout)
    with (checkout / "docs" / "models.md").open("a", encoding="utf-8") as page:
        page.write("\n[a page](no-such-page.md) and [a section](weights.md#no-such-section)\n")
    result = build_site(checkout, tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stderr and "#no-such-section" in result.stderr


def test_every_guide_page_is_there_and_every_block_left_out_says_why() -> None:
    assert {f"{page}.md" for page in GUIDE} <= {str(path.relative_to(DOCS)) for path in PAGES}
    blocks = {path.name: markdown_python_blocks(path) for path in PAGES}
    assert all(reason for page in blocks.values() for _, _, reason in page if reason is not None)
    assert sum(reason is None for page in blocks.values() for _, _, reason in page) >= 6  # most blocks run


def test_the_docs_python_blocks_run_in_order(hub_server, caches, tmp_path: Path) -> None:
    requests_before = len(hub_server.requests)
    result, counts = run_markdown_python_blocks(PAGES, hub_server, caches, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines() == [f"{name}: {count} blocks ran" for name, count in counts.items()]
    # This run pushed (an earlier test's push may have published the same files already).
    pushes = [(method, path) for method, path in hub_server.requests[requests_before:] if method == "POST"]
    assert any("/me/my-resnet" in path for _, path in pushes), pushes
    assert {"config.json", "model.safetensors"} <= set(hub_server.files("me/my-resnet"))
