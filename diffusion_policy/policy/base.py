"""What every policy shares: observation checks, normalisation, chunk slicing and save/load.

A policy directory is self-contained: `config.json` (kind + typed config), `model.safetensors`
(network weights), `normalizer.safetensors` (normaliser statistics) and `MANIFEST.sha256` (their
hashes, checked on load: core/artifact.py). It acts without any training config file.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from diffusion_policy.config_utils import to_dict
from diffusion_policy.core.artifact import config_from, read_artifact, save_artifact
from diffusion_policy.core.checkpoint import load_tensors
from diffusion_policy.data.images import image_shape_problem
from diffusion_policy.data.normalizer import Normalizer
from diffusion_policy.models.lowdim_encoder import LowDimObsEncoder
from diffusion_policy.models.vision_encoder import MultiObsEncoder
from diffusion_policy.policy.config import PolicyConfig

ObsLike = Mapping[str, torch.Tensor | np.ndarray]


class BasePolicy(nn.Module):
    """Subclasses set `kind` and `config_class` and implement `compute_loss` and `sample_chunk`."""

    kind: ClassVar[str]
    config_class: ClassVar[type[PolicyConfig]]

    def __init__(self, config: PolicyConfig, normalizer: Normalizer):
        super().__init__()
        self._image_keys = frozenset(config.image_keys)
        # Images are scaled to [0, 1] by `condition`, not by the normaliser.
        normalized = [k for k in config.obs_shapes if k not in self._image_keys]
        missing = [k for k in [*normalized, "action"] if k not in normalizer.keys]
        if missing:
            raise KeyError(f"normalizer has no statistics for {missing}; it knows {normalizer.keys}")
        self.config = config
        self.normalizer = normalizer
        self._warned_extra_keys: set[tuple[str, ...]] = set()
        self.obs_encoder = (MultiObsEncoder(config.obs_shapes, config.n_obs_steps, config.vision)
                            if self._image_keys else LowDimObsEncoder(config.obs_shapes, config.n_obs_steps))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- to implement -------------------------------------------------------------------------
    def compute_loss(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """batch `{"obs": {key: (B, To, ...)}, "action": (B, T, Da)}` (raw units) -> scalar loss."""
        raise NotImplementedError

    def sample_chunk(
        self,
        cond: torch.Tensor,
        generator: torch.Generator | None,
        noise: torch.Tensor | None,
        known: torch.Tensor | None = None,
        known_mask: torch.Tensor | None = None,
        guidance: float | None = None,
    ) -> torch.Tensor:
        """cond `(B, Dc)` -> normalised action chunk `(B, T, Da)`.

        `known` `(B, T, Da)` (normalised) with a bool or [0, 1] `known_mask` broadcastable to it holds
        part of the chunk while it is sampled, for policies that support it: by inpainting, or with
        `guidance` (the clip of the guidance weight) by pseudoinverse guidance.
        """
        raise NotImplementedError

    # --- shared behaviour ---------------------------------------------------------------------
    def reset(self) -> None:
        """Clear per-episode state (none for these policies; kept for the evaluator's interface)."""

    def condition(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Raw obs `{key: (B, To, *shape)}` (images uint8 `(B, To, H, W, C)`) -> global condition `(B, Dc)`.

        Low-dim keys go through the normaliser (plus `config.obs_noise` Gaussian noise in training
        mode); images are scaled to float in [0, 1].
        """
        return self.obs_encoder({k: obs[k].float() / 255.0 if k in self._image_keys
                                 else self._noised(self.normalizer.normalize(k, obs[k]))
                                 for k in self.config.obs_shapes})

    def _noised(self, x: torch.Tensor) -> torch.Tensor:
        """x plus N(0, obs_noise^2) noise in training mode; x itself otherwise."""
        if self.training and self.config.obs_noise > 0:
            return x + self.config.obs_noise * torch.randn_like(x)
        return x

    @torch.no_grad()
    def predict_action(
        self,
        obs: ObsLike,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        prefix: torch.Tensor | None = None,
        prefix_weights: torch.Tensor | None = None,
        prefix_guidance: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """obs `{key: (B, To, *shape)}` -> `{"action": (B, Ta, Da), "action_pred": (B, T, Da)}` in raw units.

        `generator` and/or `noise` `(B, T, Da)` make sampling reproducible. `prefix` `(B, P, Da)` raw
        actions with `prefix_weights` `(P,)` in [0, 1] hold the chunk's first P actions while it is
        sampled (real-time chunking): weight 1 holds an action exactly, smaller weights hold it softly.
        The prefix is held by inpainting at every denoising step, or with `prefix_guidance` (a float
        > 0, the clip of the guidance weight) by pseudoinverse guidance, which also steers the free
        actions to continue the held ones at the cost of a backward pass per step.
        """
        self._warn_extra_keys(obs)
        obs = validate_obs(obs, self.config.obs_shapes, self.config.n_obs_steps, self.device, self._image_keys)
        cond = self.condition(obs)
        known, mask = self._prefix_constraint(prefix, prefix_weights, cond.shape[0])
        if prefix_guidance is not None and known is None:
            raise ValueError(f"{prefix_guidance=} needs a prefix to guide towards")
        chunk = self.sample_chunk(cond, generator, noise, known, mask, prefix_guidance)
        action_pred = self.normalizer.unnormalize("action", chunk)
        if not torch.isfinite(action_pred).all():
            seen = _ranges({k: (float(v.min()), float(v.max())) for k, v in obs.items() if k not in self._image_keys})
            raise ValueError(f"the policy produced a non-finite action chunk from observations with {seen}; its "
                             f"training data had {_ranges(self._training_ranges())}")
        start = self.config.n_obs_steps - 1
        return {"action": action_pred[:, start : start + self.config.n_action_steps], "action_pred": action_pred}

    def _warn_extra_keys(self, obs: ObsLike) -> None:
        """Warn once per set of observation keys the policy does not take (they are not used)."""
        extra = tuple(sorted(set(obs) - set(self.config.obs_shapes))) if isinstance(obs, Mapping) else ()
        if extra and extra not in self._warned_extra_keys:
            self._warned_extra_keys.add(extra)
            warnings.warn(f"observation keys {list(extra)} are not the policy's and are ignored; it takes "
                          f"{sorted(self.config.obs_shapes)}", stacklevel=3)

    def _training_ranges(self) -> dict[str, tuple[float, float]]:
        """Per low-dim key, the least and greatest value of the normaliser's statistics (its training data)."""
        return {key: (float(self.normalizer.params[key].min.min()), float(self.normalizer.params[key].max.max()))
                for key in self.config.obs_shapes if key not in self._image_keys}

    def _prefix_constraint(
        self, prefix: torch.Tensor | None, weights: torch.Tensor | None, batch: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Raw prefix `(B, P, Da)` + weights `(P,)` -> normalised known `(B, T, Da)` and mask `(1, T, 1)`."""
        if prefix is None and weights is None:
            return None, None
        horizon, action_dim = self.config.horizon, self.config.action_dim
        if prefix is None or weights is None:
            raise ValueError("prefix and prefix_weights must be given together")
        prefix = torch.as_tensor(prefix, dtype=torch.float32, device=self.device)
        weights = torch.as_tensor(weights, dtype=torch.float32, device=self.device)
        if prefix.ndim != 3 or prefix.shape[0] != batch or not 1 <= prefix.shape[1] <= horizon \
                or prefix.shape[2] != action_dim:
            raise ValueError(f"prefix has shape {tuple(prefix.shape)}; expected (B, P, Da) with B = {batch}, "
                             f"1 <= P <= {horizon}, Da = {action_dim}")
        if weights.shape != prefix.shape[1:2]:
            raise ValueError(f"prefix_weights has shape {tuple(weights.shape)}; expected ({prefix.shape[1]},)")
        if not torch.isfinite(prefix).all():
            raise ValueError("prefix contains NaN or inf")
        known = torch.zeros(batch, horizon, action_dim, device=self.device)
        known[:, : prefix.shape[1]] = self.normalizer.normalize("action", prefix)
        mask = torch.zeros(1, horizon, 1, device=self.device)
        mask[0, : prefix.shape[1], 0] = weights
        return known, mask

    def save(self, path: str | Path) -> None:
        """Write the self-contained policy directory atomically."""
        weights = {k: v for k, v in self.state_dict().items() if not k.startswith("normalizer.")}
        save_artifact(path, self.kind, self.config, {"model": weights, "normalizer": self.normalizer.state_dict()})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> BasePolicy:
        """Rebuild a policy from a directory written by `save`."""
        _, stored = read_artifact(path, [cls.kind])
        return cls.from_artifact(path, stored, device)

    @classmethod
    def from_artifact(cls, path: str | Path, stored: Mapping[str, Any], device: str | torch.device = "cpu",
                      ) -> BasePolicy:
        """Rebuild a policy from directory `path`, already checked by `read_artifact` (which gave `stored`,
        its config), without hashing its files again."""
        path = Path(path)
        config = config_from(cls.config_class, stored, path)
        normalizer = Normalizer.from_state_dict(load_tensors(path / "normalizer.safetensors"))
        policy = cls(config, normalizer)
        policy._load_tensors(path)
        return policy.to(device).eval()

    def load_weights(self, path: str | Path, check_config: bool = True) -> None:
        """Load weights and normaliser from a policy directory into this policy.

        Raises ValueError naming every config field that differs, or the tensors that do not fit.
        """
        path = Path(path)
        _, stored = read_artifact(path, [self.kind])
        if check_config:
            ours = to_dict(self.config)
            diff = [f"{k}: checkpoint {stored.get(k)!r} vs policy {ours.get(k)!r}"
                    for k in sorted(set(stored) | set(ours)) if stored.get(k) != ours.get(k)]
            if diff:
                raise ValueError(f"checkpoint {path} does not match this policy's config: " + "; ".join(diff))
        self._load_tensors(path)

    def _load_tensors(self, path: Path) -> None:
        state = load_tensors(path / "model.safetensors", self.device)
        state.update({f"normalizer.{k}": v for k, v in load_tensors(path / "normalizer.safetensors").items()})
        try:
            self.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"weights in {path} do not fit this policy: {err}") from err


def validate_obs(
    obs: ObsLike,
    obs_shapes: Mapping[str, tuple[int, ...]],
    n_obs_steps: int,
    device: torch.device,
    image_keys: frozenset[str] = frozenset(),
) -> dict[str, torch.Tensor]:
    """Check keys, shapes `(B, To, *shape)`, dtypes and finiteness; return tensors on `device`:
    float32 for low-dim keys, uint8 `(B, To, H, W, C)` for `image_keys`."""
    if not isinstance(obs, Mapping):
        raise TypeError(f"obs must be a dict of arrays, got {type(obs).__name__}")
    out: dict[str, torch.Tensor] = {}
    batch = None
    for key, shape in obs_shapes.items():
        if key not in obs:
            raise KeyError(f"observation key {key!r} is missing; got keys {sorted(obs)} (observations in the "
                           "dataset's keys go through policy.config.mapping.observation(frame) first)")
        raw = obs[key]
        # torch cannot wrap read-only numpy memory (e.g. np.broadcast_to views) without a copy.
        value = torch.as_tensor(np.array(raw) if isinstance(raw, np.ndarray) and not raw.flags.writeable else raw)
        if value.dtype == torch.bool or value.is_complex() or not (value.is_floating_point() or _is_int(value)):
            raise TypeError(f"observation {key!r} has dtype {value.dtype}; expected a real number type")
        expected = (batch if batch is not None else value.shape[0] if value.ndim else None, n_obs_steps, *shape)
        if tuple(value.shape) != expected:
            hint = image_shape_problem(key, value.shape[2:]) if key in image_keys and value.ndim == 5 else None
            raise ValueError(f"observation {key!r} has shape {tuple(value.shape)}; expected (B, To, ...) = {expected}"
                             + (f": {hint}" if hint else ""))
        batch = value.shape[0]
        if batch == 0:
            raise ValueError(f"observation {key!r} has shape {tuple(value.shape)}: a batch of 0 observations")
        if key in image_keys:
            if value.dtype != torch.uint8:
                raise TypeError(f"image {key!r} of shape {tuple(value.shape)} has dtype {value.dtype}; "
                                "images are uint8 in [0, 255]")
            out[key] = value.to(device=device)
            continue
        value = value.to(device=device, dtype=torch.float32)
        if not torch.isfinite(value).all():
            raise ValueError(f"observation {key!r} contains NaN or inf")
        out[key] = value
    return out


def _ranges(ranges: Mapping[str, tuple[float, float]]) -> str:
    """`{key: (low, high)}` as "key in [low, high], ..." for error messages."""
    return ", ".join(f"{key} in [{low:.6g}, {high:.6g}]" for key, (low, high) in ranges.items())


def _is_int(value: torch.Tensor) -> bool:
    return value.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
