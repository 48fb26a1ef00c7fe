"""RegressionPolicy: the MSE baseline that averages modes, for comparison with diffusion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_policy.data.normalizer import Normalizer
from diffusion_policy.policy.base import BasePolicy
from diffusion_policy.policy.config import RegressionPolicyConfig


class RegressionPolicy(BasePolicy):
    """An MLP mapping the observation condition `(B, Dc)` to a whole chunk `(B, T, Da)`, trained by MSE.

    With multimodal demonstrations the MSE optimum is the conditional mean, so it averages modes:
    the behaviour diffusion policies are there to avoid.
    """

    kind = "regression"
    config_class = RegressionPolicyConfig

    def __init__(self, config: RegressionPolicyConfig, normalizer: Normalizer):
        super().__init__(config, normalizer)
        dims = [self.obs_encoder.output_dim, *config.hidden_dims]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.Mish()]
        layers.append(nn.Linear(dims[-1], config.horizon * config.action_dim))
        self.network = nn.Sequential(*layers)

    def compute_loss(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """batch `{"obs": {key: (B, To, ...)}, "action": (B, T, Da)}` -> scalar MSE in normalised units."""
        action = self.normalizer.normalize("action", batch["action"])
        return F.mse_loss(self.sample_chunk(self.condition(batch["obs"]), None, None), action)

    def sample_chunk(
        self,
        cond: torch.Tensor,
        generator: torch.Generator | None,
        noise: torch.Tensor | None,
        known: torch.Tensor | None = None,
        known_mask: torch.Tensor | None = None,
        guidance: float | None = None,
    ) -> torch.Tensor:
        """cond `(B, Dc)` -> chunk `(B, T, Da)`; deterministic, so `generator` and `noise` are unused.

        A regression has no sampling process to hold a prefix in: `known` raises ValueError.
        """
        if known is not None:
            raise ValueError("a regression policy cannot hold an action prefix (real-time chunking); "
                             "use the 'replace' or 'ensemble' chunk transition")
        return self.network(cond).reshape(cond.shape[0], self.config.horizon, self.config.action_dim)
