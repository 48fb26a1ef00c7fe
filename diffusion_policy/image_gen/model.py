"""A class-conditional image diffusion model on the shared core: network + noise schedule + CFG sampling.

It is trained by the same :class:`~diffusion_policy.core.trainer.Trainer` as the policies (it has
``compute_loss(batch)`` and ``save(path)``), noised by the same scheduler factory, and sampled by the
same :func:`~diffusion_policy.core.sampling.sample` loop, with classifier-free guidance from the core.
The network is swappable: ours (:class:`UNet2D`) or diffusers' ``UNet2DModel`` (the reference).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_policy.core.artifact import config_from, read_artifact, save_artifact
from diffusion_policy.core.checkpoint import load_tensors
from diffusion_policy.core.flow import FlowConfig
from diffusion_policy.core.sampling import classifier_free_guidance, sample
from diffusion_policy.core.schedulers import SchedulerConfig, make_sampler, make_scheduler
from diffusion_policy.core.targets import check_sampler, denoising_example, samplers_for
from diffusion_policy.models.diffusers_unet2d import DiffusersUNet2D, DiffusersUNet2DConfig
from diffusion_policy.models.unet2d import UNet2D, UNet2DConfig

NETWORKS = ("ours", "diffusers")
KIND = "image_diffusion"


def _image_schedule() -> SchedulerConfig:
    # Ho et al. 2020: 1000 steps, betas linear from 1e-4 to 0.02, epsilon prediction; images live in [-1, 1].
    return SchedulerConfig(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                           clip_sample=True, prediction_type="epsilon")


@dataclass
class ImageModelConfig:
    """What defines an image model; `network` picks which of `unet` / `diffusers_unet` is built."""

    image_size: int = 32
    in_channels: int = 1
    num_classes: int | None = 10
    network: str = "ours"
    unet: UNet2DConfig = field(default_factory=UNet2DConfig)
    diffusers_unet: DiffusersUNet2DConfig = field(default_factory=DiffusersUNet2DConfig)
    objective: str = "ddpm"  # or "flow": flow matching (core/flow.py), sampled by euler / heun
    noise_scheduler: SchedulerConfig = field(default_factory=_image_schedule)
    flow: FlowConfig = field(default_factory=FlowConfig)
    label_dropout: float = 0.1

    def __post_init__(self) -> None:
        samplers_for(self.objective)  # refuses an unknown objective
        if self.network not in NETWORKS:
            raise ValueError(f"network={self.network!r} is not one of {NETWORKS}")
        if self.image_size < 1 or self.in_channels < 1:
            raise ValueError(f"image_size={self.image_size} and in_channels={self.in_channels} must be >= 1")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes={self.num_classes} must be >= 1 (or None: unconditional)")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout={self.label_dropout} must lie in [0, 1)")


def build_network(config: ImageModelConfig) -> nn.Module:
    """The denoiser ``(x (B, C, S, S), t, labels (B,)) -> (B, C, S, S)`` named by ``config.network``."""
    if config.network == "ours":
        network: nn.Module = UNet2D(config.in_channels, config.num_classes, config.unet)
    else:
        network = DiffusersUNet2D(config.in_channels, config.image_size, config.num_classes, config.diffusers_unet)
    factor = network.downsample_factor
    if config.image_size % factor != 0:
        raise ValueError(f"image size {config.image_size}x{config.image_size} is not divisible by {factor}, "
                         f"the downsampling of the {config.network!r} U-Net")
    return network


class ImageDiffusionModel(nn.Module):
    """Image generator trained with DDPM or flow matching (``config.objective``); ``generate`` samples
    ``(B, C, S, S)`` images in [-1, 1]."""

    def __init__(self, config: ImageModelConfig) -> None:
        super().__init__()
        self.config = config
        self.network = build_network(config)
        self.train_scheduler = make_scheduler("ddpm", config.noise_scheduler)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def null_label(self) -> int:
        """The label index that means "no class" (classifier-free guidance's unconditional branch)."""
        return self.config.num_classes if self.config.num_classes is not None else 0

    def compute_loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """batch ``{"image": (B, C, S, S) in [-1, 1], "label": (B,)}`` -> scalar denoising loss.

        A ``label_dropout`` fraction of labels is replaced by the null label, so one network learns
        both the conditional and the unconditional model that guidance combines.
        """
        x0 = batch["image"]
        labels = self._labels(batch.get("label"), x0.shape[0])
        if labels is not None and self.config.label_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.config.label_dropout
            labels = labels.masked_fill(drop, self.null_label)
        noisy, t, target = denoising_example(self.config.objective, x0, self.train_scheduler,
                                             self.config.noise_scheduler, self.config.flow)
        return F.mse_loss(self.network(noisy, t, labels), target)

    def _labels(self, labels: Tensor | None, batch: int) -> Tensor | None:
        if self.config.num_classes is None:
            return None
        if labels is None:
            raise ValueError(f"a class-conditional model ({self.config.num_classes} classes) needs labels")
        labels = torch.as_tensor(labels, device=self.device).long()
        if labels.shape != (batch,):
            raise ValueError(f"labels have shape {tuple(labels.shape)}; expected ({batch},)")
        if bool(((labels < 0) | (labels > self.null_label)).any()):
            raise ValueError(f"labels must lie in [0, {self.null_label}] ({self.null_label} = no class), "
                             f"got {labels.min().item()}..{labels.max().item()}")
        return labels

    @torch.no_grad()
    def generate(
        self,
        labels: Tensor | None = None,
        *,
        num_samples: int | None = None,
        sampler: str | None = None,
        steps: int = 50,
        guidance_scale: float = 2.0,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Sample images ``(B, C, S, S)`` in [-1, 1].

        Args:
            labels: classes ``(B,)`` for a conditional model (the null label samples unconditionally).
            num_samples: B for an unconditional model (``labels`` None).
            sampler: ``ddim`` (default), ``ddpm`` or ``dpmsolver++`` over the training schedule for a DDPM
                model; ``euler`` (default) or ``heun`` for a flow model.
            steps: denoising steps.
            guidance_scale: classifier-free guidance scale (1 = conditional, no guidance).
            generator, noise: reproducibility, as in :func:`~diffusion_policy.core.sampling.sample`.
        """
        sampler = sampler or samplers_for(self.config.objective)[0]
        check_sampler(self.config.objective, sampler, steps, self.config.noise_scheduler)
        if labels is None and num_samples is None:
            raise ValueError("pass labels (conditional model) or num_samples (unconditional model)")
        batch = labels.shape[0] if labels is not None else num_samples
        labels = self._labels(labels, batch)
        if labels is None:
            denoiser = lambda x, t: self.network(x, t.to(x.device), None)  # noqa: E731
        else:
            denoiser = classifier_free_guidance(
                lambda x, t, c: self.network(x, t.to(x.device), c), labels,
                torch.full_like(labels, self.null_label), guidance_scale)
        size, channels = self.config.image_size, self.config.in_channels
        x = sample(denoiser, make_sampler(sampler, self.config.noise_scheduler), steps,
                   shape=None if noise is not None else (batch, channels, size, size), noise=noise,
                   generator=generator, device=self.device)
        return x.clamp(-1.0, 1.0)

    def save(self, path: str | Path) -> None:
        """Write a self-contained model directory (``config.json`` + ``model.safetensors``) atomically."""
        save_artifact(path, KIND, self.config, {"model": self.network.state_dict()})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ImageDiffusionModel:
        """Rebuild a model from a directory written by :meth:`save`."""
        path = Path(path)
        _, stored = read_artifact(path, [KIND])
        model = cls(config_from(ImageModelConfig, stored, path))
        model.network.load_state_dict(load_tensors(path / "model.safetensors"))
        return model.to(device).eval()
