"""Saved folders both ways with timm: timm loads ours, we load timm's, with the same outputs and preprocessing.

Each family timm also has is tested by its smallest registered classifier that timm knows by the same name
(a new architecture timm has is tested by being registered).
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import backbones
from backbones.core.registry import get_model_entry
from backbones.models.pretrained import load_config

from .helpers import fresh_model, meta_model, per_model, relative_max_diff, test_input_size

timm = pytest.importorskip("timm")


def _smallest_per_family_timm_has() -> list[str]:
    picks: dict[str, tuple[int, str]] = {}
    for name in backbones.list_models():
        entry = get_model_entry(name)
        if entry.kind != "classifier" or not timm.is_model(name):
            continue
        size = sum(p.numel() for p in meta_model(name).parameters())
        picks[entry.family] = min(picks.get(entry.family, (size, name)), (size, name))
    return sorted(name for _, name in picks.values())


FAMILIES = _smallest_per_family_timm_has()


def _input(model: torch.nn.Module) -> torch.Tensor:
    size = test_input_size(model, preferred=32)
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_every_family_timm_has_is_covered():
    assert {get_model_entry(name).family for name in FAMILIES} == {"resnet", "vgg", "inception"}


@pytest.mark.parametrize("name", per_model(FAMILIES))
def test_timm_loads_our_folder_with_equal_outputs(name, tmp_path):
    ours = fresh_model(name, num_classes=7).eval()
    ours.save_pretrained(tmp_path / "saved")
    theirs = timm.create_model(f"local-dir:{tmp_path / 'saved'}", pretrained=True).eval()
    x = _input(ours)
    with torch.no_grad():
        assert theirs.num_classes == 7
        assert relative_max_diff(theirs(x), ours(x)) < 1e-5


def test_timm_resolves_the_resize_and_crop_of_a_model_fine_tuned_at_another_size(tmp_path):
    model = fresh_model("resnet18", num_classes=3)
    # What a fine-tune at 32x32 records: resize and crop both 32 (a ratio left at 0.875 made timm resize to 36).
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32), "resize_size": 32, "crop_size": 32}
    model.save_pretrained(tmp_path / "saved")
    theirs = timm.create_model(f"local-dir:{tmp_path / 'saved'}", pretrained=True)
    config = timm.data.resolve_data_config(model=theirs)
    assert math.floor(config["input_size"][-1] / config["crop_pct"]) == 32
    assert config["input_size"][-1] == 32
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["backbones"]["pretrained_cfg"]["crop_pct"] == 1.0


@pytest.mark.parametrize("name", per_model(FAMILIES))
def test_a_timm_folder_loads_with_its_classes_weights_and_preprocessing(name, tmp_path):
    from timm.models import save_for_hf

    theirs = timm.create_model(name, num_classes=5).eval()
    save_for_hf(theirs, tmp_path / "timm")  # timm's default: pytorch_model.bin, no safetensors
    assert not (tmp_path / "timm" / "model.safetensors").exists()
    ours = backbones.from_pretrained(tmp_path / "timm").eval()
    x = _input(ours)
    with torch.no_grad():
        assert relative_max_diff(ours(x), theirs(x)) < 1e-5
    assert ours.num_classes == 5
    expected = timm.data.resolve_data_config(model=theirs)
    cfg = ours.pretrained_cfg
    assert cfg["interpolation"] == expected["interpolation"]
    assert tuple(cfg["mean"]) == tuple(expected["mean"]) and tuple(cfg["std"]) == tuple(expected["std"])
    assert cfg["crop_size"] == expected["input_size"][-1]
    assert cfg["resize_size"] == math.floor(expected["input_size"][-1] / expected["crop_pct"])


def test_our_config_reads_back_unchanged_from_the_timm_readable_file(tmp_path):
    model = fresh_model("resnet18", num_classes=4)
    model.save_pretrained(tmp_path / "saved")
    on_disk = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert set(on_disk["pretrained_cfg"]) <= {f.name for f in dataclasses.fields(timm.models.PretrainedCfg)}
    assert load_config(tmp_path / "saved") == on_disk["backbones"]
    assert on_disk["backbones"]["model_kwargs"]["num_classes"] == on_disk["num_classes"] == 4


def test_a_folder_saved_before_the_timm_layout_still_loads(tmp_path):
    model = fresh_model("resnet18", num_classes=4).eval()
    model.save_pretrained(tmp_path / "saved")
    path = tmp_path / "saved" / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text())["backbones"]))  # the layout before: ours alone
    loaded = backbones.from_pretrained(tmp_path / "saved").eval()
    x = _input(model)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_our_key_that_is_not_an_object_is_refused_by_name(tmp_path):
    fresh_model("resnet18", num_classes=4).save_pretrained(tmp_path / "saved")
    path = tmp_path / "saved" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "backbones": [1, 2]}))
    with pytest.raises(ValueError, match="'backbones' must be an object"):
        backbones.from_pretrained(tmp_path / "saved")


def test_a_timm_model_on_the_hub_loads_by_its_repo_id(hub_server, caches, tmp_path):
    from timm.models import save_for_hf

    theirs = timm.create_model("resnet18", num_classes=3).eval()
    save_for_hf(theirs, tmp_path / "timm", safe_serialization=True)  # what timm's push_to_hub uploads
    hub_server.publish("acme/timm-resnet18", {p.name: p.read_bytes() for p in (tmp_path / "timm").iterdir()})
    ours = backbones.from_pretrained("acme/timm-resnet18").eval()
    x = _input(ours)
    with torch.no_grad():
        assert relative_max_diff(ours(x), theirs(x)) < 1e-5
    assert ours.pretrained_cfg["interpolation"] == theirs.pretrained_cfg["interpolation"]
