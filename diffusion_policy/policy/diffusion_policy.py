"""DiffusionPolicy: observation encoder + conditional 1-D U-Net + noise scheduler + normaliser."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from torch import nn

from diffusion_policy.core.cpu_features import fast_dtype
from diffusion_policy.core.ddim_plan import DDIMPlan
from diffusion_policy.core.sampling import sample
from diffusion_policy.core.schedulers import make_sampler, make_scheduler
from diffusion_policy.core.targets import denoising_example
from diffusion_policy.data.normalizer import Normalizer
from diffusion_policy.models.transformer1d import TransformerDenoiser
from diffusion_policy.models.unet1d import ConditionalUnet1D
from diffusion_policy.models.unet1d_frozen import FrozenUnet1D
from diffusion_policy.policy.base import BasePolicy
from diffusion_policy.policy.config import DiffusionPolicyConfig
from diffusion_policy.policy.graphed_chunk import GraphedChunk

INFERENCE_MODES = ("auto", "eager", "fast")
# Measured on the AMX Xeon (benchmarks/cpu_ddim10_chunk_batch_sweep.json): the [32, 64, 128] network's
# fast chunk was 1.21x eager at batch 256, 1.01x at 1024 and 0.79x at 4096 (horizon 16); the 65.8M
# [256, 512, 1024] one still 1.37x at 1024. 512 rows per first-level channel keeps both on the side
# where the fast path was measured not slower.
AUTO_FAST_ROWS_PER_CHANNEL = 512


class DiffusionPolicy(BasePolicy):
    """Predicts an action chunk `(B, T, Da)` by denoising Gaussian noise conditioned on `To` observations.

    Training (`objective="ddpm"`): noise a normalised chunk to a random step `t`, regress the network's
    output on the target of `prediction_type`; inference: `num_inference_steps` of `inference_scheduler`
    (DDIM by default) over the same noise schedule. With `objective="flow"` (flow matching,
    `core/flow.py`) the network regresses the velocity of the straight noise-to-data path and the chunk
    is integrated by Euler (default) or Heun steps, on either path below.

    `inference` picks how chunks are sampled: `"eager"` runs the network as trained (float32);
    `"fast"` runs a :class:`FrozenUnet1D` snapshot (bf16 on CUDA and on CPUs with native bf16, float32
    on the others: `core.cpu_features.fast_dtype`; `snapshot_dtype` overrides it) with the FiLM
    conditioning hoisted out of the loop and, for DDIM, the precomputed in-place :class:`DDIMPlan` (on
    CUDA the whole chunk replays as one :class:`GraphedChunk` CUDA graph, unless inpainting);
    `"auto"` (default) is fast on CPU,
    where it was measured (actions within ~1% of eager, closed-loop Push-T success unchanged), up to
    `AUTO_FAST_ROWS_PER_CHANNEL` rows (batch x horizon) per channel of the first U-Net level, and
    eager elsewhere: past that the fast path's im2col GEMMs lose to PyTorch's own convolutions
    (`scripts/benchmark.py --cases ddim10_chunk_batch_sweep`). The choice depends only on the shapes,
    so a seed gives the same actions every run. The snapshot is retaken whenever a weight changes.
    A held prefix (real-time chunking) is inpainted on either path, or guided through the float32
    network (`guidance`); a policy trained with `prefix_training_max` also reads it as clean, marked
    input rows.
    """

    kind = "diffusion"
    config_class = DiffusionPolicyConfig

    def __init__(self, config: DiffusionPolicyConfig, normalizer: Normalizer):
        super().__init__(config, normalizer)
        held_channel = 1 if config.prefix_training_max else 0
        if config.denoiser == "transformer":
            if self._image_keys:
                raise ValueError(f"denoiser='transformer' takes low-dim observations; {self._image_keys} are "
                                 f"images (use denoiser='unet')")
            self.network: nn.Module = StepTokenDenoiser(
                self.obs_encoder.key_dims(), config.n_obs_steps,
                TransformerDenoiser(config.action_dim + held_channel, config.action_dim, config.horizon,
                                    config.n_obs_steps, sum(self.obs_encoder.key_dims()), config.transformer))
        else:
            self.network = ConditionalUnet1D(config.action_dim, self.obs_encoder.output_dim, config.network,
                                             input_dim=config.action_dim + held_channel)
        self.train_scheduler = make_scheduler("ddpm", config.noise_scheduler)
        self.inference_scheduler = make_sampler(config.inference_scheduler, config.noise_scheduler)
        self.inference = "auto"
        self.snapshot_dtype: torch.dtype | None = None  # the fast path's weight dtype; None: `fast_dtype`
        self._frozen: tuple[tuple, FrozenUnet1D] | None = None
        self._ddim_plan: DDIMPlan | None = None
        self._graphed: tuple[tuple, GraphedChunk] | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "inference" and value not in INFERENCE_MODES:
            raise ValueError(f"inference={value!r} is not one of {INFERENCE_MODES}")
        if name == "inference" and value == "fast" and self.config.denoiser != "unet":
            raise ValueError(f"inference='fast' needs the U-Net denoiser; this policy's is "
                             f"{self.config.denoiser!r} (use 'auto' or 'eager')")
        super().__setattr__(name, value)

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """The optimizer's parameter groups: the transformer's recipe (no decay on biases, norms and
        embeddings), or one group for the U-Net."""
        if isinstance(self.network, StepTokenDenoiser):
            return self.network.denoiser.parameter_groups(weight_decay)
        return [{"params": list(self.parameters()), "weight_decay": weight_decay}]

    def __getstate__(self) -> dict[str, Any]:
        # Copies (EMA, checkpoints) get their own snapshot when they first sample.
        return {**self.__dict__, "_frozen": None, "_graphed": None}

    def uses_fast_inference(self, batch: int = 1) -> bool:
        """Whether `predict_action` takes the fast path for `batch` observations (see the class docstring)."""
        if self.config.denoiser != "unet":
            return False
        if self.inference != "auto":
            return self.inference == "fast"
        rows = batch * self.config.horizon
        return self.device.type == "cpu" and rows <= AUTO_FAST_ROWS_PER_CHANNEL * self.config.network.down_dims[0]

    def frozen_network(self) -> FrozenUnet1D:
        """The snapshot of the network in `fast_dtype`, retaken when any weight changed (in place or replaced)."""
        dtype = self.snapshot_dtype or fast_dtype(self.device)
        key = (dtype, *((p.device, p.data_ptr(), p._version) for p in self.network.parameters()))
        if self._frozen is None or self._frozen[0] != key:
            self._frozen = (key, FrozenUnet1D(self.network, dtype))
        return self._frozen[1]

    def compute_loss(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """batch `{"obs": {key: (B, To, ...)}, "action": (B, T, Da)}` -> scalar denoising loss."""
        cond = self.condition(batch["obs"])
        action = self.normalizer.normalize("action", batch["action"])
        noisy, t, target = denoising_example(self.config.objective, action, self.train_scheduler,
                                             self.config.noise_scheduler, self.config.flow)
        if not self.config.prefix_training_max:
            return F.mse_loss(self.network(noisy, t, cond), target)
        # Training-time real-time chunking: the first d actions stay clean and marked, and carry no loss.
        d = torch.randint(0, self.config.prefix_training_max + 1, (action.shape[0], 1, 1), device=action.device)
        held = torch.arange(action.shape[1], device=action.device)[None, :, None] < d
        out = self.network(self._network_input(noisy, action, held), t, cond)
        free = (~held).to(out.dtype)
        return (((out - target) ** 2) * free).sum() / (free.sum() * action.shape[-1]).clamp_min(1.0)

    def _network_input(self, x: torch.Tensor, known: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        """x `(B, T, Da)` as the network reads it: with training-time real-time chunking, the rows held
        with weight 1 by `mask` (`(B or 1, T, 1)`) replaced by the clean `known` and marked in an extra
        channel: `(B, T, Da + 1)`."""
        if not self.config.prefix_training_max:
            return x
        if known is None or mask is None:
            return torch.cat([x, x.new_zeros(*x.shape[:-1], 1)], dim=-1)
        held = (mask >= 1).expand(x.shape[0], x.shape[1], 1)
        return torch.cat([torch.where(held, known, x), held.to(x.dtype)], dim=-1)

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
        if guidance is None and not self.uses_fast_inference(cond.shape[0]):
            return sample(
                lambda x, t: self.network(self._network_input(x, known, known_mask), t, cond),
                self.inference_scheduler,
                self.config.num_inference_steps,
                shape=None if noise is not None else (cond.shape[0], self.config.horizon, self.config.action_dim),
                noise=noise,
                generator=generator,
                known=known,
                known_mask=known_mask,
                device=cond.device,
                dtype=cond.dtype,
            )
        if noise is None:  # the same draw as the eager path's
            noise = torch.randn(cond.shape[0], self.config.horizon, self.config.action_dim, generator=generator,
                                device=cond.device, dtype=cond.dtype)
        if guidance is not None:
            return self._sample_guided(cond, noise, known, known_mask, guidance)
        return self._sample_fast(cond, generator, noise, known, known_mask)

    def _sample_guided(
        self, cond: torch.Tensor, noise: torch.Tensor, known: torch.Tensor | None, known_mask: torch.Tensor | None,
        guidance: float,
    ) -> torch.Tensor:
        """`sample_chunk` from `noise` with the prefix held by guidance through the float32 network."""
        if known is None or known_mask is None:
            raise ValueError(f"guidance={guidance} needs known values and a mask to guide towards")
        if not isinstance(self.inference_scheduler, DDIMScheduler):
            raise ValueError(f"prefix guidance needs the 'ddim' inference scheduler; this policy uses "
                             f"{self.config.inference_scheduler!r}")
        plan = self._plan()

        def denoiser(x: torch.Tensor, i: int) -> torch.Tensor:
            return self.network(self._network_input(x, known, known_mask), plan.timesteps[i], cond)

        return plan.sample_guided(denoiser, noise, known, known_mask.to(noise.dtype), guidance)

    def _plan(self) -> DDIMPlan:
        """The DDIM plan of `num_inference_steps`, made again when the step count changes."""
        steps = self.config.num_inference_steps
        if self._ddim_plan is None or len(self._ddim_plan) != steps:
            self._ddim_plan = DDIMPlan(self.inference_scheduler, steps)
        return self._ddim_plan

    def _sample_fast(
        self, cond: torch.Tensor, generator: torch.Generator | None, noise: torch.Tensor,
        known: torch.Tensor | None, known_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """The fast path of `sample_chunk` from `noise` (`generator` draws the inpainting noise)."""
        frozen = self.frozen_network()
        steps = self.config.num_inference_steps
        if isinstance(self.inference_scheduler, DDIMScheduler):
            plan = self._plan()
            if known is None and cond.device.type == "cuda" and not self.config.prefix_training_max:
                return self._graphed_chunk(frozen, cond, noise)
            film = frozen.film(cond, plan.timesteps)
            return plan.sample(lambda x, i: frozen.denoise(self._network_input(x, known, known_mask), film, i),
                               noise, known, known_mask, generator)
        return sample(
            lambda x, t: frozen.denoise(self._network_input(x, known, known_mask), frozen.film(cond, t.reshape(1)), 0),
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


class StepTokenDenoiser(nn.Module):
    """The denoiser interface of the U-Net, ``(x (B, T, Din), t, cond (B, Dc)) -> (B, T, Da)``, over a
    denoiser that reads one token per observation step: the key-major global condition of
    :class:`~diffusion_policy.models.lowdim_encoder.LowDimObsEncoder` (each key's ``To`` frames in turn)
    regrouped into ``(B, To, sum of key sizes)``."""

    def __init__(self, key_dims: list[int], n_obs_steps: int, denoiser: nn.Module):
        super().__init__()
        self.key_dims, self.n_obs_steps = list(key_dims), n_obs_steps
        self.denoiser = denoiser

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, cond: torch.Tensor) -> torch.Tensor:
        blocks = cond.split([self.n_obs_steps * d for d in self.key_dims], dim=-1)
        tokens = torch.cat([b.reshape(cond.shape[0], self.n_obs_steps, -1) for b in blocks], dim=-1)
        return self.denoiser(sample, timestep, tokens)
