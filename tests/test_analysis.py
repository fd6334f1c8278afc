"""Shape arithmetic, the summary table and receptive fields, checked against real tensors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._pytree import tree_flatten

import backbones
from backbones.apps.analysis import conv_output_size, receptive_field, same_padding, summary

from .helpers import fresh_model, meta_model

FAMILY_EXAMPLES = ["resnet18", "vgg11_bn", "googlenet_v1", "inception_v3", "inception_v2", "resnet18_fpn"]


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 300),
    kernel=st.integers(1, 11),
    stride=st.integers(1, 5),
    padding=st.integers(0, 5),
    dilation=st.integers(1, 3),
)
def test_conv_output_size_agrees_with_conv2d(size: int, kernel: int, stride: int, padding: int, dilation: int) -> None:
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    conv = nn.Conv2d(1, 1, kernel, stride=stride, padding=padding, dilation=dilation, device="meta")
    if span < 0:
        with pytest.raises(ValueError, match="does not fit"):
            conv_output_size(size, kernel, stride, padding, dilation)
        return
    real = conv(torch.empty(1, 1, size, size, device="meta")).shape[-1]
    assert conv_output_size(size, kernel, stride, padding, dilation) == real


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 300),
    kernel=st.integers(1, 7),
    stride=st.integers(1, 4),
    padding=st.integers(0, 3),
    ceil_mode=st.booleans(),
)
def test_conv_output_size_agrees_with_max_pool_including_ceil_mode(
    size: int, kernel: int, stride: int, padding: int, ceil_mode: bool
) -> None:
    if padding > kernel // 2 or size + 2 * padding < kernel:
        return  # PyTorch refuses these pools
    pool = nn.MaxPool2d(kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)
    real = pool(torch.empty(1, 1, size, size, device="meta")).shape[-1]
    assert conv_output_size(size, kernel, stride, padding, ceil_mode=ceil_mode) == real


@settings(max_examples=50, deadline=None)
@given(size=st.integers(1, 64), half=st.integers(0, 4), dilation=st.integers(1, 3))
def test_same_padding_keeps_the_size_at_stride_one(size: int, half: int, dilation: int) -> None:
    kernel = 2 * half + 1
    conv = nn.Conv2d(1, 1, kernel, padding=same_padding(kernel, dilation), dilation=dilation, device="meta")
    assert conv(torch.empty(1, 1, size, size, device="meta")).shape[-1] == size


def test_same_padding_refuses_even_kernels() -> None:
    with pytest.raises(ValueError, match="odd kernel"):
        same_padding(4)


@pytest.mark.parametrize("name", FAMILY_EXAMPLES)
def test_summary_shapes_are_the_real_forward_pass_shapes(name: str) -> None:
    model = fresh_model(name).eval()
    size = (1, 3, 96, 96) if model.min_input_size <= 96 else (1, 3, 160, 160)
    real: dict[str, tuple[int, ...]] = {}
    passed_in: dict[str, list[torch.Tensor]] = {}

    def tensors(values) -> list[torch.Tensor]:
        return [t for t in tree_flatten(values)[0] if isinstance(t, torch.Tensor)]

    def remember_inputs(name: str):
        def hook(_module, inputs) -> None:
            passed_in[name] = tensors(inputs)  # a copy of the list: modules may append to theirs

        return hook

    def record(name: str):
        def hook(_module, _inputs, output) -> None:
            computed = [t for t in tensors(output) if not any(t is seen for seen in passed_in[name])]
            real.setdefault(name, tuple((computed or tensors(output))[0].shape))

        return hook

    listed = [(n, m) for n, m in model.named_modules() if n and n.count(".") <= 1]
    hooks = [m.register_forward_pre_hook(remember_inputs(n)) for n, m in listed]
    hooks += [m.register_forward_hook(record(n)) for n, m in listed]
    with torch.no_grad():
        model(torch.randn(size))
    for hook in hooks:
        hook.remove()
    rows = summary(model, size, depth=1).rows
    checked = [row for row in rows if row.name in real]
    assert checked and all(row.output_shape == real[row.name] for row in checked)


def test_summary_shows_the_level_an_fpn_extra_block_adds_with_its_stride() -> None:
    model = fresh_model("resnet18_fpn").eval()
    with torch.no_grad():
        pool = model(torch.randn(1, 3, 128, 192))["pool"]
    row = next(row for row in summary(model, (1, 3, 128, 192), depth=1).rows if row.name == "fpn.extra_blocks")
    assert row.output_shape == tuple(pool.shape) and row.stride == 64


@pytest.mark.parametrize("name", FAMILY_EXAMPLES)
def test_summary_totals_equal_parameter_counts_and_torchinfo(name: str) -> None:
    import torchinfo

    model = fresh_model(name)
    size = (1, 3, max(model.min_input_size, 96), max(model.min_input_size, 96))
    table = summary(model, size)
    assert table.total_params == sum(p.numel() for p in model.parameters())
    assert table.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    reference = torchinfo.summary(model, input_size=size, verbose=0)
    assert table.total_params == reference.total_params
    assert table.trainable_params == reference.trainable_params


@pytest.mark.parametrize(("name", "giga_macs"), [("resnet50", 4.1), ("vgg19", 19.6)])
def test_multiply_adds_at_224_are_the_published_figures(name: str, giga_macs: float) -> None:
    table = summary(meta_model(name), (1, 3, 224, 224), device="meta")
    assert table.total_macs / 1e9 == pytest.approx(giga_macs, rel=0.02)


def test_summary_renders_a_table_and_gives_data() -> None:
    table = summary(meta_model("resnet18"), (1, 3, 224, 224), depth=0, device="meta")
    text = str(table)
    assert "Output shape" in text and "layer4" in text and "Parameters: 11,689,512" in text
    rows = table.as_dicts()
    assert rows[0]["name"] == "conv1" and rows[0]["params"] == 64 * 3 * 7 * 7  # N x M x K x K
    fc = next(r for r in rows if r["name"] == "fc")
    assert fc["params"] == 1000 * 512 + 1000 and fc["receptive_field"] is None  # M x N + bias, sees all


def _linearised(model: nn.Module) -> nn.Module:
    """The same connectivity with every nonlinearity removed, so no gradient is cut off by a ReLU
    or a max-pool's argmax: the nonzero gradient then covers exactly the receptive field."""
    for name, module in list(model.named_modules()):
        if not name:
            continue
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        if isinstance(module, nn.ReLU):
            setattr(owner, leaf, nn.Identity())
        elif isinstance(module, nn.MaxPool2d):
            setattr(owner, leaf, nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode))
    return model.eval()


