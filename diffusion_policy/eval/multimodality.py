"""Does a policy keep the modes of its demonstrations? Sample many chunks at one observation.

For the ObstacleAvoid task: demonstrations pass left or right of a disc 50/50. A multimodal
policy's chunks split between the two sides and avoid the disc; a mode-averaging (MSE) policy's
chunks go straight through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from diffusion_policy.policy import BasePolicy
from envs.obstacle_avoid import (
    GOAL,
    OBSTACLE_CENTER,
    OBSTACLE_CHECK_RADIUS,
    OBSTACLE_RADIUS,
    path_enters_obstacle,
    path_side,
)

# The acceptance criteria of the multimodality check (issue: core).
MIN_MODE_FRACTION = 0.30
MAX_OBSTACLE_FRACTION = 0.05


@dataclass(frozen=True)
class ModeReport:
    n_samples: int
    left: float
    right: float
    neither: float
    through_obstacle: float

    @property
    def multimodal(self) -> bool:
        """Each side >= 30% of chunks and < 5% of chunks through the obstacle."""
        return (min(self.left, self.right) >= MIN_MODE_FRACTION
                and self.through_obstacle < MAX_OBSTACLE_FRACTION)

    def as_dict(self) -> dict[str, float | bool]:
        return {**asdict(self), "multimodal": self.multimodal}


def start_observation(policy: BasePolicy, start: tuple[float, float] = (0.0, -0.8)) -> dict[str, np.ndarray]:
    """The fixed observation of the check: the agent at `start` for all `To` frames `{agent_pos: (To, 2)}`."""
    return {"agent_pos": np.tile(np.asarray(start, np.float32), (policy.config.n_obs_steps, 1))}


def sample_chunks(
    policy: BasePolicy, obs: Mapping[str, np.ndarray], n_samples: int, seed: int = 0, batch_size: int = 200
) -> np.ndarray:
    """Draw `n_samples` predicted chunks for one observation `{key: (To, ...)}` -> `(n_samples, T, Da)`."""
    generator = torch.Generator(device=policy.device).manual_seed(seed)
    chunks = []
    for start in range(0, n_samples, batch_size):
        n = min(batch_size, n_samples - start)
        batch = {k: np.broadcast_to(v, (n, *v.shape)) for k, v in obs.items()}
        chunks.append(policy.predict_action(batch, generator=generator)["action_pred"].cpu().numpy())
    return np.concatenate(chunks)


def mode_report(chunks: np.ndarray) -> ModeReport:
    """Classify chunks `(N, T, 2)` of absolute targets by side and obstacle crossing."""
    side = path_side(chunks)
    return ModeReport(
        n_samples=len(chunks),
        left=float(np.mean(side < 0)),
        right=float(np.mean(side > 0)),
        neither=float(np.mean(side == 0)),
        through_obstacle=float(np.mean(path_enters_obstacle(chunks))),
    )


def plot_chunks(chunks: Mapping[str, np.ndarray], reports: Mapping[str, ModeReport], path: str | Path) -> None:
    """One panel per policy: sampled chunks `(N, T, 2)` over the obstacle and goal, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(chunks), figsize=(4.2 * len(chunks), 4.4), squeeze=False)
    for ax, (name, paths) in zip(axes[0], chunks.items()):
        ax.add_patch(plt.Circle(OBSTACLE_CENTER, OBSTACLE_RADIUS, color="0.6", label="obstacle"))
        ax.add_patch(plt.Circle(OBSTACLE_CENTER, OBSTACLE_CHECK_RADIUS, fill=False, ls="--", color="0.3"))
        hits = path_enters_obstacle(paths)
        for path_xy, hit in zip(paths, hits):
            ax.plot(path_xy[:, 0], path_xy[:, 1], color="tab:red" if hit else "tab:blue", alpha=0.15, lw=1)
        ax.plot(*GOAL, marker="*", ms=16, color="tab:green", ls="none", label="goal")
        r = reports[name]
        ax.set_title(f"{name}: left {r.left:.0%}, right {r.right:.0%}\nthrough obstacle {r.through_obstacle:.0%}")
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_aspect("equal")
    n = len(next(iter(chunks.values())))
    fig.suptitle(f"{n} sampled action chunks at one observation (blue: avoids, red: hits)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
