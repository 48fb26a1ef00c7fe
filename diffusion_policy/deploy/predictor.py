"""What the controller loop asks of a policy, wherever it runs: a spec and `predict(request) -> chunk`.

`LocalPredictor` runs a policy in this process; `PolicyClient` (deploy/client.py) runs it behind a
`PolicyServer` on another machine. Both validate a request against the spec before inference, so a
bad observation is rejected with a message naming the key, never fed to the network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from diffusion_policy.data.obs_mapping import ObsMapping
from diffusion_policy.deploy.transitions import coherence_cost
from diffusion_policy.policy.base import BasePolicy

MAX_CANDIDATES = 64
REAL_DTYPES = ("uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")


@dataclass(frozen=True)
class PolicySpec:
    """Shapes a policy takes and gives: obs `{key: (To, *shape)}` -> chunk `(T, Da)`; Ta actions per plan.

    `obs_mapping` is the policy's saved observation mapping; `mapping` turns a robot's observation
    into the policy's keys with it (`ObsMapping.observation`).
    """

    obs_shapes: dict[str, tuple[int, ...]]
    action_dim: int
    n_obs_steps: int
    horizon: int
    n_action_steps: int
    obs_mapping: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.obs_shapes:
            raise ValueError("obs_shapes must name at least one observation key")
        for name in ("action_dim", "n_obs_steps", "horizon", "n_action_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError(f"n_obs_steps - 1 + n_action_steps = {self.n_obs_steps - 1 + self.n_action_steps} "
                             f"exceeds horizon={self.horizon}")
        object.__setattr__(self, "obs_shapes", {str(k): tuple(int(d) for d in v) for k, v in self.obs_shapes.items()})
        object.__setattr__(self, "mapping", ObsMapping.of_policy(self.obs_shapes, self.action_dim, self.obs_mapping))

    @classmethod
    def of(cls, policy: BasePolicy) -> PolicySpec:
        c = policy.config
        return cls(dict(c.obs_shapes), c.action_dim, c.n_obs_steps, c.horizon, c.n_action_steps, c.obs_mapping)

    def to_dict(self) -> dict[str, Any]:
        return {"obs_shapes": {k: list(v) for k, v in self.obs_shapes.items()}, "action_dim": self.action_dim,
                "n_obs_steps": self.n_obs_steps, "horizon": self.horizon, "n_action_steps": self.n_action_steps,
                "obs_mapping": self.obs_mapping}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicySpec:
        return cls({k: tuple(v) for k, v in data["obs_shapes"].items()}, int(data["action_dim"]),
                   int(data["n_obs_steps"]), int(data["horizon"]), int(data["n_action_steps"]),
                   data.get("obs_mapping"))

    def check_request(self, request: ChunkRequest, allow_extra_keys: bool = True) -> None:
        """Raise ValueError/KeyError/TypeError naming the key and shape of anything the policy cannot take
        (with `allow_extra_keys=False`, also observation keys the policy does not use)."""
        if not allow_extra_keys and (extra := sorted(set(request.obs) - set(self.obs_shapes))):
            raise KeyError(f"observation keys {extra} are not the policy's; it takes {sorted(self.obs_shapes)}")
        for key, shape in self.obs_shapes.items():
            if key not in request.obs:
                raise KeyError(f"observation key {key!r} is missing; got keys {sorted(request.obs)}")
            value = request.obs[key]
            if not isinstance(value, np.ndarray) or value.dtype.name not in REAL_DTYPES:
                kind = value.dtype.name if isinstance(value, np.ndarray) else type(value).__name__
                raise TypeError(f"observation {key!r} has type {kind}; expected a numpy array of {REAL_DTYPES}")
            expected = (self.n_obs_steps, *shape)
            if value.shape != expected:
                raise ValueError(f"observation {key!r} has shape {value.shape}; expected (To, ...) = {expected}")
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise ValueError(f"observation {key!r} contains NaN or inf")
        guidance = request.prefix_guidance
        if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float))
                                     or not (math.isfinite(guidance) and guidance > 0)):
            raise ValueError(f"prefix_guidance={guidance!r} must be None or a finite number > 0")
        candidates = request.candidates
        if isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) \
                or not 1 <= candidates <= MAX_CANDIDATES:
            raise ValueError(f"candidates={candidates!r} must be an integer in [1, {MAX_CANDIDATES}]")
        if candidates > 1 and guidance is not None:
            raise ValueError(f"candidates={candidates} and prefix_guidance={guidance} exclude each other")
        if request.prefix is None:
            if request.prefix_weights is not None or guidance is not None or candidates > 1:
                raise ValueError("prefix_weights, prefix_guidance or candidates > 1 given without a prefix")
            return
        prefix, weights = request.prefix, request.prefix_weights
        if prefix.ndim != 2 or not 1 <= prefix.shape[0] <= self.horizon or prefix.shape[1] != self.action_dim:
            raise ValueError(f"prefix has shape {prefix.shape}; expected (P, Da) with 1 <= P <= {self.horizon}, "
                             f"Da = {self.action_dim}")
        if not np.isfinite(prefix).all():
            raise ValueError("prefix contains NaN or inf")
        if weights is None or weights.shape != prefix.shape[:1]:
            raise ValueError(f"prefix_weights has shape {None if weights is None else weights.shape}; "
                             f"expected ({prefix.shape[0]},) to go with prefix {prefix.shape}")
        if not (np.all(weights >= 0) and np.all(weights <= 1)):
            raise ValueError(f"prefix_weights must lie in [0, 1], got {weights.tolist()}")


@dataclass
class ChunkRequest:
    """One inference call.

    obs: `{key: (To, *shape)}` raw observations, oldest first.
    prefix: `(P, Da)` raw actions to hold at chunk indices `0 .. P-1` (real-time chunking), or None.
    prefix_weights: `(P,)` in [0, 1]: 1 holds an action exactly, 0 leaves it free.
    seed: seeds the initial diffusion noise; None draws fresh noise.
    prefix_guidance: None holds the prefix by inpainting; a float > 0 by pseudoinverse guidance with
        the guidance weight clipped there (`BasePolicy.predict_action`).
    candidates: with a prefix and K > 1, sample K chunks (the prefix's weight-1 rows inpainted) and
        return the one that best continues its softly held rows (`transitions.coherence_cost`).
    """

    obs: dict[str, np.ndarray]
    prefix: np.ndarray | None = None
    prefix_weights: np.ndarray | None = None
    seed: int | None = None
    prefix_guidance: float | None = None
    candidates: int = 1


class ChunkPredictor(Protocol):
    """Anything the controller loop can plan with: a local policy or a client of a policy server."""

    spec: PolicySpec

    def predict(self, request: ChunkRequest) -> np.ndarray:
        """request -> raw action chunk `(T, Da)` float32; index `To - 1` acts at the newest observation."""
        ...

    def close(self) -> None: ...


class LocalPredictor:
    """Runs `policy` in this process (in whichever thread calls `predict`)."""

    def __init__(self, policy: BasePolicy) -> None:
        self.policy = policy.eval()
        self.spec = PolicySpec.of(policy)

    def predict(self, request: ChunkRequest) -> np.ndarray:
        self.spec.check_request(request)
        k = request.candidates
        obs = {key: np.repeat(v[None], k, axis=0) for key, v in request.obs.items() if key in self.spec.obs_shapes}
        generator = torch.Generator().manual_seed(request.seed) if request.seed is not None else None
        prefix = weights = None
        if request.prefix is not None:
            prefix = torch.as_tensor(request.prefix, dtype=torch.float32).expand(k, *request.prefix.shape)
            weights = torch.as_tensor(request.prefix_weights, dtype=torch.float32)
            if k > 1:  # candidates: inpaint the hard rows only; the soft rows choose among the samples
                weights = (weights == 1).float()
        out = self.policy.predict_action(obs, generator=generator, prefix=prefix, prefix_weights=weights,
                                         prefix_guidance=request.prefix_guidance)
        chunks = out["action_pred"].to("cpu", torch.float32).numpy()
        if k == 1:
            return chunks[0]
        return chunks[int(np.argmin(coherence_cost(chunks, request.prefix, request.prefix_weights)))]

    def close(self) -> None:
        """Nothing to release for an in-process policy."""
