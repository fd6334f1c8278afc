"""features_only: stage outputs as an OrderedDict whose shapes honour feature_info."""

from __future__ import annotations

import copy
import io
from collections import OrderedDict

import pytest
import torch

import backbones
from backbones import FeatureExtractor

from .helpers import fresh_model, meta_model, per_model, relative_max_diff

CLASSIFIERS = backbones.list_models(kind="classifier")
SIZES = {"224": (224, 224), "odd225x301": (225, 301)}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_feature_info_matches_the_real_feature_maps(name: str, size: tuple[int, int]) -> None:
    """Channels are exact; each stage's stride is real: 32 more input pixels give 32/stride more.

    Padded networks (ResNet, VGG, GoogLeNet) give ceil or floor of size/stride; Inception v2/v3
    use unpadded convolutions that trim a few border pixels, so their maps are a little smaller.
    Shapes only: the network runs on the meta device, where every operator computes its output's
    shape as on the CPU without computing values.
    """
    extractor = FeatureExtractor(meta_model(name)).eval()
    grown = (size[0] + 32, size[1] + 32)
    with torch.no_grad():
        features = extractor(torch.randn(1, 3, *size, device="meta"))
        bigger = extractor(torch.randn(1, 3, *grown, device="meta"))
    assert isinstance(features, OrderedDict)
    assert list(features) == [f.name for f in extractor.feature_info]
    for info, fmap, fmap_grown in zip(extractor.feature_info, features.values(), bigger.values(), strict=True):
        assert fmap.shape[1] == info.channels, f"{info.name}: {fmap.shape[1]} channels, not {info.channels}"
        nominal = [_ceil_div(n, info.stride) for n in size]
        assert all(0 < got <= n for got, n in zip(fmap.shape[2:], nominal, strict=True)), f"{info.name}: {fmap.shape}"
        growth = [g - f for g, f in zip(fmap_grown.shape[2:], fmap.shape[2:], strict=True)]
        assert growth == [32 // info.stride] * 2, f"{info.name}: stride {info.stride} but grew by {growth}"


@pytest.mark.parametrize("name", per_model(CLASSIFIERS))
def test_last_stage_equals_forward_features(name: str) -> None:
    model = fresh_model(name).eval()
    extractor = FeatureExtractor(model, out_indices=(-1,)).eval()  # shares the model's layers
    x = torch.randn(1, 3, 96, 96) if model.min_input_size <= 96 else torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(next(iter(extractor(x).values())), model.forward_features(x))


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_extractor_keeps_the_classifier_state_dict_keys(name: str) -> None:
    model_keys = set(meta_model(name).state_dict())
    extractor_keys = set(meta_model(name, features_only=True).state_dict())
    assert extractor_keys and extractor_keys < model_keys


def test_out_indices_selects_and_orders_the_stages() -> None:
    extractor = backbones.create_model("resnet18", features_only=True, out_indices=(3, 1))
    assert [f.name for f in extractor.feature_info] == ["layer1", "layer3"]
    assert extractor.out_indices == (1, 3)


def test_nothing_past_the_last_selected_stage_is_kept() -> None:
    extractor = backbones.create_model("resnet50", features_only=True, out_indices=(1, 2))
    names = {name.split(".")[0] for name, _ in extractor.named_parameters()}
    assert names == {"conv1", "bn1", "layer1", "layer2"}


@pytest.mark.parametrize(
    ("out_indices", "message"),
    [
        ((5,), r"out_indices entry 5 is out of range; valid stages are 0: stem.*4: layer4"),
        ((1, 1), r"names a stage twice"),
        ((), r"out_indices is empty"),
    ],
)
def test_bad_out_indices_get_a_clear_error_listing_the_stages(out_indices: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        backbones.create_model("resnet18", features_only=True, out_indices=out_indices)


def test_extractor_validates_its_input() -> None:
    extractor = backbones.create_model("resnet18", features_only=True)
    with pytest.raises(ValueError, match="expected 3 input channels"):
        extractor(torch.randn(1, 1, 64, 64))


def test_extractor_scripts_and_exports() -> None:
    extractor = backbones.create_model("resnet18", features_only=True, out_indices=(1, 2, 3, 4)).eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected = extractor(x)
        buffer = io.BytesIO()
        torch.jit.save(torch.jit.script(extractor), buffer)
        buffer.seek(0)
        assert relative_max_diff(torch.jit.load(buffer)(x), expected) <= 1e-6
        assert relative_max_diff(torch.export.export(extractor, (x,)).module()(x), expected) <= 1e-6


def test_extractor_survives_deepcopy() -> None:
    extractor = backbones.create_model("resnet18", features_only=True, out_indices=(2, 3))
    clone = copy.deepcopy(extractor)
    assert isinstance(clone, backbones.FeatureExtractor)
    assert clone.feature_info == extractor.feature_info and clone.out_indices == (2, 3)
