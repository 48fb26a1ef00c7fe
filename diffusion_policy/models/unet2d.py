"""Class-conditional 2-D U-Net denoiser for small images (Ho et al. 2020, "DDPM").

Layout follows DDPM: a stack of resolution levels, each with ``layers_per_block`` residual blocks (plus
self-attention on the chosen levels), a downsampling between levels, a res-attn-res middle, and a mirrored
upsampling path that concatenates one encoder activation per block (U-Net skips). The diffusion step and
the class label are embedded into one vector that modulates every residual block with a per-channel
scale and shift (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", sec. 3).

Every 2-D denoiser here shares one interface, so they are swappable:
``forward(sample (B, C, H, W), timestep () or (B,), cond (B,) int64 labels or None) -> (B, C, H, W)``.
The label ``num_classes`` is the null (unconditional) label of classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_policy.models.embeddings import SinusoidalPosEmb


@dataclass
class UNet2DConfig:
    """Hyper-parameters of :class:`UNet2D` (defaults: a ~4M-parameter net for 32x32 images)."""

    channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 2
    attention_levels: tuple[int, ...] = (2,)
    n_groups: int = 8
    embed_dim: int = 128
    dropout: float = 0.0
    attention_heads: int = 4

    def __post_init__(self) -> None:
        # YAML/JSON give lists; keep tuples so the config stays hashable and comparable.
        self.channels = tuple(int(c) for c in self.channels)
        self.attention_levels = tuple(int(i) for i in self.attention_levels)
        check_unet_levels("channels", self.channels, self.layers_per_block, self.n_groups, self.attention_levels,
                          self.dropout)
        if self.embed_dim < 4 or self.embed_dim % 2 != 0:
            raise ValueError(f"embed_dim={self.embed_dim} must be an even integer >= 4")
        if self.attention_heads < 1:
            raise ValueError(f"attention_heads={self.attention_heads} must be >= 1")
        # The middle block always attends, at the width of the last level.
        for level in {*self.attention_levels, len(self.channels) - 1}:
            if self.channels[level] % self.attention_heads != 0:
                raise ValueError(
                    f"channels[{level}]={self.channels[level]} must be divisible by "
                    f"attention_heads={self.attention_heads}"
                )


def check_unet_levels(
    name: str, channels: tuple[int, ...], layers_per_block: int, n_groups: int, attention_levels: tuple[int, ...],
    dropout: float,
) -> None:
    """Validate what every 2-D U-Net config shares; ``name`` is the config's field for the level widths."""
    if not channels or any(c <= 0 for c in channels):
        raise ValueError(f"{name}={channels} must be a non-empty tuple of positive ints")
    if layers_per_block < 1:
        raise ValueError(f"layers_per_block={layers_per_block} must be >= 1")
    if n_groups < 1:
        raise ValueError(f"group count {n_groups} must be >= 1")
    for c in channels:
        if c % n_groups != 0:
            raise ValueError(f"{name} entry {c} must be divisible by the group count {n_groups}")
    check_attention_levels(attention_levels, len(channels))
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout} must be in [0, 1)")


def check_attention_levels(attention_levels: tuple[int, ...], n_levels: int) -> None:
    """Raise ValueError unless every entry of ``attention_levels`` indexes one of ``n_levels`` levels."""
    for level in attention_levels:
        if not 0 <= level < n_levels:
            raise ValueError(f"attention_levels={attention_levels} has index {level}, outside [0, {n_levels})")


def broadcast_timestep(timestep: Tensor | int | float, batch: int, device: torch.device) -> Tensor:
    """Turn a python number, a 0-d tensor or a ``(B,)`` tensor into a ``(B,)`` tensor of timesteps."""
    timesteps = torch.as_tensor(timestep, device=device)
    if timesteps.ndim > 1 or (timesteps.ndim == 1 and timesteps.shape[0] not in (1, batch)):
        raise ValueError(f"timestep shape {tuple(timesteps.shape)} must be () or ({batch},)")
    return timesteps.reshape(-1).expand(batch)


