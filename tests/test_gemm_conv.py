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


@pytest.mark.parametrize("k,s,p,T", GEOMETRIES)
def test_gemm_function_matches_conv1d_with_exact_gradients(k, s, p, T):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, T, dtype=torch.double, generator=g, requires_grad=True)
    w = torch.randn(4, 3, k, dtype=torch.double, generator=g, requires_grad=True)
    b = torch.randn(4, dtype=torch.double, generator=g, requires_grad=True)

    def gemm(x, w, b):
        return _GemmConv1dFunction.apply(x, w.permute(0, 2, 1).reshape(4, -1), b, k, s, p)

    assert torch.allclose(gemm(x, w, b), F.conv1d(x, w, b, stride=s, padding=p))
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


def test_outside_autocast_it_matches_conv1d_in_the_input_dtype():
    torch.manual_seed(0)
    conv = GemmConv1d(6, 5, 3, stride=2, padding=1)
    reference = torch.nn.Conv1d(6, 5, 3, stride=2, padding=1)
    reference.load_state_dict(conv.state_dict())
    x = torch.randn(2, 6, 16)
    y = conv(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, reference(x), rtol=1e-5, atol=1e-5)
    assert set(conv.state_dict()) == {"weight", "bias"}
    assert conv.double()(x.double()).dtype == torch.float64


@pytest.mark.parametrize("k,s,p,T", [(4, 2, 1, 8), (3, 1, 1, 5), (5, 3, 2, 7), (1, 1, 0, 4)])
def test_transposed_gemm_function_matches_conv_transpose1d_with_exact_gradients(k, s, p, T):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, T, dtype=torch.double, generator=g, requires_grad=True)
    w = torch.randn(3, 4, k, dtype=torch.double, generator=g, requires_grad=True)  # (C_in, C_out, k)
    b = torch.randn(4, dtype=torch.double, generator=g, requires_grad=True)

    def gemm(x, w, b):
        return _GemmConvTranspose1dFunction.apply(x, w.permute(0, 2, 1).reshape(3, -1), b, k, s, p)

    assert torch.allclose(gemm(x, w, b), F.conv_transpose1d(x, w, b, stride=s, padding=p))
    assert torch.autograd.gradcheck(gemm, (x, w, b))


def test_transposed_layer_is_a_drop_in_for_conv_transpose1d():
    torch.manual_seed(0)
    up = GemmConvTranspose1d(8, 6, 4, stride=2, padding=1)
    reference = torch.nn.ConvTranspose1d(8, 6, 4, stride=2, padding=1)
    reference.load_state_dict(up.state_dict())
    x = torch.randn(3, 8, 5)
    torch.testing.assert_close(up(x), reference(x), rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = up(x)
    assert y.dtype == torch.bfloat16 and y.shape == (3, 6, 10)
    assert (y.float() - reference(x)).abs().max() <= 2e-2 * reference(x).abs().max()
    with pytest.raises(ValueError, match="output_size"):
        up(x, output_size=[10])
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
