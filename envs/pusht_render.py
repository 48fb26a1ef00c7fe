"""Top-down Push-T frames drawn with NumPy: no OpenGL, identical on every machine.

Colours follow the original renderer's palette (goal light green, block slate grey, agent royal
blue, walls light grey); image row = y, so frames look like the original's.
"""

from __future__ import annotations

import numpy as np

from envs.pusht_geometry import AGENT_RADIUS, BLOCK_RECTANGLES, WALL_HIGH, WALL_LOW, WORKSPACE_SIZE, to_local

BACKGROUND = (255, 255, 255)
WALL_COLOR = (211, 211, 211)
GOAL_COLOR = (144, 238, 144)
BLOCK_COLOR = (119, 136, 153)
AGENT_COLOR = (65, 105, 225)
TARGET_COLOR = (220, 40, 40)
WALL_HALF_WIDTH = 2.0


def _pixel_centres(size: int) -> np.ndarray:
    """World coordinates `(size, size, 2)` of the pixel centres of a `size` x `size` frame."""
    coords = (np.arange(size) + 0.5) * (WORKSPACE_SIZE / size)
    xs, ys = np.meshgrid(coords, coords)
    return np.stack([xs, ys], axis=-1)


def _block_mask(centres: np.ndarray, pose: np.ndarray) -> np.ndarray:
    local = to_local(pose, centres)
    mask = np.zeros(centres.shape[:-1], dtype=bool)
    for rect in BLOCK_RECTANGLES:
        low, high = rect.min(axis=0), rect.max(axis=0)
        mask |= np.all((local >= low) & (local <= high), axis=-1)
    return mask


def _near_wall(coordinate: np.ndarray) -> np.ndarray:
    return (np.abs(coordinate - WALL_LOW) <= WALL_HALF_WIDTH) | (np.abs(coordinate - WALL_HIGH) <= WALL_HALF_WIDTH)


def render_frame(
    size: int,
    agent_pos: np.ndarray,
    block_pose: np.ndarray,
    goal_pose: np.ndarray,
    target: np.ndarray | None = None,
) -> np.ndarray:
    """A `(size, size, 3)` uint8 frame of the scene; `target` `(2,)` (the last action) drawn as a cross."""
    if size < 16:
        raise ValueError(f"render {size=} must be at least 16 pixels")
    centres = _pixel_centres(size)
    frame = np.empty((size, size, 3), dtype=np.uint8)
    frame[:] = BACKGROUND
    x, y = centres[..., 0], centres[..., 1]
    frame[_near_wall(x) | _near_wall(y)] = WALL_COLOR
    frame[_block_mask(centres, goal_pose)] = GOAL_COLOR
    frame[_block_mask(centres, block_pose)] = BLOCK_COLOR
    frame[np.sum((centres - np.asarray(agent_pos)) ** 2, axis=-1) <= AGENT_RADIUS**2] = AGENT_COLOR
    if target is not None:
        offset = np.abs(centres - np.asarray(target))
        arm, half_width = 8.0, max(1.0, WORKSPACE_SIZE / size)
        frame[((offset[..., 0] <= half_width) & (offset[..., 1] <= arm))
              | ((offset[..., 1] <= half_width) & (offset[..., 0] <= arm))] = TARGET_COLOR
    return frame
