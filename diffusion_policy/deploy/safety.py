"""The last line before the hardware: bounds, rate limits, a NaN guard and a watchdog, all logged.

Every command the controller sends passes `SafetyFilter.filter`. Nothing non-finite ever leaves it:
a bad or missing action becomes a hold of the last safe command, and every intervention is logged
with its time, tick and reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Intervention:
    """One thing the safety layer did or saw: `kind` is clipped | rate_limited | non_finite | hold | stop |
    bad_chunk (a chunk of the wrong shape, non-finite or outside the bounds) | slow_policy (latency
    longer than a chunk covers)."""

    time: float
    tick: int
    kind: str
    detail: str


@dataclass
class SafetyConfig:
    """Limits on commands `(Da,)`.

    low/high: bounds (None: the robot's action spec). max_delta: largest change per tick, per
    dimension (None: unlimited). stop_after_s: without a fresh chunk for this long the loop holds
    and then stops. max_bad_chunks: after this many consecutive bad chunks (wrong shape or non-finite:
    refused; outside low/high: clipped) the loop holds and stops; a good chunk resets the count.
    """

    low: list[float] | None = None
    high: list[float] | None = None
    max_delta: float | list[float] | None = None
    stop_after_s: float = 2.0
    max_bad_chunks: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.max_bad_chunks, bool) or not isinstance(self.max_bad_chunks, int) \
                or self.max_bad_chunks < 1:
            raise ValueError(f"max_bad_chunks={self.max_bad_chunks!r} must be an integer >= 1")
        if self.max_delta is not None and np.any(np.asarray(self.max_delta) <= 0):
            raise ValueError(f"max_delta={self.max_delta} must be > 0")
        if not self.stop_after_s > 0:
            raise ValueError(f"stop_after_s={self.stop_after_s} must be > 0")


@dataclass
class SafetyFilter:
    """Turns a candidate action (or None) into a safe command (or None: nothing to send yet)."""

    config: SafetyConfig
    low: np.ndarray
    high: np.ndarray
    last_safe: np.ndarray | None = None
    interventions: list[Intervention] = field(default_factory=list)

    @classmethod
    def for_robot(cls, config: SafetyConfig, low: np.ndarray | None, high: np.ndarray | None,
                  action_dim: int) -> SafetyFilter:
        """Bounds from `config`, else the robot's `low`/`high`, else unbounded; each `(Da,)`."""
        lo = np.broadcast_to(np.asarray(config.low if config.low is not None else
                                        (low if low is not None else -np.inf), dtype=np.float64), (action_dim,))
        hi = np.broadcast_to(np.asarray(config.high if config.high is not None else
                                        (high if high is not None else np.inf), dtype=np.float64), (action_dim,))
        if np.any(lo > hi):
            raise ValueError(f"safety bounds low={lo.tolist()} exceed high={hi.tolist()}")
        return cls(config, lo.copy(), hi.copy())

    def log(self, time: float, tick: int, kind: str, detail: str) -> None:
        self.interventions.append(Intervention(time, tick, kind, detail))
        logger.log(logging.WARNING if kind in ("non_finite", "stop", "bad_chunk", "slow_policy") else logging.INFO,
                   "tick %d: %s (%s)", tick, kind, detail)

    def filter(self, action: np.ndarray | None, time: float, tick: int, reason: str = "") -> np.ndarray | None:
        """Candidate `(Da,)` or None -> command `(Da,)`; None only while no safe command exists yet."""
        if action is None or not np.all(np.isfinite(action)):
            kind = "hold" if action is None else "non_finite"
            self.log(time, tick, kind, reason or ("no action planned" if action is None else f"got {action}"))
            return None if self.last_safe is None else self.last_safe.copy()
        safe = np.clip(np.asarray(action, dtype=np.float64), self.low, self.high)
        if not np.array_equal(safe, action):
            self.log(time, tick, "clipped", f"{np.asarray(action).tolist()} -> {safe.tolist()}")
        if self.config.max_delta is not None and self.last_safe is not None:
            step = np.asarray(self.config.max_delta, dtype=np.float64)
            limited = np.clip(safe, self.last_safe - step, self.last_safe + step)
            if not np.array_equal(limited, safe):
                self.log(time, tick, "rate_limited", f"{safe.tolist()} -> {limited.tolist()}")
            safe = limited
        self.last_safe = safe
        return safe.copy()

    def chunk_problem(self, chunk: np.ndarray, shape: tuple[int, int]) -> tuple[str, bool] | None:
        """What is wrong with chunk `(T, Da)` for the expected `shape`, and whether it must be refused
        (wrong shape, non-finite) rather than clipped action by action (outside the bounds); None if fine."""
        if chunk.shape != shape:
            return f"chunk of shape {chunk.shape}; the policy's spec says (T, Da) = {shape}", True
        finite = np.isfinite(chunk)
        if not finite.all():
            rows = np.flatnonzero(~finite.all(axis=1))
            return f"chunk with NaN or inf in {len(rows)} of {len(chunk)} rows (first: {rows[:8].tolist()})", True
        outside = (chunk < self.low) | (chunk > self.high)
        if outside.any():
            return (f"chunk with {int(outside.sum())} values outside [{self.low.tolist()}, {self.high.tolist()}] "
                    f"(range {chunk.min():.6g} .. {chunk.max():.6g})"), False
        return None
