"""Observation encoder for low-dimensional keys: the selected keys' frames, flattened."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn


class LowDimObsEncoder(nn.Module):
    """Concatenates low-dim observation keys over time into one global condition vector.

    obs `{key: (B, To, *shape)}` (already normalised) -> `(B, To * sum(prod(shape)))`, keys in the
    order given at construction.
    """

    def __init__(self, obs_shapes: Mapping[str, tuple[int, ...]], n_obs_steps: int):
        super().__init__()
        if not obs_shapes:
            raise ValueError("obs_shapes is empty: a policy needs at least one observation key")
        self.obs_shapes = {k: tuple(v) for k, v in obs_shapes.items()}
        self.n_obs_steps = n_obs_steps

    @property
    def output_dim(self) -> int:
        return self.n_obs_steps * sum(math.prod(shape) for shape in self.obs_shapes.values())

    def key_dims(self) -> list[int]:
        """Numbers per step of each key, in the order of the output."""
        return [math.prod(shape) for shape in self.obs_shapes.values()]

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        batch = next(iter(obs.values())).shape[0]
        return torch.cat([obs[k].reshape(batch, -1) for k in self.obs_shapes], dim=-1)
