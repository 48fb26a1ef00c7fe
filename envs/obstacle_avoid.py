"""ObstacleAvoid: a 2-D point reaches a goal around a disc, the smallest task with two action modes.

Workspace [-1, 1]^2. The agent starts near (0, -0.8), the goal is (0, 0.8) and a disc of radius
0.3 sits at the origin in between, so every good path passes either left or right of it. Expert
demonstrations take each side half of the time: a policy that averages the modes (an MSE
regressor) drives into the obstacle, a multimodal one commits to a side. `path_enters_obstacle`
and `path_side` classify predicted action chunks for that check.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


def _frozen(values: tuple[float, float]) -> np.ndarray:
    array = np.array(values, dtype=np.float64)
    array.setflags(write=False)
    return array


GOAL = _frozen((0.0, 0.8))
OBSTACLE_CENTER = _frozen((0.0, 0.0))
OBSTACLE_RADIUS = 0.3
# Chunks are judged against a slightly shrunk disc so that paths grazing the boundary (where the
# environment's projection would slide them along the rim) do not count as collisions.
OBSTACLE_CHECK_RADIUS = 0.25
MAX_STEP = 0.1
SUCCESS_DISTANCE = 0.05
START_LOW = _frozen((-0.05, -0.85))
START_HIGH = _frozen((0.05, -0.75))
SIDE_BAND = 0.4
SIDE_MIN_OFFSET = 0.1

_BACKGROUND = np.array([255, 255, 255], dtype=np.uint8)
_OBSTACLE_COLOR = np.array([110, 110, 110], dtype=np.uint8)
_GOAL_COLOR = np.array([60, 180, 75], dtype=np.uint8)
_AGENT_COLOR = np.array([30, 90, 220], dtype=np.uint8)
_AGENT_DRAW_RADIUS = 0.04


class ObstacleAvoidEnv(gym.Env):
    """Point-mass navigation around a disc obstacle.

    Observation: `{"agent_pos": (2,) float32}`, the agent position in [-1, 1]^2.
    Action: `(2,)` absolute target position; it is clipped to [-1, 1]^2. The agent moves straight
    toward the target by at most `MAX_STEP`; a move ending inside the obstacle is projected back
    onto the disc boundary (so the agent slides along the rim), and the agent never leaves the
    workspace.
    Reward: minus the distance to the goal. Terminates with `info["success"] = True` once that
    distance is below `SUCCESS_DISTANCE`; the registered id truncates after 100 steps.
    `reset(options={"start": (x, y)})` places the agent exactly; otherwise the start is drawn
    uniformly from [START_LOW, START_HIGH] with the seeded `np_random`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None, render_size: int = 128) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"{render_mode=} is not one of {self.metadata['render_modes']}")
        if render_size < 8:
            raise ValueError(f"{render_size=} must be at least 8 pixels")
        self.render_mode = render_mode
        self.render_size = render_size
        self.goal = GOAL
        self.obstacle_center = OBSTACLE_CENTER
        self.obstacle_radius = OBSTACLE_RADIUS
        self.observation_space = spaces.Dict(
            {"agent_pos": spaces.Box(low=-1.0, high=1.0, shape=(2,), dtype=np.float32)}
        )
        self.action_space = spaces.Box(low=-1.0, high=1.0, shape=(2,), dtype=np.float32)
        self._agent_pos = np.array(START_LOW + START_HIGH) / 2
        self._background: np.ndarray | None = None

    @property
    def agent_pos(self) -> np.ndarray:
        """Privileged copy of the exact agent position `(2,)` float64 (for scripted experts)."""
        return self._agent_pos.copy()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode; returns `({"agent_pos": (2,)}, info)`."""
        super().reset(seed=seed)
        if options is not None and "start" in options:
            self._agent_pos = self._validated_start(options["start"])
        else:
            self._agent_pos = self.np_random.uniform(START_LOW, START_HIGH)
        return self._observation(), self._info()

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Move toward the absolute target `action` `(2,)`; returns the Gymnasium 5-tuple."""
        target = np.asarray(action, dtype=np.float64)
        if target.shape != (2,):
            raise ValueError(f"action must have shape (2,), got {target.shape}: {action!r}")
        if not np.all(np.isfinite(target)):
            raise ValueError(f"action must be finite, got {action!r}")
        target = np.clip(target, -1.0, 1.0)
        delta = target - self._agent_pos
        length = float(np.linalg.norm(delta))
        if length > MAX_STEP:
            delta *= MAX_STEP / length
        self._agent_pos = np.clip(_push_out_of_obstacle(self._agent_pos + delta, self._agent_pos), -1, 1)
        info = self._info()
        return self._observation(), -info["distance"], info["success"], False, info

    def render(self) -> np.ndarray | None:
        """Top-down `(H, W, 3)` uint8 image (obstacle grey, goal green, agent blue), y pointing up."""
        if self.render_mode != "rgb_array":
            return None
        if self._background is None:
            self._background = self._draw_background()
        frame = self._background.copy()
        frame[_disc_mask(self.render_size, self._agent_pos, _AGENT_DRAW_RADIUS)] = _AGENT_COLOR
        return frame

    def _validated_start(self, start: Any) -> np.ndarray:
        position = np.asarray(start, dtype=np.float64)
        if position.shape != (2,) or not np.all(np.isfinite(position)):
            raise ValueError(f"options['start'] must be two finite numbers, got {start!r}")
        if np.any(np.abs(position) > 1.0):
            raise ValueError(f"options['start']={start!r} lies outside the workspace [-1, 1]^2")
        if np.linalg.norm(position - OBSTACLE_CENTER) < OBSTACLE_RADIUS:
            raise ValueError(f"options['start']={start!r} lies inside the obstacle")
        return position

    def _observation(self) -> dict[str, np.ndarray]:
        return {"agent_pos": self._agent_pos.astype(np.float32)}

    def _info(self) -> dict[str, Any]:
        distance = float(np.linalg.norm(self._agent_pos - GOAL))
        return {"distance": distance, "success": distance < SUCCESS_DISTANCE}

    def _draw_background(self) -> np.ndarray:
        size = self.render_size
        frame = np.broadcast_to(_BACKGROUND, (size, size, 3)).copy()
        frame[_disc_mask(size, OBSTACLE_CENTER, OBSTACLE_RADIUS)] = _OBSTACLE_COLOR
        frame[_disc_mask(size, GOAL, SUCCESS_DISTANCE)] = _GOAL_COLOR
        return frame


