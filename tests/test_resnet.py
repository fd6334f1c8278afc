"""ResNet options that torchvision users rely on."""

from __future__ import annotations

import pytest
import torch

import backbones
from backbones import FrozenBatchNorm2d

from .helpers import relative_max_diff


def test_zero_init_residual_makes_every_block_start_as_identity_plus_shortcut() -> None:
    model = backbones.create_model("resnet50", zero_init_residual=True)
    last_norms = [block.bn3 for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for block in stage]
    assert all(torch.count_nonzero(norm.weight) == 0 for norm in last_norms)


def test_frozen_batchnorm_has_no_trainable_norm_parameters() -> None:
    model = backbones.create_model("resnet18", norm_layer="frozen_batchnorm")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    trainable = sum(p.numel() for p in model.parameters())
    assert trainable == 11_689_512 - 9_600  # BatchNorm's affine parameters became buffers


def test_frozen_batchnorm_model_loads_a_batchnorm_checkpoint_and_matches_it_in_eval() -> None:
    regular = backbones.create_model("resnet18").eval()
    frozen = backbones.create_model("resnet18", norm_layer="frozen_batchnorm")
    frozen.load_state_dict(regular.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert relative_max_diff(frozen(x), regular(x)) <= 1e-5


def test_frozen_batchnorm_matches_torchvision() -> None:
    from torchvision.ops import FrozenBatchNorm2d as Reference

    ours, theirs = FrozenBatchNorm2d(8), Reference(8)
    for buffer in ("weight", "bias", "running_mean", "running_var"):
        value = torch.rand(8) + 0.5
        getattr(ours, buffer).copy_(value)
        getattr(theirs, buffer).copy_(value)
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize(
    ("flags", "strides"), [((False, True, True), [2, 4, 8, 8, 8]), ((False, False, True), [2, 4, 8, 16, 16])]
)
def test_replace_stride_with_dilation_matches_torchvision(flags: tuple[bool, bool, bool], strides: list[int]) -> None:
    import torchvision

    theirs = torchvision.models.resnet50(replace_stride_with_dilation=list(flags)).eval()
    ours = backbones.create_model("resnet50", replace_stride_with_dilation=flags).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert relative_max_diff(ours(x), theirs(x)) <= 1e-5
        assert ours.forward_features(x).shape[-1] == 96 // strides[-1]
    assert [f.stride for f in ours.feature_info] == strides


def test_replace_stride_with_dilation_needs_three_flags() -> None:
    with pytest.raises(ValueError, match="3 flags"):
        backbones.create_model("resnet50", replace_stride_with_dilation=(True,))
