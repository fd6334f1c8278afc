"""Checks every registered model passes: each new model is tested by being registered.

Models are built once per worker (a module-scoped fixture): tests that only run the model share
that instance, tests that change it (training steps, gradients, memory format) get a fresh copy;
inputs are small so that the large networks (VGG) stay quick.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch

import backbones
from backbones.core.registry import get_model_entry

from .helpers import flatten_outputs, fresh_model, per_model, relative_max_diff, test_input_size

ALL_MODELS = backbones.list_models()


@pytest.fixture(scope="module", params=per_model(ALL_MODELS))
def pristine(request: pytest.FixtureRequest) -> torch.nn.Module:
    return fresh_model(request.param)  # the build the model's tests in other files share


@pytest.fixture
def model(pristine: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The shared instance, for tests that only run it (its train/eval mode is restored after)."""
    training = pristine.training
    yield pristine
    pristine.train(training)


@pytest.fixture
def own_model(pristine: torch.nn.Module) -> torch.nn.Module:
    """A copy of its own, for tests that change the model."""
    return copy.deepcopy(pristine)


def _kind(model: torch.nn.Module) -> str:
    return get_model_entry(model.model_config["architecture"]).kind


def _assert_documented_shapes(model: torch.nn.Module, out: object, batch: int, height: int, width: int) -> None:
    shapes = [tuple(t.shape) for t in flatten_outputs(out)]
    if _kind(model) == "classifier":
        assert shapes == [(batch, model.num_classes)]
        return
    # Pyramid levels: out_channels each, at most ceil(size / stride) pixels (Inception's and
    # VGG's unpadded or flooring layers give a pixel or a few less; test_fpn checks strides).
    assert [s[:2] for s in shapes] == [(batch, model.out_channels)] * len(model.feature_info)
    for shape, info in zip(shapes, model.feature_info, strict=True):
        assert 0 < shape[2] <= -(-height // info.stride) and 0 < shape[3] <= -(-width // info.stride), info


@pytest.mark.parametrize("batch", [1, 2])
def test_forward_gives_the_documented_shapes(model: torch.nn.Module, batch: int) -> None:
    size = test_input_size(model)
    with torch.no_grad():
        out = model.eval()(torch.randn(batch, 3, size, size))
    _assert_documented_shapes(model, out, batch, size, size)


def test_odd_input_size_runs(model: torch.nn.Module) -> None:
    height, width = test_input_size(model, 65) + 2, test_input_size(model, 65) + 30
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, height, width))
    _assert_documented_shapes(model, out, 1, height, width)


def test_batch_of_one_trains(own_model: torch.nn.Module) -> None:
    model = own_model
    size = test_input_size(model, train=True)
    x = torch.randn(1, 3, size, size)
    if getattr(model, "aux_min_batch", 1) > 1:
        # A BatchNorm over a 1x1 map cannot train on one image: the model says so plainly.
        with pytest.raises(ValueError, match="needs a batch of at least 2"):
            model.train()(x)
        return
    out = model.train()(x)
    assert all(torch.isfinite(t).all() for t in flatten_outputs(out))


def test_backward_reaches_every_trainable_parameter(own_model: torch.nn.Module) -> None:
    model = own_model
    size = test_input_size(model, train=True)
    out = model.train()(torch.randn(2, 3, size, size))
    sum(t.float().mean() for t in flatten_outputs(out)).backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    without_grad = sorted(name for name, p in model.named_parameters() if p.requires_grad and p.grad is None)
    assert trainable and not without_grad, f"no gradient for {without_grad[:5]}"


def test_torchscript_round_trip_gives_the_same_output(model: torch.nn.Module, tmp_path) -> None:
    model.eval()
    x = torch.randn(2, 3, test_input_size(model), test_input_size(model))
    # Through a file: an in-memory buffer is several times slower for VGG's 550 MB.
    torch.jit.save(torch.jit.script(model), tmp_path / "model.pt")
    loaded = torch.jit.load(tmp_path / "model.pt")
    with torch.no_grad():
        assert relative_max_diff(loaded(x), model(x)) <= 1e-6


def test_channels_last_input_gives_the_same_output(own_model: torch.nn.Module) -> None:
    model = own_model.eval()
    x = torch.randn(2, 3, test_input_size(model), test_input_size(model))
    with torch.no_grad():
        expected = model(x)
        got = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert relative_max_diff(got, expected) <= 1e-5


BAD_INPUTS = {
    "wrong_channels": (lambda s: torch.randn(1, 4, s, s), r"expected 3 input channels, got 4"),
    "missing_batch_dim": (lambda s: torch.randn(3, s, s), r"got a 3-D tensor.*unsqueeze\(0\)"),
    "integer_dtype": (lambda s: torch.zeros(1, 3, s, s, dtype=torch.uint8), r"floating-point.*torch.uint8"),
    "too_small": (lambda s: torch.randn(1, 3, s - 1, 2 * s), r"too small.*needs at least"),
}


@pytest.mark.parametrize("bad", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_gets_a_clear_value_error(model: torch.nn.Module, bad) -> None:
    make_input, message = bad
    with pytest.raises(ValueError, match=message):
        model.eval()(make_input(model.min_input_size))


def test_minimum_input_size_is_accepted(model: torch.nn.Module) -> None:
    size = model.min_input_size
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, size, size))
    assert all(torch.isfinite(t).all() for t in flatten_outputs(out))
