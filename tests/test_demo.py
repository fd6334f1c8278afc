"""The main job (``make demo``): it runs offline on a fresh machine and reports what it promises."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save

import backbones
from backbones.apps.demo import BF16_SKIPPED, classify_sample, finetune_digits, run_demo, sample_image
from backbones.data.datasets import open_dataset
from backbones.runtime.fusion import mkldnn_fusion_available


def _torchvision_resnet50_fpn_parameters() -> int:
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    reference = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, trainable_layers=5, norm_layer=torch.nn.BatchNorm2d
    )
    return sum(p.numel() for p in reference.parameters())


def test_demo_runs_offline_with_random_weights_and_says_so(caches, monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("BACKBONES_OFFLINE", "1")
    report = run_demo(tmp_path, seconds=0.1, digits_epochs=0)  # the digits part has a test of its own
    out = capsys.readouterr().out
    assert "loaded through torch.hub from this checkout" in out
    assert "weights: random initialisation (resnet50_fpn.tv_coco is not cached and offline mode is on)" in out
    # The summary table; without weights the FPN trains everything, as torchvision's detectors do.
    assert f"Parameters: {_torchvision_resnet50_fpn_parameters():,}" in out
    assert report["pyramid"] == {
        "0": (1, 256, 120, 160),
        "1": (1, 256, 60, 80),
        "2": (1, 256, 30, 40),
        "3": (1, 256, 15, 20),
        "pool": (1, 256, 8, 10),
    }
    assert "stride 64" in out and "throughput (images/s, batch 1, 480x640" in out
    if mkldnn_fusion_available(torch.bfloat16):
        assert set(report["throughput"]) == {"eager fp32", "optimized fp32", "optimized bf16"}
        assert f"optimized bf16 {report['throughput']['optimized bf16']:.2f}" in out
    else:  # bf16 would run on the fp32 kernels, no faster: said, not timed
        assert set(report["throughput"]) == {"eager fp32", "optimized fp32"}
        assert f"optimized bf16: {BF16_SKIPPED}" in out
    assert Path(report["picture"]).read_bytes()[:4] == b"\x89PNG"
    assert "resnet50 top-5: skipped" in out and report["top5"] is None


def test_demo_prints_top5_classes_when_resnet50_weights_are_reachable(hub_server, caches, capsys) -> None:
    weights = backbones.create_model("resnet50").state_dict()
    hub_server.publish("timm/resnet50.tv2_in1k", {"model.safetensors": save(weights)})
    top5 = classify_sample(sample_image())  # run_demo's last part; the test above runs the rest
    out = capsys.readouterr().out
    assert "resnet50 top-5 (resnet50.tv2_in1k, resnet50.tv2_in1k can be downloaded from 127.0.0.1)" in out
    assert len(top5) == 5
    names = backbones.create_model("resnet50.tv2_in1k").pretrained_cfg["class_names"]
    assert all(name in names for name, _ in top5)
    probabilities = [p for _, p in top5]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6


def test_demo_fine_tunes_on_the_digits_and_classifies_held_out_digits_with_the_reloaded_model(
    tmp_path: Path, capsys
) -> None:
    digits = finetune_digits(tmp_path, epochs=1, shown=4)
    out = capsys.readouterr().out
    assert f"held-out accuracy: top-1 {100 * digits['top1']:.2f}% of 360 digits" in out
    # The folder the demo reloads is the model it trained: it scores the same on the held-out digits.
    assert backbones.evaluate_model(digits["folder"], "digits", picture=None)["top1"] == pytest.approx(digits["top1"])
    held_out = [label for _, label in open_dataset("digits", "val", model="resnet18").samples]
    assert [truth for truth, _, _ in digits["predictions"]] == [str(label) for label in held_out[:4]]
    for truth, predicted, probability in digits["predictions"]:
        assert f"is a {truth}: predicted {predicted} ({100 * probability:.1f}%)" in out
    assert "reloaded" in out and "with from_pretrained" in out


def test_sample_image_is_deterministic_rgb_in_range() -> None:
    image = sample_image((60, 80))
    assert image.shape == (3, 60, 80) and image.min() >= 0 and image.max() <= 1
    assert torch.equal(image, sample_image((60, 80)))


@pytest.mark.parametrize("target", ["demo", "test"])
def test_readme_opens_with_the_two_commands(target: str) -> None:
    from .helpers import REPO_ROOT

    head = (REPO_ROOT / "README.md").read_text().split("\n\n", 2)[1]
    assert f"make {target}" in head
