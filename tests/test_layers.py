"""The package's layers: each imports only the layers below it, and no import circle exists.

Every ``import`` statement counts, those deferred inside functions included: a deferred import is
still a dependency, only a hidden one.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from pathlib import Path

import pytest

from .helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "backbones"
# Bottom to top. The top-level package (its __init__, the public API, and __main__) sits above all.
LAYERS = ("core", "hub", "models", "runtime", "data", "apps")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports, at module level or deferred, resolved to module names."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` the module mod.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(n for n in names if n in modules and n != this)
    return found


@functools.cache  # parsed once: every per-module test reads the same graph
def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return len(LAYERS)  # the public API on top of everything
    return LAYERS.index(parts[1])


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_package_folder_is_a_known_layer() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert folders == set(LAYERS)


def test_the_import_graph_has_no_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("module", sorted(package_modules()))
def test_module_imports_only_its_own_layer_or_below(module: str) -> None:
    upward = sorted(t for t in import_graph()[module] if layer_of(t) > layer_of(module))
    assert not upward, f"{module} (layer {layer_of(module)}) imports upward: {upward}"


def test_the_cycle_finder_sees_a_deferred_import_circle(tmp_path: Path) -> None:
    # The check must be able to fail: a circle through a function-level import is found.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    fake = tmp_path / "backbones" / "core" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from backbones.apps import demo\n")
    modules = {"backbones.apps.demo": Path("unused"), "backbones.core.x": fake}
    assert imported_modules_of(fake, modules, tmp_path) == {"backbones.apps.demo"}


def imported_modules_of(path: Path, modules: dict[str, Path], root: Path) -> set[str]:
    saved = sys.modules[__name__].REPO_ROOT
    sys.modules[__name__].REPO_ROOT = root
    try:
        return imported_modules(path, modules)
    finally:
        sys.modules[__name__].REPO_ROOT = saved


def test_the_architecture_page_layout_section_matches_the_tree() -> None:
    page = (REPO_ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = page.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"backbones/((?:[a-z]\w*/)*[a-z]\w*\.py)", section))
    actual = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if not p.name.startswith("__")}
    assert listed == actual, (
        f"docs/architecture.md lists {sorted(listed - actual)} not in the tree; misses {sorted(actual - listed)}"
    )
