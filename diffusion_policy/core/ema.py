"""Exponential moving average of model weights with a power-law warm-up of the decay."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class EMAConfig:
    """Decay schedule ``1 - (1 + step / inv_gamma) ** -power`` clipped to ``[min_decay, max_decay]``.

    ``power=0.75`` reaches decay 0.999 at about 10k steps and 0.9999 at about 215k steps.
    """

    power: float = 0.75
    inv_gamma: float = 1.0
    min_decay: float = 0.0
    max_decay: float = 0.9999
    update_after_step: int = 0

    def __post_init__(self) -> None:
        if self.power <= 0:
            raise ValueError(f"power={self.power} must be > 0")
        if self.inv_gamma <= 0:
            raise ValueError(f"inv_gamma={self.inv_gamma} must be > 0")
        if not 0.0 <= self.min_decay <= self.max_decay <= 1.0:
            raise ValueError(f"need 0 <= min_decay={self.min_decay} <= max_decay={self.max_decay} <= 1")
        if self.update_after_step < 0:
            raise ValueError(f"update_after_step={self.update_after_step} must be >= 0")


class EMA:
    """Keeps ``self.model``, an averaged deep copy of a model (eval mode, no gradients)."""

    def __init__(self, model: nn.Module, config: EMAConfig | None = None) -> None:
        self.config = config if config is not None else EMAConfig()
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.step = 0

    def decay(self, step: int) -> float:
        """Decay applied by the update at optimisation ``step`` (0 until ``update_after_step``)."""
        cfg = self.config
        step = step - cfg.update_after_step
        if step <= 0:
            return 0.0
        value = 1.0 - (1.0 + step / cfg.inv_gamma) ** -cfg.power
        return min(max(value, cfg.min_decay), cfg.max_decay)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend ``model``'s floating-point parameters into the average; copy its buffers verbatim."""
        decay = self.decay(self.step)
        ema_params, new_params = [], []
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            if ema_p.dtype.is_floating_point:
                ema_params.append(ema_p)
                new_params.append(p.detach().to(ema_p.dtype))
            else:
                ema_p.copy_(p)
        if ema_params:
            # ema <- decay * ema + (1 - decay) * p, i.e. ema += (1 - decay) * (p - ema)
            torch._foreach_lerp_(ema_params, new_params, 1.0 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)
        self.step += 1

    def state_dict(self) -> dict[str, Tensor]:
        """Averaged weights (keys of ``self.model.state_dict()``) plus ``"ema_step"`` (0-d int64 tensor)."""
        state = dict(self.model.state_dict())
        state["ema_step"] = torch.tensor(self.step, dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`state_dict` returned (raises KeyError without ``"ema_step"``)."""
        if "ema_step" not in state:
            raise KeyError(f"'ema_step' missing from EMA state (keys: {sorted(state)[:5]}...)")
        weights = {k: v for k, v in state.items() if k != "ema_step"}
        self.model.load_state_dict(weights)
        self.step = int(state["ema_step"])
