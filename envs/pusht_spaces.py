"""Observation and action conventions shared by every Push-T environment of the project.

Both the MuJoCo task and the gym-pusht adapter speak this interface, so one dataset format, one
expert and one policy serve both:

- `obs_type="state"`: `{"agent_pos": (2,), "block_pose": (3,)}`, block pose = origin x, y and the
  angle wrapped into [0, 2 pi), as in the original state observation.
- `obs_type="keypoints"`: `{"agent_pos": (2,), "keypoints": (18,)}`, the 9 block keypoints of
  `pusht_geometry.LOCAL_KEYPOINTS` flattened as x0, y0, x1, y1, ... (20 numbers in all, as the
  original low-dim task).
- `obs_type="pixels"`: `{"pixels": (S, S, 3)}` uint8, the top-down view of the whole workspace
  (image row = y, column = x; S = 96 by default, as the original image task);
  `obs_type="pixels_agent_pos"`: the same plus `"agent_pos": (2,)`.
- Actions: `(2,)` absolute agent target in pixels. NaN or inf raises `ValueError`; finite values
  outside the workspace are clipped to `[0, 512]`.
- `info` holds `coverage` and `success` (coverage > 0.95); reward is `clip(coverage / 0.95, 0, 1)`.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from envs.pusht_geometry import N_KEYPOINTS, WORKSPACE_SIZE, keypoints

PIXEL_OBS_TYPES = ("pixels", "pixels_agent_pos")
OBS_TYPES = ("state", "keypoints", *PIXEL_OBS_TYPES)
IMAGE_SIZE = 96


def check_obs_type(obs_type: str) -> None:
    """Raise ValueError unless `obs_type` is one of `OBS_TYPES`."""
    if obs_type not in OBS_TYPES:
        raise ValueError(f"{obs_type=} is not one of {OBS_TYPES}")


def observation_space(obs_type: str, image_size: int = IMAGE_SIZE) -> spaces.Dict:
    """The Dict space of `obs_type` (float32 boxes in pixel units; uint8 `(image_size, image_size, 3)` images)."""
    check_obs_type(obs_type)
    agent = spaces.Box(0.0, WORKSPACE_SIZE, shape=(2,), dtype=np.float32)
    if obs_type in PIXEL_OBS_TYPES:
        pixels = spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8)
        return spaces.Dict({"pixels": pixels, **({"agent_pos": agent} if obs_type == "pixels_agent_pos" else {})})
    if obs_type == "state":
        low = np.array([-WORKSPACE_SIZE, -WORKSPACE_SIZE, 0.0], dtype=np.float32)
        high = np.array([2 * WORKSPACE_SIZE, 2 * WORKSPACE_SIZE, 2 * np.pi], dtype=np.float32)
        return spaces.Dict({"agent_pos": agent, "block_pose": spaces.Box(low, high, dtype=np.float32)})
    block = spaces.Box(-WORKSPACE_SIZE, 2 * WORKSPACE_SIZE, shape=(2 * N_KEYPOINTS,), dtype=np.float32)
    return spaces.Dict({"agent_pos": agent, "keypoints": block})


def action_space() -> spaces.Box:
    """Absolute agent target `(2,)` in `[0, 512]^2` pixels."""
    return spaces.Box(0.0, WORKSPACE_SIZE, shape=(2,), dtype=np.float32)


def make_observation(
    obs_type: str, agent_pos: np.ndarray, block_pose: np.ndarray, pixels: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Observation dict for agent position `(2,)`, block origin pose `(3,)` and, for the pixel
    types, the camera image `pixels` `(S, S, 3)` uint8."""
    agent = np.asarray(agent_pos, dtype=np.float32)
    if obs_type in PIXEL_OBS_TYPES:
        if pixels is None:
            raise ValueError(f"{obs_type=} needs the camera image")
        return {"pixels": pixels, **({"agent_pos": agent} if obs_type == "pixels_agent_pos" else {})}
    if obs_type == "state":
        pose = np.array([block_pose[0], block_pose[1], np.mod(block_pose[2], 2 * np.pi)], dtype=np.float32)
        return {"agent_pos": agent, "block_pose": pose}
    return {"agent_pos": agent, "keypoints": keypoints(block_pose).reshape(-1).astype(np.float32)}


def checked_action(action: np.ndarray) -> np.ndarray:
    """Validate an agent target `(2,)`: NaN/inf or a wrong shape raise; the rest is clipped to the workspace."""
    target = np.asarray(action, dtype=np.float64)
    if target.shape != (2,):
        raise ValueError(f"Push-T action must have shape (2,), got {target.shape}: {action!r}")
    if not np.all(np.isfinite(target)):
        raise ValueError(f"Push-T action must be finite, got {action!r}")
    return np.clip(target, 0.0, WORKSPACE_SIZE)
