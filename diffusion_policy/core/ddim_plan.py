"""Deterministic DDIM (eta = 0) with every step's coefficients computed once: the fast sampling loop.

``DDIMScheduler.step`` re-derives its coefficients from ``alphas_cumprod`` and allocates half a dozen
tensors per call. Per step every prediction type reduces to two affine maps of ``(x_t, out)``
(Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12 with sigma = 0)::

    x0   = a_x * x_t + a_o * out
    eps  = e_x * x_t + e_o * out
    x_prev = sqrt(abar_prev) * x0 + sqrt(1 - abar_prev) * eps

When clip_sample is on, ``x0`` is clipped to ``[-r, r]`` and ``eps`` is re-derived from it,
``eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)``, so the step stays on the DDIM path through the
clipped prediction (:class:`~diffusion_policy.core.schedulers.ClippedDDIMScheduler`); then
``x_prev = c_x * x_t + c_x0 * x0`` with both coefficients precomputed.

with, writing ``abar`` for the cumulative alpha at step t:
epsilon: ``x0 = (x - sqrt(1-abar) out) / sqrt(abar)``, ``eps = out``;
sample: ``x0 = out``, ``eps = (x - sqrt(abar) out) / sqrt(1-abar)``;
v: ``x0 = sqrt(abar) x - sqrt(1-abar) out``, ``eps = sqrt(abar) out + sqrt(1-abar) x``.
The update then runs in place on the sample with one preallocated buffer, which also makes the loop
capturable in a CUDA graph. It reproduces ``ClippedDDIMScheduler.step`` (eta = 0, no thresholding),
and ``sample`` inpaints exactly as :func:`diffusion_policy.core.sampling.sample` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler
from torch import Tensor

from diffusion_policy.core.sampling import blend_known, check_known


@dataclass(frozen=True)
class DDIMCoefficients:
    """The scalars of one DDIM step (see the module docstring)."""

    timestep: int
    a_x: float
    a_o: float
    e_x: float
    e_o: float
    keep_x0: float
    keep_eps: float
    noise_x0: float
    noise_eps: float
    c_x: float
    c_x0: float


class DDIMPlan:
    """``num_steps`` DDIM steps of ``scheduler`` with their coefficients precomputed.

    ``timesteps`` ``(S,)`` int64 are the scheduler's own; ``sample(denoiser, noise)`` runs the loop.
    """

    def __init__(self, scheduler: DDIMScheduler, num_steps: int) -> None:
        if not isinstance(scheduler, DDIMScheduler):
            raise TypeError(f"DDIMPlan needs a diffusers DDIMScheduler, got {type(scheduler).__name__}")
        config = scheduler.config
        if config.thresholding:
            raise ValueError("DDIMPlan does not implement dynamic thresholding (thresholding=True)")
        if not 1 <= num_steps <= config.num_train_timesteps:
            raise ValueError(f"{num_steps=} must be in [1, num_train_timesteps={config.num_train_timesteps}]")
        scheduler.set_timesteps(num_steps)
        self.timesteps = scheduler.timesteps.clone().long()
        self.clip_range = float(config.clip_sample_range) if config.clip_sample else None
        self.prediction_type = str(config.prediction_type)
        stride = config.num_train_timesteps // num_steps
        alphas = scheduler.alphas_cumprod.double()
        final = float(scheduler.final_alpha_cumprod)
        self.steps = [
            _coefficients(int(t), float(alphas[t]), float(alphas[t - stride]) if t - stride >= 0 else final,
                          self.prediction_type)
            for t in self.timesteps.tolist()
        ]

    def __len__(self) -> int:
        return len(self.steps)

    def step_(self, index: int, model_out: Tensor, x: Tensor, x0: Tensor) -> None:
        """Advance ``x`` ``(B, ...)`` in place from step ``index`` to the next; ``x0`` is scratch space."""
        c = self.steps[index]
        torch.mul(x, c.a_x, out=x0)
        x0.add_(model_out, alpha=c.a_o)
        if self.clip_range is None:
            x.mul_(c.keep_eps * c.e_x).add_(model_out, alpha=c.keep_eps * c.e_o).add_(x0, alpha=c.keep_x0)
        else:
            x0.clamp_(-self.clip_range, self.clip_range)
            x.mul_(c.c_x).add_(x0, alpha=c.c_x0)

    def sample(
        self,
        denoiser: Callable[[Tensor, int], Tensor],
        noise: Tensor,
        known: Tensor | None = None,
        known_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Run every step from ``noise`` ``(B, ...)``; ``denoiser(x_t, step_index) -> out (B, ...)``.

        ``known`` ``(B, ...)`` with a bool or [0, 1] ``known_mask`` inpaints as in
        :func:`~diffusion_policy.core.sampling.sample` (same noise draws from ``generator``).
        Returns ``x_0`` ``(B, ...)`` in a new tensor (``noise`` is left untouched).
        """
        check_known(noise, known, known_mask)
        x = noise.clone()
        x0 = torch.empty_like(x)
        for index, c in enumerate(self.steps):
            if known is not None and known_mask is not None:
                eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = blend_known(x, known * c.noise_x0 + eps * c.noise_eps, known_mask)
            self.step_(index, denoiser(x, index), x, x0)
        if known is not None and known_mask is not None:
            x = blend_known(x, known, known_mask)
        return x

    def sample_guided(
        self,
        denoiser: Callable[[Tensor, int], Tensor],
        noise: Tensor,
        known: Tensor,
        weights: Tensor,
        max_guidance: float,
    ) -> Tensor:
        """Run every step from ``noise`` ``(B, ...)``, pulled towards ``known`` by ΠGDM guidance.

        Pseudoinverse guidance (Song et al. 2023, "Pseudoinverse-Guided Diffusion Models") with the
        soft mask ``W = weights`` (``[0, 1]``, broadcastable to the sample) as the observation operator,
        as Black et al. (2025) use it for real-time chunking of flow policies. At every step the
        denoiser runs with gradients, and the vector-Jacobian product ``g = (dx0/dx_t)^T W (known - x0)``
        corrects the predicted noise: ``eps <- eps - min(max_guidance, 1 / sqrt(1 - abar)) g``. The
        weight ``1 / sqrt(1 - abar)`` is ΠGDM's ``1 / r_t^2`` (``r_t^2 = 1 - abar`` for unit-variance
        data) carried to epsilon; for Gaussian data it moves ``x0`` exactly onto ``known`` where
        ``W = 1``. Clipping it at ``max_guidance`` (the paper's beta) tempers the last, nearly clean
        steps. Unlike inpainting, the gradient reaches the free entries through the network, so the
        free part of the sample is steered to continue the held part. Entries with weight 1 equal
        ``known`` in the result. ``denoiser(x_t, step_index)`` must be differentiable.
        Returns ``x_0`` ``(B, ...)``.
        """
        check_known(noise, known, weights)
        if not max_guidance > 0:
            raise ValueError(f"{max_guidance=} must be > 0")
        x = noise.clone()
        x0 = torch.empty_like(x)
        for index, c in enumerate(self.steps):
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                out = denoiser(x_in, index)
                x0_hat = c.a_x * x_in + c.a_o * out
                (vjp,) = torch.autograd.grad(x0_hat, x_in, weights * (known - x0_hat.detach()))
            # eps moves by -k g with k = min(beta, 1 / n); x0 then moves by (n / s) k g; out follows x0.
            k = min(max_guidance, 1.0 / c.noise_eps)
            out = out.detach() + vjp * (c.noise_eps / c.noise_x0 * k / c.a_o)
            self.step_(index, out, x, x0)
        return blend_known(x, known, weights >= 1)


def _coefficients(t: int, abar: float, abar_prev: float, prediction_type: str) -> DDIMCoefficients:
    s, n = math.sqrt(abar), math.sqrt(1.0 - abar)
    if prediction_type == "epsilon":
        a_x, a_o, e_x, e_o = 1.0 / s, -n / s, 0.0, 1.0
    elif prediction_type == "sample":
        a_x, a_o, e_x, e_o = 0.0, 1.0, 1.0 / n, -s / n
    elif prediction_type == "v_prediction":
        a_x, a_o, e_x, e_o = s, -n, n, s
    else:
        raise ValueError(f"unknown {prediction_type=}")
    keep_x0, keep_eps = math.sqrt(abar_prev), math.sqrt(1.0 - abar_prev)
    # With clipping: x_prev = keep_x0 x0 + keep_eps (x_t - s x0) / n.
    return DDIMCoefficients(t, a_x, a_o, e_x, e_o, keep_x0, keep_eps, s, n, keep_eps / n, keep_x0 - keep_eps * s / n)
