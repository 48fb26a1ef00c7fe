"""What the denoiser is trained to predict, for each prediction type."""

from __future__ import annotations

from torch import Tensor

from diffusion_policy.core.schedulers import PREDICTION_TYPES, SchedulerLike


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
