"""ConditionalUnet1D and SinusoidalPosEmb: sizes, shapes, errors, conditioning, learning."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_policy.models.embeddings import SinusoidalPosEmb
from diffusion_policy.models.unet1d import ConditionalUnet1D, UNet1DConfig

SMALL = UNet1DConfig(down_dims=(16, 32), kernel_size=3, n_groups=4, step_embed_dim=16)


def test_sinusoidal_embedding_values() -> None:
    emb = SinusoidalPosEmb(8)(torch.tensor([0, 3]))
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = [10000 ** (-k / 3) for k in range(4)]
    expected = [math.sin(3 * f) for f in freqs] + [math.cos(3 * f) for f in freqs]
    torch.testing.assert_close(emb[1], torch.tensor(expected))


def test_sinusoidal_embedding_rejects_odd_dim() -> None:
    with pytest.raises(ValueError, match="dim=7"):
        SinusoidalPosEmb(7)


def test_paper_network_parameter_count() -> None:
    net = ConditionalUnet1D(action_dim=2, global_cond_dim=40)
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == 65_783_298
    assert abs(n_params / 65.8e6 - 1) < 0.005


@pytest.mark.parametrize("horizon", [4, 8, 16, 20])
def test_output_shape(horizon: int) -> None:
    net = ConditionalUnet1D(action_dim=3, global_cond_dim=5, config=SMALL)
    out = net(torch.randn(2, horizon, 3), torch.tensor([1, 7]), torch.randn(2, 5))
    assert out.shape == (2, horizon, 3)


def test_three_levels_and_no_cond() -> None:
    config = UNet1DConfig(down_dims=(8, 16, 32), kernel_size=5, n_groups=4, step_embed_dim=8)
    net = ConditionalUnet1D(action_dim=2, global_cond_dim=0, config=config)
    assert net.horizon_multiple == 4
    assert net(torch.randn(3, 12, 2), 4, None).shape == (3, 12, 2)


def test_timestep_forms_agree() -> None:
    torch.manual_seed(0)
    net = ConditionalUnet1D(action_dim=2, global_cond_dim=4, config=SMALL).eval()
    x, cond = torch.randn(3, 8, 2), torch.randn(3, 4)
    from_int = net(x, 5, cond)
    torch.testing.assert_close(net(x, torch.tensor(5), cond), from_int)
    torch.testing.assert_close(net(x, torch.full((3,), 5), cond), from_int)


def test_input_errors() -> None:
    net = ConditionalUnet1D(action_dim=2, global_cond_dim=4, config=SMALL)
    with pytest.raises(ValueError, match="horizon=7 must be divisible by 2"):
        net(torch.randn(1, 7, 2), 0, torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"\(B, T, 2\), got \(1, 8, 3\)"):
        net(torch.randn(1, 8, 3), 0, torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"\(B, T, 2\), got \(8, 2\)"):
        net(torch.randn(8, 2), 0, torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"global_cond must have shape \(1, 4\), got \(1, 5\)"):
        net(torch.randn(1, 8, 2), 0, torch.randn(1, 5))
    with pytest.raises(ValueError, match=r"global_cond must have shape \(1, 4\), got None"):
        net(torch.randn(1, 8, 2), 0, None)
    with pytest.raises(ValueError, match=r"timestep shape \(2,\)"):
        net(torch.randn(3, 8, 2), torch.tensor([1, 2]), torch.randn(3, 4))


def test_config_validation() -> None:
    assert UNet1DConfig(down_dims=[8, 16]).down_dims == (8, 16)
    with pytest.raises(ValueError, match="down_dims entry 12 must be divisible by n_groups=8"):
        UNet1DConfig(down_dims=(16, 12))
    with pytest.raises(ValueError, match="kernel_size=4"):
        UNet1DConfig(kernel_size=4)
    with pytest.raises(ValueError, match="down_dims"):
        UNet1DConfig(down_dims=())
    with pytest.raises(ValueError, match="down_dims"):
        UNet1DConfig(down_dims=(0, 8))


def test_condition_and_timestep_change_output() -> None:
    torch.manual_seed(0)
    net = ConditionalUnet1D(action_dim=2, global_cond_dim=4, config=SMALL)
    x, cond = torch.randn(2, 8, 2), torch.randn(2, 4)
    base = net(x, 3, cond)
    assert (net(x, 3, cond + 1.0) - base).abs().max() > 1e-3
    assert (net(x, 50, cond) - base).abs().max() > 1e-3


def test_bias_only_film_has_fewer_parameters() -> None:
    def count(scale: bool) -> int:
        config = UNet1DConfig(down_dims=(16, 32), kernel_size=3, n_groups=4, step_embed_dim=16,
                              cond_predict_scale=scale)
        return sum(p.numel() for p in ConditionalUnet1D(2, 4, config).parameters())

    # Each of the 8 residual blocks loses one Linear(cond_dim=20, out) of FiLM scales.
    film_outs = [16, 16, 32, 32, 32, 32, 16, 16]
    assert count(True) - count(False) == sum(21 * out for out in film_outs)


def test_deterministic_given_seed() -> None:
    def run() -> torch.Tensor:
        torch.manual_seed(123)
        net = ConditionalUnet1D(action_dim=2, global_cond_dim=4, config=SMALL)
        return net(torch.randn(2, 8, 2), 7, torch.randn(2, 4))

    torch.testing.assert_close(run(), run(), rtol=0, atol=0)


@pytest.fixture
def single_thread():
    # Tiny convolutions are ~10x slower when intra-op threads compete with other processes.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_overfits_fixed_mapping(single_thread: None) -> None:
    torch.manual_seed(0)
    net = ConditionalUnet1D(action_dim=2, global_cond_dim=4, config=SMALL)
    x, t, cond = torch.randn(4, 8, 2), torch.tensor([0, 10, 50, 99]), torch.randn(4, 4)
    target = torch.randn(4, 8, 2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = torch.nn.functional.mse_loss(net(x, t, cond), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 100
