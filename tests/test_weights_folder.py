"""weights/: the table of every arch.tag matches the manifest, and publishing works end to end.

Publishing runs against the loopback Hub stand-in: the upstream file is served by it, converted
by the package's own loading path, pushed back to it, and loaded with ``from_pretrained``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

import backbones

from .helpers import REPO_ROOT, relative_max_diff
from .test_weights import _publish_timm

WEIGHTS = REPO_ROOT / "weights"


def load_tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"weights_{name}", WEIGHTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_weights_readme_table_is_generated_from_the_manifest() -> None:
    table = load_tool("table")
    readme = (WEIGHTS / "README.md").read_text(encoding="utf-8")
    assert table.with_table(readme, table.render_table()) == readme, "stale: run python weights/table.py"


def test_the_table_has_one_row_per_arch_tag_with_its_sha_licence_and_accuracy() -> None:
    rows = load_tool("table").render_table().splitlines()[2:]
    names = backbones.list_pretrained()
    assert [row.split("|")[1].strip().strip("`") for row in rows] == sorted(names)
    spec = backbones.hub.manifest.get_weight_spec("googlenet_v1", "tv_in1k")
    row = next(r for r in rows if "`googlenet_v1.tv_in1k`" in r)
    assert spec.sha256 in row and spec.license in row and str(spec.metrics["top1"]) in row


def test_publish_converts_an_upstream_hub_file_pushes_it_and_from_pretrained_loads_it(hub_server, caches) -> None:
    reference = _publish_timm(hub_server, "resnet18", "tv_in1k")
    repo = "publisher/resnet18.tv_in1k"
    assert load_tool("publish").main(["resnet18.tv_in1k", "--repo", repo]) == 0
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub_server.files(repo))
    published = backbones.from_pretrained(repo).eval()
    assert published.pretrained_cfg["weights"] == "resnet18.tv_in1k"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert relative_max_diff(published(x), reference(x)) <= 1e-5
    card = hub_server.files(repo)["README.md"].decode()
    assert "resnet18" in card and "license:" in card


def test_publish_from_a_local_checkpoint_stages_the_repo_files(tmp_path: Path) -> None:
    import torchvision

    reference = torchvision.models.resnet18().eval()
    checkpoint = tmp_path / "resnet18-upstream.pth"
    torch.save(reference.state_dict(), checkpoint)
    # The manifest's resnet18.tv_in1k is a Hub file without a known sha256: nothing to check the copy against.
    assert backbones.hub.manifest.get_weight_spec("resnet18", "tv_in1k").sha256 is None
    out = tmp_path / "staged"
    assert load_tool("publish").main(["resnet18.tv_in1k", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    staged = backbones.from_pretrained(out).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert relative_max_diff(staged(x), reference(x)) <= 1e-5


def test_publish_refuses_a_local_copy_whose_sha256_differs_and_keeps_the_file(tmp_path: Path, capsys) -> None:
    import torchvision

    checkpoint = tmp_path / "not-googlenet-1378be20.pth"
    torch.save(torchvision.models.googlenet(init_weights=True, aux_logits=True).state_dict(), checkpoint)
    args = ["googlenet_v1.tv_in1k", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "staged")]
    assert load_tool("publish").main(args) == 2
    message = capsys.readouterr().err
    assert "sha256" in message and "1378be20" in message and str(checkpoint) in message
    assert checkpoint.exists(), "the publisher's own file must not be deleted"


@pytest.mark.parametrize("args", [["resnet18.tv_in1k"], ["no_such_model.tag", "--out", "x"]])
def test_publish_usage_errors_are_clear(args: list[str], capsys) -> None:
    if args == ["resnet18.tv_in1k"]:
        with pytest.raises(SystemExit):
            load_tool("publish").main(args)
        assert "--repo" in capsys.readouterr().err
    else:
        assert load_tool("publish").main(args) == 2
        assert "no_such_model" in capsys.readouterr().err
