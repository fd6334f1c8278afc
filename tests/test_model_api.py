"""The common model API of every classification model (timm's, with torchvision's keys)."""

from __future__ import annotations

import copy

import pytest
import torch

import backbones

from .helpers import fresh_model, meta_model, per_model, test_input_size, zeroed_model

CLASSIFIERS = backbones.list_models(kind="classifier")
CFG_KEYS = {"input_size", "resize_size", "crop_size", "interpolation", "mean", "std", "num_classes", "class_names"}


@pytest.fixture(scope="module", params=per_model(CLASSIFIERS))
def shared_model(request: pytest.FixtureRequest) -> torch.nn.Module:
    """Each classifier built once per worker, in eval mode; tests that change it take a copy."""
    return fresh_model(request.param).eval()


def test_forward_is_forward_head_of_forward_features(shared_model: torch.nn.Module) -> None:
    model = shared_model
    x = torch.randn(2, 3, test_input_size(model), test_input_size(model))
    with torch.no_grad():
        features = model.forward_features(x)
        assert torch.equal(model.forward_head(features), model(x))
    assert features.shape[1] == model.num_features


def test_forward_head_pre_logits_gives_the_penultimate_features(shared_model: torch.nn.Module) -> None:
    model = shared_model
    x = torch.randn(2, 3, test_input_size(model), test_input_size(model))
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre_logits.shape == (2, model.head_hidden_size)
        assert torch.allclose(model.get_classifier()(pre_logits), model(x), rtol=1e-5, atol=1e-6)


def test_reset_classifier_changes_the_number_of_outputs(shared_model: torch.nn.Module) -> None:
    model = copy.deepcopy(shared_model)
    model.reset_classifier(10)
    size = test_input_size(model)
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 10)
    assert model.num_classes == 10 and model.pretrained_cfg["num_classes"] == 10


def test_reset_classifier_to_zero_returns_pre_logits(shared_model: torch.nn.Module) -> None:
    model = copy.deepcopy(shared_model)
    model.reset_classifier(0)
    size = test_input_size(model)
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, model.head_hidden_size)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_num_classes_zero_builds_no_classifier(name: str) -> None:
    model = meta_model(name, num_classes=0)
    assert isinstance(model.get_classifier(), torch.nn.Identity)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_in_chans_changes_the_first_convolution(name: str) -> None:
    model = zeroed_model(name, in_chans=1).eval()
    size = test_input_size(model)
    with torch.no_grad():
        assert model(torch.randn(1, 1, size, size)).shape == (1, 1000)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_pretrained_cfg_describes_the_preprocessing(name: str) -> None:
    cfg = meta_model(name).pretrained_cfg
    assert set(cfg) >= CFG_KEYS
    assert len(cfg["mean"]) == len(cfg["std"]) == cfg["input_size"][0] == 3


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_feature_info_strides_double_and_end_at_the_trunk(name: str) -> None:
    model = meta_model(name)
    strides = [f.stride for f in model.feature_info]
    assert strides == sorted(strides) and strides[-1] == 32
    assert model.feature_info[-1].channels == model.num_features
    assert len({f.name for f in model.feature_info}) == len(model.feature_info)
