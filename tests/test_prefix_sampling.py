"""Holding a chunk's first actions while sampling (real-time chunking): policy, fast path, DDIM plan."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_policy.core.ddim_plan import DDIMPlan
from diffusion_policy.core.sampling import sample
from diffusion_policy.core.schedulers import SchedulerConfig, make_scheduler
from diffusion_policy.deploy.predictor import ChunkRequest, LocalPredictor
from diffusion_policy.deploy.transitions import coherence_cost
from diffusion_policy.policy import DiffusionPolicy, RegressionPolicy, RegressionPolicyConfig
from tests.test_policy import normalizer, observation, small_config


def test_ddim_plan_inpaints_like_the_shared_loop():
    scheduler = make_scheduler("ddim", SchedulerConfig())
    g = torch.Generator().manual_seed(0)
    noise, known = torch.randn(3, 8, 2, generator=g), torch.randn(3, 8, 2, generator=g)
    mask = torch.linspace(1, 0, 8).reshape(1, 8, 1)

    def denoiser(x: torch.Tensor, t) -> torch.Tensor:
        return torch.tanh(x) * 0.3

    eager = sample(denoiser, scheduler, 10, noise=noise, generator=torch.Generator().manual_seed(5),
                   known=known, known_mask=mask)
    plan = DDIMPlan(scheduler, 10)
    fast = plan.sample(denoiser, noise, known, mask, torch.Generator().manual_seed(5))
    torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast[:, 0], known[:, 0], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["eager", "fast"])
def test_prefix_with_weight_one_is_returned_exactly(mode):
    torch.manual_seed(0)
    policy = DiffusionPolicy(small_config(), normalizer()).eval()
    policy.inference = mode
    prefix = torch.tensor([[[1.0, 2.0], [1.5, 2.5], [2.0, 3.0]]]).expand(3, 3, 2)
    weights = torch.tensor([1.0, 1.0, 0.5])
    out = policy.predict_action(observation(), generator=torch.Generator().manual_seed(1),
                                prefix=prefix, prefix_weights=weights)["action_pred"]
    torch.testing.assert_close(out[:, :2], prefix[:, :2], rtol=0, atol=1e-5)
    free = policy.predict_action(observation(), generator=torch.Generator().manual_seed(1))["action_pred"]
    # The half-weight action lies between where the policy would go and the prefix; later actions move too.
    assert ((out[:, 2] - prefix[:, 2]).abs() < (free[:, 2] - prefix[:, 2]).abs() + 1e-6).all()


def test_fast_and_eager_agree_with_a_prefix():
    torch.manual_seed(0)
    policy = DiffusionPolicy(small_config(), normalizer()).eval()
    prefix, weights = torch.full((3, 4, 2), 2.0), torch.tensor([1.0, 1.0, 0.6, 0.3])
    runs = {}
    for mode in ("eager", "fast"):
        policy.inference = mode
        runs[mode] = policy.predict_action(observation(), generator=torch.Generator().manual_seed(4),
                                           prefix=prefix, prefix_weights=weights)["action_pred"]
    # bf16 network: 2% of the action range [0, 5] (the plan itself matches the loop to 1e-5, above).
    torch.testing.assert_close(runs["fast"], runs["eager"], rtol=0, atol=0.1)


def test_prefix_errors_name_the_shape():
    policy = DiffusionPolicy(small_config(), normalizer()).eval()
    with pytest.raises(ValueError, match="together"):
        policy.predict_action(observation(), prefix=torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match=r"prefix has shape \(3, 9, 2\)"):
        policy.predict_action(observation(), prefix=torch.zeros(3, 9, 2), prefix_weights=torch.ones(9))
    with pytest.raises(ValueError, match=r"prefix_weights has shape \(3,\); expected \(2,\)"):
        policy.predict_action(observation(), prefix=torch.zeros(3, 2, 2), prefix_weights=torch.ones(3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        policy.predict_action(observation(), prefix=torch.zeros(3, 2, 2), prefix_weights=torch.full((2,), 2.0))


def test_regression_policy_refuses_a_prefix():
    config = RegressionPolicyConfig(obs_shapes={"pos": (2,), "vel": (3,)}, action_dim=2, horizon=8,
                                    n_obs_steps=2, n_action_steps=4, hidden_dims=(16,))
    policy = RegressionPolicy(config, normalizer()).eval()
    with pytest.raises(ValueError, match="cannot hold an action prefix"):
        policy.predict_action(observation(), prefix=torch.zeros(3, 2, 2), prefix_weights=torch.ones(2))


def _ar1_denoiser(plan: DDIMPlan, scheduler, horizon: int, rho: float):
    """The exact epsilon of unit-variance AR(1) data `(B, T, 1)`, corr(x_i, x_j) = rho^|i-j| (differentiable)."""
    idx = torch.arange(horizon, dtype=torch.float64)
    cov = rho ** (idx[:, None] - idx[None, :]).abs()

    def denoiser(x: torch.Tensor, index: int) -> torch.Tensor:
        abar = float(scheduler.alphas_cumprod[int(plan.timesteps[index])])
        s, n = abar ** 0.5, (1 - abar) ** 0.5
        gain = (s * cov @ torch.linalg.inv(abar * cov + (1 - abar) * torch.eye(horizon))).to(x.dtype)
        x0 = torch.einsum("ij,bjd->bid", gain, x)  # the posterior mean E[x0 | x_t]
        return (x - s * x0) / n

    return denoiser


def test_guidance_makes_the_free_part_continue_the_held_part():
    """On data whose law is known, ΠGDM guidance samples close to the conditional law: the first free
    entry after entries held at 1.5 has conditional mean rho * 1.5 = 1.425 (AR(1)); ΠGDM's isotropic
    posterior variance over-pulls such correlated data a little (1.58 here). Held entries come back exactly."""
    scheduler = make_scheduler("ddim", SchedulerConfig(clip_sample=False))
    plan = DDIMPlan(scheduler, 10)
    horizon, rho = 8, 0.95
    denoiser = _ar1_denoiser(plan, scheduler, horizon, rho)
    noise = torch.randn(2000, horizon, 1, generator=torch.Generator().manual_seed(0))
    known = torch.full_like(noise, 1.5)
    weights = torch.zeros(1, horizon, 1)
    weights[0, :3] = 1.0
    guided = plan.sample_guided(denoiser, noise, known, weights, max_guidance=100.0)
    free = plan.sample(denoiser, noise)
    assert torch.equal(guided[:, :3], known[:, :3])
    assert abs(guided[:, 3].mean().item() - rho * 1.5) < 0.25
    assert abs(free[:, 3].mean().item()) < 0.1  # unguided: no memory of the held value
    # Conditional std of the next AR(1) entry is sqrt(1 - rho^2) = 0.31 (unconditional: 1).
    assert 0.2 < guided[:, 3].std().item() < 0.45
    # Far entries revert toward 0 as rho^k: the guidance is a pull through the law, not a copy.
    assert guided[:, 7].mean().item() < guided[:, 3].mean().item() - 0.1


def test_guidance_clip_weakens_the_pull_and_a_tiny_clip_leaves_the_sample_free():
    scheduler = make_scheduler("ddim", SchedulerConfig(clip_sample=False))
    plan = DDIMPlan(scheduler, 10)
    denoiser = _ar1_denoiser(plan, scheduler, 8, 0.95)
    noise = torch.randn(500, 8, 1, generator=torch.Generator().manual_seed(1))
    known, weights = torch.full_like(noise, 1.5), torch.zeros(1, 8, 1)
    weights[0, :3] = 1.0
    pulls = [plan.sample_guided(denoiser, noise, known, weights, beta)[:, 3].mean().item() for beta in (1e-9, 0.1, 0.3)]
    assert pulls[0] == pytest.approx(plan.sample(denoiser, noise)[:, 3].mean().item(), abs=1e-6)
    assert pulls[0] < pulls[1] < pulls[2]


def test_guidance_errors_name_the_value():
    plan = DDIMPlan(make_scheduler("ddim", SchedulerConfig()), 5)
    x = torch.zeros(2, 4, 1)
    with pytest.raises(ValueError, match="max_guidance=0"):
        plan.sample_guided(lambda x, i: x, x, x, torch.ones(1, 4, 1), 0)
    with pytest.raises(ValueError, match=r"known \(2, 3, 1\)"):
        plan.sample_guided(lambda x, i: x, x, torch.zeros(2, 3, 1), torch.ones(1, 4, 1), 1.0)


@pytest.mark.parametrize("mode", ["eager", "fast"])
def test_policy_holds_a_prefix_by_guidance(mode):
    torch.manual_seed(0)
    policy = DiffusionPolicy(small_config(), normalizer()).eval()
    policy.inference = mode  # guidance always runs the float32 network
    prefix = torch.tensor([[[1.0, 2.0], [1.5, 2.5], [2.0, 3.0]]]).expand(3, 3, 2)
    weights = torch.tensor([1.0, 1.0, 0.5])
    out = policy.predict_action(observation(), generator=torch.Generator().manual_seed(1), prefix=prefix,
                                prefix_weights=weights, prefix_guidance=100.0)["action_pred"]
    torch.testing.assert_close(out[:, :2], prefix[:, :2], rtol=0, atol=1e-5)
    inpainted = policy.predict_action(observation(), generator=torch.Generator().manual_seed(1), prefix=prefix,
                                      prefix_weights=weights)["action_pred"]
    assert not torch.allclose(out[:, 2:], inpainted[:, 2:], atol=1e-3)  # a different sampler, same draws
    assert torch.isfinite(out).all()


def test_guidance_errors_in_the_policy():
    policy = DiffusionPolicy(small_config(), normalizer()).eval()
    with pytest.raises(ValueError, match="prefix_guidance=5.0 needs a prefix"):
        policy.predict_action(observation(), prefix_guidance=5.0)
    config = small_config()
    config.inference_scheduler = "ddpm"
    ddpm = DiffusionPolicy(config, normalizer()).eval()
    with pytest.raises(ValueError, match="needs the 'ddim' inference scheduler; this policy uses 'ddpm'"):
        ddpm.predict_action(observation(), prefix=torch.zeros(3, 2, 2), prefix_weights=torch.ones(2),
                            prefix_guidance=5.0)


def test_local_predictor_keeps_the_candidate_that_best_continues_the_soft_prefix():
    torch.manual_seed(0)
    policy = DiffusionPolicy(small_config(), normalizer()).eval()
    predictor = LocalPredictor(policy)
    obs = {k: v[0].numpy() for k, v in observation(batch=1).items()}
    prefix = np.array([[1.0, 2.0], [1.5, 2.5], [2.0, 3.0], [2.5, 3.5]], dtype=np.float32)
    weights = np.array([1.0, 1.0, 0.5, 0.2], dtype=np.float32)
    chosen = predictor.predict(ChunkRequest(obs, prefix, weights, seed=3, candidates=6))
    batch = {k: torch.as_tensor(np.repeat(v[None], 6, axis=0)) for k, v in obs.items()}
    every = policy.predict_action(batch, generator=torch.Generator().manual_seed(3),
                                  prefix=torch.as_tensor(prefix).expand(6, 4, 2),
                                  prefix_weights=torch.tensor([1.0, 1.0, 0.0, 0.0]))["action_pred"].numpy()
    costs = coherence_cost(every, prefix, weights)
    np.testing.assert_allclose(chosen, every[int(np.argmin(costs))], atol=1e-6)
    assert costs.min() < np.median(costs)  # the choice matters: the candidates differ
    np.testing.assert_allclose(chosen[:2], prefix[:2], atol=1e-5)
    single = predictor.predict(ChunkRequest(obs, prefix, weights, seed=3))
    assert not np.allclose(single, chosen)  # one candidate: the soft rows are inpainted instead


def test_training_time_prefix_keeps_held_rows_clean_and_out_of_the_loss():
    """With prefix_training_max the network reads one more channel marking a clean held prefix of
    d ~ U{0..max} rows, and what it outputs on those rows does not count in the loss."""
    torch.manual_seed(0)
    policy = DiffusionPolicy(small_config(prefix_training_max=3), normalizer())
    assert policy.network.input_dim == 3 and policy.network.action_dim == 2
    seen = []

    def spy(module, args):
        seen.append(args[0].detach().clone())

    policy.network.register_forward_pre_hook(spy)
    action = torch.rand(64, 8, 2) * 5
    policy.compute_loss({"obs": observation(64), "action": action})
    x = seen[0]
    held = x[..., 2:] == 1
    counts = held[..., 0].sum(1)
    assert set(counts.tolist()) == {0, 1, 2, 3}  # d ~ U{0..3}
    assert (held[..., 0] == (torch.arange(8)[None] < counts[:, None])).all()  # a prefix, marked
    clean = policy.normalizer.normalize("action", action)
    torch.testing.assert_close(x[..., :2][held.expand(-1, -1, 2)], clean[held.expand(-1, -1, 2)])
    batch = {"obs": observation(64), "action": action}
    torch.manual_seed(5)
    loss = policy.compute_loss(batch)
    policy.network.register_forward_hook(lambda module, args, out: out + 1e6 * args[0][..., 2:])
    torch.manual_seed(5)
    assert policy.compute_loss(batch).item() == pytest.approx(loss.item(), rel=1e-6)


def test_training_time_prefix_is_read_at_inference_on_every_path():
    torch.manual_seed(0)
    policy = DiffusionPolicy(small_config(prefix_training_max=3), normalizer()).eval()
    prefix, weights = torch.full((3, 2, 2), 2.0), torch.ones(2)
    runs = {}
    for mode in ("eager", "fast"):
        policy.inference = mode
        runs[mode] = policy.predict_action(observation(), generator=torch.Generator().manual_seed(1),
                                           prefix=prefix, prefix_weights=weights)["action_pred"]
        torch.testing.assert_close(runs[mode][:, :2], prefix, rtol=0, atol=1e-5)
    torch.testing.assert_close(runs["fast"], runs["eager"], rtol=0, atol=0.1)
    plain = policy.predict_action(observation(), generator=torch.Generator().manual_seed(1))["action_pred"]
    assert plain.shape == (3, 8, 2) and not torch.allclose(plain[:, 2:], runs["eager"][:, 2:])
    with pytest.raises(ValueError, match="prefix_training_max=8 must be in"):
        small_config(prefix_training_max=8)
