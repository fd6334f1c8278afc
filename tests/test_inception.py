"""The Inception family: GoogLeNet's auxiliary heads and loss, its options, and v2 against v3."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import backbones
from backbones.models.inception import (
    AUX_LOSS_WEIGHT,
    GoogLeNetOutputs,
    InceptionOutputs,
    InputRenormalize,
    googlenet_loss,
)

from .helpers import fresh_model, meta_model, relative_max_diff


def _hand_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    log_probs = logits - logits.exp().sum(dim=1, keepdim=True).log()
    return -log_probs[torch.arange(len(target)), target].mean()


def test_googlenet_loss_weights_the_auxiliary_losses_by_0_3() -> None:
    target = torch.tensor([1, 0, 3])
    logits, aux1, aux2 = (torch.randn(3, 5) for _ in range(3))
    expected = _hand_cross_entropy(logits, target) + 0.3 * (
        _hand_cross_entropy(aux1, target) + _hand_cross_entropy(aux2, target)
    )
    assert AUX_LOSS_WEIGHT == 0.3
    assert torch.allclose(googlenet_loss(GoogLeNetOutputs(logits, aux1, aux2), target), expected, atol=1e-6)


def test_googlenet_loss_of_plain_logits_is_cross_entropy() -> None:
    logits, target = torch.randn(4, 6), torch.tensor([0, 5, 2, 2])
    assert torch.allclose(googlenet_loss(logits, target), F.cross_entropy(logits, target))


def test_googlenet_trains_with_its_loss_through_all_three_heads() -> None:
    model = fresh_model("googlenet_v1", num_classes=4).train()
    outputs = model(torch.randn(2, 3, 96, 96))
    assert isinstance(outputs, GoogLeNetOutputs) and all(o.shape == (2, 4) for o in outputs)
    googlenet_loss(outputs, torch.tensor([0, 3])).backward()
    assert model.aux1.fc2.weight.grad is not None and model.aux2.fc2.weight.grad is not None


def test_googlenet_in_eval_returns_plain_logits() -> None:
    model = fresh_model("googlenet_v1").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 96))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 1000)


def test_googlenet_without_aux_logits_has_no_auxiliary_layers() -> None:
    model = meta_model("googlenet_v1", aux_logits=False)
    assert model.aux1 is None and model.aux2 is None
    assert not any(name.startswith("aux") for name, _ in model.named_parameters())
    assert isinstance(fresh_model("googlenet_v1", aux_logits=False).train()(torch.randn(2, 3, 64, 64)), torch.Tensor)


@pytest.mark.parametrize(("true_5x5", "kernel"), [(False, (3, 3)), (True, (5, 5))])
def test_third_branch_kernel_is_torchvisions_3x3_or_the_papers_5x5(true_5x5: bool, kernel: tuple[int, int]) -> None:
    model = meta_model("googlenet_v1", true_5x5=true_5x5)
    convs = [m.branch3[1].conv for m in model.modules() if hasattr(m, "branch3")]
    assert len(convs) == 9 and all(c.kernel_size == kernel for c in convs)


def test_transform_input_equals_normalising_with_mean_and_std_one_half() -> None:
    plain = fresh_model("googlenet_v1", aux_logits=False).eval()
    transforming = fresh_model("googlenet_v1", aux_logits=False, transform_input=True).eval()
    transforming.load_state_dict(plain.state_dict())
    assert isinstance(transforming.input_transform, InputRenormalize)
    raw = torch.rand(2, 3, 96, 96)
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        assert relative_max_diff(transforming((raw - mean) / std), plain((raw - 0.5) / 0.5)) <= 1e-5


def test_reset_classifier_resets_the_auxiliary_heads_too() -> None:
    model = fresh_model("googlenet_v1")
    model.reset_classifier(7)
    assert model.aux1.fc2.out_features == model.aux2.fc2.out_features == model.fc.out_features == 7
    v3 = fresh_model("inception_v3")
    v3.reset_classifier(7)
    assert v3.AuxLogits.fc.out_features == v3.fc.out_features == 7


def test_inception_v3_training_returns_logits_and_aux() -> None:
    model = fresh_model("inception_v3", num_classes=3).train()
    outputs = model(torch.randn(2, 3, 299, 299))
    assert isinstance(outputs, InceptionOutputs) and outputs.logits.shape == outputs.aux.shape == (2, 3)


def test_inception_v3_training_below_299_with_aux_gets_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"auxiliary classifier needs inputs of at least 299x299.*aux_logits=False"):
        fresh_model("inception_v3").train()(torch.randn(2, 3, 224, 224))


def test_inception_v3_without_aux_trains_at_small_sizes() -> None:
    out = fresh_model("inception_v3", aux_logits=False).train()(torch.randn(2, 3, 96, 96))
    assert out.shape == (2, 1000)


def _keys(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_inception_v2_differs_from_v3_only_in_the_stem_and_the_aux_head() -> None:
    v2, v3 = _keys(meta_model("inception_v2")), _keys(meta_model("inception_v3"))
    shared = v2.keys() & v3.keys()
    assert all(v2[k] == v3[k] for k in shared)
    # Modules owning the keys one network has and the other lacks.
    only_v3 = {k.rsplit(".", 1)[0] for k in v3.keys() - v2.keys()}
    only_v2 = {k.rsplit(".", 1)[0] for k in v2.keys() - v3.keys()}
    v3_stem = {f"Conv2d_{n}_3x3.{part}" for n in ("1a", "2a", "2b") for part in ("conv", "bn")}
    assert only_v3 == v3_stem | {"AuxLogits.conv0.bn", "AuxLogits.conv1.bn"}
    # v2's stem, and the aux convolutions' biases that replace BatchNorm.
    assert only_v2 == {"Conv2d_1a_7x7.conv", "Conv2d_1a_7x7.bn", "AuxLogits.conv0.conv", "AuxLogits.conv1.conv"}


def test_inception_v2_stem_is_one_7x7_stride_2_convolution_to_64_channels() -> None:
    stem = meta_model("inception_v2").Conv2d_1a_7x7
    assert stem.conv.kernel_size == (7, 7) and stem.conv.stride == (2, 2) and stem.conv.out_channels == 64


def test_inception_v2_aux_head_has_no_batchnorm_and_v3s_has() -> None:
    def norms(model: nn.Module) -> int:
        return sum(isinstance(m, nn.BatchNorm2d) for m in model.AuxLogits.modules())

    assert norms(meta_model("inception_v2")) == 0
    assert norms(meta_model("inception_v3")) == 2


@pytest.mark.parametrize("size", [(299, 299), (311, 347)], ids=["299", "odd311x347"])
def test_inception_v2_trains_forward_and_backward(size: tuple[int, int]) -> None:
    model = fresh_model("inception_v2", num_classes=5).train()
    outputs = model(torch.randn(2, 3, *size))
    assert outputs.logits.shape == outputs.aux.shape == (2, 5)
    (outputs.logits.sum() + 0.3 * outputs.aux.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_inception_v2_with_stem_and_norm_options_is_the_same_class() -> None:
    assert type(meta_model("inception_v2")) is type(meta_model("inception_v3")) is backbones.Inception3
