"""DDIMPlan: the precomputed in-place DDIM loop reproduces the core DDIM scheduler
(ClippedDDIMScheduler) through core.sample."""

from __future__ import annotations

import pytest
import torch

from diffusion_policy.core.ddim_plan import DDIMPlan
from diffusion_policy.core.sampling import sample
from diffusion_policy.core.schedulers import SchedulerConfig, make_scheduler


def toy_denoiser(x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
    """A fixed nonlinear function of (x, t), large enough that clipping matters."""
    return torch.tanh(1.7 * x + 0.01 * float(t)) * 1.3 - 0.2 * x


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("clip_sample", [True, False])
@pytest.mark.parametrize("num_steps", [1, 10, 16])
def test_plan_matches_diffusers_ddim(prediction_type, clip_sample, num_steps):
    config = SchedulerConfig(prediction_type=prediction_type, clip_sample=clip_sample)
    scheduler = make_scheduler("ddim", config)
    noise = torch.randn(3, 16, 2, generator=torch.Generator().manual_seed(0))
    expected = sample(toy_denoiser, scheduler, num_steps, noise=noise)
    plan = DDIMPlan(make_scheduler("ddim", config), num_steps)
    got = plan.sample(lambda x, i: toy_denoiser(x, plan.timesteps[i]), noise)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert plan.timesteps.tolist() == scheduler.timesteps.tolist()


def test_steps_update_in_place_and_leave_the_noise_alone():
    plan = DDIMPlan(make_scheduler("ddim", SchedulerConfig()), 10)
    noise = torch.randn(2, 8, 2)
    x, x0 = noise.clone(), torch.empty_like(noise)
    pointer = x.data_ptr()
    plan.step_(0, toy_denoiser(x, 90), x, x0)
    assert x.data_ptr() == pointer and not torch.equal(x, noise)
    before = noise.clone()
    plan.sample(toy_denoiser, noise)
    assert torch.equal(noise, before)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="DDPMScheduler"):
        DDIMPlan(make_scheduler("ddpm", SchedulerConfig()), 10)
    with pytest.raises(ValueError, match="num_steps=0"):
        DDIMPlan(make_scheduler("ddim", SchedulerConfig()), 0)
