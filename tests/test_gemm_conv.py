"""GemmConv1d / GemmConvTranspose1d: im2col/col2im adjointness, exact gradients, autocast bf16 path,
equivalence with nn.Conv1d / nn.ConvTranspose1d, tap-major weight storage."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffusion_policy.models.gemm_conv import (
    GemmConv1d,
    GemmConvTranspose1d,
    _GemmConv1dFunction,
    _GemmConvTranspose1dFunction,
    col2im,
    im2col,
)

GEOMETRIES = [(5, 1, 2, 16), (3, 2, 1, 16), (1, 1, 0, 8), (3, 1, 0, 9), (4, 3, 2, 11)]  # k, s, p, T


@pytest.mark.parametrize("k,s,p,T", GEOMETRIES)
def test_col2im_is_the_adjoint_of_im2col(k, s, p, T):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, T, dtype=torch.double, generator=g)
    cols = im2col(x, k, s, p)
    c = torch.randn(cols.shape, dtype=torch.double, generator=g)
    assert torch.allclose((cols * c).sum(), (x * col2im(c, T, k, s, p)).sum())


GEMM_CASES = [(_GemmConv1dFunction, F.conv1d, (4, 3), *g) for g in GEOMETRIES] + [
    (_GemmConvTranspose1dFunction, F.conv_transpose1d, (3, 4), *g) for g in [(4, 2, 1, 8), (3, 1, 1, 5), (5, 3, 2, 7)]
]  # function, reference, weight (A, B) of the (A, B, k) weight, k, s, p, T; 3 input and 4 output channels


@pytest.mark.parametrize("function,reference,weight_dims,k,s,p,T", GEMM_CASES)
def test_gemm_functions_match_torch_with_exact_gradients(function, reference, weight_dims, k, s, p, T):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, T, dtype=torch.double, generator=g, requires_grad=True)
    w = torch.randn(*weight_dims, k, dtype=torch.double, generator=g, requires_grad=True)
    b = torch.randn(4, dtype=torch.double, generator=g, requires_grad=True)

    def gemm(x, w, b):
        return function.apply(x, w.permute(0, 2, 1).reshape(weight_dims[0], -1), b, k, s, p)

    assert torch.allclose(gemm(x, w, b), reference(x, w, b, stride=s, padding=p))
    assert torch.autograd.gradcheck(gemm, (x, w, b))


def test_autocast_runs_the_gemm_in_bf16_and_keeps_fp32_gradients():
    torch.manual_seed(0)
    conv = GemmConv1d(16, 32, 5, padding=2)
    x = torch.randn(4, 16, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    assert y.dtype == torch.bfloat16 and y.shape == (4, 32, 8)
    reference = F.conv1d(x, conv.weight, conv.bias, padding=2)
    assert (y.float() - reference).abs().max() <= 2e-2 * reference.abs().max()
    y.float().square().sum().backward()
    assert conv.weight.grad.dtype == torch.float32 and conv.weight.grad.shape == conv.weight.shape
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("ours,plain,channels,kwargs", [
    (GemmConv1d, torch.nn.Conv1d, (6, 5), {"kernel_size": 3, "stride": 2, "padding": 1}),
    (GemmConvTranspose1d, torch.nn.ConvTranspose1d, (8, 6), {"kernel_size": 4, "stride": 2, "padding": 1}),
])
def test_layers_are_drop_ins_for_the_torch_layers(ours, plain, channels, kwargs):
    """Same state dict; the input's dtype outside autocast (float32, float64), bf16 under it."""
    torch.manual_seed(0)
    layer, reference = ours(*channels, **kwargs), plain(*channels, **kwargs)
    reference.load_state_dict(layer.state_dict())
    assert set(layer.state_dict()) == {"weight", "bias"}
    x = torch.randn(3, channels[0], 8)
    expected = reference(x)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and y.shape == expected.shape
    assert (y.float() - expected).abs().max() <= 2e-2 * expected.abs().max()
    assert layer.double()(x.double()).dtype == torch.float64


def test_transposed_layer_names_what_it_does_not_support():
    up = GemmConvTranspose1d(8, 6, 4, stride=2, padding=1)
    with pytest.raises(ValueError, match="output_size"):
        up(torch.randn(1, 8, 5), output_size=[10])
    with pytest.raises(ValueError, match="output_padding"):
        GemmConvTranspose1d(4, 4, 3, stride=2, output_padding=1)


@pytest.mark.parametrize("layer", [GemmConv1d(8, 6, 5, padding=2), GemmConvTranspose1d(8, 6, 4, stride=2, padding=1)])
def test_weight_is_stored_tap_major_and_its_gradient_needs_no_copy(layer):
    """The GEMM matrix is a view of the parameter, and the gradient arrives in the parameter's
    layout in both fp32 and bf16 autocast (no transposing copy per step)."""
    a, b, k = layer.weight.shape
    assert layer.weight.stride() == (k * b, 1, b)
    assert layer.gemm_weight().data_ptr() == layer.weight.data_ptr()
    for bf16 in (False, True):
        layer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = layer(torch.randn(2, 8, 6))
        y.float().square().sum().backward()
        assert layer.weight.grad.stride() == layer.weight.stride() and layer.weight.grad.dtype == torch.float32


def test_tap_major_layout_survives_loading_a_plain_state_dict():
    conv = GemmConv1d(8, 6, 5, padding=2)
    plain = torch.nn.Conv1d(8, 6, 5, padding=2)
    conv.load_state_dict(plain.state_dict())
    assert torch.equal(conv.weight, plain.weight) and conv.weight.stride() == (40, 1, 8)


@pytest.mark.parametrize("kwargs", [{"dilation": 2}, {"groups": 2}, {"padding": "same"}, {"padding_mode": "reflect"}])
def test_unsupported_options_are_named(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        GemmConv1d(4, 4, 3, **kwargs)
