"""Typed policy configs, validated on construction; saved as JSON next to the weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffusion_policy.core.flow import FlowConfig
from diffusion_policy.core.schedulers import SchedulerConfig
from diffusion_policy.core.targets import check_sampler, samplers_for
from diffusion_policy.data.images import image_shape_problem, is_image_shape
from diffusion_policy.data.obs_mapping import ObsMapping
from diffusion_policy.models.transformer1d import TransformerConfig
from diffusion_policy.models.unet1d import UNet1DConfig
from diffusion_policy.models.vision_encoder import VisionConfig

NORMALIZER_MODES = ("limits", "gaussian")


@dataclass
class PolicyConfig:
    """What every policy shares: its observation keys and the chunking of actions in time.

    `obs_shapes` maps each observation key to its per-step shape; the policy sees `(B, To, *shape)`.
    Its keys are kept sorted by name, which fixes the order in which they are concatenated.
    A key with a three-dimensional shape is a camera image `(H, W, C)` (uint8, see
    `diffusion_policy.data.images`), encoded as `vision` says; the others are low-dimensional (a
    per-step shape of one or two axes, e.g. `(9, 2)` keypoints, flattened by the encoder).
    `obs_mapping` (`ObsMapping.to_dict()`, see `diffusion_policy.data.obs_mapping`) says where each
    key came from in the training data, so an environment or robot that speaks the dataset's keys is
    mapped the same way; None when every key is its own dataset key.
    A predicted chunk is `(B, horizon, action_dim)`; the executed slice is
    `[n_obs_steps - 1 : n_obs_steps - 1 + n_action_steps]`.
    `obs_noise` is the standard deviation of Gaussian noise added to the normalised low-dim
    observations in training mode only (an augmentation against memorising few demonstrations;
    with `normalizer_mode="limits"` the data spans [-1, 1], so 0.1 is 5% of a feature's range).
    """

    obs_shapes: dict[str, tuple[int, ...]]
    action_dim: int
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    normalizer_mode: str = "limits"
    obs_noise: float = 0.0
    vision: VisionConfig = field(default_factory=VisionConfig)
    obs_mapping: dict[str, Any] | None = None

    @property
    def image_keys(self) -> list[str]:
        """The observation keys that are camera images, in `obs_shapes` order."""
        return [key for key, shape in self.obs_shapes.items() if is_image_shape(shape)]

    def __post_init__(self) -> None:
        if not self.obs_shapes:
            raise ValueError(f"obs_shapes={self.obs_shapes} must name at least one observation key")
        # Keys in sorted order: the encoder concatenates them in this order, and a saved config.json
        # (written with sorted keys) must load into the same conditioning layout it was trained with.
        self.obs_shapes = {str(k): tuple(int(d) for d in v) for k, v in sorted(self.obs_shapes.items())}
        for key, shape in self.obs_shapes.items():
            if "." in key or not shape or min(shape) < 1:
                raise ValueError(f"observation key {key!r} with shape {shape} is invalid")
            if len(shape) > 2 and (problem := image_shape_problem(key, shape)) is not None:
                raise ValueError(f"{problem} (low-dim keys have one or two axes, e.g. (D,) or (9, 2); "
                                 "images are (H, W, C))")
        for name in ("action_dim", "horizon", "n_obs_steps", "n_action_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError(
                f"n_obs_steps - 1 + n_action_steps = {self.n_obs_steps - 1 + self.n_action_steps} "
                f"exceeds {self.horizon=}: the executed actions must lie inside the predicted chunk"
            )
        if not 0.0 <= self.obs_noise < float("inf"):
            raise ValueError(f"obs_noise={self.obs_noise} must be a finite standard deviation >= 0")
        if self.normalizer_mode not in NORMALIZER_MODES:
            raise ValueError(f"normalizer_mode={self.normalizer_mode!r} is not one of {NORMALIZER_MODES}")
        if self.obs_mapping is not None:
            mapped = self.mapping.shapes()
            if mapped != self.obs_shapes:
                raise ValueError(f"obs_mapping gives per-step shapes {mapped}, but obs_shapes={self.obs_shapes}")

    @property
    def mapping(self) -> ObsMapping:
        """How an observation's keys become the policy's: `obs_mapping`, or each key from itself."""
        return ObsMapping.of_policy(self.obs_shapes, self.action_dim, self.obs_mapping)


DENOISERS = ("unet", "transformer")


@dataclass
class DiffusionPolicyConfig(PolicyConfig):
    """A conditional 1-D U-Net denoising action chunks.

    denoiser: ``unet`` (the conditional 1-D U-Net, ``network``) or ``transformer`` (DP-T,
    ``transformer``: low-dim observations only; sampled on the eager path).
    objective: ``ddpm`` (noise prediction on ``noise_scheduler``'s schedule; sampled by ``ddpm``,
    ``ddim`` (default) or ``dpmsolver++``) or ``flow`` (flow matching, ``core/flow.py``: velocity on the
    straight path ``x_t = (1 - t) x0 + t noise``, t drawn as ``flow.time_sampling`` says; sampled by
    ``euler`` (default) or ``heun`` with any ``num_inference_steps``). A saved policy records both.

    prefix_training_max: training-time real-time chunking (after Black, Ren, Equi and Levine 2025,
    "Training-Time Action Conditioning for Efficient Real-Time Chunking", arXiv 2512.05964). Each
    training chunk keeps its first d ~ U{0..prefix_training_max} actions clean, marked by an extra
    input channel of the network, with no loss on them; the policy learns to continue a held prefix
    by itself, at no cost at inference. Set it to at least the rows real-time chunking holds
    (`To - 1 + delay`). 0 (default): off.
    """

    network: UNet1DConfig = field(default_factory=UNet1DConfig)
    denoiser: str = "unet"
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    objective: str = "ddpm"
    noise_scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    inference_scheduler: str | None = None
    num_inference_steps: int = 10
    prefix_training_max: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.denoiser not in DENOISERS:
            raise ValueError(f"denoiser={self.denoiser!r} is not one of {DENOISERS}")
        multiple = 2 ** (len(self.network.down_dims) - 1) if self.denoiser == "unet" else 1
        if self.horizon % multiple:
            raise ValueError(
                f"horizon={self.horizon} must be divisible by 2**(len(down_dims)-1) = {multiple} "
                f"(down_dims={list(self.network.down_dims)})"
            )
        if not 0 <= self.prefix_training_max < self.horizon:
            raise ValueError(f"prefix_training_max={self.prefix_training_max} must be in [0, horizon={self.horizon})")
        if self.inference_scheduler is None:
            self.inference_scheduler = samplers_for(self.objective)[0]
        check_sampler(self.objective, self.inference_scheduler, self.num_inference_steps, self.noise_scheduler)


@dataclass
class RegressionPolicyConfig(PolicyConfig):
    """The MSE baseline: an MLP from the observation condition straight to the action chunk."""

    hidden_dims: tuple[int, ...] = (512, 512, 512)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hidden_dims = tuple(self.hidden_dims)
        if not self.hidden_dims or min(self.hidden_dims) < 1:
            raise ValueError(f"hidden_dims={self.hidden_dims} must be non-empty and positive")
