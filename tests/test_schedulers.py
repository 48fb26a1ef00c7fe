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
    dpm = make_scheduler("dpmsolver++", SchedulerConfig(prediction_type="v_prediction", clip_sample=False))
    assert dpm.config.algorithm_type == "dpmsolver++" and not dpm.config.thresholding
    assert dpm.config.prediction_type == "v_prediction"
    assert make_scheduler("dpmsolver++", SchedulerConfig()).config.thresholding


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
@pytest.mark.parametrize("clip_sample", [True, False])
def test_clip_sample_bounds_every_sampler(name: str, clip_sample: bool) -> None:
    # A denoiser whose clean-sample predictions overshoot [-1, 1]: with clip_sample every sampler's
    # output stays inside (its last step returns a clipped x0); without it they leave the range.
    from diffusion_policy.core.sampling import sample

    def overshooting(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -2.0 * torch.sign(x)

    scheduler = make_scheduler(name, SchedulerConfig(clip_sample=clip_sample))
    noise = torch.randn(8, 16, 2, generator=torch.Generator().manual_seed(0))  # (B, T, Da) like a policy's
    out = sample(overshooting, scheduler, 10, noise=noise, generator=torch.Generator().manual_seed(1))
    assert (out.abs().max() <= 1.0 + 1e-5) == clip_sample


def _implied_noise(scheduler, x: torch.Tensor, x0: torch.Tensor, t: int) -> torch.Tensor:
    abar = scheduler.alphas_cumprod[t] if t >= 0 else scheduler.final_alpha_cumprod
    return (x - abar.sqrt() * x0) / (1 - abar).sqrt()


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_clipped_ddim_step_stays_on_the_path_of_the_clipped_prediction(prediction_type: str) -> None:
    # DDIM (eta 0) moves x_t along the line through its clean prediction: x_t and x_prev imply the same
    # noise for that x0. With clip_sample the x0 is the clipped one; diffusers' default step keeps the raw
    # epsilon instead and leaves that line wherever clipping happened.
    config = SchedulerConfig(num_train_timesteps=1000, beta_schedule="linear", prediction_type=prediction_type)
    scheduler = make_scheduler("ddim", config)
    scheduler.set_timesteps(50)
    t, t_prev = 500, 480
    assert scheduler.timesteps.tolist()[24:26] == [t, t_prev]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, generator=gen)
    out = 3.0 * torch.randn(4, 64, generator=gen)  # far enough out that many x0 entries are clipped
    step = scheduler.step(out, t, x)
    x0 = step.pred_original_sample
    assert x0.abs().max() <= 1.0 and bool((x0.abs() == 1.0).any())
    torch.testing.assert_close(_implied_noise(scheduler, step.prev_sample, x0, t_prev),
                               _implied_noise(scheduler, x, x0, t), rtol=1e-4, atol=1e-4)
    raw = scheduler.step(out, t, x, use_clipped_model_output=False).prev_sample
    assert not torch.allclose(_implied_noise(scheduler, raw, x0, t_prev), _implied_noise(scheduler, x, x0, t),
                              atol=1e-2)
    unclipped = make_scheduler("ddim", SchedulerConfig(**{**config.__dict__, "clip_sample": False}))
    unclipped.set_timesteps(50)
    # Nothing clipped: the re-derived epsilon is the network's own, so the step is the unclipped one.
    inside, noise = 0.9 * torch.rand(4, 64, generator=gen) - 0.45, torch.randn(4, 64, generator=gen)
    a, b = scheduler.alphas_cumprod[t].sqrt(), (1 - scheduler.alphas_cumprod[t]).sqrt()
    x_in = a * inside + b * noise
    out_in = {"epsilon": noise, "sample": inside, "v_prediction": a * noise - b * inside}[prediction_type]
    torch.testing.assert_close(scheduler.step(out_in, t, x_in).prev_sample,
                               unclipped.step(out_in, t, x_in).prev_sample, rtol=1e-5, atol=1e-5)


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
