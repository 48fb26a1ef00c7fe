"""Scripted, bimodal expert for ObstacleAvoid: passes left or right of the obstacle, 50/50."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from envs.obstacle_avoid import GOAL, MAX_STEP

WAYPOINT_X = 0.55
WAYPOINT_JITTER = 0.05
SPEED_RANGE = (0.7, 1.0)
# The recorder seeds the env and the expert with the same integer; Gymnasium's np_random and
# default_rng(seed) would then produce the same stream and tie the chosen side to the start x.
# Salting the seed gives the expert an independent stream.
_SEED_SALT = 0x0B57AC1E


class ObstacleAvoidExpert:
    """Drags a cursor to a waypoint beside the obstacle, then to the goal.

    At `reset` it draws a side (left/right with probability 0.5), a waypoint near
    `(side * WAYPOINT_X, 0)` jittered by up to `WAYPOINT_JITTER` per axis, and a speed in
    `SPEED_RANGE` times `MAX_STEP`. Each call returns the absolute target `(2,)` float32 one
    speed-length ahead of the agent along the remaining path (waypoint, then goal).
    """

    def __init__(self, seed: int | None = None) -> None:
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        """Draw this episode's side, waypoint and speed from a generator seeded with `seed`."""
        rng = np.random.default_rng(None if seed is None else [_SEED_SALT, seed])
        self.side = 1 if rng.random() < 0.5 else -1
        jitter = rng.uniform(-WAYPOINT_JITTER, WAYPOINT_JITTER, size=2)
        self.waypoint = np.array([self.side * WAYPOINT_X, 0.0]) + jitter
        self.speed = float(rng.uniform(*SPEED_RANGE)) * MAX_STEP
        self._reached_waypoint = False

    def __call__(self, env: gym.Env, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Target `(2,)` float32 for the agent at `obs["agent_pos"]` `(2,)`."""
        del env  # the observation is the full state of this task
        position = np.asarray(obs["agent_pos"], dtype=np.float64)
        budget = self.speed
        if not self._reached_waypoint:
            to_waypoint = float(np.linalg.norm(self.waypoint - position))
            if to_waypoint > budget:
                return _toward(position, self.waypoint, budget)
            # Spend the rest of this step's length on the next leg so the speed stays even.
            self._reached_waypoint = True
            position, budget = self.waypoint, budget - to_waypoint
        return _toward(position, GOAL, budget)


def _toward(position: np.ndarray, target: np.ndarray, length: float) -> np.ndarray:
    """Point `(2,)` float32 `length` along the segment from `position` to `target`, capped at `target`."""
    offset = target - position
    distance = float(np.linalg.norm(offset))
    if distance <= length:
        return np.asarray(target, dtype=np.float32)
    return (position + offset * (length / distance)).astype(np.float32)