def check_image_inputs(
    sample: Tensor, cond: Tensor | None, in_channels: int, num_classes: int | None, downsample_factor: int
) -> None:
    """Validate a 2-D denoiser's ``sample (B, C, H, W)`` and ``cond (B,)`` labels; raise ValueError."""
    if sample.ndim != 4 or sample.shape[1] != in_channels:
        raise ValueError(f"sample must have shape (B, {in_channels}, H, W), got {tuple(sample.shape)}")
    height, width = sample.shape[-2:]
    if height % downsample_factor != 0 or width % downsample_factor != 0:
        n_down = downsample_factor.bit_length() - 1
        plural = "" if n_down == 1 else "s"
        raise ValueError(
            f"image size {height}x{width} is not divisible by {downsample_factor} "
            f"({n_down} downsampling{plural} of the U-Net)"
        )
    if num_classes is None:
        if cond is not None:
            raise ValueError(f"unconditional network (num_classes=None) got class labels of shape {tuple(cond.shape)}")
        return
    if cond is None:
        raise ValueError(f"class labels are required (num_classes={num_classes}); pass {num_classes} for 'no class'")
    if cond.shape != (sample.shape[0],) or cond.is_floating_point() or cond.dtype == torch.bool:
        raise ValueError(
            f"cond must be integer labels of shape ({sample.shape[0]},), got {cond.dtype} {tuple(cond.shape)}"
        )
    if cond.numel() == 0:
        return
    low, high = (int(v) for v in torch.aminmax(cond))
    if low < 0 or high > num_classes:
        raise ValueError(
            f"class labels must be in [0, {num_classes}] ({num_classes} is the null label), got min {low} max {high}"
        )


class ResBlock2D(nn.Module):
    """Two 3x3 convs with scale-shift conditioning between them.

    ``x (B, C_in, H, W), emb (B, E) -> (B, C_out, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, config: UNet2DConfig) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(config.n_groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(config.embed_dim, 2 * out_channels))
        self.norm2 = nn.GroupNorm(config.n_groups, out_channels)
        self.dropout = nn.Dropout(config.dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)
        # (1 + scale) so a zero projection leaves the normalised activations untouched.
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class SelfAttention2D(nn.Module):
    """Multi-head self-attention over the ``H * W`` pixels, with a residual: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int, heads: int, n_groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(n_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)  # each (B, heads, H*W, C/heads)
        attended = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(attended.transpose(-1, -2).reshape(b, c, h, w))


class ResAttnBlock(nn.Module):
    """A residual block, optionally followed by self-attention.

    ``x (B, C_in, H, W), emb (B, E) -> (B, C_out, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, config: UNet2DConfig, attention: bool) -> None:
        super().__init__()
        self.res = ResBlock2D(in_channels, out_channels, config)
        self.attn = (
            SelfAttention2D(out_channels, config.attention_heads, config.n_groups) if attention else nn.Identity()
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.attn(self.res(x, emb))


class Upsample2D(nn.Sequential):
    """Nearest-neighbour x2 then a 3x3 conv, ``(B, C, H, W) -> (B, C, 2H, 2W)``.

    Chosen over a transposed conv, whose uneven kernel overlap causes checkerboard artefacts.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, channels, 3, padding=1))


