"""The transformer denoiser of Diffusion Policy (DP-T; Chi et al. 2023, sec. 3.3 and app. A.2).

Noisy action tokens go through a transformer decoder with causal self-attention; its memory is one
token for the diffusion time and one per observation step, and each action token sees the time token
and the observation steps up to its own. Pre-norm layers, GELU feed-forward of width 4 x `n_emb`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffusion_policy.models.embeddings import SinusoidalPosEmb


@dataclass
class TransformerConfig:
    """Hyper-parameters of :class:`TransformerDenoiser` (defaults: the paper's Push-T state setting)."""

    n_layer: int = 8
    n_head: int = 4
    n_emb: int = 256
    p_drop_emb: float = 0.0
    p_drop_attn: float = 0.01
    causal: bool = True

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_emb"):
            if getattr(self, name) < 1:
                raise ValueError(f"transformer {name}={getattr(self, name)} must be >= 1")
        if self.n_emb % self.n_head:
            raise ValueError(f"transformer n_emb={self.n_emb} must be divisible by n_head={self.n_head}")
        for name in ("p_drop_emb", "p_drop_attn"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"transformer {name}={getattr(self, name)} must be in [0, 1)")


class TransformerDenoiser(nn.Module):
    """``(sample (B, T, Din), timestep () or (B,), obs tokens (B, To, Dobs)) -> (B, T, Dout)``."""

    def __init__(self, input_dim: int, output_dim: int, horizon: int, n_obs_steps: int, obs_dim: int,
                 config: TransformerConfig):
        super().__init__()
        self.horizon, self.n_obs_steps = horizon, n_obs_steps
        n = config.n_emb
        self.input_embedding = nn.Linear(input_dim, n)
        self.position = nn.Parameter(torch.zeros(1, horizon, n))
        self.time_embedding = SinusoidalPosEmb(n)
        self.obs_embedding = nn.Linear(obs_dim, n)
        self.memory_position = nn.Parameter(torch.zeros(1, 1 + n_obs_steps, n))
        self.dropout = nn.Dropout(config.p_drop_emb)
        self.memory_mlp = nn.Sequential(nn.Linear(n, 4 * n), nn.Mish(), nn.Linear(4 * n, n))
        layer = nn.TransformerDecoderLayer(n, config.n_head, 4 * n, config.p_drop_attn, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, config.n_layer)
        self.norm = nn.LayerNorm(n)
        self.head = nn.Linear(n, output_dim)
        if config.causal:
            steps = torch.arange(horizon)
            self.register_buffer("self_mask", _additive(steps[None, :] <= steps[:, None]), persistent=False)
            memory = torch.arange(1 + n_obs_steps)  # 0: time; 1 + s: observation step s
            self.register_buffer("memory_mask", _additive(memory[None, :] <= steps[:, None] + 1), persistent=False)
        else:
            self.self_mask = self.memory_mask = None
        nn.init.normal_(self.position, std=0.02)
        nn.init.normal_(self.memory_position, std=0.02)

    def forward(self, sample: Tensor, timestep: Tensor | int, obs: Tensor) -> Tensor:
        batch = sample.shape[0]
        if sample.shape[1] != self.horizon:
            raise ValueError(f"sample has {sample.shape[1]} steps; this denoiser was built for {self.horizon}")
        if obs.shape[:2] != (batch, self.n_obs_steps):
            raise ValueError(f"observation tokens must be ({batch}, {self.n_obs_steps}, D), got {tuple(obs.shape)}")
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(batch)
        time = self.time_embedding(t).to(sample.dtype)[:, None]
        memory = torch.cat([time, self.obs_embedding(obs)], dim=1) + self.memory_position
        memory = self.memory_mlp(self.dropout(memory))
        x = self.dropout(self.input_embedding(sample) + self.position)
        x = self.decoder(x, memory, tgt_mask=self.self_mask, memory_mask=self.memory_mask)
        return self.head(self.norm(x))

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: weight decay on the weight matrices of linear layers and attention only, none on
        biases, norms and embeddings (the paper's recipe)."""
        decayed = [p for p in self.parameters() if p.ndim == 2]  # norms, biases: 1-D; positions: 3-D
        plain = [p for p in self.parameters() if p.ndim != 2]
        return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _additive(allowed: Tensor) -> Tensor:
    """A float attention mask: 0 where attending is allowed, -inf elsewhere."""
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
