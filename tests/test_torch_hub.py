"""torch.hub runs through its own code on a local copy of the repository, with no network."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import backbones

from .helpers import REPO_ROOT, copy_checkout, run_python

HUB_SCRIPT = """
import json, sys, torch
torch.hub.set_dir(sys.argv[1])
repo = "testorg/backbones:main"
names = torch.hub.list(repo, trust_repo=True)
doc = torch.hub.help(repo, "resnet50", trust_repo=True)
model = torch.hub.load(repo, "resnet18", num_classes=3, trust_repo=True)
by_name = torch.hub.load(repo, "create_model", "resnet34", num_classes=4, trust_repo=True)
import backbones
out = model.eval()(torch.randn(1, 3, 64, 64))
print(json.dumps({"names": names, "doc": doc, "module_file": backbones.__file__,
                  "shape": list(out.shape), "by_name": type(by_name).__name__, "by_name_classes": by_name.num_classes}))
"""


def _hub_copy(tmp_path: Path) -> Path:
    hub_dir = tmp_path / "hub"
    copy_checkout(hub_dir / "testorg_backbones_main")
    return hub_dir


def test_torch_hub_lists_documents_and_loads_entrypoints(tmp_path: Path) -> None:
    hub_dir = _hub_copy(tmp_path)
    result = run_python(HUB_SCRIPT, str(hub_dir), cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # Every registered model is an entrypoint.
    assert {*backbones.list_models(), "create_model"} == set(report["names"])
    assert "ResNet-50" in report["doc"] and "pretrained" in report["doc"]
    # The hub copy's package was imported, not the checkout's.
    assert Path(report["module_file"]).is_relative_to(hub_dir)
    assert report["shape"] == [1, 3]
    assert report["by_name"] == "ResNet" and report["by_name_classes"] == 4


def _hubconf_entrypoints() -> dict[str, object]:
    """hubconf.py's entrypoints, chosen as torch.hub.list chooses them: its public callables."""
    spec = importlib.util.spec_from_file_location("hubconf", REPO_ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    return {
        name: getattr(hubconf, name) for name in dir(hubconf) if callable(getattr(hubconf, name)) and name[0] != "_"
    }


def test_hubconf_entrypoints_are_create_model_and_every_registered_model() -> None:
    assert set(_hubconf_entrypoints()) == set(backbones.list_models()) | {"create_model"}


def test_each_hubconf_entrypoint_is_the_packages_own_public_builder() -> None:
    for name, entrypoint in _hubconf_entrypoints().items():
        assert entrypoint is getattr(backbones, name), name


def test_hubconf_declares_only_runtime_dependencies() -> None:
    import ast

    tree = ast.parse((REPO_ROOT / "hubconf.py").read_text())
    assignment = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "dependencies")
    assert ast.literal_eval(assignment.value) == ["torch", "safetensors", "huggingface_hub"]


def test_import_backbones_imports_neither_torchvision_nor_timm() -> None:
    result = run_python(
        "import sys, backbones; backbones.create_model('resnet18');"
        "print(sorted(m for m in ('torchvision', 'timm') if m in sys.modules))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
