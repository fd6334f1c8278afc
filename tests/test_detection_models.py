"""backbones.detector: torchvision's detectors on our FPNs, COCO weights copied in, saved and rebuilt."""

from __future__ import annotations

import hashlib
import io
import warnings

import pytest
import torch
from torch import nn

import backbones
from backbones.core.layers import FrozenBatchNorm2d
from backbones.hub.download import WeightsIntegrityError
from backbones.hub.loading import WeightsMismatchError
from backbones.models.detection import COCO_DETECTOR_WEIGHTS, DETECTOR_KINDS, load_torchvision_detector_state

from .helpers import assert_same_detections, per_model

# Small images and few proposals: the comparison is of the layout and the weights, not of the sizes.
SMALL = {"min_size": 128, "max_size": 160, "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 100}
# The smallest FPN of each family (ResNet, VGG, GoogLeNet, Inception): the others differ from it only in depth.
SMALLEST_FPN_OF_EACH_FAMILY = {"resnet18_fpn": 64, "vgg16_fpn": 64, "googlenet_v1_fpn": 64, "inception_v3_fpn": 96}
# Few proposals and samples: one step exercises every loss at a fraction of the default cost.
CHEAP = {
    "fasterrcnn": {"rpn_pre_nms_top_n_train": 64, "rpn_post_nms_top_n_train": 32, "box_batch_size_per_image": 32},
    "retinanet": {"topk_candidates": 64},
    "fcos": {"topk_candidates": 64},
}
CHEAP["maskrcnn"] = CHEAP["fasterrcnn"]


def _legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The key names of torchvision's 2019 COCO checkpoints (before Conv2dNormActivation, torchvision 0.13)."""
    renamed = {}
    for key, value in state.items():
        key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for block in ("inner_blocks", "layer_blocks"):
            for level in range(4):
                key = key.replace(f"backbone.fpn.{block}.{level}.0.", f"backbone.fpn.{block}.{level}.")
        renamed[key] = value
    return renamed


def test_torchvision_coco_faster_rcnn_weights_copied_in_give_torchvisions_detections(
    hub_server, caches, forget_registered_weights
) -> None:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    reference = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_score_thresh=0.0, **SMALL).eval()
    buffer = io.BytesIO()
    torch.save(_legacy_keys(reference.state_dict()), buffer)
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    # Served as torchvision serves it, through the manifest's URL path and its sha256 check.
    url = hub_server.add_static(f"fasterrcnn_resnet50_fpn_coco-{digest[:8]}.pth", buffer.getvalue())
    backbones.register_weights("resnet50_fpn.tv_coco", url=url, sha256=digest[:8], layout="torchvision_detection")
    ours = backbones.detector("resnet50_fpn", pretrained="tv_coco", box_score_thresh=0.0, **SMALL).eval()
    images = [torch.rand(3, 120, 150), torch.rand(3, 141, 123)]
    with torch.no_grad():
        got, expected = ours(images), reference(images)
    assert_same_detections(got, expected)
    # torchvision's convention for a trained detector: frozen BatchNorm, conv1 and layer1 frozen.
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ours.backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in ours.backbone.modules())
    frozen = {n.split(".")[1] for n, p in ours.backbone.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}
    assert ours.detector_config["class_names"][:2] == ["__background__", "person"]


def test_coco_detector_files_are_torchvisions() -> None:
    from torchvision.models import get_model_weights

    from backbones.hub.manifest import get_weight_spec

    for kind, source in COCO_DETECTOR_WEIGHTS.items():
        url = get_model_weights(f"{kind}_resnet50_fpn")["COCO_V1"].url
        assert (get_weight_spec(*source.split(".")).url if kind == "fasterrcnn" else source) == url


@pytest.mark.parametrize(
    ("name", "kind"),
    per_model(
        [(name, kind) for name in SMALLEST_FPN_OF_EACH_FAMILY for kind in DETECTOR_KINDS], id=lambda n, k: f"{n}-{k}"
    ),
)
def test_detector_on_every_family_and_kind_runs_a_training_step(name: str, kind: str) -> None:
    size = SMALLEST_FPN_OF_EACH_FAMILY[name]
    model = backbones.detector(name, kind, num_classes=3, min_size=size, max_size=size, **CHEAP[kind])
    images = [torch.rand(3, size, size), torch.rand(3, size - 8, size)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[10.0, 10.0, 50.0, 30.0], [1.0, 1.0, 20.0, 20.0]]), "labels": torch.tensor([2, 1])},
    ]
    if kind == "maskrcnn":
        for target, image in zip(targets, images, strict=True):
            masks = torch.zeros(len(target["boxes"]), *image.shape[1:], dtype=torch.uint8)
            for mask, (x1, y1, x2, y2) in zip(masks, target["boxes"].int().tolist(), strict=True):
                mask[y1:y2, x1:x2] = 1
            target["masks"] = masks
    losses = model(images, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert model.backbone.fpn.layer_blocks[0][0].weight.grad is not None


@pytest.mark.parametrize("kind", DETECTOR_KINDS)
def test_anchors_follow_the_fpn_strides_as_torchvisions_do(kind: str) -> None:
    from torchvision.models import detection

    with torch.device("meta"):
        ours = backbones.detector("resnet50_fpn", kind)
        reference = getattr(detection, f"{kind}_resnet50_fpn")(weights=None, weights_backbone=None)
    generator = ours.rpn.anchor_generator if kind in ("fasterrcnn", "maskrcnn") else ours.anchor_generator
    expected = reference.rpn.anchor_generator if kind in ("fasterrcnn", "maskrcnn") else reference.anchor_generator
    assert generator.sizes == expected.sizes
    assert generator.aspect_ratios == expected.aspect_ratios
    assert [f.stride for f in ours.backbone.feature_info] == (
        [4, 8, 16, 32, 64] if kind in ("fasterrcnn", "maskrcnn") else [8, 16, 32, 64, 128]
    )
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in reference.state_dict().items()
    }


