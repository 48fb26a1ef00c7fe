"""Gymnasium environments of the project; importing this package registers their ids.

Entry points are import strings so that `import envs` stays cheap: an environment's module (and
its heavy dependencies, such as MuJoCo, pymunk or Meta-World) is only imported when `gymnasium.make` builds it.
"""

from __future__ import annotations

import gymnasium

from envs.metaworld import DEFAULT_MAX_STEPS as METAWORLD_MAX_STEPS
from envs.metaworld import ENV_ID_PREFIX, METAWORLD_TASKS
from envs.offscreen import use_default_backend

# MuJoCo reads its OpenGL backend once, at import; nothing above imports it.
use_default_backend()

OBSTACLE_AVOID_ID = "diffusion_policy/ObstacleAvoid-v0"
PUSHT_ID = "diffusion_policy/PushT-v0"
PUSHT_PYMUNK_ID = "diffusion_policy/PushT-pymunk-v0"
PUSHT_MAX_STEPS = 300


def _register(env_id: str, entry_point: str, max_episode_steps: int, kwargs: dict | None = None) -> None:
    # Skipping known ids keeps re-imports (importlib.reload, spawned workers) free of
    # gymnasium's "overriding environment" warning.
    if env_id not in gymnasium.registry:
        gymnasium.register(id=env_id, entry_point=entry_point, max_episode_steps=max_episode_steps, kwargs=kwargs or {})


_register(OBSTACLE_AVOID_ID, "envs.obstacle_avoid:ObstacleAvoidEnv", max_episode_steps=100)
_register(PUSHT_ID, "envs.pusht:PushTEnv", max_episode_steps=PUSHT_MAX_STEPS)
_register(PUSHT_PYMUNK_ID, "envs.pusht_pymunk:PymunkPushTEnv", max_episode_steps=PUSHT_MAX_STEPS)
for _task in METAWORLD_TASKS:
    _register(ENV_ID_PREFIX + _task, "envs.metaworld:MetaWorldEnv", METAWORLD_MAX_STEPS, kwargs={"task": _task})
