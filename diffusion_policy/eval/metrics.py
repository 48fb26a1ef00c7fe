"""Closed-loop evaluation results: per-episode outcomes, their summary, JSON I/O and a text table.

An episode's score is its maximum reward (the Diffusion Policy paper's convention); its success is
whether the environment reported `info["success"]` at any step. The success rate comes with a
Wilson score 95% interval, which stays inside [0, 1] and is sensible for rates near 0 or 1 and for
the small episode counts used during training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffusion_policy.core.checkpoint import load_json, save_json

Z_95 = 1.959963984540054  # standard normal quantile 0.975


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval `(low, high)` for `successes` out of `n` trials (Wilson 1927).

    With p = successes / n: centre (p + z²/2n) / (1 + z²/n), half-width
    z / (1 + z²/n) * sqrt(p(1 - p)/n + z²/4n²).
    """
    if n < 1:
        raise ValueError(f"{n=} must be at least 1")
    if not 0 <= successes <= n:
        raise ValueError(f"{successes=} must lie in [0, {n=}]")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0/n and n/n the bound is exactly 0 / 1; floating point would land a hair off.
    low = 0.0 if successes == 0 else centre - half
    high = 1.0 if successes == n else centre + half
    return low, high


def fisher_exact_p(wins_a: int, n_a: int, wins_b: int, n_b: int) -> float:
    """Two-sided p-value of Fisher's exact test that two success rates, `wins_a / n_a` and `wins_b / n_b`, are equal.

    Conditioned on the total successes, the count of group a is hypergeometric; the p-value sums the
    probabilities of every table no more likely than the one observed (with a 1e-7 relative tolerance
    for ties, as R and SciPy do).
    """
    for wins, n in ((wins_a, n_a), (wins_b, n_b)):
        if n < 1 or not 0 <= wins <= n:
            raise ValueError(f"need 0 <= wins <= n and n >= 1, got wins={wins}, n={n}")
    total = wins_a + wins_b
    lo, hi = max(0, total - n_b), min(total, n_a)
    probs = [math.comb(n_a, k) * math.comb(n_b, total - k) for k in range(lo, hi + 1)]
    observed = probs[wins_a - lo]
    return min(1.0, sum(q for q in probs if q <= observed * (1 + 1e-7)) / math.comb(n_a + n_b, total))


@dataclass
class EvalResult:
    """Per-episode outcomes of one evaluation; lists are `(n_episodes,)`, in episode order.

    `config` is the evaluation config as a plain dict (provenance); `videos` the written mp4 paths.
    """

    env_id: str
    seeds: list[int]
    scores: list[float]
    successes: list[bool]
    lengths: list[int]
    wall_time_s: float
    config: dict[str, Any] = field(default_factory=dict)
    videos: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.seeds)
        if n < 1:
            raise ValueError("an EvalResult needs at least one episode; got seeds=[]")
        sizes = {"scores": len(self.scores), "successes": len(self.successes), "lengths": len(self.lengths)}
        if any(size != n for size in sizes.values()):
            raise ValueError(f"per-episode lists must all have len(seeds)={n}; got {sizes}")

    @property
    def n_episodes(self) -> int:
        return len(self.seeds)

    @property
    def summary(self) -> dict[str, Any]:
        """`mean_score`, `success_rate`, `success_ci95` `[low, high]`, `mean_length`, `n_episodes`, `wall_time_s`."""
        n = self.n_episodes
        wins = sum(bool(s) for s in self.successes)
        return {
            "mean_score": sum(self.scores) / n,
            "success_rate": wins / n,
            "success_ci95": list(wilson_interval(wins, n)),
            "mean_length": sum(self.lengths) / n,
            "n_episodes": n,
            "wall_time_s": self.wall_time_s,
        }

    def to_json(self, path: str | Path) -> None:
        """Write summary, per-episode rows, config and video paths to `path` atomically."""
        episodes = [
            {"seed": seed, "score": score, "success": success, "length": length}
            for seed, score, success, length in zip(self.seeds, self.scores, self.successes, self.lengths)
        ]
        save_json({"env_id": self.env_id, "summary": self.summary, "episodes": episodes,
                   "config": self.config, "videos": self.videos}, path)

    @classmethod
    def from_json(cls, path: str | Path) -> EvalResult:
        """Read a file written by `to_json` (the summary is recomputed from the episodes)."""
        data = load_json(path)
        episodes = data["episodes"]
        return cls(
            env_id=data["env_id"],
            seeds=[int(e["seed"]) for e in episodes],
            scores=[float(e["score"]) for e in episodes],
            successes=[bool(e["success"]) for e in episodes],
            lengths=[int(e["length"]) for e in episodes],
            wall_time_s=float(data["summary"]["wall_time_s"]),
            config=data.get("config", {}),
            videos=list(data.get("videos", [])),
        )


def format_table(result: EvalResult) -> str:
    """Two-column, human-readable summary of `result`."""
    s = result.summary
    low, high = s["success_ci95"]
    rows = [
        ("env", result.env_id),
        ("episodes", f"{s['n_episodes']} (seeds {result.seeds[0]}..{result.seeds[-1]})"),
        ("mean score", f"{s['mean_score']:.4f}"),
        ("success rate", f"{s['success_rate']:.1%}  (95% CI {low:.1%} - {high:.1%})"),
        ("mean length", f"{s['mean_length']:.1f} steps"),
        ("wall time", f"{s['wall_time_s']:.1f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
