"""The habits timm and torchvision users bring: feature_info queries, drop_rate, crop_pct, test sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import backbones
from backbones.hub.manifest import weight_names

from .helpers import meta_model

CLASSIFIERS = backbones.list_models(kind="classifier")
IMAGENET_WEIGHTS = sorted(n for n in weight_names() if not n.endswith("_coco"))


@pytest.mark.parametrize("name", backbones.list_models())
def test_feature_info_answers_timms_channels_and_reduction(name: str) -> None:
    info = meta_model(name).feature_info
    assert info.channels() == [f.channels for f in info]
    assert info.reduction() == info.stride() == [f.stride for f in info]
    assert info.names() == [f.name for f in info]
    assert info.channels(-1) == info[-1].channels and info.reduction((0, 1)) == [info[0].stride, info[1].stride]


def test_feature_info_channels_and_reduction_match_timms_for_resnet50() -> None:
    import timm

    with torch.device("meta"):
        theirs = timm.create_model("resnet50", features_only=True).feature_info
    extractor = backbones.create_model("resnet50", features_only=True)
    assert extractor.feature_info.channels() == theirs.channels()
    assert extractor.feature_info.reduction() == theirs.reduction()


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_drop_rate_sets_the_classifier_dropout_of_every_family(name: str) -> None:
    model = meta_model(name, drop_rate=0.25)
    rates = {m.p for path, m in model.named_modules() if isinstance(m, nn.Dropout) and not path.startswith("aux")}
    assert rates == {0.25}


@pytest.mark.parametrize("rate", [-0.1, 1.0, "0.5"])
def test_a_drop_rate_that_is_not_a_probability_is_refused(rate: object) -> None:
    with pytest.raises(ValueError, match=r"drop_rate must be a (number|probability) in \[0, 1\)"):
        backbones.create_model("vgg11", drop_rate=rate)


@pytest.mark.parametrize("name", IMAGENET_WEIGHTS)
def test_timm_resolve_data_config_gives_our_preprocessing(name: str) -> None:
    import timm.data

    model = meta_model(name)
    cfg = model.pretrained_cfg
    resize, crop, *_ = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model)).transforms
    assert (resize.size, crop.size) == (cfg["resize_size"], (cfg["crop_size"], cfg["crop_size"]))
    assert resize.interpolation.value == cfg["interpolation"]


@pytest.mark.parametrize("name", IMAGENET_WEIGHTS)
def test_weights_evaluated_at_another_size_say_so_as_timm_does(name: str) -> None:
    import timm

    try:
        reference = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        reference = None
    if reference is None or not getattr(reference, "test_input_size", None):
        # torchvision's own weights (googlenet): evaluated at the training size.
        assert "test_input_size" not in meta_model(name).pretrained_cfg
        return
    expected = tuple(reference.test_input_size)
    cfg = meta_model(name).pretrained_cfg
    assert cfg.get("test_input_size", cfg["input_size"]) == expected


def test_a1_weights_were_evaluated_at_288() -> None:
    assert meta_model("resnet50.a1_in1k").pretrained_cfg["test_input_size"] == (3, 288, 288)


def test_transforms_for_training_augments_at_the_crop_size() -> None:
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    training = backbones.transforms_for("resnet50.tv2_in1k", training=True)
    evaluation = backbones.transforms_for("resnet50.tv2_in1k")
    torch.manual_seed(0)
    first, second = training(image), training(image)
    assert first.shape == second.shape == evaluation(image).shape == (3, 224, 224)
    assert not torch.equal(first, second)  # random crops
    assert torch.equal(evaluation(image), evaluation(image))
