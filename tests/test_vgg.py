"""VGG: the seed's structure (3x3 only, 13 or 16 conv + 3 FC), sizes, and timm's layout both ways."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import backbones
from backbones.hub.convert import convert_state_dict, detect_layout

from .helpers import fresh_model, meta_model, relative_max_diff

VGGS = backbones.list_models("vgg*", kind="classifier")


def _layers(model: nn.Module, kind: type[nn.Module]) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


@pytest.mark.parametrize(("name", "convs"), [("vgg11", 8), ("vgg13", 10), ("vgg16", 13), ("vgg19", 16)])
def test_depth_is_the_papers_conv_count_plus_three_fully_connected(name: str, convs: int) -> None:
    model = meta_model(name)
    assert len(_layers(model, nn.Conv2d)) == convs
    assert len(_layers(model, nn.Linear)) == 3


@pytest.mark.parametrize("name", VGGS)
def test_every_convolution_is_3x3_with_same_padding(name: str) -> None:
    convs = _layers(meta_model(name), nn.Conv2d)
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.stride == (1, 1) for c in convs)


def test_batchnorm_variants_normalise_every_convolution() -> None:
    model = meta_model("vgg19_bn")
    assert len(_layers(model, nn.BatchNorm2d)) == len(_layers(model, nn.Conv2d)) == 16


def test_the_network_is_three_sequential_blocks() -> None:
    model = meta_model("vgg16")
    assert [name for name, _ in model.named_children()] == ["features", "avgpool", "classifier"]
    assert isinstance(model.features, nn.Sequential) and isinstance(model.classifier, nn.Sequential)


@pytest.mark.parametrize("size", [32, 33, 100])
def test_any_input_of_at_least_32_pixels_classifies(size: int) -> None:
    model = fresh_model("vgg11").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size + 7)).shape == (1, 1000)


def test_input_below_32_pixels_gets_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"31x40 pixels is too small.*at least 32x32"):
        fresh_model("vgg11").eval()(torch.randn(1, 3, 31, 40))


def test_norm_layer_without_batch_norm_is_refused() -> None:
    with pytest.raises(ValueError, match="vgg\\*_bn"):
        backbones.create_model("vgg16", norm_layer="frozen_batchnorm")


def test_dropout_option_sets_both_hidden_dropouts() -> None:
    model = meta_model("vgg11", dropout=0.2)
    assert [m.p for m in _layers(model, nn.Dropout)] == [0.2, 0.2]


@pytest.mark.parametrize("name", ["vgg11", "vgg16_bn"])
def test_our_weights_export_to_timms_layout_and_give_timms_outputs(name: str) -> None:
    import timm

    ours = backbones.create_model(name).eval()
    theirs = timm.create_model(name).eval()
    timm_state = convert_state_dict(ours.state_dict(), name, source="torchvision", target="timm")
    theirs.load_state_dict(timm_state, strict=True)
    assert detect_layout(timm_state) == "timm"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert relative_max_diff(theirs(x), ours(x)) <= 1e-5
