"""Meta-World tasks (PyPI `metaworld` 3.x) behind the project's environment interface.

Every Meta-World task name is registered as `diffusion_policy/MetaWorld-<task>` (e.g.
`diffusion_policy/MetaWorld-drawer-open-v3`, see `metaworld_env_id`), so the recorder, the trainer's
datasets and the evaluator use it like any other environment:

- the **goal-observable** variant of the task, with a fresh random object/goal placement at every
  reset, drawn from the reset seed (Meta-World's own goal-observable classes freeze the placement
  after construction; this adapter unfreezes it and seeds it);
- observation `{"state": (39,) float32}`: hand xyz, gripper opening, two objects' position and
  quaternion, the same 18 numbers one step earlier, and the goal xyz; the current step's parts are
  also given as their own keys (`STATE_PARTS`: `hand` (3,), `gripper` (1,), `objects` (14,),
  `goal` (3,)), so a policy can condition on a subset (`task.dataset.obs_keys=[hand,gripper,goal]`)
  with the previous step coming from its own observation history;
- action `(4,)` in `[-1, 1]`: hand displacement xyz and gripper effort (clipped, NaN/inf refused);
- reward: Meta-World's (v2 reward function, 0-10); `info["success"]` is Meta-World's success at
  that step, alongside its other info numbers;
- the episode **terminates at the first successful step** (`terminate_on_success=True`, default), so
  success is counted when it was reached at any step, as in the published protocol: Meta-World's
  scripted experts often undo a success after reaching it. Registered ids truncate after
  `DEFAULT_MAX_STEPS` (200) steps; pass `max_episode_steps` to `gymnasium.make` for another limit.

`render()` (with `render_mode="rgb_array"`) draws the `corner2` camera, `(render_size, render_size, 3)`
uint8, turned right side up (the camera is mounted upside down), through `envs.offscreen`.

Meta-World is optional (`pip install -e '.[metaworld]'`; it pins mujoco==3.3.0) and imported only
when an environment or expert is built.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.offscreen import offscreen_renderer

INSTALL_HINT = "Meta-World is not installed: pip install -e '.[metaworld]'"
ENV_ID_PREFIX = "diffusion_policy/MetaWorld-"
TASK_VERSION = "-v3"
STATE_KEY = "state"
STATE_DIM = 39
# The current step's parts of the state, as extra observation keys: name -> slice of `state`.
STATE_PARTS: dict[str, slice] = {
    "hand": slice(0, 3), "gripper": slice(3, 4), "objects": slice(4, 18), "goal": slice(36, 39),
}
ACTION_DIM = 4
DEFAULT_MAX_STEPS = 200
CAMERA = "corner2"
# Meta-World's own limit on one episode; our TimeLimit (the registered id's) ends episodes first.
_INNER_PATH_LIMIT = 10**9

# The 50 tasks of Meta-World 3.x (`metaworld.ALL_V3_ENVIRONMENTS`; a test keeps this list equal to
# the installed package's). Listed here so that registering ids does not import Meta-World.
METAWORLD_TASKS: tuple[str, ...] = tuple(
    f"{name}{TASK_VERSION}"
    for name in (
        "assembly", "basketball", "bin-picking", "box-close", "button-press-topdown",
        "button-press-topdown-wall", "button-press", "button-press-wall", "coffee-button", "coffee-pull",
        "coffee-push", "dial-turn", "disassemble", "door-close", "door-lock", "door-open", "door-unlock",
        "hand-insert", "drawer-close", "drawer-open", "faucet-open", "faucet-close", "hammer",
        "handle-press-side", "handle-press", "handle-pull-side", "handle-pull", "lever-pull",
        "pick-place-wall", "pick-out-of-hole", "pick-place", "plate-slide", "plate-slide-side",
        "plate-slide-back", "plate-slide-back-side", "peg-insert-side", "peg-unplug-side", "soccer",
        "stick-push", "stick-pull", "push", "push-wall", "push-back", "reach", "reach-wall",
        "shelf-place", "sweep-into", "sweep", "window-open", "window-close",
    )
)


def canonical_task(task: str) -> str:
    """The Meta-World name of `task`: `"drawer-open"`, `"drawer-open-v3"` and the env id all give
    `"drawer-open-v3"`; an unknown name raises ValueError listing the valid ones."""
    name = task.removeprefix(ENV_ID_PREFIX)
    if not name.endswith(TASK_VERSION):
        name += TASK_VERSION
    if name not in METAWORLD_TASKS:
        valid = ", ".join(t.removesuffix(TASK_VERSION) for t in sorted(METAWORLD_TASKS))
        raise ValueError(f"unknown Meta-World task {task!r}; valid tasks: {valid}")
    return name


def metaworld_env_id(task: str) -> str:
    """The registered Gymnasium id of a Meta-World task, e.g. `"reach"` -> `"diffusion_policy/MetaWorld-reach-v3"`."""
    return ENV_ID_PREFIX + canonical_task(task)


def import_metaworld() -> Any:
    """The `metaworld` module, or ImportError with the install hint."""
    try:
        import metaworld
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return metaworld


class MetaWorldEnv(gym.Env):
    """One Meta-World task, goal observable, re-placed at random on every (seeded) reset.

    See the module docstring for observations, actions, reward, success and termination.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        task: str,
        render_mode: str | None = None,
        render_size: int = 128,
        terminate_on_success: bool = True,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"{render_mode=} is not one of {self.metadata['render_modes']}")
        if render_size < 1:
            raise ValueError(f"{render_size=} must be a positive number of pixels")
        self.task = canonical_task(task)
        self.render_mode = render_mode
        self.render_size = render_size
        self.terminate_on_success = terminate_on_success
        metaworld = import_metaworld()
        env_class = metaworld.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{self.task}-goal-observable"]
        self._inner = env_class()
        self._inner._freeze_rand_vec = False
        self._inner.seeded_rand_vec = True  # placements come from the inner np_random, seeded per reset
        self._inner.max_path_length = _INNER_PATH_LIMIT
        # (Not `observation_space`: Meta-World sets that before the goal is made observable, with
        # the goal's bounds at zero; its observations are clipped to this one.)
        # A few tasks pin a coordinate (low == high); one float32 ulp of room on each side keeps those
        # values inside the box without Gymnasium's "maximum and minimum values are equal" warning.
        box = self._inner.sawyer_observation_space
        low, high = box.low.astype(np.float32), box.high.astype(np.float32)
        pinned = low == high
        low[pinned] = np.nextafter(low[pinned], np.float32(-np.inf))
        high[pinned] = np.nextafter(high[pinned], np.float32(np.inf))
        self.observation_space = spaces.Dict(self._observation_space(low, high))
        self.action_space = spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)
        self._renderer: Any = None
        self._has_reset = False

    @property
    def inner(self) -> gym.Env:
        """The wrapped Meta-World environment (privileged state, for experts and tests)."""
        return self._inner

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        # Each reset draws its placement seed from this env's generator: reset(seed=s) fixes the
        # placement, and later resets without a seed give fresh, reproducible placements.
        self._inner.seed(int(self.np_random.integers(2**31 - 1)))
        state, _ = self._inner.reset()
        self._has_reset = True
        return self._observation(state), {"success": False}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if not self._has_reset:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action must have shape ({ACTION_DIM},), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action {action} is not finite")
        state, reward, _, _, inner_info = self._inner.step(np.clip(action, -1.0, 1.0))
        success = bool(inner_info["success"])
        info = {key: float(value) for key, value in inner_info.items() if key != "success"}
        info["success"] = success
        return self._observation(state), float(reward), self.terminate_on_success and success, False, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            self._renderer = offscreen_renderer(self._inner.model, self.render_size, self.render_size)
        self._renderer.update_scene(self._inner.data, camera=CAMERA)
        return np.ascontiguousarray(self._renderer.render()[::-1])

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._inner.close()

    @staticmethod
    def _observation(state: np.ndarray) -> dict[str, np.ndarray]:
        """state `(39,)` -> `{"state": (39,), "hand": (3,), "gripper": (1,), "objects": (14,), "goal": (3,)}`."""
        state = np.asarray(state, dtype=np.float32)
        return {STATE_KEY: state, **{name: state[part].copy() for name, part in STATE_PARTS.items()}}

    @staticmethod
    def _observation_space(low: np.ndarray, high: np.ndarray) -> dict[str, spaces.Box]:
        """The observation's boxes, cut from the state's bounds `low`, `high` `(39,)`."""
        return {STATE_KEY: spaces.Box(low, high, dtype=np.float32),
                **{name: spaces.Box(low[part], high[part], dtype=np.float32) for name, part in STATE_PARTS.items()}}