def _empirical_receptive_field(model: nn.Module, stage: str, size: int) -> int:
    x = torch.zeros(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    extractor = backbones.FeatureExtractor(model, out_indices=None)
    fmap = extractor(x)[stage]
    center = fmap[0, :, fmap.shape[2] // 2, fmap.shape[3] // 2].sum()
    (grad,) = torch.autograd.grad(center, x)
    rows = grad.abs().sum(dim=(0, 1, 3)).nonzero()
    return int(rows.max() - rows.min() + 1)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_resnet_stage_receptive_fields_agree_with_the_gradient_of_one_output_pixel(arch: str) -> None:
    analytic = receptive_field(meta_model(arch), (1, 3, 224, 224))
    model = _linearised(fresh_model(arch)).double()
    for stage, (rf, stride) in analytic.items():
        size = max(rf + 4 * int(stride), model.min_input_size)  # room for the whole field around the centre
        assert _empirical_receptive_field(model, stage, size) == rf, stage


@pytest.mark.parametrize("name", backbones.list_models(kind="classifier"))
def test_receptive_field_grows_and_strides_match_feature_info(name: str) -> None:
    model = meta_model(name)
    size = model.pretrained_cfg["input_size"][-1]
    fields = receptive_field(model, (1, 3, size, size))
    assert [stride for _, stride in fields.values()] == [f.stride for f in model.feature_info]
    sizes = [rf for rf, _ in fields.values()]
    assert sizes == sorted(sizes) and sizes[0] > 1


@pytest.mark.parametrize("name", ["googlenet_v1", "inception_v3"])
def test_summary_says_which_parameters_its_rows_do_not_show(name: str) -> None:
    model = meta_model(name)
    table = summary(model, (1, *model.pretrained_cfg["input_size"]), depth=0, device="meta")
    without_aux = sum(p.numel() for p in meta_model(name, aux_logits=False).parameters())
    assert sum(row.params for row in table.rows) == table.shown_params == without_aux
    assert table.total_params == sum(p.numel() for p in model.parameters()) > without_aux
    assert set(table.not_run) == {n for n, _ in model.named_children() if "aux" in n.lower()}
    assert f"the rows hold {without_aux:,}" in str(table)
