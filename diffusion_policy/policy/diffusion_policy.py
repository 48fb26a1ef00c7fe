"""DiffusionPolicy: observation encoder + conditional 1-D U-Net + noise scheduler + normaliser."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from diffusion_policy.core.sampling import sample
from diffusion_policy.core.schedulers import make_scheduler
from diffusion_policy.core.targets import training_target
from diffusion_policy.data.normalizer import Normalizer
from diffusion_policy.models.unet1d import ConditionalUnet1D
from diffusion_policy.policy.base import BasePolicy
from diffusion_policy.policy.config import DiffusionPolicyConfig


class DiffusionPolicy(BasePolicy):
    """Predicts an action chunk `(B, T, Da)` by denoising Gaussian noise conditioned on `To` observations.

    Training (DDPM): noise a normalised chunk to a random step `t`, regress the network's output on
    the target of `prediction_type`. Inference: `num_inference_steps` of `inference_scheduler`
    (DDIM by default) over the same noise schedule.
    """

    kind = "diffusion"
    config_class = DiffusionPolicyConfig

    def __init__(self, config: DiffusionPolicyConfig, normalizer: Normalizer):
        super().__init__(config, normalizer)
        self.network = ConditionalUnet1D(config.action_dim, self.obs_encoder.output_dim, config.network)
        self.train_scheduler = make_scheduler("ddpm", config.noise_scheduler)
        self.inference_scheduler = make_scheduler(config.inference_scheduler, config.noise_scheduler)

    def compute_loss(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """batch `{"obs": {key: (B, To, ...)}, "action": (B, T, Da)}` -> scalar denoising loss."""
        cond = self.condition(batch["obs"])
        action = self.normalizer.normalize("action", batch["action"])
        noise = torch.randn_like(action)
        steps = self.config.noise_scheduler.num_train_timesteps
        t = torch.randint(0, steps, (action.shape[0],), device=action.device)
        noisy = self.train_scheduler.add_noise(action, noise, t)
        target = training_target(self.train_scheduler, action, noise, t, self.config.noise_scheduler.prediction_type)
        return F.mse_loss(self.network(noisy, t, cond), target)

    def sample_chunk(
        self, cond: torch.Tensor, generator: torch.Generator | None, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """cond `(B, Dc)` -> normalised chunk `(B, T, Da)`."""
        shape = None if noise is not None else (cond.shape[0], self.config.horizon, self.config.action_dim)
        return sample(
            lambda x, t: self.network(x, t, cond),
            self.inference_scheduler,
            self.config.num_inference_steps,
            shape=shape,
            noise=noise,
            generator=generator,
            device=cond.device,
            dtype=cond.dtype,
        )
