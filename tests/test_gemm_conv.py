"""GemmConv1d: im2col/col2im adjointness, exact gradients, autocast bf16 path, nn.Conv1d equivalence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffusion_policy.models.gemm_conv import GemmConv1d, _GemmConv1dFunction, col2im, im2col

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


def test_outside_autocast_it_is_exactly_conv1d():
    torch.manual_seed(0)
    conv = GemmConv1d(6, 5, 3, stride=2, padding=1)
    reference = torch.nn.Conv1d(6, 5, 3, stride=2, padding=1)
    reference.load_state_dict(conv.state_dict())
    x = torch.randn(2, 6, 16)
    assert torch.equal(conv(x), reference(x))
    assert set(conv.state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize("kwargs", [{"dilation": 2}, {"groups": 2}, {"padding": "same"}, {"padding_mode": "reflect"}])
def test_unsupported_options_are_named(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        GemmConv1d(4, 4, 3, **kwargs)
