"""Push-T geometry shared by the MuJoCo task, the gym-pusht adapter and the scripted expert.

Frame and shapes are those of the original Push-T (Chi et al., RSS 2023; gym-pusht on PyPI), so
poses and scores carry over unchanged:

- Workspace `[0, 512]^2` in pixels, walls along x, y = 5 and 506. The y axis points *down* on
  screen (image row = y), as in the original renderer.
- The block is a T: a 120 x 30 bar and a 30 x 90 stem. Its pose `(x, y, angle)` is the position of
  its frame origin (the middle of the bar's outer edge) and the rotation `angle` (radians); a local
  point `v` lies at `(x, y) + R(angle) v`. The stem extends along local +y.
- The original physics rotates the block about `COG_LOCAL = (0, 45)` (the mean of the two
  rectangles' centroids) with inertia `BLOCK_INERTIA` for unit mass.
- The agent is a disc of radius 15; the goal pose is `(256, 256, pi / 4)`.

Coverage is `area(block ∩ goal) / area(goal)`. Both T's are unions of two disjoint convex
rectangles, so the intersection area is the sum of four convex-polygon intersections.
"""

from __future__ import annotations

import numpy as np

WORKSPACE_SIZE = 512.0
WALL_LOW, WALL_HIGH = 5.0, 506.0
AGENT_RADIUS = 15.0
GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])
GOAL_POSE.setflags(write=False)
SUCCESS_COVERAGE = 0.95

BAR_SIZE = (120.0, 30.0)
STEM_SIZE = (30.0, 90.0)
# Rectangles `(2, 4, 2)` in the block frame, vertices counter-clockwise in a y-up reading.
BLOCK_RECTANGLES = np.array(
    [
        [[-60.0, 0.0], [60.0, 0.0], [60.0, 30.0], [-60.0, 30.0]],
        [[-15.0, 30.0], [15.0, 30.0], [15.0, 120.0], [-15.0, 120.0]],
    ]
)
BLOCK_RECTANGLES.setflags(write=False)
BLOCK_AREA = BAR_SIZE[0] * BAR_SIZE[1] + STEM_SIZE[0] * STEM_SIZE[1]
COG_LOCAL = np.array([0.0, 45.0])
COG_LOCAL.setflags(write=False)
# pymunk's moment_for_poly of the bar about the block origin, counted twice (the original code's
# value), for unit mass: 2 * ((120^2 + 30^2) / 12 + 15^2) = 3000 px^2.
BLOCK_INERTIA = 3000.0

# The T's outline: 8 corners, counter-clockwise in a y-up reading (clockwise on screen), block frame.
BLOCK_OUTLINE = np.array(
    [[-60.0, 0.0], [60.0, 0.0], [60.0, 30.0], [15.0, 30.0], [15.0, 120.0], [-15.0, 120.0], [-15.0, 30.0],
     [-60.0, 30.0]]
)
BLOCK_OUTLINE.setflags(write=False)
# Low-dim observation keypoints (block frame): the 8 outline corners and the rotation centre.
LOCAL_KEYPOINTS = np.concatenate([BLOCK_OUTLINE, COG_LOCAL[None]], axis=0)
LOCAL_KEYPOINTS.setflags(write=False)
N_KEYPOINTS = len(LOCAL_KEYPOINTS)


def rotation(angle: float) -> np.ndarray:
    """2-D rotation matrix `(2, 2)` for `angle` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def to_world(pose: np.ndarray, local_points: np.ndarray) -> np.ndarray:
    """Block-frame points `(..., 2)` -> world points `(..., 2)` for block `pose` `(3,)`."""
    pose = np.asarray(pose, dtype=np.float64)
    return local_points @ rotation(pose[2]).T + pose[:2]


def to_local(pose: np.ndarray, world_points: np.ndarray) -> np.ndarray:
    """World points `(..., 2)` -> block-frame points `(..., 2)` for block `pose` `(3,)`."""
    pose = np.asarray(pose, dtype=np.float64)
    return (np.asarray(world_points, dtype=np.float64) - pose[:2]) @ rotation(pose[2])


def keypoints(pose: np.ndarray) -> np.ndarray:
    """World keypoints `(N_KEYPOINTS, 2)` of the block at `pose` `(3,)`."""
    return to_world(pose, LOCAL_KEYPOINTS)


def cog_pose(pose: np.ndarray) -> np.ndarray:
    """Origin pose `(3,)` -> pose of the rotation centre `(3,)` (same angle)."""
    pose = np.asarray(pose, dtype=np.float64)
    return np.array([*to_world(pose, COG_LOCAL), pose[2]])


def origin_pose(cog: np.ndarray) -> np.ndarray:
    """Inverse of `cog_pose`: rotation-centre pose `(3,)` -> origin pose `(3,)`."""
    cog = np.asarray(cog, dtype=np.float64)
    return np.array([*(cog[:2] - rotation(cog[2]) @ COG_LOCAL), cog[2]])


def _clip_convex(subject: list[tuple[float, float]], clipper: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sutherland-Hodgman: the part of convex polygon `subject` inside convex polygon `clipper`.

    Both are lists of `(x, y)` vertices, counter-clockwise in a y-up reading. Plain floats, not
    NumPy: for a handful of vertices the interpreter is several times faster than array calls.
    """
    output = subject
    for i in range(len(clipper)):
        if not output:
            break
        ax, ay = clipper[i]
        bx, by = clipper[(i + 1) % len(clipper)]
        ex, ey = bx - ax, by - ay
        sides = [ex * (y - ay) - ey * (x - ax) for x, y in output]
        clipped = []
        for j, (x, y) in enumerate(output):
            side, side_next = sides[j], sides[j - len(output) + 1]
            if side >= 0:
                clipped.append((x, y))
            if (side >= 0) != (side_next >= 0):
                nx, ny = output[j - len(output) + 1]
                t = side / (side - side_next)
                clipped.append((x + t * (nx - x), y + t * (ny - y)))
        output = clipped
    return output


def _polygon_area(points: list[tuple[float, float]]) -> float:
    """Shoelace area of a simple polygon given as `(x, y)` vertices."""
    total = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]):
        total += x0 * y1 - x1 * y0
    return 0.5 * abs(total)


def coverage(pose: np.ndarray, goal: np.ndarray = GOAL_POSE) -> float:
    """Fraction of the goal T `goal` `(3,)` covered by the block at `pose` `(3,)`, in [0, 1]."""
    block = [list(map(tuple, r)) for r in to_world(pose, BLOCK_RECTANGLES).tolist()]
    target = [list(map(tuple, r)) for r in to_world(goal, BLOCK_RECTANGLES).tolist()]
    overlap = sum(_polygon_area(_clip_convex(b, g)) for b in block for g in target)
    return min(1.0, overlap / BLOCK_AREA)


def reward_from_coverage(value: float) -> float:
    """The original dense reward: `clip(coverage / 0.95, 0, 1)`."""
    return float(np.clip(value / SUCCESS_COVERAGE, 0.0, 1.0))


def wrap_angle(angle: float | np.ndarray) -> float | np.ndarray:
    """Angle(s) wrapped into [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


def block_distance(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Euclidean distance `(...)` from world points `(..., 2)` to the block at `pose` `(3,)`; 0 inside."""
    local = to_local(pose, points)
    distances = []
    for rect in BLOCK_RECTANGLES:
        low, high = rect.min(axis=0), rect.max(axis=0)
        outside = np.maximum(np.maximum(low - local, local - high), 0.0)
        distances.append(np.linalg.norm(outside, axis=-1))
    return np.minimum(*distances)
