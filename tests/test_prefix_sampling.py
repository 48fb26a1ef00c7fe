"""Holding a chunk's first actions while sampling (real-time chunking): policy, fast path, DDIM plan."""

from __future__ import annotations

import pytest
import torch

from diffusion_policy.core.ddim_plan import DDIMPlan
from diffusion_policy.core.sampling import sample
from diffusion_policy.core.schedulers import SchedulerConfig, make_scheduler
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