class UNet2D(nn.Module):
    """Image denoiser: ``(sample (B, C, H, W), timestep () or (B,), cond (B,) labels) -> (B, C, H, W)``.

    ``H`` and ``W`` must be divisible by :attr:`downsample_factor`. ``cond`` holds labels in
    ``[0, num_classes]``, where ``num_classes`` is the null label; it must be None when ``num_classes`` is None.
    """

    def __init__(self, in_channels: int, num_classes: int | None, config: UNet2DConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else UNet2DConfig()
        if in_channels < 1:
            raise ValueError(f"{in_channels=} must be >= 1")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"{num_classes=} must be >= 1 or None")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.config = config
        self.downsample_factor = 2 ** (len(config.channels) - 1)
        dim = config.embed_dim
        self.step_embedding = SinusoidalPosEmb(dim)
        self.step_mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))
        # One extra row: the null label that classifier-free guidance trains with and samples against.
        self.class_embedding = nn.Embedding(num_classes + 1, dim) if num_classes is not None else None

        self.conv_in = nn.Conv2d(in_channels, config.channels[0], 3, padding=1)
        skip_channels = self._build_encoder()
        last = config.channels[-1]
        self.mid = nn.ModuleList([ResAttnBlock(last, last, config, True), ResAttnBlock(last, last, config, False)])
        self._build_decoder(skip_channels)
        first = config.channels[0]
        self.conv_out = nn.Sequential(
            nn.GroupNorm(config.n_groups, first), nn.SiLU(), nn.Conv2d(first, in_channels, 3, padding=1)
        )
        # Zero output at init: the net starts as the "predict zero" baseline, which keeps early losses sane.
        nn.init.zeros_(self.conv_out[-1].weight)
        nn.init.zeros_(self.conv_out[-1].bias)

    def _build_encoder(self) -> list[int]:
        """Create the down path; return the channel count of every activation it stores as a skip."""
        config = self.config
        self.down_levels = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        skip_channels = [config.channels[0]]
        current = config.channels[0]
        for level, width in enumerate(config.channels):
            attention = level in config.attention_levels
            blocks = nn.ModuleList()
            for _ in range(config.layers_per_block):
                blocks.append(ResAttnBlock(current, width, config, attention))
                current = width
                skip_channels.append(width)
            self.down_levels.append(blocks)
            if level < len(config.channels) - 1:
                self.downsamples.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
                skip_channels.append(width)
        return skip_channels

    def _build_decoder(self, skip_channels: list[int]) -> None:
        """Create the up path; each block eats one skip, deepest first (so one more block per level)."""
        config = self.config
        self.up_levels = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        current = config.channels[-1]
        for level in reversed(range(len(config.channels))):
            width = config.channels[level]
            attention = level in config.attention_levels
            blocks = nn.ModuleList()
            for _ in range(config.layers_per_block + 1):
                blocks.append(ResAttnBlock(current + skip_channels.pop(), width, config, attention))
                current = width
            self.up_levels.append(blocks)
            if level > 0:
                self.upsamples.append(Upsample2D(width))

    def forward(self, sample: Tensor, timestep: Tensor | int | float, cond: Tensor | None = None) -> Tensor:
        """Predict the model output for a batch of noisy images.

        Args:
            sample: noisy images ``(B, C, H, W)``.
            timestep: diffusion step, a python number, a 0-d tensor (broadcast to the batch) or ``(B,)``.
            cond: class labels ``(B,)`` int64 in ``[0, num_classes]``; None for an unconditional net.

        Returns:
            ``(B, C, H, W)``: epsilon, x0 or v, depending on what the network was trained to predict.
        """
        check_image_inputs(sample, cond, self.in_channels, self.num_classes, self.downsample_factor)
        timesteps = broadcast_timestep(timestep, sample.shape[0], sample.device)
        # The sinusoid is computed in float32 (exact integer steps), then cast to the network's dtype.
        emb = self.step_mlp(self.step_embedding(timesteps).to(sample.dtype))
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(cond)

        x = self.conv_in(sample)
        skips = [x]
        for level, blocks in enumerate(self.down_levels):
            for block in blocks:
                x = block(x, emb)
                skips.append(x)
            if level < len(self.downsamples):
                x = self.downsamples[level](x)
                skips.append(x)
        for block in self.mid:
            x = block(x, emb)
        for level, blocks in enumerate(self.up_levels):
            for block in blocks:
                x = block(torch.cat([x, skips.pop()], dim=1), emb)
            if level < len(self.upsamples):
                x = self.upsamples[level](x)
        return self.conv_out(x)
