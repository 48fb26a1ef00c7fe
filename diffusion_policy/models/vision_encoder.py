"""Observation encoder for camera images (plus low-dim keys), as in Diffusion Policy (Chi et al. 2023).

Every frame of every camera goes through crop -> ResNet-18 (GroupNorm) -> spatial softmax -> linear,
giving `feature_dim` numbers per camera and frame; low-dim keys are appended as they are, and the
frames are flattened into the policy's global condition, the same contract as `LowDimObsEncoder`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffusion_policy.data.images import image_shape_problem, is_image_shape
from diffusion_policy.models.crop import center_crop, crop_problem, random_crop
from diffusion_policy.models.resnet_gn import ResNet18GN, feature_map_shape, width_problem
from diffusion_policy.models.spatial_softmax import SpatialSoftmax


@dataclass
class VisionConfig:
    """Hyper-parameters of the image encoders (defaults: the paper's, for 96x96 camera frames).

    `crop_shape` `(h, w)`: random crops in training, the centre crop in evaluation; None keeps the
    whole frame. `share_encoder`: one encoder for all cameras instead of one per camera.
    """

    backbone_width: int = 64
    num_keypoints: int = 32
    feature_dim: int = 64
    crop_shape: tuple[int, int] | None = (84, 84)
    share_encoder: bool = False

    def __post_init__(self) -> None:
        problem = width_problem(self.backbone_width)
        if problem is not None:
            raise ValueError(problem)
        for name in ("num_keypoints", "feature_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.crop_shape is not None:
            # YAML/JSON give lists; keep a tuple so the config stays hashable and comparable.
            self.crop_shape = tuple(int(d) for d in self.crop_shape)
            if len(self.crop_shape) != 2 or min(self.crop_shape) < 1:
                raise ValueError(f"crop_shape={self.crop_shape} must be None or two positive ints (h, w)")


class ImageEncoder(nn.Module):
    """One camera: `(N, C, H, W)` float in [0, 1] -> `(N, feature_dim)`.

    Crops at random in training mode and at the centre in evaluation mode (random offsets come from
    torch's global RNG), then ResNet18GN -> SpatialSoftmax -> Linear(2K, feature_dim).
    """

    def __init__(self, config: VisionConfig, in_channels: int = 3) -> None:
        super().__init__()
        self.crop_shape = config.crop_shape
        self.feature_dim = config.feature_dim
        self.backbone = ResNet18GN(in_channels, config.backbone_width)
        self.keypoints = SpatialSoftmax(self.backbone.out_channels, config.num_keypoints)
        self.project = nn.Linear(2 * config.num_keypoints, config.feature_dim)

    def forward(self, images: Tensor) -> Tensor:
        if self.crop_shape is not None:
            crop = random_crop if self.training else center_crop
            images = crop(images, self.crop_shape)
        problem = size_problem(tuple(images.shape[-2:]))
        if problem is not None:
            raise ValueError(f"images of shape {tuple(images.shape)}, crop_shape={self.crop_shape}: {problem}")
        if images.device.type == "cpu":
            # oneDNN's convolutions and GroupNorm run faster on channels-last (NHWC) activations (measured
            # on CPU only); frames permuted from (H, W, C) already are, so this usually copies nothing.
            images = images.contiguous(memory_format=torch.channels_last)
        return self.project(self.keypoints(self.backbone(images)))


class MultiObsEncoder(nn.Module):
    """Camera images and low-dim keys over time into one global condition vector.

    obs `{key: (B, To, *shape)}` -> `(B, To * (n_cameras * feature_dim + sum(lowdim sizes)))`. Image
    keys (per-step shape `(H, W, C)`) arrive as float in [0, 1], low-dim keys already normalised. Per
    step the vector is [camera features in key order, low-dim keys flattened in key order].
    """

    def __init__(self, obs_shapes: Mapping[str, tuple[int, ...]], n_obs_steps: int, config: VisionConfig):
        super().__init__()
        self.obs_shapes = {k: tuple(int(d) for d in v) for k, v in obs_shapes.items()}
        self.n_obs_steps = n_obs_steps
        self.image_keys = [k for k, shape in self.obs_shapes.items() if is_image_shape(shape)]
        self.lowdim_keys = [k for k in self.obs_shapes if k not in self.image_keys]
        self.feature_dim = config.feature_dim
        self.share_encoder = config.share_encoder
        _check_image_shapes({k: self.obs_shapes[k] for k in self.image_keys}, config)
        if self.share_encoder:
            channels = self.obs_shapes[self.image_keys[0]][-1]
            self.encoders = nn.ModuleDict({"shared": ImageEncoder(config, channels)})
        else:
            self.encoders = nn.ModuleDict(
                {k: ImageEncoder(config, self.obs_shapes[k][-1]) for k in self.image_keys}
            )

    @property
    def output_dim(self) -> int:
        lowdim = sum(math.prod(self.obs_shapes[k]) for k in self.lowdim_keys)
        return self.n_obs_steps * (len(self.image_keys) * self.feature_dim + lowdim)

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        batch, steps = obs[self.image_keys[0]].shape[:2]
        for key in self.image_keys:
            if tuple(obs[key].shape) != (batch, steps, *self.obs_shapes[key]):
                raise ValueError(f"image {key!r} has shape {tuple(obs[key].shape)}; expected "
                                 f"({batch}, {steps}, *{self.obs_shapes[key]}) (B, To, H, W, C)")
        # Frames are encoded independently: fold time (and, when shared, cameras) into the batch.
        # The permute makes channel-last frames (N, C, H, W) without a copy.
        frames = [obs[k].flatten(0, 1).permute(0, 3, 1, 2) for k in self.image_keys]
        if self.share_encoder:
            features = self.encoders["shared"](torch.cat(frames)).split(batch * steps)
        else:
            features = [self.encoders[k](x) for k, x in zip(self.image_keys, frames)]
        parts = [f.reshape(batch, steps, -1) for f in features]
        parts += [obs[k].reshape(batch, steps, -1) for k in self.lowdim_keys]
        return torch.cat(parts, dim=-1).reshape(batch, -1)


def _check_image_shapes(image_shapes: dict[str, tuple[int, ...]], config: VisionConfig) -> None:
    """Raise unless there are cameras, each a valid `(H, W, C)` image the crop fits (and, when shared, alike)."""
    if not image_shapes:
        raise ValueError("obs_shapes has no image key (per-step shape (H, W, C)); "
                         "use LowDimObsEncoder for low-dimensional observations only")
    for key, shape in image_shapes.items():
        problem = image_shape_problem(key, shape)
        if problem is not None:
            raise ValueError(problem)
        if config.crop_shape is not None:
            problem = crop_problem(shape[:2], config.crop_shape)
            if problem is not None:
                raise ValueError(f"image {key!r} of per-step shape {shape}: {problem}")
        problem = size_problem(config.crop_shape or shape[:2])
        if problem is not None:
            raise ValueError(f"image {key!r} of per-step shape {shape}, crop_shape={config.crop_shape}: {problem}")
    if config.share_encoder and len(set(image_shapes.values())) > 1:
        raise ValueError(f"share_encoder=True needs all cameras to have the same shape; got {image_shapes}")


def size_problem(image_hw: tuple[int, int]) -> str | None:
    """Why `(H, W)` images (after cropping) are too small for the encoder, or None.

    A 1-pixel side of the feature map makes that keypoint coordinate a constant, and a 1x1 map makes
    the whole encoder ignore its input, so each side needs more than 32 pixels.
    """
    fmap = feature_map_shape(*image_hw)
    if min(fmap) < 2:
        return (f"the encoded images (H, W)={tuple(image_hw)} give a {fmap[0]}x{fmap[1]} feature map; "
                "spatial softmax needs at least 2x2, so each side must be >= 33 pixels")
    return None
