"""Conditional 1-D temporal U-Net with FiLM conditioning (Chi et al. 2023, "Diffusion Policy").

The network denoises an action chunk ``(B, T, Da)``. The diffusion step and a global condition (the
encoded observation history) are turned into one vector that modulates every residual block through
FiLM (Perez et al. 2018): ``h <- scale * h + bias`` per channel, broadcast over time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffusion_policy.models.embeddings import SinusoidalPosEmb
from diffusion_policy.models.gemm_conv import GemmConv1d, GemmConvTranspose1d


@dataclass
class UNet1DConfig:
    """Hyper-parameters of :class:`ConditionalUnet1D` (defaults: the paper's Push-T state network)."""

    down_dims: tuple[int, ...] = (256, 512, 1024)
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 256
    cond_predict_scale: bool = True

    def __post_init__(self) -> None:
        # YAML/JSON give lists; keep a tuple so the config stays hashable and comparable.
        self.down_dims = tuple(int(d) for d in self.down_dims)
        if not self.down_dims or any(d <= 0 for d in self.down_dims):
            raise ValueError(f"down_dims={self.down_dims} must be a non-empty tuple of positive ints")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={self.kernel_size} must be an odd integer >= 1")
        if self.n_groups < 1:
            raise ValueError(f"n_groups={self.n_groups} must be >= 1")
        for dim in self.down_dims:
            if dim % self.n_groups != 0:
                raise ValueError(f"down_dims entry {dim} must be divisible by n_groups={self.n_groups}")
        if self.step_embed_dim < 4 or self.step_embed_dim % 2 != 0:
            raise ValueError(f"step_embed_dim={self.step_embed_dim} must be an even integer >= 4")


class Conv1dBlock(nn.Sequential):
    """Conv1d (same padding) -> GroupNorm -> Mish, ``(B, C_in, T) -> (B, C_out, T)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int) -> None:
        super().__init__(
            GemmConv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks with FiLM between them and a residual connection.

    ``x (B, C_in, T), cond (B, Dcond) -> (B, C_out, T)``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, cond_dim: int, config: UNet1DConfig
    ) -> None:
        super().__init__()
        k, g = config.kernel_size, config.n_groups
        self.block1 = Conv1dBlock(in_channels, out_channels, k, g)
        self.block2 = Conv1dBlock(out_channels, out_channels, k, g)
        self.predict_scale = config.cond_predict_scale
        film_dim = 2 * out_channels if self.predict_scale else out_channels
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, film_dim))
        self.residual = (
            GemmConv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.block1(x)
        film = self.cond_encoder(cond).unsqueeze(-1)
        if self.predict_scale:
            scale, bias = film.chunk(2, dim=1)
            h = scale * h + bias
        else:
            h = h + film
        return self.block2(h) + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """Denoiser over action chunks: ``(sample (B, T, Din), timestep, global_cond (B, Dc)) -> (B, T, Da)``.

    ``Din = input_dim`` is ``Da`` (the default) or more: extra per-step input channels, such as the
    mark of actions held clean by training-time real-time chunking. ``T`` must be divisible by
    :attr:`horizon_multiple` because every encoder level but the last halves the time axis.
    """

    def __init__(
        self, action_dim: int, global_cond_dim: int, config: UNet1DConfig | None = None,
        input_dim: int | None = None,
    ) -> None:
        super().__init__()
        config = config if config is not None else UNet1DConfig()
        if action_dim < 1:
            raise ValueError(f"{action_dim=} must be >= 1")
        input_dim = action_dim if input_dim is None else input_dim
        if input_dim < action_dim:
            raise ValueError(f"{input_dim=} must be >= action_dim={action_dim}")
        self.input_dim = input_dim
        if global_cond_dim < 0:
            raise ValueError(f"{global_cond_dim=} must be >= 0")
        self.action_dim = action_dim
        self.global_cond_dim = global_cond_dim
        self.config = config
        dsed = config.step_embed_dim
        self.step_embedding = SinusoidalPosEmb(dsed)
        self.step_mlp = nn.Sequential(nn.Linear(dsed, 4 * dsed), nn.Mish(), nn.Linear(4 * dsed, dsed))
        cond_dim = dsed + global_cond_dim

        def res(cin: int, cout: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(cin, cout, cond_dim, config)

        dims = (input_dim, *config.down_dims)
        pairs = list(zip(dims[:-1], dims[1:]))
        self.down = nn.ModuleList()
        for i, (cin, cout) in enumerate(pairs):
            is_last = i == len(pairs) - 1
            downsample = nn.Identity() if is_last else GemmConv1d(cout, cout, 3, stride=2, padding=1)
            self.down.append(nn.ModuleList([res(cin, cout), res(cout, cout), downsample]))
        mid = config.down_dims[-1]
        self.mid = nn.ModuleList([res(mid, mid), res(mid, mid)])
        self.up = nn.ModuleList()
        for cin, cout in reversed(pairs[1:]):
            upsample = GemmConvTranspose1d(cin, cin, 4, stride=2, padding=1)
            self.up.append(nn.ModuleList([res(2 * cout, cin), res(cin, cin), upsample]))
        first = config.down_dims[0]
        self.final = nn.Sequential(
            Conv1dBlock(first, first, config.kernel_size, config.n_groups),
            GemmConv1d(first, action_dim, 1),
        )

    @property
    def horizon_multiple(self) -> int:
        """The horizon ``T`` must be a multiple of this (``2 ** (len(down_dims) - 1)``)."""
        return 2 ** (len(self.config.down_dims) - 1)

    def forward(self, sample: Tensor, timestep: Tensor | int, global_cond: Tensor | None) -> Tensor:
        """Predict the model output for a noisy action chunk.

        Args:
            sample: noisy actions ``(B, T, Din)`` (plus any extra input channels).
            timestep: diffusion step, a python int, a 0-d tensor or a ``(B,)`` tensor.
            global_cond: condition ``(B, Dc)``; may be None only when ``global_cond_dim == 0``.

        Returns:
            ``(B, T, Da)``: epsilon, x0 or v, depending on what the network was trained to predict.
        """
        self._check_inputs(sample, global_cond)
        batch = sample.shape[0]
        timesteps = torch.as_tensor(timestep, device=sample.device)
        if timesteps.ndim > 1 or (timesteps.ndim == 1 and timesteps.shape[0] not in (1, batch)):
            raise ValueError(f"timestep shape {tuple(timesteps.shape)} must be () or ({batch},)")
        # The sinusoid is computed in float32 (exact integer steps), then cast to the network's dtype.
        step_features = self.step_embedding(timesteps.reshape(-1).expand(batch)).to(sample.dtype)
        cond = self.step_mlp(step_features)
        if global_cond is not None and self.global_cond_dim > 0:
            cond = torch.cat([cond, global_cond.to(cond.dtype)], dim=-1)

        x = sample.transpose(1, 2)
        skips = []
        for block1, block2, downsample in self.down:
            x = block2(block1(x, cond), cond)
            skips.append(x)
            x = downsample(x)
        for block in self.mid:
            x = block(x, cond)
        for block1, block2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = upsample(block2(block1(x, cond), cond))
        return self.final(x).transpose(1, 2)

    def _check_inputs(self, sample: Tensor, global_cond: Tensor | None) -> None:
        if sample.ndim != 3 or sample.shape[-1] != self.input_dim:
            raise ValueError(
                f"sample must have shape (B, T, {self.input_dim}), got {tuple(sample.shape)}"
            )
        horizon = sample.shape[1]
        if horizon % self.horizon_multiple != 0:
            raise ValueError(f"{horizon=} must be divisible by {self.horizon_multiple}")
        expected = (sample.shape[0], self.global_cond_dim)
        if self.global_cond_dim == 0:
            if global_cond is not None and global_cond.numel() != 0:
                raise ValueError(f"global_cond must be None, got shape {tuple(global_cond.shape)}")
        elif global_cond is None or tuple(global_cond.shape) != expected:
            got = None if global_cond is None else tuple(global_cond.shape)
            raise ValueError(f"global_cond must have shape {expected}, got {got}")
