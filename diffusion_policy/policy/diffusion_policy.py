"""DiffusionPolicy: observation encoder + conditional 1-D U-Net + noise scheduler + normaliser."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from diffusion_policy.core.ddim_plan import DDIMPlan
from diffusion_policy.core.sampling import sample
from diffusion_policy.core.schedulers import make_scheduler
from diffusion_policy.core.targets import training_target
from diffusion_policy.data.normalizer import Normalizer
from diffusion_policy.models.unet1d import ConditionalUnet1D
from diffusion_policy.models.unet1d_frozen import FrozenUnet1D
from diffusion_policy.policy.base import BasePolicy
from diffusion_policy.policy.config import DiffusionPolicyConfig
from diffusion_policy.policy.graphed_chunk import GraphedChunk

INFERENCE_MODES = ("auto", "eager", "fast")


class DiffusionPolicy(BasePolicy):
    """Predicts an action chunk `(B, T, Da)` by denoising Gaussian noise conditioned on `To` observations.

    Training (DDPM): noise a normalised chunk to a random step `t`, regress the network's output on
    the target of `prediction_type`. Inference: `num_inference_steps` of `inference_scheduler`
    (DDIM by default) over the same noise schedule.

    `inference` picks how chunks are sampled: `"eager"` runs the network as trained (float32);
    `"fast"` runs a bf16 :class:`FrozenUnet1D` snapshot with the FiLM conditioning hoisted out of the
    loop and, for DDIM, the precomputed in-place :class:`DDIMPlan` (on CUDA the whole chunk replays as
    one :class:`GraphedChunk` CUDA graph, unless inpainting); `"auto"` (default) is fast on CPU,
    where it was measured (actions within ~1% of eager, closed-loop Push-T success unchanged), and
    eager elsewhere. The snapshot is retaken whenever a weight changes.
    """

    kind = "diffusion"
    config_class = DiffusionPolicyConfig

    def __init__(self, config: DiffusionPolicyConfig, normalizer: Normalizer):
        super().__init__(config, normalizer)
        self.network = ConditionalUnet1D(config.action_dim, self.obs_encoder.output_dim, config.network)
        self.train_scheduler = make_scheduler("ddpm", config.noise_scheduler)
        self.inference_scheduler = make_scheduler(config.inference_scheduler, config.noise_scheduler)
        self.inference = "auto"
        self._frozen: tuple[tuple, FrozenUnet1D] | None = None
        self._ddim_plan: DDIMPlan | None = None
        self._graphed: tuple[tuple, GraphedChunk] | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "inference" and value not in INFERENCE_MODES:
            raise ValueError(f"inference={value!r} is not one of {INFERENCE_MODES}")
        super().__setattr__(name, value)

    def __getstate__(self) -> dict[str, Any]:
        # Copies (EMA, checkpoints) get their own snapshot when they first sample.
        return {**self.__dict__, "_frozen": None, "_graphed": None}

    def uses_fast_inference(self) -> bool:
        """Whether `predict_action` takes the fast path (see the class docstring)."""
        return self.inference == "fast" or (self.inference == "auto" and self.device.type == "cpu")

    def frozen_network(self) -> FrozenUnet1D:
        """The bf16 snapshot of the network, retaken when any weight changed (in place or replaced)."""
        key = tuple((p.device, p.data_ptr(), p._version) for p in self.network.parameters())
        if self._frozen is None or self._frozen[0] != key:
            self._frozen = (key, FrozenUnet1D(self.network))
        return self._frozen[1]

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
        self,
        cond: torch.Tensor,
        generator: torch.Generator | None,
        noise: torch.Tensor | None,
        known: torch.Tensor | None = None,
        known_mask: torch.Tensor | None = None,
        guidance: float | None = None,
    ) -> torch.Tensor:
        """cond `(B, Dc)` -> normalised chunk `(B, T, Da)`, holding `known` `(B, T, Da)` where masked.

        Inpainting by default; with `guidance` (the clip of the guidance weight), pseudoinverse
        guidance through the float32 network (`DDIMPlan.sample_guided`), which needs DDIM.
        """
        shape = None if noise is not None else (cond.shape[0], self.config.horizon, self.config.action_dim)
        if guidance is not None:
            return self._sample_guided(cond, generator, noise, shape, known, known_mask, guidance)
        if self.uses_fast_inference():
            return self._sample_fast(cond, generator, noise, shape, known, known_mask)
        return sample(
            lambda x, t: self.network(x, t, cond),
            self.inference_scheduler,
            self.config.num_inference_steps,
            shape=shape,
            noise=noise,
            generator=generator,
            known=known,
            known_mask=known_mask,
            device=cond.device,
            dtype=cond.dtype,
        )

    def _sample_guided(
        self,
        cond: torch.Tensor,
        generator: torch.Generator | None,
        noise: torch.Tensor | None,
        shape: tuple[int, ...] | None,
        known: torch.Tensor | None,
        known_mask: torch.Tensor | None,
        guidance: float,
    ) -> torch.Tensor:
        """`sample_chunk` with the prefix held by guidance; draws the same initial noise as the other paths."""
        if known is None or known_mask is None:
            raise ValueError(f"guidance={guidance} needs known values and a mask to guide towards")
        if not isinstance(self.inference_scheduler, DDIMScheduler):
            raise ValueError(f"prefix guidance needs the 'ddim' inference scheduler; this policy uses "
                             f"{self.config.inference_scheduler!r}")
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=cond.device, dtype=cond.dtype)
        plan = self._plan()
        return plan.sample_guided(lambda x, i: self.network(x, plan.timesteps[i], cond), noise, known,
                                  known_mask.to(noise.dtype), guidance)

    def _plan(self) -> DDIMPlan:
        """The DDIM plan of `num_inference_steps`, made again when the step count changes."""
        steps = self.config.num_inference_steps
        if self._ddim_plan is None or len(self._ddim_plan) != steps:
            self._ddim_plan = DDIMPlan(self.inference_scheduler, steps)
        return self._ddim_plan

    def _sample_fast(
        self,
        cond: torch.Tensor,
        generator: torch.Generator | None,
        noise: torch.Tensor | None,
        shape: tuple[int, ...] | None,
        known: torch.Tensor | None,
        known_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """The fast path of `sample_chunk`; draws the same noise as the eager path."""
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=cond.device, dtype=cond.dtype)
        frozen = self.frozen_network()
        steps = self.config.num_inference_steps
        if isinstance(self.inference_scheduler, DDIMScheduler):
            plan = self._plan()
            if known is None and cond.device.type == "cuda":
                return self._graphed_chunk(frozen, cond, noise)
            film = frozen.film(cond, plan.timesteps)
            return plan.sample(lambda x, i: frozen.denoise(x, film, i), noise, known, known_mask, generator)
        return sample(
            lambda x, t: frozen.denoise(x, frozen.film(cond, t.reshape(1)), 0),
            self.inference_scheduler,
            steps,
            noise=noise,
            generator=generator,
            known=known,
            known_mask=known_mask,
        )

    def _graphed_chunk(self, frozen: FrozenUnet1D, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The DDIM chunk through a CUDA graph, captured again when the snapshot, plan or shape changes."""
        cond_in = cond if cond.shape[-1] else None
        key = (id(frozen), id(self._ddim_plan), tuple(noise.shape))  # the graph holds both: ids stay unique
        if self._graphed is None or self._graphed[0] != key:
            assert self._ddim_plan is not None
            self._graphed = (key, GraphedChunk(frozen, self._ddim_plan, tuple(noise.shape), cond.shape[-1],
                                               cond.device))
        return self._graphed[1](cond_in, noise)
