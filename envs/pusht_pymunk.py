"""The original Push-T (gym-pusht on PyPI, pymunk physics) behind this project's Push-T interface.

`PymunkPushTEnv` wraps `gym_pusht.envs.PushTEnv` so that the reference simulator speaks the same
observations, actions, `info` keys and privileged state as the MuJoCo task (`envs/pusht_spaces.py`),
and one expert, dataset format and policy serve both. Physics, coverage, reward, success and
rendering are the original's own; only observations are rebuilt, from its exact agent position and
block pose, with `envs.pusht_geometry` (whose frame and keypoints agree with the original's).

gym-pusht is an optional dependency (`pip install -e '.[pusht-original]'`); it is imported only
when an environment is built.

`reset(options={"reset_to_state": [ax, ay, bx, by, angle]})` is passed to the original unchanged,
legacy quirk included: the original sets the block's origin to `(bx, by)` at angle 0 and then
turns the block about its centre of gravity, so the origin ends elsewhere. `legacy_reset_state`
gives the vector that places the block at a chosen pose exactly.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np

from envs.pusht_geometry import COG_LOCAL, WORKSPACE_SIZE, cog_pose
from envs.pusht_spaces import (
    IMAGE_SIZE,
    PIXEL_OBS_TYPES,
    action_space,
    check_obs_type,
    checked_action,
    make_observation,
    observation_space,
)

INSTALL_HINT = "gym-pusht is not installed: pip install -e '.[pusht-original]'"
# Beyond these coordinates the pymunk state has left any reachable configuration (e.g. the block
# tunnelled through a wall and was flung away); failing loudly beats recording garbage.
SANE_LOW, SANE_HIGH = -WORKSPACE_SIZE, 2 * WORKSPACE_SIZE
# The original draws the last action with a line `int(render_size / 96)` pixels thick, which OpenCV
# rejects when it rounds to 0.
MIN_RENDER_SIZE = 96
RESET_OPTIONS = ("reset_to_state",)


def _original_env_class() -> type[gym.Env]:
    """Import gym-pusht's `PushTEnv` headless, or raise ImportError with the install hint."""
    # pygame (imported by gym-pusht) must never look for a display, nor print its banner.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        from gym_pusht.envs.pusht import PushTEnv
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return PushTEnv


def legacy_reset_state(agent_pos: np.ndarray, block_pose: np.ndarray) -> np.ndarray:
    """The `reset_to_state` vector `(5,)` that puts the agent at `agent_pos` `(2,)` and the block
    exactly at origin pose `block_pose` `(3,)` in the original.

    The original places the origin at `(bx, by)` with angle 0, so the centre of gravity lands at
    `(bx, by) + COG_LOCAL`, then rotates about that point: choosing `(bx, by)` as the wanted centre
    of gravity minus `COG_LOCAL` makes the rotation end at the wanted pose.
    """
    agent = np.asarray(agent_pos, dtype=np.float64)
    pose = np.asarray(block_pose, dtype=np.float64)
    if agent.shape != (2,) or pose.shape != (3,):
        raise ValueError(f"agent_pos must be (2,) and block_pose (3,), got {agent.shape} and {pose.shape}")
    return np.concatenate([agent, cog_pose(pose)[:2] - COG_LOCAL, pose[2:]])