def test_a_detector_without_weights_trains_every_stage_with_batch_norm() -> None:
    with torch.device("meta"):
        model = backbones.detector("resnet50_fpn")
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())


def test_saved_detector_rebuilds_with_equal_outputs(tmp_path) -> None:
    import json

    model = backbones.detector("resnet18_fpn", "retinanet", num_classes=5, score_thresh=0.0, min_size=96, max_size=96)
    model.detector_config["class_names"] = ["__background__", "a", "b", "c", "d"]
    folder = backbones.save_detector(model, tmp_path / "det", extra_config={"metrics": {"AP": 0.5}})
    config = json.loads((folder / "config.json").read_text())
    assert config["detector"]["kind"] == "retinanet" and config["metrics"] == {"AP": 0.5}
    again = backbones.detector(folder)
    assert again.detector_config == model.detector_config
    images = [torch.rand(3, 90, 70)]
    with torch.no_grad():
        expected, got = model.eval()(images), again.eval()(images)
    assert len(expected[0]["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(got[0][key], expected[0][key])


def test_a_saved_detector_whose_weights_changed_is_refused(tmp_path) -> None:
    model = backbones.detector("resnet18_fpn", "fcos", num_classes=3, min_size=64, max_size=64)
    folder = backbones.save_detector(model, tmp_path / "det")
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match=r"model\.safetensors is not the file its config\.json"):
        backbones.detector(folder)


def test_coco_weights_for_another_class_count_keep_a_fresh_predictor(tmp_path) -> None:
    from torchvision.models.detection import retinanet_resnet50_fpn

    # Real tensors: the values are checked (finite, variances) before anything loads.
    state = retinanet_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    ours = backbones.detector("resnet50_fpn", "retinanet", num_classes=4)
    fresh = ours.head.classification_head.cls_logits.weight
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_torchvision_detector_state(ours, state, reinit_head=True)
    assert "cls_logits" in str(caught[0].message)
    assert ours.head.classification_head.cls_logits.weight.shape == fresh.shape
    with pytest.raises(WeightsMismatchError, match=r"cls_logits.weight \(819, 256, 3, 3\) vs \(36, 256, 3, 3\)"):
        load_torchvision_detector_state(ours, state)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: backbones.detector("resnet18_fpn", "yolo"), r"kind must be one of 'fasterrcnn'.*got 'yolo'"),
        (lambda: backbones.detector("resnet18"), r"a detector is built on an FPN.*its FPN is 'resnet18_fpn'"),
        (lambda: backbones.detector("resnet18_fpn", pretrained="tv_coco"), r"COCO detector on 'resnet50_fpn'"),
        (lambda: backbones.detector("resnet18_fpn", num_classes=1), r"num_classes must be an int from 2"),
        (lambda: backbones.detector("resnet18_fpn", min_size=900, max_size=800), r"max_size \(800\) must be at least"),
        (lambda: backbones.detector("resnet18_fpn", box_roi_pool=nn.Identity()), r"box_roi_pool=.*has no JSON form"),
    ],
    ids=["kind", "classifier", "coco-elsewhere", "classes", "sizes", "module-option"],
)
def test_a_bad_detector_argument_is_one_clear_line(call, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message) as raised:
        call()
    assert "\n" not in str(raised.value)


def test_a_saved_detector_takes_no_building_options(tmp_path) -> None:
    folder = backbones.save_detector(
        backbones.detector("resnet18_fpn", "fcos", min_size=64, max_size=64), tmp_path / "d"
    )
    with pytest.raises(ValueError, match=r"is a saved detector, built as saved; drop num_classes"):
        backbones.detector(folder, num_classes=3)
    (folder / "config.json").write_text('{"detector": {"kind": "fcos"}}')
    with pytest.raises(ValueError, match=r"config.json: the 'detector' object has no 'backbone'"):
        backbones.detector(folder)
