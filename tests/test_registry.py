"""The registry: names, listing, creation and the errors for names that do not exist."""

from __future__ import annotations

import pytest
import torch

import backbones
from backbones import UnknownModelError, create_model, list_models, split_model_name

from .helpers import run_python


def test_every_family_is_registered() -> None:
    names = list_models()
    for required in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        assert required in names


def test_list_models_filters_by_wildcard() -> None:
    assert list_models("resnet1*", kind="classifier") == ["resnet101", "resnet152", "resnet18"]
    assert list_models("resnet5*") == ["resnet50", "resnet50_fpn"]


def test_list_models_filters_by_family_and_kind() -> None:
    resnets = list_models(family="resnet", kind="classifier")
    assert resnets and all(name.startswith("resnet") and not name.endswith("_fpn") for name in resnets)


def test_split_model_name_separates_architecture_and_tag() -> None:
    assert split_model_name("resnet50.tv2_in1k") == ("resnet50", "tv2_in1k")
    assert split_model_name("resnet50") == ("resnet50", None)


def test_unknown_model_error_suggests_close_names() -> None:
    with pytest.raises(UnknownModelError, match=r"unknown model 'resnet5'.*did you mean.*resnet50"):
        create_model("resnet5")


def test_unknown_model_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        create_model("definitely_not_a_model")


def test_create_model_passes_options_to_the_model() -> None:
    model = create_model("resnet18", num_classes=7, in_chans=1)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 7)


def test_public_builder_is_create_model() -> None:
    model = backbones.resnet18(num_classes=5)
    assert isinstance(model, backbones.ResNet) and model.num_classes == 5
    assert "pretrained" in backbones.resnet18.__doc__


def test_unknown_option_is_reported_by_name() -> None:
    with pytest.raises(TypeError, match="not_an_option"):
        create_model("resnet18", not_an_option=1)


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):

        @backbones.register_model(family="resnet")
        def resnet18(**kwargs):  # pragma: no cover - never built
            raise AssertionError


def test_out_indices_without_features_only_is_refused() -> None:
    with pytest.raises(ValueError, match="features_only"):
        create_model("resnet18", out_indices=(1, 2))


def test_backbones_all_holds_every_registered_architecture() -> None:
    assert set(list_models()) <= set(backbones.__all__)


def test_every_name_in_backbones_all_is_importable() -> None:
    namespace: dict[str, object] = {}
    exec("from backbones import *", namespace)
    assert set(backbones.__all__) <= set(namespace)


def test_each_architecture_is_exported_as_its_public_builder() -> None:
    for name in list_models():
        builder = getattr(backbones, name)
        assert builder.__name__ == name and "pretrained" in builder.__doc__, name


def test_a_model_name_with_a_tag_is_not_an_attribute() -> None:
    with pytest.raises(AttributeError, match=r"no attribute 'resnet50\.tv2_in1k'"):
        getattr(backbones, "resnet50.tv2_in1k")
    with pytest.raises(AttributeError, match="no attribute 'not_a_model'"):
        backbones.not_a_model  # noqa: B018 - the attribute look-up is the test


def test_import_backbones_imports_no_torch() -> None:
    result = run_python("import sys, backbones; print('torch' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