class PymunkPushTEnv(gym.Env):
    """The original pymunk Push-T with the project's Push-T observations, actions and info.

    Observation: `envs.pusht_spaces.observation_space(obs_type)`; `"keypoints"` gives
    `{"agent_pos": (2,), "keypoints": (18,)}`, `"state"` gives `{"agent_pos": (2,), "block_pose": (3,)}`;
    `"pixels"` gives `{"pixels": (image_size, image_size, 3)}` uint8, the original's own image
    observation (drawn at 512 x 512 and resized), and `"pixels_agent_pos"` adds `"agent_pos"`.
    Action: absolute agent target `(2,)` in pixels; NaN/inf raise ValueError, the rest is clipped to
    `[0, 512]^2` and handed to the original's PD controller (10 Hz control, 100 Hz physics).
    Reward, `terminated` and `info = {"coverage": float, "success": bool}` are the original's
    (coverage > 0.95 ends the episode). The registered id truncates after 300 steps.
    `render()` returns the original's top-down frame `(render_size, render_size, 3)` uint8 (image
    row = y, last action drawn as a red cross) when `render_mode="rgb_array"`, else None.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        obs_type: str = "keypoints",
        render_mode: str | None = None,
        render_size: int = 96,
        image_size: int = IMAGE_SIZE,
    ) -> None:
        check_obs_type(obs_type)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"{render_mode=} is not one of {self.metadata['render_modes']}")
        if render_size < MIN_RENDER_SIZE:
            raise ValueError(f"{render_size=} must be at least {MIN_RENDER_SIZE} pixels (the original's minimum)")
        self.obs_type = obs_type
        self.render_mode = render_mode
        self.render_size = render_size
        if image_size < 16:
            raise ValueError(f"{image_size=} must be at least 16 pixels")
        self.observation_space = observation_space(obs_type, image_size)
        self.action_space = action_space()
        # The original always renders to an array here: its "human" mode would open a window.
        self._original = _original_env_class()(
            obs_type="state",
            render_mode="rgb_array",
            visualization_width=render_size,
            visualization_height=render_size,
            observation_width=image_size,
            observation_height=image_size,
        )
        self._has_reset = False

    @property
    def original(self) -> gym.Env:
        """The wrapped gym-pusht environment (for comparisons with the original's own numbers)."""
        return self._original

    @property
    def agent_position(self) -> np.ndarray:
        """Privileged exact agent position `(2,)` float64, pixels."""
        self._require_reset()
        return np.array(self._original.agent.position, dtype=np.float64)

    @property
    def block_pose(self) -> np.ndarray:
        """Privileged exact block pose `(3,)` float64: origin x, y and the raw (unwrapped) angle."""
        self._require_reset()
        block = self._original.block
        return np.array([*block.position, block.angle], dtype=np.float64)

    @property
    def goal_pose(self) -> np.ndarray:
        """The original's goal pose `(3,)` float64 (equals `pusht_geometry.GOAL_POSE`)."""
        self._require_reset()
        return np.asarray(self._original.goal_pose, dtype=np.float64).copy()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode (the original's random start, or `options["reset_to_state"]` `(5,)`)."""
        super().reset(seed=seed)
        self._original.reset(seed=seed, options=_checked_options(options))
        self._has_reset = True
        self._check_state()
        # The original's reset reports no coverage; ask its own routine so both paths agree.
        coverage = float(self._original._get_coverage())
        return self._observation(), _info(coverage, coverage > self._original.success_threshold)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Drive the agent toward the absolute target `action` `(2,)` for one 0.1 s control step."""
        self._require_reset()
        _, reward, terminated, truncated, info = self._original.step(checked_action(action))
        self._check_state()
        return (
            self._observation(),
            float(reward),
            bool(terminated),
            bool(truncated),
            _info(float(info["coverage"]), bool(info["is_success"])),
        )

    def render(self) -> np.ndarray | None:
        """The original's top-down frame `(render_size, render_size, 3)` uint8, or None without a render mode."""
        if self.render_mode is None:
            return None
        self._require_reset()
        return self._original.render()

    def close(self) -> None:
        """Release the original's resources."""
        self._original.close()

    def _observation(self) -> dict[str, np.ndarray]:
        # The original's pixel observation: its drawing at the observation size, no action marker.
        pixels = self._original._render(visualize=False) if self.obs_type in PIXEL_OBS_TYPES else None
        return make_observation(self.obs_type, self.agent_position, self.block_pose, pixels)

    def _require_reset(self) -> None:
        if not self._has_reset:
            raise RuntimeError("PymunkPushTEnv has no state yet: call reset() first")

    def _check_state(self) -> None:
        agent, block = self.agent_position, self.block_pose
        positions = np.concatenate([agent, block[:2]])
        if not (np.all(np.isfinite(block)) and np.all((positions >= SANE_LOW) & (positions <= SANE_HIGH))):
            raise RuntimeError(
                f"pymunk Push-T state left the sane range [{SANE_LOW}, {SANE_HIGH}]: "
                f"agent_position={agent.tolist()}, block_pose={block.tolist()}"
            )


def _checked_options(options: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validate reset options; `reset_to_state` must be 5 finite numbers."""
    if options is None:
        return None
    unknown = sorted(set(options) - set(RESET_OPTIONS))
    if unknown:
        raise KeyError(f"unknown reset options {unknown}; known: {RESET_OPTIONS}")
    state = options.get("reset_to_state")
    if state is None:
        return None
    values = np.asarray(state, dtype=np.float64)
    if values.shape != (5,) or not np.all(np.isfinite(values)):
        raise ValueError(f"options['reset_to_state'] must be 5 finite numbers [ax, ay, bx, by, angle], got {state!r}")
    return {"reset_to_state": values}


def _info(coverage: float, success: bool) -> dict[str, Any]:
    return {"coverage": coverage, "success": success}
