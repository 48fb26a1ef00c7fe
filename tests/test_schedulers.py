"""Scheduler factory, its config validation, and training targets."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_policy.core.schedulers import (
    SCHEDULER_NAMES,
    SchedulerConfig,
    SchedulerLike,
    make_scheduler,
)
from diffusion_policy.core.targets import training_target


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_factory_builds_protocol_objects_with_shared_betas(name: str) -> None:
    config = SchedulerConfig()
    scheduler = make_scheduler(name, config)
    assert isinstance(scheduler, SchedulerLike)
    reference = make_scheduler("ddpm", config)
    torch.testing.assert_close(scheduler.alphas_cumprod, reference.alphas_cumprod, rtol=0, atol=0)
    assert scheduler.config.prediction_type == "epsilon"
    scheduler.set_timesteps(10)
    assert len(scheduler.timesteps) == 10


def test_squaredcos_alphas_cumprod_golden() -> None:
    # Nichol & Dhariwal 2021 eq. 17: abar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1+s)) * pi/2), s=0.008;
    # with T=100 the first step's beta is 1 - abar(1).
    def f(t: int) -> float:
        return math.cos((t / 100 + 0.008) / 1.008 * math.pi / 2) ** 2

    abar = make_scheduler("ddpm", SchedulerConfig()).alphas_cumprod
    assert abar[0].item() == pytest.approx(f(1) / f(0), rel=1e-6)
    assert abar[49].item() == pytest.approx(f(50) / f(0), rel=1e-4)


def test_ddim_and_clip_options() -> None:
    ddim = make_scheduler("ddim", SchedulerConfig(clip_sample=False))
    assert ddim.config.set_alpha_to_one and ddim.config.steps_offset == 0
    assert not ddim.config.clip_sample
    assert make_scheduler("ddpm", SchedulerConfig()).config.clip_sample
    dpm = make_scheduler("dpmsolver++", SchedulerConfig(prediction_type="v_prediction"))
    assert dpm.config.algorithm_type == "dpmsolver++" and not dpm.config.thresholding
    assert dpm.config.prediction_type == "v_prediction"


def test_unknown_scheduler_name() -> None:
    with pytest.raises(ValueError, match=r"name='euler'.*ddpm"):
        make_scheduler("euler", SchedulerConfig())


def test_config_validation() -> None:
    with pytest.raises(ValueError, match=r"prediction_type='noise'.*epsilon"):
        SchedulerConfig(prediction_type="noise")
    with pytest.raises(ValueError, match=r"beta_schedule='cosine'.*squaredcos_cap_v2"):
        SchedulerConfig(beta_schedule="cosine")
    with pytest.raises(ValueError, match="num_train_timesteps=0"):
        SchedulerConfig(num_train_timesteps=0)
    with pytest.raises(ValueError, match="beta_start=0.1"):
        SchedulerConfig(beta_start=0.1, beta_end=0.02)


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 2, generator=gen)
    noise = torch.randn(3, 4, 2, generator=gen)
    return x0, noise, torch.tensor([0, 37, 99])


def test_epsilon_and_sample_targets() -> None:
    scheduler = make_scheduler("ddpm", SchedulerConfig())
    x0, noise, t = _batch()
    assert training_target(scheduler, x0, noise, t, "epsilon") is noise
    assert training_target(scheduler, x0, noise, t, "sample") is x0


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_v_target_by_hand(name: str) -> None:
    scheduler = make_scheduler(name, SchedulerConfig())
    x0, noise, t = _batch()
    v = training_target(scheduler, x0, noise, t, "v_prediction")
    for i, step in enumerate(t.tolist()):
        abar = scheduler.alphas_cumprod[step].item()
        expected = abar**0.5 * noise[i] - (1 - abar) ** 0.5 * x0[i]
        torch.testing.assert_close(v[i], expected)
    ddpm = make_scheduler("ddpm", SchedulerConfig())
    torch.testing.assert_close(v, ddpm.get_velocity(x0, noise, t))


def test_target_errors() -> None:
    scheduler = make_scheduler("ddpm", SchedulerConfig())
    x0, noise, t = _batch()
    with pytest.raises(ValueError, match="prediction_type='score'"):
        training_target(scheduler, x0, noise, t, "score")
    with pytest.raises(ValueError, match=r"noise shape \(3, 4\)"):
        training_target(scheduler, x0, noise[..., 0], t, "epsilon")
    with pytest.raises(ValueError, match=r"timesteps shape \(2,\) must be \(3,\)"):
        training_target(scheduler, x0, noise, t[:2], "v_prediction")
