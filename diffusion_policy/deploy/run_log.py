"""What a controller run did, tick by tick, and the numbers that summarise it.

Per tick: when it was due, started, observed and sent, the command `(Da,)` (NaN when nothing was
sent), the chunk it came from and the queue depth after it. Per inference: observation tick,
latency and the actions skipped on arrival. `summary()` gives period jitter, deadline misses,
inference latency, queue depth and the discontinuity at chunk boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffusion_policy.core.checkpoint import save_json
from diffusion_policy.deploy.safety import Intervention
from diffusion_policy.deploy.worker import InferenceResult


@dataclass
class RunLog:
    rate_hz: float
    transition: str
    threshold: int
    ticks: list[dict[str, Any]] = field(default_factory=list)
    inferences: list[dict[str, Any]] = field(default_factory=list)
    missed_ticks: list[int] = field(default_factory=list)
    interventions: list[Intervention] = field(default_factory=list)
    stop_reason: str = ""

    @property
    def n_ticks(self) -> int:
        return len(self.ticks)

    def record_tick(self, tick: int, due: float, t_start: float, t_obs: float, t_sent: float,
                    command: np.ndarray | None, chunk_id: int, queue: int, observed: np.ndarray | None) -> None:
        self.ticks.append({"tick": tick, "due": due, "start": t_start, "obs": t_obs, "sent": t_sent,
                           "command": None if command is None else np.asarray(command, dtype=np.float64).tolist(),
                           "chunk": chunk_id, "queue": queue,
                           "observed": None if observed is None else np.asarray(observed).tolist()})

    def record_inference(self, result: InferenceResult, arrival_tick: int, skipped: int) -> None:
        request = result.job.request
        self.inferences.append({"chunk": result.job.chunk_id, "tick": result.job.tick, "t_obs": result.job.t_obs,
                                "t_done": result.t_done, "latency_s": result.latency_s,
                                "delay_ticks": result.job.delay_ticks, "arrival_tick": arrival_tick,
                                "skipped": skipped, "prefix": 0 if request.prefix is None else len(request.prefix)})

    def commands(self) -> np.ndarray:
        """`(N, Da)` commands sent per tick, NaN rows where nothing was sent."""
        width = max((len(t["command"]) for t in self.ticks if t["command"] is not None), default=0)
        return np.array([t["command"] if t["command"] is not None else [np.nan] * width for t in self.ticks])

    def summary(self) -> dict[str, Any]:
        """Timing, queue and boundary-discontinuity statistics (seconds; action units per tick)."""
        return pooled_summary([self])

    def raw_measurements(self) -> dict[str, np.ndarray]:
        """The per-tick / per-inference / per-boundary values `pooled_summary` reduces."""
        period = 1.0 / self.rate_hz
        starts, due, sent = (np.array([t[k] for t in self.ticks]) for k in ("start", "due", "sent"))
        consecutive = np.diff(np.array([t["tick"] for t in self.ticks])) == 1
        boundaries = boundary_measurements(self.commands(), np.array([t["chunk"] for t in self.ticks]))
        return {
            "jitter": np.abs(np.diff(starts)[consecutive] - period),
            "start_lag": starts - due,
            "late": np.array([int(np.sum(sent - due > period)) + len(self.missed_ticks)]),
            "latency": np.array([i["latency_s"] for i in self.inferences]),
            "skipped": np.array([i["skipped"] for i in self.inferences]),
            "queue": np.array([t["queue"] for t in self.ticks], dtype=float),
            **boundaries,
        }

    def to_json(self, path: str | Path) -> None:
        data = {"summary": self.summary(), "rate_hz": self.rate_hz, "transition": self.transition,
                "threshold": self.threshold, "ticks": self.ticks, "inferences": self.inferences,
                "missed_ticks": self.missed_ticks, "interventions": [vars(i) for i in self.interventions]}
        save_json(data, path)


def pooled_summary(logs: list[RunLog]) -> dict[str, Any]:
    """Statistics over the ticks, inferences and chunk boundaries of several runs (episodes)."""
    per_log = [log.raw_measurements() for log in logs]
    raw = {k: np.concatenate([m[k] for m in per_log]) for k in per_log[0]}
    return {
        "ticks": sum(log.n_ticks for log in logs),
        "period_jitter_ms": _percentiles(raw["jitter"] * 1e3),
        "start_lag_ms": _percentiles(raw["start_lag"] * 1e3),
        "deadline_misses": int(raw["late"].sum()),
        "inference_latency_ms": _percentiles(raw["latency"] * 1e3),
        "inferences": int(raw["latency"].size),
        "skipped_actions": int(raw["skipped"].sum()),
        "queue_depth": _percentiles(raw["queue"]),
        "boundaries": {"count": int(raw["jump"].size), "jump_mean": _mean(raw["jump"]), "jump_max": _max(raw["jump"]),
                       "inside_step_mean": _mean(raw["inside"]), "jerk_mean": _mean(raw["jerk"]),
                       "jerk_max": _max(raw["jerk"])},
        "interventions": _count([i.kind for log in logs for i in log.interventions]),
        "stop_reasons": _count([log.stop_reason for log in logs]),
    }


def boundary_measurements(commands: np.ndarray, chunk_ids: np.ndarray) -> dict[str, np.ndarray]:
    """At ticks where the source chunk changes: jump `|a_k - a_{k-1}|` and jerk `|third difference|`
    centred there; and the same step measured inside chunks. `commands` `(N, Da)`, `chunk_ids` `(N,)`."""
    valid = np.all(np.isfinite(commands), axis=1) & (chunk_ids >= 0)
    step = np.linalg.norm(np.diff(commands, axis=0), axis=1)
    both = valid[1:] & valid[:-1]
    boundary = both & (chunk_ids[1:] != chunk_ids[:-1])
    inside = both & (chunk_ids[1:] == chunk_ids[:-1])
    jerk = np.full(len(commands), np.nan)
    if len(commands) >= 4:
        third = commands[3:] - 3 * commands[2:-1] + 3 * commands[1:-2] - commands[:-3]
        jerk[2:-1] = np.linalg.norm(third, axis=1)  # a_{k+1} - 3 a_k + 3 a_{k-1} - a_{k-2} at tick k
    at = jerk[np.flatnonzero(boundary) + 1]
    return {"jump": step[boundary], "inside": step[inside], "jerk": at[np.isfinite(at)]}


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
            "max": float(values.max())}


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def _max(values: np.ndarray) -> float:
    return float(values.max()) if values.size else float("nan")


def _count(kinds: list[str]) -> dict[str, int]:
    return {k: kinds.count(k) for k in sorted(set(kinds))}
