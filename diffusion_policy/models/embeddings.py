"""Sinusoidal embeddings of diffusion timesteps, shared by the 1-D and 2-D U-Nets."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalPosEmb(nn.Module):
    """Transformer-style sinusoidal embedding of scalar timesteps.

    Half of the output channels are ``sin(t * f_k)`` and half ``cos(t * f_k)`` with frequencies
    ``f_k = 10000 ** (-k / (dim / 2 - 1))`` log-spaced from 1 down to 1/10000 (Vaswani et al. 2017).
    """

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim < 4 or dim % 2 != 0:
            raise ValueError(f"{dim=} must be an even integer >= 4")
        self.dim = dim
        self.max_period = max_period

    def forward(self, timesteps: Tensor) -> Tensor:
        """Embed timesteps ``(B,)`` (int or float) into ``(B, dim)`` float32 features."""
        if timesteps.ndim != 1:
            raise ValueError(f"timesteps must have shape (B,), got {tuple(timesteps.shape)}")
        half = self.dim // 2
        exponent = torch.arange(half, device=timesteps.device, dtype=torch.float32) / (half - 1)
        freqs = torch.exp(-math.log(self.max_period) * exponent)
        args = timesteps.float()[:, None] * freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)
