"""The scripted-expert interface and the lookup from environment id to expert."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

import gymnasium as gym
import numpy as np

from envs import OBSTACLE_AVOID_ID, PUSHT_ID, PUSHT_PYMUNK_ID
from envs.metaworld import METAWORLD_TASKS, metaworld_env_id
from envs.metaworld_expert import MetaWorldExpert
from envs.obstacle_expert import ObstacleAvoidExpert
from envs.pusht_expert import PushTExpert


class Expert(Protocol):
    """A demonstrator: `reset` once per episode, then one call per step.

    Given the same `reset` seed and the same observations, an expert must return the same actions,
    so recordings do not depend on how episodes are spread over worker processes.
    """

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode, drawing any per-episode randomness from `seed`."""

    def __call__(self, env: gym.Env, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Action `(Da,)` for the observation dict `obs`; may read privileged state from `env`."""


EXPERT_FACTORIES: dict[str, Callable[[int | None], Expert]] = {
    OBSTACLE_AVOID_ID: ObstacleAvoidExpert,
    PUSHT_ID: PushTExpert,
    PUSHT_PYMUNK_ID: PushTExpert,
    # Meta-World's own scripted policy for each of its tasks.
    **{metaworld_env_id(task): functools.partial(MetaWorldExpert, task) for task in METAWORLD_TASKS},
}


def make_expert(env_id: str, seed: int | None = None) -> Expert:
    """Build the scripted expert registered for `env_id`, reset with `seed`."""
    try:
        factory = EXPERT_FACTORIES[env_id]
    except KeyError:
        raise KeyError(f"no expert for {env_id=}; experts exist for {sorted(EXPERT_FACTORIES)}") from None
    return factory(seed)
