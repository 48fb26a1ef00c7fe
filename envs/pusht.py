"""Push-T simulated in MuJoCo: push a T-shaped block onto a goal pose with a round agent.

Geometry, frame, scoring and observation conventions are the original task's (see
`envs.pusht_geometry` and `envs.pusht_spaces`); the physics is the MJCF model in
`envs/assets/pusht.xml` (quasi-static frictionless pushing with a PD-controlled agent).

One step holds the agent target `action` `(2,)` for 0.1 s (10 Hz control) over 10 physics steps of
0.01 s. Reward `clip(coverage / 0.95, 0, 1)`; the episode terminates with `info["success"]` once
coverage exceeds 0.95; the registered id truncates at 300 steps.

Pixel observations come from the model's top-down orthographic camera, rendered offscreen by
MuJoCo (EGL by default, see `envs.offscreen`); `render()` (videos) keeps the NumPy drawing of
`envs.pusht_render`, which marks the last target and needs no OpenGL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from envs.offscreen import offscreen_renderer
from envs.pusht_geometry import (
    AGENT_RADIUS,
    BLOCK_OUTLINE,
    GOAL_POSE,
    SUCCESS_COVERAGE,
    WALL_HIGH,
    WALL_LOW,
    WORKSPACE_SIZE,
    block_distance,
    cog_pose,
    coverage,
    origin_pose,
    reward_from_coverage,
    to_world,
)
from envs.pusht_render import render_frame
from envs.pusht_spaces import (
    IMAGE_SIZE,
    PIXEL_OBS_TYPES,
    action_space,
    check_obs_type,
    checked_action,
    make_observation,
    observation_space,
)

MODEL_PATH = Path(__file__).parent / "assets" / "pusht.xml"
CONTROL_HZ = 10
# Initial states are drawn as in the original task (agent in [50, 450)^2, block origin in
# [100, 400)^2, any angle), then redrawn while the block pokes through a wall or overlaps the agent:
# the original lets its physics resolve such overlaps, which a stiff MuJoCo contact would turn into
# a violent first step.
AGENT_START = (50, 450)
BLOCK_START = (100, 400)
START_CLEARANCE = 1.0
# Far outside anything the walls allow: reaching it means the simulation has diverged.
SANE_LIMIT = 2.0 * WORKSPACE_SIZE
_INSTABILITY_WARNINGS = (mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL,
                         mujoco.mjtWarning.mjWARN_BADQACC)


class PushTEnv(gym.Env):
    """Gymnasium Push-T on MuJoCo.

    Observation: `obs_type="keypoints"` -> `{"agent_pos": (2,), "keypoints": (18,)}`;
    `obs_type="state"` -> `{"agent_pos": (2,), "block_pose": (3,)}` (float32, pixels/radians);
    `obs_type="pixels"` -> `{"pixels": (image_size, image_size, 3)}` uint8 from the top-down camera
    (row = y, column = x); `obs_type="pixels_agent_pos"` -> the image plus `"agent_pos"`.
    Action: absolute agent target `(2,)`; NaN/inf raise `ValueError`, other values are clipped to
    `[0, 512]^2`. `reset(options={"state": [agent_x, agent_y, block_x, block_y, block_angle]})`
    places agent and block (origin pose) exactly. `render()` (render_mode="rgb_array") gives a
    `(render_size, render_size, 3)` uint8 top-down frame with the last target marked.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}

    def __init__(
        self,
        obs_type: str = "keypoints",
        render_mode: str | None = None,
        render_size: int = 256,
        image_size: int = IMAGE_SIZE,
    ) -> None:
        check_obs_type(obs_type)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"{render_mode=} is not one of {self.metadata['render_modes']}")
        if render_size < 16:
            raise ValueError(f"{render_size=} must be at least 16 pixels")
        if image_size < 16:
            raise ValueError(f"{image_size=} must be at least 16 pixels")
        self.obs_type = obs_type
        self.render_mode = render_mode
        self.render_size = render_size
        self.image_size = image_size
        self.observation_space = observation_space(obs_type, image_size)
        self.action_space = action_space()
        self.model = mujoco.MjModel.from_xml_path(str(MODEL_PATH))
        _place_goal(self.model)
        # An orthographic camera's fovy is its vertical extent in length units; MJCF caps fovy at
        # 180 (degrees), so the workspace span is set here.
        self.model.cam_fovy[self.model.camera("top").id] = WORKSPACE_SIZE
        self.data = mujoco.MjData(self.model)
        self.n_substeps = round(1.0 / (CONTROL_HZ * self.model.opt.timestep))
        self._last_target: np.ndarray | None = None
        # Made on first use, in the process that renders (vector-env workers fork after __init__).
        self._camera: mujoco.Renderer | None = None

    # --- privileged state (scripted experts, tests) ----------------------------------------------
    @property
    def agent_position(self) -> np.ndarray:
        """Agent centre `(2,)` float64, pixels."""
        return self.data.qpos[0:2].copy()

    @property
    def block_pose(self) -> np.ndarray:
        """Block origin pose `(3,)` float64: x, y (pixels) and the unwrapped angle (radians)."""
        return origin_pose(self.data.qpos[2:5])

    @property
    def goal_pose(self) -> np.ndarray:
        """Goal origin pose `(3,)`."""
        return GOAL_POSE.copy()

    # --- Gymnasium API ---------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode; returns `(obs, info)` with `info["coverage"]` and `info["success"]`."""
        super().reset(seed=seed)
        if options is not None and options.get("state") is not None:
            agent, block = self._validated_state(options["state"])
        else:
            agent, block = self._random_state()
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[0:2] = agent
        self.data.qpos[2:5] = cog_pose(block)
        self.data.ctrl[:] = agent
        mujoco.mj_forward(self.model, self.data)
        self._last_target = None
        return self._observation(), self._info()

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Hold target `action` `(2,)` for one control period; returns the Gymnasium 5-tuple."""
        self.apply_control(action)
        self.advance(self.n_substeps)
        obs, reward, info = self.observe()
        return obs, reward, info["success"], False, info

    # --- real-time access (deploy.MujocoSimRobot): control and physics decoupled from steps ------
    def apply_control(self, action: np.ndarray) -> None:
        """Set the agent target `(2,)` (checked like `step`'s action) until the next call."""
        target = checked_action(action)
        self._last_target = target
        self.data.ctrl[:] = target

    def advance(self, n_substeps: int) -> None:
        """Integrate `n_substeps` physics steps of `model.opt.timestep` under the current control."""
        mujoco.mj_step(self.model, self.data, nstep=n_substeps)
        self._check_simulation()

    def observe(self) -> tuple[dict[str, np.ndarray], float, dict[str, Any]]:
        """`(obs, reward, info)` of the current state, as `step` reports them."""
        info = self._info()
        return self._observation(), reward_from_coverage(info["coverage"]), info

    def render(self) -> np.ndarray | None:
        """Top-down `(render_size, render_size, 3)` uint8 frame (None unless render_mode="rgb_array")."""
        if self.render_mode != "rgb_array":
            return None
        return self.render_frame_at(self.render_size, self._last_target)

    def render_frame_at(self, size: int, target: np.ndarray | None = None) -> np.ndarray:
        """The NumPy drawing of the scene `(size, size, 3)` uint8, `target` `(2,)` marked if given."""
        return render_frame(size, self.agent_position, self.block_pose, GOAL_POSE, target)

    def camera_image(self) -> np.ndarray:
        """The top-down camera's view `(image_size, image_size, 3)` uint8 (row = y, column = x)."""
        if self._camera is None:
            self._camera = offscreen_renderer(self.model, self.image_size, self.image_size)
        self._camera.update_scene(self.data, camera="top")
        # OpenGL's first row is the image's bottom (largest y); the task's frames put y = 0 on top.
        return np.ascontiguousarray(self._camera.render()[::-1])

    def close(self) -> None:
        """Release the offscreen renderer (and its OpenGL context), if one was made."""
        if self._camera is not None:
            self._camera.close()
            self._camera = None

    # --- internals -------------------------------------------------------------------------------
    def _observation(self) -> dict[str, np.ndarray]:
        pixels = self.camera_image() if self.obs_type in PIXEL_OBS_TYPES else None
        return make_observation(self.obs_type, self.agent_position, self.block_pose, pixels)

    def _info(self) -> dict[str, Any]:
        value = coverage(self.block_pose, GOAL_POSE)
        return {"coverage": value, "success": value > SUCCESS_COVERAGE}

    def _random_state(self) -> tuple[np.ndarray, np.ndarray]:
        while True:
            agent = self.np_random.integers(*AGENT_START, size=2).astype(np.float64)
            block = np.array([*self.np_random.integers(*BLOCK_START, size=2), self.np_random.uniform(-np.pi, np.pi)])
            if _state_problem(agent, block) is None:
                return agent, block

    def _validated_state(self, state: Any) -> tuple[np.ndarray, np.ndarray]:
        values = np.asarray(state, dtype=np.float64)
        if values.shape != (5,) or not np.all(np.isfinite(values)):
            raise ValueError(f"options['state'] must be 5 finite numbers [ax, ay, bx, by, angle], got {state!r}")
        problem = _state_problem(values[:2], values[2:])
        if problem is not None:
            raise ValueError(f"options['state']={state!r}: {problem}")
        return values[:2], values[2:]

    def _check_simulation(self) -> None:
        qpos = self.data.qpos
        if not np.all(np.isfinite(qpos)) or np.any(np.abs(qpos[:4]) > SANE_LIMIT):
            raise RuntimeError(f"Push-T simulation diverged: qpos={qpos.tolist()}")
        # MuJoCo resets itself after NaN or huge values and only counts a warning: surface it.
        for warning in _INSTABILITY_WARNINGS:
            if self.data.warning[warning].number > 0:
                raise RuntimeError(f"Push-T simulation diverged ({warning.name}): qpos={qpos.tolist()}")


def _place_goal(model: mujoco.MjModel) -> None:
    """Put the visual-only goal T of `model` at `GOAL_POSE` (its body frame is the rotation centre)."""
    x, y, angle = cog_pose(GOAL_POSE)
    body = model.body("goal").id
    model.body_pos[body] = (x, y, 0.0)
    model.body_quat[body] = (np.cos(angle / 2), 0.0, 0.0, np.sin(angle / 2))


def _state_problem(agent: np.ndarray, block: np.ndarray) -> str | None:
    """Why agent `(2,)` + block pose `(3,)` is not a valid start, or None if it is."""
    if np.any(agent < 0) or np.any(agent > WORKSPACE_SIZE):
        return f"agent {agent.tolist()} lies outside the workspace [0, {WORKSPACE_SIZE:g}]^2"
    corners = to_world(block, BLOCK_OUTLINE)
    inner_low, inner_high = WALL_LOW + 2.0 + START_CLEARANCE, WALL_HIGH - 2.0 - START_CLEARANCE
    if np.any(corners < inner_low) or np.any(corners > inner_high):
        return f"block {block.tolist()} crosses a wall"
    if float(block_distance(block, agent)) < AGENT_RADIUS + START_CLEARANCE:
        return f"agent {agent.tolist()} overlaps block {block.tolist()}"
    return None
