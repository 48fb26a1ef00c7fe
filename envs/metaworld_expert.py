"""Meta-World's own scripted policies (`metaworld.policies`) as this project's experts."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np

from envs.metaworld import STATE_KEY, canonical_task, import_metaworld


class MetaWorldExpert:
    """The scripted policy Meta-World ships for `task`, behind the `envs.experts.Expert` interface.

    The policies are deterministic functions of the 39-dim state, so `reset` has nothing to draw.
    Actions are clipped to the action space `[-1, 1]^4`, which is what the environment executes.
    """

    def __init__(self, task: str, seed: int | None = None) -> None:
        self.task = canonical_task(task)
        import_metaworld()
        from metaworld.policies import ENV_POLICY_MAP

        self._policy = ENV_POLICY_MAP[self.task]()

    def reset(self, seed: int | None = None) -> None:
        """Nothing to reset: the scripted policy keeps no state between steps."""

    def __call__(self, env: gym.Env, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Action `(4,)` float32 for the observation `{"state": (39,)}`."""
        with warnings.catch_warnings():
            # The policies warn whenever a gain takes an action past [-1, 1]; we clip, as the env does.
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
            action = self._policy.get_action(np.asarray(obs[STATE_KEY], dtype=np.float64))
        return np.clip(action, -1.0, 1.0).astype(np.float32)
