"""One factory over diffusers' noise schedulers, configured by name.

Every scheduler built from the same :class:`SchedulerConfig` shares the same betas (hence the same
``alphas_cumprod``), so a network trained with DDPM noise can be sampled with DDIM or DPM-Solver++.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch import Tensor

SCHEDULER_NAMES = ("ddpm", "ddim", "dpmsolver++")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
# The schedules all three diffusers classes implement identically.
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@runtime_checkable
class SchedulerLike(Protocol):
    """The part of a diffusers scheduler the core relies on.

    ``add_noise(x0 (B, ...), noise (B, ...), t (B,)) -> x_t (B, ...)`` and
    ``step(model_out (B, ...), t, x_t (B, ...), generator=...)`` returning an object whose
    ``prev_sample`` is ``x_{t_prev} (B, ...)``.
    """

    timesteps: Tensor
    alphas_cumprod: Tensor

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None: ...

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor: ...

    def step(self, model_output: Tensor, timestep: Any, sample: Tensor, *args: Any, **kwargs: Any) -> Any: ...


@dataclass
class SchedulerConfig:
    """Noise schedule shared by training and sampling (defaults: the paper's Push-T setting)."""

    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    clip_sample: bool = True
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type={self.prediction_type!r} must be one of {PREDICTION_TYPES}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule={self.beta_schedule!r} must be one of {BETA_SCHEDULES}")
        if self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps={self.num_train_timesteps} must be >= 1")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start={self.beta_start} < beta_end={self.beta_end} < 1")


def make_scheduler(name: str, config: SchedulerConfig) -> SchedulerLike:
    """Build the diffusers scheduler called ``name`` (one of :data:`SCHEDULER_NAMES`) from ``config``."""
    common = dict(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        prediction_type=config.prediction_type,
    )
    if name == "ddpm":
        return DDPMScheduler(**common, clip_sample=config.clip_sample)
    if name == "ddim":
        # set_alpha_to_one: the last step lands on the clean sample (alpha_bar = 1), as in the paper.
        return DDIMScheduler(**common, clip_sample=config.clip_sample, set_alpha_to_one=True, steps_offset=0)
    if name == "dpmsolver++":
        # DPM-Solver has no clip_sample (only dynamic thresholding), which we leave off.
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++")
    raise ValueError(f"unknown scheduler {name=}; valid names: {SCHEDULER_NAMES}")
