"""Chunk transitions: how a newly arrived action chunk joins the actions already planned per tick.

Ticks count control periods. A chunk planned from the observation of tick `k` gives actions for
ticks `k, k+1, ...` (chunk index `To - 1` onward). When it arrives at tick `m > k`, the actions of
ticks before `m` are skipped (their time has passed: latency compensation). Then, per transition:

- `replace`: the new chunk's actions overwrite the plan from tick `m` on.
- `ensemble`: temporal ensembling (Zhao et al. 2023, ACT): every chunk that planned a tick votes,
  weighted `exp(-decay * i)` with `i = 0` for the oldest chunk.
- `rtc_inpaint` / `rtc_soft` / `rtc_guided` / `rtc_select`: real-time chunking (after Black et al.
  2025, "Real-Time Execution of Action Chunking Flow Policies", for flow policies; here for
  diffusion). The next chunk is sampled with its first actions held to the committed ones: the
  actions already executed (chunk indices before `To - 1`) and those that will execute while it is
  computed (`delay` ticks), so they are identical by construction and the new chunk continues them.
  `rtc_soft` also holds the rest of the old plan softly, with weights decaying from 1 to 0 (the
  paper's exponential soft mask), applied by soft-mask inpainting in the sampling loop. `rtc_guided`
  holds the same prefix by pseudoinverse guidance, as the paper does (`DDIMPlan.sample_guided`: a
  backward pass through the network per denoising step). `rtc_select` holds only the hard part by
  inpainting, samples several chunks in one batch and keeps the one that best continues the soft
  part (`coherence_cost`), the backward coherence criterion of bidirectional decoding (Liu et al.
  2024): every candidate is a sample of the policy, so the soft part shapes the choice without
  pulling any sample off the policy's distribution. The chunk then replaces the plan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

TRANSITIONS = ("replace", "ensemble", "rtc_inpaint", "rtc_soft", "rtc_guided", "rtc_select")
SOFT_TRANSITIONS = ("rtc_soft", "rtc_guided", "rtc_select")


def check_transition(transition: str) -> None:
    if transition not in TRANSITIONS:
        raise ValueError(f"{transition=} is not one of {TRANSITIONS}")


class ActionSchedule:
    """Actions `(Da,)` planned per tick, each tagged with the id of the chunk that planned it."""

    def __init__(self, transition: str = "replace", ensemble_decay: float = 0.01) -> None:
        check_transition(transition)
        if ensemble_decay < 0:
            raise ValueError(f"{ensemble_decay=} must be >= 0")
        self.transition = transition
        self.ensemble_decay = ensemble_decay
        self._plan: dict[int, list[tuple[np.ndarray, int]]] = {}

    def merge(self, chunk: np.ndarray, first_tick: int, now_tick: int, chunk_id: int, n_held: int = 0) -> int:
        """Add chunk `(n, Da)` whose row 0 acts at `first_tick`; rows before `now_tick` are skipped.

        `n_held`: the first rows were held to the plan while sampling (real-time chunking); where the
        plan still has those ticks, its actions (and chunk ids) stay, so the transition is where the
        new chunk's own actions begin. Returns the number of rows skipped.
        """
        skipped = min(max(0, now_tick - first_tick), len(chunk))
        for j in range(skipped, len(chunk)):
            entry = (np.asarray(chunk[j], dtype=np.float64), chunk_id)
            if self.transition == "ensemble":
                self._plan.setdefault(first_tick + j, []).append(entry)
            elif j >= n_held or first_tick + j not in self._plan:
                self._plan[first_tick + j] = [entry]
        return skipped

    def remaining(self, tick: int) -> int:
        """How many ticks from `tick` on have an action planned."""
        return sum(1 for t in self._plan if t >= tick)

    def planned(self, tick: int) -> tuple[np.ndarray, int] | None:
        """The action `(Da,)` and newest chunk id planned for `tick`, or None."""
        entries = self._plan.get(tick)
        if not entries:
            return None
        if len(entries) == 1:
            return entries[0]
        weights = np.exp(-self.ensemble_decay * np.arange(len(entries)))
        actions = np.stack([a for a, _ in entries])
        return (weights[:, None] * actions).sum(0) / weights.sum(), entries[-1][1]

    def pop(self, tick: int) -> tuple[np.ndarray, int] | None:
        """`planned(tick)`, forgetting every tick up to and including `tick`."""
        out = self.planned(tick)
        for t in [t for t in self._plan if t <= tick]:
            del self._plan[t]
        return out


def soft_mask_weights(n: int) -> np.ndarray:
    """`(n,)` weights decaying from near 1 to near 0: `c (e^c - 1) / (e - 1)` with `c` from 1 to 0 exclusive."""
    c = 1.0 - np.arange(1, n + 1) / (n + 1)
    return c * np.expm1(c) / math.expm1(1.0)


def coherence_cost(chunks: np.ndarray, prefix: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """How far each candidate chunk `(K, T, Da)` strays from the prefix `(P, Da)`: `(K,)`.

    `sum_i w_i |chunk_i - prefix_i|^2` over the prefix rows held softly (`0 < w_i < 1`); rows held
    with weight 1 are inpainted, hence equal in every candidate, and left out.
    """
    if chunks.ndim != 3 or prefix.ndim != 2 or chunks.shape[2] != prefix.shape[1] or chunks.shape[1] < len(prefix) \
            or weights.shape != prefix.shape[:1]:
        raise ValueError(f"chunks {chunks.shape}, prefix {prefix.shape} and weights {weights.shape} do not fit: "
                         "expected (K, T, Da), (P, Da) with P <= T and (P,)")
    soft = np.where(weights < 1, weights, 0.0)
    return (((chunks[:, : len(prefix)] - prefix) ** 2).sum(-1) * soft).sum(-1)


def rtc_prefix(
    executed: Sequence[np.ndarray | None],
    schedule: ActionSchedule,
    tick: int,
    delay: int,
    horizon: int,
    soft: bool,
    soft_steps: int | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Prefix `(P, Da)` and weights `(P,)` for a chunk planned from the observation of `tick`.

    `executed`: the `To - 1` actions sent at ticks `tick - To + 1 .. tick - 1` (None where none was),
    held at chunk indices `0 .. To - 2`. The planned actions of ticks `tick .. tick + delay - 1` are
    held with weight 1; with `soft`, the rest of the plan follows with decaying weights (at most
    `soft_steps` actions of it; None: all of it). Actions missing from the plan get weight 0. None
    when nothing is held.
    """
    rows: list[np.ndarray | None] = list(executed)
    hard = len(rows) + delay
    end = min(horizon, hard + (horizon if soft_steps is None else soft_steps) if soft else hard)
    t = tick
    while len(rows) < end and (len(rows) < hard or schedule.planned(t) is not None):
        entry = schedule.planned(t)
        rows.append(None if entry is None else entry[0])
        t += 1
    weights = np.ones(len(rows))
    weights[hard:] = soft_mask_weights(max(0, len(rows) - hard))
    known = [r for r in rows if r is not None]
    if not known:
        return None
    filler = known[0]
    weights[[i for i, r in enumerate(rows) if r is None]] = 0.0
    return np.stack([filler if r is None else r for r in rows]), weights
