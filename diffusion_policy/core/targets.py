"""What the denoiser is trained on and to predict: the objective (DDPM or flow matching), the
noised example it sees and its target, and which samplers fit each objective."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_policy.core.flow import FLOW_SAMPLERS, TIME_SCALE, FlowConfig, interpolate, sample_times, velocity_target
from diffusion_policy.core.schedulers import PREDICTION_TYPES, SCHEDULER_NAMES, SchedulerConfig, SchedulerLike

OBJECTIVES = ("ddpm", "flow")


def samplers_for(objective: str) -> tuple[str, ...]:
    """The inference samplers of ``objective``; the first is its default (``ddim`` / ``euler``)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r} is not one of {OBJECTIVES}")
    return ("ddim", *(name for name in SCHEDULER_NAMES if name != "ddim")) if objective == "ddpm" else FLOW_SAMPLERS


def check_sampler(objective: str, sampler: str, steps: int, schedule: SchedulerConfig) -> None:
    """Raise ValueError, naming the value and the valid choices, unless ``sampler`` with ``steps`` steps
    samples a model trained with ``objective`` (DDPM samplers need ``1 <= steps <= num_train_timesteps``)."""
    valid = samplers_for(objective)
    if sampler not in valid:
        raise ValueError(f"sampler={sampler!r} does not sample a objective={objective!r} model; valid: {valid}")
    top = schedule.num_train_timesteps if objective == "ddpm" else None
    if steps < 1 or (top is not None and steps > top):
        bound = f"[1, num_train_timesteps={top}]" if top is not None else ">= 1"
        raise ValueError(f"num_inference_steps={steps} must be {'in ' if top is not None else ''}{bound}")


def denoising_example(
    objective: str, x0: Tensor, train_scheduler: SchedulerLike, schedule: SchedulerConfig, flow: FlowConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """``(x_t (B, ...), network time (B,), target (B, ...))`` for clean ``x0`` ``(B, ...)``, drawn from
    torch's global RNG: DDPM noises to a random step and targets ``schedule.prediction_type``; flow
    matching interpolates at a random time (``flow.time_sampling``, fed as ``t * 1000``) and targets
    the velocity (``core/flow.py``)."""
    noise = torch.randn_like(x0)
    if objective == "flow":
        t = sample_times(x0.shape[0], flow, x0.device)
        return interpolate(x0, noise, t), t * TIME_SCALE, velocity_target(x0, noise)
    if objective != "ddpm":
        raise ValueError(f"objective={objective!r} is not one of {OBJECTIVES}")
    steps = torch.randint(0, schedule.num_train_timesteps, (x0.shape[0],), device=x0.device)
    noisy = train_scheduler.add_noise(x0, noise, steps)
    return noisy, steps, training_target(train_scheduler, x0, noise, steps, schedule.prediction_type)


def training_target(
    scheduler: SchedulerLike, x0: Tensor, noise: Tensor, timesteps: Tensor, prediction_type: str
) -> Tensor:
    """Regression target for a network fed ``x_t = add_noise(x0, noise, timesteps)``.

    Args:
        scheduler: provides ``alphas_cumprod`` (``abar``), indexed by training timestep.
        x0: clean samples ``(B, ...)``.
        noise: the Gaussian noise used to make ``x_t``, ``(B, ...)``.
        timesteps: integer training timesteps ``(B,)``.
        prediction_type: ``epsilon`` -> ``noise``; ``sample`` -> ``x0``;
            ``v_prediction`` -> ``v = sqrt(abar_t) * noise - sqrt(1 - abar_t) * x0``
            (Salimans & Ho 2022, "Progressive Distillation", sec. 4).

    Returns:
        The target ``(B, ...)``, same shape as ``x0``.
    """
    if x0.shape != noise.shape:
        raise ValueError(f"x0 shape {tuple(x0.shape)} != noise shape {tuple(noise.shape)}")
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        if timesteps.shape != (x0.shape[0],):
            raise ValueError(f"timesteps shape {tuple(timesteps.shape)} must be ({x0.shape[0]},)")
        abar = scheduler.alphas_cumprod.to(device=x0.device)[timesteps.to(x0.device)].to(x0.dtype)
        abar = abar.reshape(-1, *([1] * (x0.ndim - 1)))
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0
    raise ValueError(f"unknown {prediction_type=}; valid: {PREDICTION_TYPES}")
