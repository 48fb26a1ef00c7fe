"""One factory over diffusers' noise schedulers, configured by name.

Every scheduler built from the same :class:`SchedulerConfig` shares the same betas (hence the same
``alphas_cumprod``), so a network trained with DDPM noise can be sampled with DDIM or DPM-Solver++.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from torch import Tensor

from diffusion_policy.core.flow import FLOW_SAMPLERS, FlowMatchScheduler

SCHEDULER_NAMES = ("ddpm", "ddim", "dpmsolver++")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
# The schedules all three diffusers classes implement identically.
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@runtime_checkable
class SchedulerLike(Protocol):
    """The part of a scheduler the sampling loop relies on (diffusers' schedulers, and
    :class:`~diffusion_policy.core.flow.FlowMatchScheduler` for flow matching).

    ``add_noise(x0 (B, ...), noise (B, ...), t (B,)) -> x_t (B, ...)`` and
    ``step(model_out (B, ...), t, x_t (B, ...), generator=...)`` returning an object whose
    ``prev_sample`` is ``x_{t_prev} (B, ...)``.
    """

    timesteps: Tensor

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


class ClippedDDIMScheduler(DDIMScheduler):
    """diffusers' DDIM whose update stays on the DDIM path through the *clipped* clean-sample prediction.

    With ``clip_sample`` on, ``DDIMScheduler.step`` clips the predicted ``x0`` to ``[-r, r]`` but by
    default keeps the network's raw epsilon in the direction term (``use_clipped_model_output=False``),
    so ``x_prev = sqrt(abar_prev) x0_clipped + sqrt(1 - abar_prev) eps_raw`` mixes two predictions that
    no longer explain ``x_t`` together. The mismatch compounds over steps: on Fashion-MNIST it took the
    local FID from 3.3 (consistent) to 45 at 50 steps (docs/image_generation.md). Here the epsilon is
    always re-derived from the clipped ``x0`` (Song et al. 2021, eq. 12 applied to the clipped pair); when
    nothing is clipped that is the network's own epsilon, so unclipped sampling is unchanged.
    """

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = True,
        generator: Any = None,
        variance_noise: Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple:
        """``DDIMScheduler.step`` with ``use_clipped_model_output`` on by default (see the class docstring)."""
        return super().step(model_output, timestep, sample, eta=eta,
                            use_clipped_model_output=use_clipped_model_output, generator=generator,
                            variance_noise=variance_noise, return_dict=return_dict)


def make_sampler(name: str, config: SchedulerConfig) -> SchedulerLike:
    """The inference sampler ``name``: a DDPM-family scheduler (:data:`SCHEDULER_NAMES`) over
    ``config``'s noise schedule, or a flow-matching ODE sampler (:data:`FLOW_SAMPLERS`)."""
    if name in FLOW_SAMPLERS:
        return FlowMatchScheduler(name, clip_sample=config.clip_sample)
    return make_scheduler(name, config)


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
        return ClippedDDIMScheduler(**common, clip_sample=config.clip_sample, set_alpha_to_one=True, steps_offset=0)
    if name == "dpmsolver++":
        # DPM-Solver has no clip_sample, only dynamic thresholding of its x0 prediction (Saharia et al.
        # 2022): with sample_max_value = 1 its per-sample bound max(quantile, 1) clamped to 1 is always
        # 1, i.e. the same [-1, 1] clip. DPM-Solver++ steps in x0 space, so the clip stays consistent.
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++",
                                           thresholding=config.clip_sample, sample_max_value=1.0)
    raise ValueError(f"unknown scheduler {name=}; valid names: {SCHEDULER_NAMES}")
