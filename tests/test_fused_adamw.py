"""FusedAdamW: same updates as torch's AdamW + clip_grad_norm_, on parameters of any dense layout,
with AdamW's state dict; and the CPU allocator setting the trainer applies."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn

from diffusion_policy.core.cpu_malloc import keep_freed_memory
from diffusion_policy.core.fused_adamw import FusedAdamW, layout_order
from diffusion_policy.models.gemm_conv import tap_major

HYPER = {"lr": 1e-2, "betas": (0.9, 0.99), "weight_decay": 0.1}


def parameters(seed: int) -> list[nn.Parameter]:
    """A contiguous matrix, a tap-major convolution weight, a bias and a transposed matrix."""
    g = torch.Generator().manual_seed(seed)
    return [
        nn.Parameter(torch.randn(6, 5, generator=g)),
        nn.Parameter(tap_major(torch.randn(4, 3, 5, generator=g))),
        nn.Parameter(torch.randn(7, generator=g)),
        nn.Parameter(torch.randn(5, 6, generator=g).t()),
    ]


def run(optimizer_for, clip: float | None, grad_size: float, steps: int = 4) -> list[torch.Tensor]:
    params = parameters(0)
    optimizer = optimizer_for(params)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.empty_like(p).copy_(grad_size * torch.randn(p.shape, generator=g))
        if clip is not None and not isinstance(optimizer, FusedAdamW):
            nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("clip,grad_size", [(None, 1.0), (1.0, 10.0), (100.0, 1.0)])
def test_updates_match_torch_adamw_with_clip_grad_norm(clip, grad_size):
    ours = run(lambda ps: FusedAdamW(ps, max_grad_norm=clip, **HYPER), clip, grad_size)
    reference = run(lambda ps: torch.optim.AdamW(ps, foreach=False, **HYPER), clip, grad_size)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ours[0].sub(parameters(0)[0]).abs().max() > 1e-3  # the parameters did move


def test_updates_in_place_keep_the_layout_and_report_the_norm():
    params = parameters(0)
    pointers = [p.data_ptr() for p in params]
    strides = [p.stride() for p in params]
    optimizer = FusedAdamW(params, max_grad_norm=1.0, **HYPER)
    for p in params:
        p.grad = torch.full_like(p, 2.0)
    optimizer.step()
    assert [p.data_ptr() for p in params] == pointers and [p.stride() for p in params] == strides
    for p in params:
        assert optimizer.state[p]["exp_avg"].stride() == p.stride()
    assert float(optimizer.last_grad_norm) == pytest.approx(2.0 * sum(p.numel() for p in params) ** 0.5)


def test_state_dict_round_trips_with_torch_adamw_across_layouts():
    """A checkpoint of torch's AdamW over contiguous weights resumes into FusedAdamW over tap-major ones."""
    plain = [nn.Parameter(torch.randn(4, 3, 5)), nn.Parameter(torch.randn(4))]
    reference = torch.optim.AdamW(plain, **HYPER)
    for p in plain:
        p.grad = torch.randn_like(p)
    reference.step()
    tapped = [nn.Parameter(tap_major(plain[0].detach())), nn.Parameter(plain[1].detach().clone())]
    ours = FusedAdamW(tapped, **HYPER)
    ours.load_state_dict(copy.deepcopy(reference.state_dict()))  # as from a checkpoint file
    grads = [torch.randn_like(p) for p in plain]
    for p, q, g in zip(plain, tapped, grads):
        p.grad, q.grad = g.clone(), g.clone()
    reference.step()
    ours.step()
    for p, q in zip(plain, tapped):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert ours.state[tapped[0]]["exp_avg"].stride() == tapped[0].stride()
    assert set(ours.state_dict()["state"][0]) == set(reference.state_dict()["state"][0])


def test_parameters_without_gradients_are_left_alone_and_bad_clip_is_named():
    params = parameters(0)
    before = params[2].detach().clone()
    optimizer = FusedAdamW(params, max_grad_norm=5.0, **HYPER)
    params[0].grad = torch.ones_like(params[0])
    optimizer.step()
    assert torch.equal(params[2], before) and params[2] not in optimizer.state
    with pytest.raises(ValueError, match="max_grad_norm=0"):
        FusedAdamW(params, max_grad_norm=0)


def test_layout_order_of_a_tap_major_weight():
    assert layout_order(tap_major(torch.zeros(4, 3, 5))) == [0, 2, 1]
    assert layout_order(torch.zeros(4, 3, 5)) == [0, 1, 2]


def test_allocator_setting_applies_on_glibc_linux():
    applied = keep_freed_memory()
    assert applied == sys.platform.startswith("linux")  # our CI and machines run glibc


def test_parameters_of_several_dtypes_share_a_group():
    def params() -> list[nn.Parameter]:
        g = torch.Generator().manual_seed(3)
        return [nn.Parameter(torch.randn(4, 3, generator=g)), nn.Parameter(torch.randn(5, generator=g).double())]

    ours, reference = params(), params()
    for optimizer, ps in ((FusedAdamW(ours, max_grad_norm=0.5, **HYPER), ours),
                          (torch.optim.AdamW(reference, foreach=False, **HYPER), reference)):
        for p in ps:
            p.grad = torch.ones_like(p)
        if not isinstance(optimizer, FusedAdamW):
            nn.utils.clip_grad_norm_(ps, 0.5)
        optimizer.step()
    for a, b in zip(ours, reference):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