def _push_out_of_obstacle(position: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Project `position` `(2,)` onto the obstacle boundary if it lies inside the disc."""
    offset = position - OBSTACLE_CENTER
    distance = float(np.linalg.norm(offset))
    if distance >= OBSTACLE_RADIUS:
        return position
    if distance == 0.0:
        # The exact centre has no nearest boundary point; leave along the side we came from.
        offset, distance = previous - OBSTACLE_CENTER, float(np.linalg.norm(previous - OBSTACLE_CENTER))
    return OBSTACLE_CENTER + offset * (OBSTACLE_RADIUS / distance)


def _disc_mask(size: int, center: np.ndarray, radius: float) -> np.ndarray:
    """Boolean `(size, size)` mask of pixels whose centres lie within `radius` of `center`."""
    coords = -1.0 + (np.arange(size) + 0.5) * (2.0 / size)
    x = coords[None, :]
    y = coords[::-1, None]  # row 0 is the top of the image, i.e. y = +1
    return (x - center[0]) ** 2 + (y - center[1]) ** 2 <= radius**2


def _validated_paths(path: np.ndarray) -> np.ndarray:
    paths = np.asarray(path, dtype=np.float64)
    if paths.ndim != 3 or paths.shape[1] < 1 or paths.shape[2] != 2:
        raise ValueError(f"path must have shape (N, T, 2) with T >= 1, got {paths.shape}")
    if not np.all(np.isfinite(paths)):
        raise ValueError("path contains NaN or inf values")
    return paths


def path_enters_obstacle(path: np.ndarray, radius: float = OBSTACLE_CHECK_RADIUS) -> np.ndarray:
    """Whether each path comes within `radius` of the obstacle centre.

    A path `(N, T, 2)` (e.g. a batch of predicted action chunks) collides when one of its points,
    or the straight segment between two consecutive points, enters the disc of `radius`.
    Returns `(N,)` bool.
    """
    paths = _validated_paths(path)
    if radius <= 0:
        raise ValueError(f"{radius=} must be positive")
    point_distance = np.linalg.norm(paths - OBSTACLE_CENTER, axis=-1).min(axis=1)
    start, delta = paths[:, :-1], np.diff(paths, axis=1)
    squared_length = np.sum(delta**2, axis=-1)
    along = np.sum((OBSTACLE_CENTER - start) * delta, axis=-1) / np.maximum(squared_length, 1e-12)
    closest = start + np.clip(along, 0.0, 1.0)[..., None] * delta
    segment_distance = np.linalg.norm(closest - OBSTACLE_CENTER, axis=-1).min(axis=1, initial=np.inf)
    return np.minimum(point_distance, segment_distance) < radius


def path_side(path: np.ndarray) -> np.ndarray:
    """Which side of the obstacle each path `(N, T, 2)` passes: `(N,)` int, -1 left, +1 right, 0 neither.

    Rule: take the points of the path inside the horizontal band `|y - obstacle_y| < SIDE_BAND`
    (the stretch where the obstacle forces a choice) and average their x offsets from the obstacle
    centre. A mean below `-SIDE_MIN_OFFSET` is left, above `+SIDE_MIN_OFFSET` right; paths with no
    point in the band, or whose mean stays within `SIDE_MIN_OFFSET` of the centre line (straight
    through the obstacle), are 0.
    """
    paths = _validated_paths(path)
    offset = paths - OBSTACLE_CENTER
    in_band = np.abs(offset[..., 1]) < SIDE_BAND
    count = in_band.sum(axis=1)
    mean_x = np.where(in_band, offset[..., 0], 0.0).sum(axis=1) / np.maximum(count, 1)
    side = np.where(mean_x < -SIDE_MIN_OFFSET, -1, np.where(mean_x > SIDE_MIN_OFFSET, 1, 0))
    return np.where(count > 0, side, 0).astype(np.int64)
