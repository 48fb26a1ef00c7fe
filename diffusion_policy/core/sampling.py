"""The one reverse-diffusion sampling loop, shared by policies and image baselines."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffusion_policy.core.schedulers import SchedulerLike

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""``(x_t (B, ...), t 0-d tensor) -> model output (B, ...)`` (epsilon, x0 or v)."""
ConditionalDenoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``(x_t (B, ...), t 0-d tensor, cond (B, ...)) -> model output (B, ...)``."""


def classifier_free_guidance(
    denoiser: ConditionalDenoiser, cond: Tensor, null_cond: Tensor, guidance_scale: float
) -> Denoiser:
    """The guided denoiser of classifier-free guidance (Ho & Salimans 2022, eq. 6), for :func:`sample`.

    ``out = out(null) + s * (out(cond) - out(null))`` with ``s = guidance_scale`` (the paper's
    ``1 + w``): ``s = 1`` is plain conditional sampling (one network call per step), ``s = 0``
    unconditional, ``s > 1`` sharpens towards the condition. Both branches run in one batch of ``2B``.
    The network must have been trained with the condition replaced by ``null_cond`` some of the time.

    Args:
        denoiser: ``(x_t (B, ...), t, cond (B, ...)) -> (B, ...)``.
        cond: the condition ``(B, ...)`` (e.g. class labels ``(B,)``).
        null_cond: the "no condition" value, same shape as ``cond``.
        guidance_scale: ``s >= 0``.
    """
    if guidance_scale < 0:
        raise ValueError(f"{guidance_scale=} must be >= 0")
    if null_cond.shape != cond.shape:
        raise ValueError(f"null_cond {tuple(null_cond.shape)} must match cond {tuple(cond.shape)}")
    if guidance_scale == 1.0:
        return lambda x, t: denoiser(x, t, cond)
    if guidance_scale == 0.0:
        return lambda x, t: denoiser(x, t, null_cond)
    both = torch.cat([cond, null_cond])

    def guided(x: Tensor, t: Tensor) -> Tensor:
        out_cond, out_null = denoiser(torch.cat([x, x]), t, both).chunk(2)
        return torch.lerp(out_null, out_cond, guidance_scale)

    return guided


def sample(
    denoiser: Denoiser,
    scheduler: SchedulerLike,
    num_steps: int,
    *,
    shape: tuple[int, ...] | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    known: Tensor | None = None,
    known_mask: Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Reverse diffusion: draw Gaussian noise, then apply ``scheduler.step`` at ``num_steps`` timesteps.

    The update rule is the scheduler's: DDPM ancestral sampling, DDIM, DPM-Solver++, ... With
    ``known``/``known_mask`` it does replacement-based inpainting (Song et al. 2021, "Score-Based
    Generative Modeling through SDEs", app. I.2): before every denoiser call the known entries of
    ``x_t`` are overwritten by ``known`` noised to the current step, and at the end by ``known`` itself.
    A float ``known_mask`` in [0, 1] is a soft mask: each entry moves that fraction of the way to the
    noised ``known`` (1 holds it, 0 leaves it free), as real-time chunking's decaying overlap needs.

    Args:
        denoiser: ``(x_t (B, ...), t) -> (B, ...)``; ``t`` is a 0-d integer tensor.
        scheduler: a diffusers-style scheduler (see :class:`SchedulerLike`).
        num_steps: number of denoising steps, >= 1.
        shape: ``(B, ...)`` of the sample, whose initial noise is drawn from ``generator``.
            Exclusive with ``noise``.
        noise: explicit initial noise ``(B, ...)``. Exclusive with ``shape``.
        generator: source of all randomness (initial noise, stochastic steps, inpainting noise).
        known: values ``(B, ...)`` to impose where ``known_mask`` is True.
        known_mask: bool, or float in [0, 1] (soft), broadcastable to the sample ``(B, ...)``.
        device, dtype: of the initial noise drawn from ``shape`` (default: CPU, float32);
            unused with ``noise``.

    Returns:
        The sample ``x_0`` ``(B, ...)``.
    """
    if num_steps < 1:
        raise ValueError(f"{num_steps=} must be >= 1")
    if (shape is None) == (noise is None):
        raise ValueError(f"pass exactly one of shape={shape} and noise (given: {noise is not None})")
    x = noise if noise is not None else torch.randn(shape, generator=generator, device=device, dtype=dtype)
    check_known(x, known, known_mask)

    scheduler.set_timesteps(num_steps)
    for t in scheduler.timesteps:
        if known_mask is not None:
            x = _impose_known(scheduler, x, known, known_mask, t, generator)
        out = denoiser(x, t)
        x = scheduler.step(out, t, x, generator=generator).prev_sample
    if known_mask is not None:
        x = blend_known(x, known, known_mask)
    return x


def _impose_known(
    scheduler: SchedulerLike,
    x: Tensor,
    known: Tensor,
    mask: Tensor,
    t: Tensor,
    generator: torch.Generator | None,
) -> Tensor:
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    noised = scheduler.add_noise(known, eps, t.reshape(1).expand(x.shape[0]))
    return blend_known(x, noised, mask)


def blend_known(x: Tensor, known: Tensor, mask: Tensor) -> Tensor:
    """``known`` where a bool ``mask`` is True; for a float mask ``x + mask * (known - x)``."""
    if mask.dtype == torch.bool:
        return torch.where(mask, known, x)
    return torch.lerp(x, known, mask.to(x.dtype))


def check_known(x: Tensor, known: Tensor | None, known_mask: Tensor | None) -> None:
    """Raise unless ``known`` matches the sample ``x`` and ``known_mask`` is a bool/[0, 1] mask broadcasting to it."""
    if (known is None) != (known_mask is None):
        raise ValueError("known and known_mask must be given together")
    if known is None or known_mask is None:
        return
    if known.shape != x.shape:
        raise ValueError(f"known {tuple(known.shape)} must match the sample shape {tuple(x.shape)}")
    try:
        fits = torch.broadcast_shapes(known_mask.shape, x.shape) == x.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"known_mask {tuple(known_mask.shape)} does not broadcast to the sample shape "
                         f"{tuple(x.shape)}")
    if known_mask.dtype != torch.bool:
        if not known_mask.is_floating_point():
            raise TypeError(f"known_mask must be bool or float, got {known_mask.dtype}")
        if known_mask.numel() and not bool(((known_mask >= 0) & (known_mask <= 1)).all()):
            raise ValueError("a float known_mask must lie in [0, 1]")
