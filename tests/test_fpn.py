"""FPN: torchvision's resnet_fpn_backbone reproduced, the shape contract, detection drop-in."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import backbones
from backbones.hub.convert import convert_state_dict
from backbones.models.fpn import PRETRAINED_BODY_OPTIONS, FeaturePyramidNetwork, LastLevelP6P7, fpn_backbone

from .helpers import assert_same_detections, fresh_model, meta_model, per_model, relative_max_diff

FPN_MODELS = backbones.list_models(kind="fpn")


# torchvision's resnet_fpn_backbone freezes BatchNorm and the first two stages whatever the
# weights; ours does that with pretrained weights and is trainable without (as its detectors are).
TORCHVISION_BACKBONE_DEFAULTS = {"norm_layer": "frozen_batchnorm", "trainable_layers": 3}


def _torchvision_resnet_fpn(**kwargs) -> nn.Module:
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    return resnet_fpn_backbone(backbone_name="resnet50", weights=None, **kwargs)


@pytest.fixture(scope="module")
def resnet50_fpn_pair() -> tuple[nn.Module, nn.Module]:
    theirs = _torchvision_resnet_fpn()
    ours = backbones.create_model("resnet50_fpn", **TORCHVISION_BACKBONE_DEFAULTS)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("size", [(224, 224), (225, 301)], ids=["224", "odd225x301"])
def test_resnet50_fpn_matches_torchvision_resnet_fpn_backbone(resnet50_fpn_pair, size, mode: str) -> None:
    ours, theirs = resnet50_fpn_pair
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = theirs.train(mode == "train")(x)
        got = ours.train(mode == "train")(x)
    assert list(got) == list(expected) == ["0", "1", "2", "3", "pool"]
    assert relative_max_diff(got, expected) <= 1e-5


def test_resnet50_fpn_has_torchvisions_keys() -> None:
    with torch.device("meta"):
        expected = set(_torchvision_resnet_fpn().state_dict())
    assert set(meta_model("resnet50_fpn", **TORCHVISION_BACKBONE_DEFAULTS).state_dict()) == expected


@pytest.mark.parametrize("trainable_layers", [0, 1, 2, 3, 4, 5])
def test_trainable_layers_freeze_what_torchvision_freezes(trainable_layers: int) -> None:
    with torch.device("meta"):
        theirs = _torchvision_resnet_fpn(trainable_layers=trainable_layers)
    ours = meta_model("resnet50_fpn", norm_layer="frozen_batchnorm", trainable_layers=trainable_layers)
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in theirs.named_parameters() if p.requires_grad}


def test_retinanet_style_p6p7_on_layers_2_to_4_matches_torchvision() -> None:
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7 as TorchvisionP6P7

    theirs = _resnet_fpn_extractor(
        resnet50(norm_layer=FrozenBatchNorm2d), 3, returned_layers=[2, 3, 4], extra_blocks=TorchvisionP6P7(256, 256)
    ).eval()
    ours = backbones.create_model(
        "resnet50_fpn", returned_layers=(2, 3, 4), extra_blocks="p6p7", **TORCHVISION_BACKBONE_DEFAULTS
    ).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 161, 203)
    with torch.no_grad():
        got, expected = ours(x), theirs(x)
    assert list(got) == list(expected) == ["0", "1", "2", "p6", "p7"]
    assert relative_max_diff(got, expected) <= 1e-5
    assert isinstance(ours.fpn.extra_blocks, LastLevelP6P7)


def test_feature_pyramid_network_with_norm_matches_torchvision() -> None:
    from torchvision.ops import FeaturePyramidNetwork as Reference

    channels = [32, 64, 128]
    theirs = Reference(channels, 48, norm_layer=nn.BatchNorm2d).eval()
    ours = FeaturePyramidNetwork(channels, 48, norm_layer=nn.BatchNorm2d).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    inputs = [torch.randn(2, c, s, s + 3) for c, s in zip(channels, (33, 17, 9), strict=True)]
    with torch.no_grad():
        expected = theirs({str(i): t for i, t in enumerate(inputs)})
        assert relative_max_diff(ours(inputs), expected) <= 1e-5


@pytest.mark.parametrize("size", [(224, 224), (225, 301), (800, 1333)], ids=["224", "odd225x301", "800x1333"])
def test_feature_info_matches_every_level(size: tuple[int, int]) -> None:
    model = fresh_model("resnet50_fpn").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert list(out) == [f.name for f in model.feature_info]
    for info, level in zip(model.feature_info, out.values(), strict=True):
        expected = [-(-n // info.stride) for n in size]
        assert tuple(level.shape) == (1, model.out_channels, *expected), info


@pytest.mark.parametrize("name", per_model(FPN_MODELS))
def test_every_fpn_level_has_out_channels_and_its_stride(name: str) -> None:
    model = fresh_model(name).eval()
    size = max(model.min_input_size, 128)
    with torch.no_grad():
        grown = model(torch.randn(1, 3, size + 64, size + 64))
        out = model(torch.randn(1, 3, size, size))
    assert model.out_channels == 256
    for info, level, bigger in zip(model.feature_info, out.values(), grown.values(), strict=True):
        assert level.shape[1] == info.channels == 256
        # 64 more input pixels give 64/stride more pixels at every level.
        assert bigger.shape[-1] - level.shape[-1] == 64 // info.stride, info


def test_bad_trainable_layers_and_extra_blocks_get_clear_errors() -> None:
    with pytest.raises(ValueError, match="trainable_layers must be between 0 and 5"):
        backbones.create_model("resnet18_fpn", trainable_layers=6)
    with pytest.raises(ValueError, match="extra_blocks must be"):
        backbones.create_model("resnet18_fpn", extra_blocks="p8")


def test_features_only_on_an_fpn_model_points_to_its_body() -> None:
    with pytest.raises(ValueError, match=r"already returns multi-scale features.*'resnet50'"):
        backbones.create_model("resnet50_fpn", features_only=True)


def test_fpn_on_any_family_uses_its_stages() -> None:
    model = fpn_backbone("vgg11_bn", returned_layers=(2, 3, 4), extra_blocks=None, norm_layer="frozen_batchnorm")
    assert [f.name for f in model.body.feature_info] == ["pool3", "pool4", "pool5"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _detectors(detector: str):
    from torchvision.models import detection

    settings = {"min_size": 160, "max_size": 224, "box_score_thresh": 0.0, "box_detections_per_img": 50}
    reference = getattr(detection, f"{detector}_resnet50_fpn")(weights=None, weights_backbone=None, **settings)
    cls = {"fasterrcnn": detection.FasterRCNN, "maskrcnn": detection.MaskRCNN}[detector]
    ours = cls(backbones.create_model("resnet50_fpn"), num_classes=91, **settings)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours.eval(), reference.eval()


@pytest.mark.parametrize("detector", ["fasterrcnn", "maskrcnn"])
def test_torchvision_detector_with_our_backbone_gives_the_same_detections(detector: str) -> None:
    ours, reference = _detectors(detector)
    images = [torch.rand(3, 150, 200), torch.rand(3, 181, 163)]
    with torch.no_grad():
        got, expected = ours(images), reference(images)
    assert_same_detections(got, expected)
    assert all(("masks" in d) == (detector == "maskrcnn") for d in expected)


def test_resnet50_fpn_without_weights_trains_everything_like_torchvisions_detector() -> None:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    with torch.device("meta"):
        reference = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).backbone
    ours = meta_model("resnet50_fpn")
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in reference.named_parameters() if p.requires_grad}
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in reference.modules())
    assert batch_norms > 0 and sum(isinstance(m, nn.BatchNorm2d) for m in ours.modules()) == batch_norms


def test_fpn_with_pretrained_weights_freezes_like_torchvision(tmp_path) -> None:
    from safetensors.torch import save_file

    from backbones.core.registry import get_model_entry
    from backbones.hub.manifest import get_weight_spec

    # One policy: the code's, which is torchvision's; the COCO weights' manifest entry does not repeat it.
    assert PRETRAINED_BODY_OPTIONS == TORCHVISION_BACKBONE_DEFAULTS
    assert get_weight_spec("resnet50_fpn", "tv_coco").model_kwargs == {}
    with torch.device("meta"):
        from_tag = backbones.create_model("resnet50_fpn.tv_coco", pretrained=False)
    assert from_tag.model_config.get("norm_layer") is None  # no weights loaded: no policy
    assert get_model_entry("resnet50_fpn").pretrained_kwargs == PRETRAINED_BODY_OPTIONS
    weights = tmp_path / "resnet18.safetensors"
    save_file(backbones.create_model("resnet18").state_dict(), weights)
    model = fpn_backbone("resnet18", backbone_pretrained=str(weights))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    frozen_stages = {n.split(".")[0] for n, p in model.body.named_parameters() if not p.requires_grad}
    assert frozen_stages == {"conv1", "layer1"}


def test_published_fpn_weights_build_the_frozen_body_the_entry_omits(hub_server, caches, monkeypatch) -> None:
    from safetensors.torch import save

    import backbones.hub.manifest

    monkeypatch.setattr(backbones.hub.manifest, "_REGISTERED", {})
    trained = fpn_backbone("resnet18", norm_layer="frozen_batchnorm")
    hub_server.publish("tester/resnet18-fpn", {"model.safetensors": save(trained.state_dict())})
    backbones.register_weights("resnet18_fpn.mine", hf_hub_id="tester/resnet18-fpn", classes="coco")
    model = backbones.create_model("resnet18_fpn.mine", pretrained=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.model_config["norm_layer"] == PRETRAINED_BODY_OPTIONS["norm_layer"]  # saved folders rebuild it
    trainable = {n.split(".")[0] for n, p in model.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    assert torch.equal(model.fpn.layer_blocks[0][0].weight, trained.fpn.layer_blocks[0][0].weight)


def test_coco_detector_checkpoint_converts_to_our_resnet50_fpn() -> None:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    detector_state = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    # The published checkpoint predates torchvision 0.13 and has the FPN's legacy keys.
    legacy = {k.replace("fpn.inner_blocks.0.0.", "fpn.inner_blocks.0."): v for k, v in detector_state.items()}
    for state in (detector_state, legacy):
        ours = meta_model("resnet50_fpn")
        converted = convert_state_dict(state, "resnet50_fpn", source="torchvision_detection")
        result = ours.load_state_dict(converted, strict=False, assign=True)
        assert not result.missing_keys and not result.unexpected_keys
