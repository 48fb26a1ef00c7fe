"""diffusers' ``UNet2DModel`` behind our 2-D denoiser interface, as a reference to compare :class:`UNet2D` with.

Both nets take ``(sample (B, C, H, W), timestep () or (B,), cond (B,) labels or None)`` and return
``(B, C, H, W)``, validate their inputs the same way, and use the label ``num_classes`` as the null
(unconditional) label of classifier-free guidance, so either can be dropped into the same trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import UNet2DModel
from torch import Tensor, nn

from diffusion_policy.models.unet2d import broadcast_timestep, check_image_inputs, check_unet_levels


@dataclass
class DiffusersUNet2DConfig:
    """Hyper-parameters of :class:`DiffusersUNet2D`, sized like the default :class:`UNet2DConfig`.

    ``attention_levels`` picks the levels built from ``AttnDownBlock2D`` / ``AttnUpBlock2D`` (the others use
    ``DownBlock2D`` / ``UpBlock2D``); the middle block always attends. Heads per block are
    ``channels // attention_head_dim``.
    """

    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 2
    attention_levels: tuple[int, ...] = (2,)
    norm_num_groups: int = 8
    attention_head_dim: int = 32
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # YAML/JSON give lists; keep tuples so the config stays hashable and comparable.
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.attention_levels = tuple(int(i) for i in self.attention_levels)
        check_unet_levels("block_out_channels", self.block_out_channels, self.layers_per_block,
                          self.norm_num_groups, self.attention_levels, self.dropout)
        if self.attention_head_dim < 1:
            raise ValueError(f"attention_head_dim={self.attention_head_dim} must be >= 1")
        for level in {*self.attention_levels, len(self.block_out_channels) - 1}:
            if self.block_out_channels[level] % self.attention_head_dim != 0:
                raise ValueError(
                    f"block_out_channels[{level}]={self.block_out_channels[level]} must be divisible by "
                    f"attention_head_dim={self.attention_head_dim}"
                )


class DiffusersUNet2D(nn.Module):
    """Image denoiser wrapping ``diffusers.UNet2DModel``: ``(B, C, H, W), () or (B,), (B,) -> (B, C, H, W)``.

    ``H`` and ``W`` must be divisible by :attr:`downsample_factor`. ``image_size`` is recorded as the
    model's ``sample_size`` (metadata for diffusers pipelines); other sizes passing the check work too.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int | None,
        config: DiffusersUNet2DConfig | None = None,
    ) -> None:
        super().__init__()
        config = config if config is not None else DiffusersUNet2DConfig()
        self.downsample_factor = 2 ** (len(config.block_out_channels) - 1)
        if in_channels < 1:
            raise ValueError(f"{in_channels=} must be >= 1")
        if image_size < 1 or image_size % self.downsample_factor != 0:
            raise ValueError(f"{image_size=} must be a positive multiple of {self.downsample_factor}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"{num_classes=} must be >= 1 or None")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.config = config
        n_levels = len(config.block_out_channels)
        attends = [level in config.attention_levels for level in range(n_levels)]
        self.unet = UNet2DModel(
            sample_size=image_size,
            in_channels=in_channels,
            out_channels=in_channels,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attends),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)),
            block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block,
            dropout=config.dropout,
            attention_head_dim=config.attention_head_dim,
            norm_num_groups=config.norm_num_groups,
            # With scale-shift conditioning diffusers drops the middle attention's GroupNorm unless told.
            attn_norm_num_groups=config.norm_num_groups,
            resnet_time_scale_shift="scale_shift",
            # One extra row: the null label that classifier-free guidance trains with and samples against.
            num_class_embeds=num_classes + 1 if num_classes is not None else None,
        )

    def forward(self, sample: Tensor, timestep: Tensor | int | float, cond: Tensor | None = None) -> Tensor:
        """``sample (B, C, H, W)``, ``timestep () or (B,)``, ``cond (B,)`` -> ``(B, C, H, W)``; see UNet2D.forward."""
        check_image_inputs(sample, cond, self.in_channels, self.num_classes, self.downsample_factor)
        timesteps = broadcast_timestep(timestep, sample.shape[0], sample.device)
        return self.unet(sample, timesteps, class_labels=cond).sample
