"""Numerical parity: each architecture computes the same function as its torchvision/timm reference.

The reference's random weights are copied into ours with strict=True (converted where the
layout differs); outputs must agree within 1e-5 of the output scale, in eval and train mode,
for square and odd sizes, batch 1 and 4.
"""

from __future__ import annotations

import functools

import pytest
import torch

import backbones
from backbones.convert import convert_state_dict

from .helpers import relative_max_diff
from .references import REFERENCES, Reference

TOLERANCE = 1e-5
SIZES = {"224": (224, 224), "odd193x257": (193, 257)}
BATCHES = (1, 4)
MODES = ("eval", "train")


@functools.lru_cache(maxsize=2)
def _pair(ref: Reference) -> tuple[torch.nn.Module, torch.nn.Module]:
    theirs = ref.build()
    ours = backbones.create_model(ref.arch, **ref.our_kwargs)
    ours.load_state_dict(convert_state_dict(theirs.state_dict(), ref.arch, source=ref.layout), strict=True)
    return ours, theirs


def _run_both(ref: Reference, x: torch.Tensor, mode: str) -> tuple[object, object]:
    ours, theirs = _pair(ref)
    outputs = []
    for model in (ours, theirs):
        model.train(mode == "train")
        # Same seed before each forward: dropout draws the same masks in both networks.
        torch.manual_seed(1234)
        with torch.no_grad():
            outputs.append(model(x.clone()))
    return outputs[0], outputs[1]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("ref", REFERENCES, ids=lambda r: r.id)
def test_outputs_match_reference(ref: Reference, size: tuple[int, int], batch: int, mode: str, record_property) -> None:
    x = torch.randn(batch, 3, *size)
    ours, theirs = _run_both(ref, x, mode)
    diff = relative_max_diff(ours, theirs)
    record_property("relative_max_diff", diff)
    assert diff <= TOLERANCE, f"{ref.id} {size} batch {batch} {mode}: relative max diff {diff:.3g}"


@pytest.mark.parametrize("ref", [r for r in REFERENCES if r.layout == "torchvision"], ids=lambda r: r.id)
def test_reference_checkpoint_loads_strictly_without_conversion(ref: Reference) -> None:
    ours = backbones.create_model(ref.arch, **ref.our_kwargs)
    result = ours.load_state_dict(ref.build().state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("ref", [r for r in REFERENCES if r.num_params is not None], ids=lambda r: r.id)
def test_parameter_count_is_canonical(ref: Reference) -> None:
    ours = backbones.create_model(ref.arch, **ref.our_kwargs)
    assert sum(p.numel() for p in ours.parameters()) == ref.num_params
    assert sum(p.numel() for p in ref.build().parameters()) == ref.num_params
