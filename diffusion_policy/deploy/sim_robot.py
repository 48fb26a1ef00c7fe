"""A simulated robot whose physics advances in wall-clock time, so latency has real consequences.

The simulation is integrated lazily: every call first steps the physics up to the present
(`elapsed wall time x time_scale`) under the command that was in force, then acts. The world thus
keeps moving while the policy thinks, exactly as a real robot's does, without a physics thread
competing for the interpreter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

import envs  # noqa: F401  registers the project's env ids
from diffusion_policy.deploy.robot import ArraySpec

_REAL_TIME_METHODS = ("apply_control", "advance", "observe")


class MujocoSimRobot:
    """`Robot` over a MuJoCo Gymnasium env that exposes `apply_control`, `advance` and `observe`.

    `time_scale` > 1 runs the simulation faster than the wall clock (a 10 Hz task then needs a
    `10 * time_scale` Hz loop; inference latency weighs `time_scale` times more). `outcome()` gives
    the episode's success (at any observation so far) and score (best reward observed).
    """

    def __init__(
        self,
        env_id: str,
        seed: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not time_scale > 0:
            raise ValueError(f"{time_scale=} must be > 0")
        self.env_id, self.seed, self.time_scale, self.clock = env_id, seed, float(time_scale), clock
        self._env = gym.make(env_id, **(env_kwargs or {}))
        self.sim = self._env.unwrapped
        missing = [m for m in _REAL_TIME_METHODS if not callable(getattr(self.sim, m, None))]
        if missing or not hasattr(self.sim, "model"):
            raise TypeError(f"env {env_id} cannot run in real time: its unwrapped env lacks {missing or ['model']}")
        obs_space, act_space = self._env.observation_space, self._env.action_space
        if not isinstance(obs_space, spaces.Dict) or not isinstance(act_space, spaces.Box):
            raise TypeError(f"env {env_id} needs Dict observations and Box actions, has {obs_space} / {act_space}")
        self.observation_spec = {k: ArraySpec(tuple(s.shape), str(s.dtype)) for k, s in obs_space.spaces.items()}
        self.action_spec = ArraySpec(tuple(act_space.shape), str(act_space.dtype),
                                     act_space.low.astype(np.float64), act_space.high.astype(np.float64))
        self.dt = float(self.sim.model.opt.timestep)
        self._t0: float | None = None
        self._substeps = 0
        self.success, self.score = False, -math.inf

    def connect(self) -> None:
        """Reset the episode (seeded) and start its clock."""
        self._env.reset(seed=self.seed)
        self._t0, self._substeps = self.clock(), 0
        self.success, self.score = False, -math.inf

    @property
    def sim_time(self) -> float:
        """Simulated seconds since `connect`."""
        return self._substeps * self.dt

    def get_observation(self) -> dict[str, np.ndarray]:
        self._catch_up()
        obs, reward, info = self.sim.observe()
        self.score = max(self.score, float(reward))
        self.success = self.success or bool(info.get("success", False))
        return obs

    def send_action(self, action: np.ndarray) -> None:
        self._catch_up()
        self.sim.apply_control(np.asarray(action))

    def outcome(self) -> dict[str, Any]:
        return {"success": self.success, "score": self.score, "sim_time_s": self.sim_time}

    def close(self) -> None:
        self._env.close()

    def _catch_up(self) -> None:
        if self._t0 is None:
            raise RuntimeError(f"robot {self.env_id} is not connected; call connect() first")
        due = math.floor((self.clock() - self._t0) * self.time_scale / self.dt + 1e-9)
        if due > self._substeps:
            self.sim.advance(due - self._substeps)
            self._substeps = due
