"""A scripted Push-T expert: quasi-static push planning on the block's contact faces.

Model (frictionless point pushing, as both Push-T simulations behave): pushing face point `r`
(relative to the rotation centre) along the face's inward normal `n` by a distance `u` moves the
centre by `u n / (1 + k^2 / rho^2)` and turns the block by `u (k / rho^2) / (1 + k^2 / rho^2)`,
with `k = r x n` and `rho^2` the block's inertia-to-mass ratio. For every candidate contact the
expert finds the push length minimising `|dp|^2 + lam^2 dtheta^2` (pose error after the push,
linearised), divides the gain by the time it takes (travel around the block + push), and picks
among the near-best candidates at random. It then walks a collision-free path to the contact
(straight, or around a circle enclosing the block, clockwise or counter-clockwise), and pushes,
re-planning every step so errors of the linear model are corrected in closed loop.

Actions are plain agent targets. Per-episode randomness (speed, tie-breaking, detour direction)
comes from `reset(seed)`, so demonstrations have several modes, like human ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from envs.pusht_geometry import (
    AGENT_RADIUS,
    BLOCK_INERTIA,
    BLOCK_OUTLINE,
    COG_LOCAL,
    WALL_HIGH,
    WALL_LOW,
    WORKSPACE_SIZE,
    block_distance,
    cog_pose,
    rotation,
    to_world,
    wrap_angle,
)

ANGLE_WEIGHT = 50.0  # px per radian in the pose-error cost
MAX_PUSH = 60.0  # px of push per decision before the plan is revisited from scratch
CONTACT_SPACING = 8.0  # px between candidate contact points along a face
CONVEX_MARGIN = 4.0  # keep contacts this far from convex corners (the agent would slip off)
CONCAVE_MARGIN = AGENT_RADIUS + 3.0  # the agent cannot reach closer to an inner corner
APPROACH_GAP = 5.0  # px between agent and face before a push starts
CLEARANCE = 6.0  # px of free space kept around the block while travelling
DETOUR_RADIUS = float(np.max(np.linalg.norm(BLOCK_OUTLINE - COG_LOCAL, axis=1))) + AGENT_RADIUS + 12.0
ARC_STEP = np.deg2rad(15.0)
DT = 0.1  # control period (s)
NEAR_BEST = 0.85  # candidates scoring at least this fraction of the best are equally good


@dataclass(frozen=True)
class Candidate:
    """A contact in the block frame: point `(2,)` on a face and the face's inward normal `(2,)`."""

    point: np.ndarray
    normal: np.ndarray


def _face_candidates() -> list[Candidate]:
    corners = BLOCK_OUTLINE
    candidates = []
    n = len(corners)
    for i in range(n):
        start, end = corners[i], corners[(i + 1) % n]
        edge = end - start
        length = float(np.linalg.norm(edge))
        direction = edge / length
        inward = np.array([-direction[1], direction[0]])  # the outline is counter-clockwise (y-up reading)
        margins = [CONCAVE_MARGIN if _is_concave(corners, j) else CONVEX_MARGIN for j in (i, (i + 1) % n)]
        usable = length - sum(margins)
        if usable < 0:
            continue
        count = max(1, int(usable // CONTACT_SPACING) + 1)
        for s in np.linspace(margins[0], length - margins[1], count):
            candidates.append(Candidate(start + s * direction, inward))
    return candidates


def _is_concave(corners: np.ndarray, index: int) -> bool:
    """Whether the counter-clockwise outline turns right (an inner corner of the T) at `index`."""
    before, at, after = corners[index - 1], corners[index], corners[(index + 1) % len(corners)]
    a, b = at - before, after - at
    return a[0] * b[1] - a[1] * b[0] < 0


CANDIDATES = _face_candidates()
_POINTS = np.array([c.point for c in CANDIDATES])  # (K, 2) block frame
_NORMALS = np.array([c.normal for c in CANDIDATES])  # (K, 2) inward, block frame
_ARMS = (_POINTS[:, 0] - COG_LOCAL[0]) * _NORMALS[:, 1] - (_POINTS[:, 1] - COG_LOCAL[1]) * _NORMALS[:, 0]  # k = r x n
_GAIN = 1.0 / (1.0 + _ARMS**2 / BLOCK_INERTIA)  # centre displacement per unit push
_TURN = _ARMS / BLOCK_INERTIA * _GAIN  # rotation per unit push


def push_model(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For block origin `pose` `(3,)`: world contact points, inward normals, centre motion `(K, 2)` and turn `(K,)`.

    Motion and turn are per unit of agent advance along the normal.
    """
    points = to_world(pose, _POINTS)
    normals = _NORMALS @ rotation(pose[2]).T
    return points, normals, normals * _GAIN[:, None], _TURN


def push_gains(pose: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The linearised cost `C(u) = C(0) - 2 u a + u^2 b` of pushing each candidate by `u`: `(a, b)`, each `(K,)`.

    `C` is `|centre error|^2 + ANGLE_WEIGHT^2 angle_error^2` between block `pose` and `goal` `(3,)`.
    """
    cog, goal_cog = cog_pose(pose), cog_pose(goal)
    error = goal_cog[:2] - cog[:2]
    angle_error = float(wrap_angle(goal_cog[2] - cog[2]))
    _, _, motion, turn = push_model(pose)
    along = motion @ error + ANGLE_WEIGHT**2 * angle_error * turn
    curvature = np.sum(motion**2, axis=1) + ANGLE_WEIGHT**2 * turn**2
    return along, curvature


def predicted_pose(pose: np.ndarray, index: int, length: float) -> np.ndarray:
    """Origin pose `(3,)` after pushing candidate `index` by `length`, by the linear model."""
    _, _, motion, turn = push_model(pose)
    cog = cog_pose(pose)
    moved = np.array([*(cog[:2] + motion[index] * length), cog[2] + turn[index] * length])
    return np.array([*(moved[:2] - rotation(moved[2]) @ COG_LOCAL), moved[2]])


def _inside_walls(pose: np.ndarray) -> bool:
    corners = to_world(pose, BLOCK_OUTLINE)
    return bool(np.all(corners > WALL_LOW + 3.0) and np.all(corners < WALL_HIGH - 3.0))


def _segment_clear(pose: np.ndarray, a: np.ndarray, b: np.ndarray, clearance: float) -> bool:
    n = max(2, int(np.linalg.norm(b - a) // 4.0) + 2)
    samples = a + np.linspace(0.0, 1.0, n)[:, None] * (b - a)
    return bool(np.all(block_distance(pose, samples) >= AGENT_RADIUS + clearance))


def _path_clear(pose: np.ndarray, path: list[np.ndarray]) -> bool:
    return all(_segment_clear(pose, a, b, CLEARANCE) for a, b in zip(path[:-1], path[1:]))


def _path_length(path: list[np.ndarray]) -> float:
    return float(sum(np.linalg.norm(b - a) for a, b in zip(path[:-1], path[1:])))


def plan_path(
    pose: np.ndarray, start: np.ndarray, contact: np.ndarray, normal: np.ndarray, clockwise: bool
) -> list[np.ndarray] | None:
    """Waypoints `[(2,), ...]` from agent `start` to the pre-push point of `contact`, or None if blocked.

    Straight when that keeps `CLEARANCE` from the block; otherwise out to the detour circle around
    the rotation centre, along it (`clockwise` or not), and in along the push line.
    """
    goal = contact - normal * (AGENT_RADIUS + APPROACH_GAP)
    if np.any(goal < 0) or np.any(goal > WORKSPACE_SIZE):
        return None
    # The last leg runs along the push line, where the face is only APPROACH_GAP away.
    entry = goal - normal * 2 * CLEARANCE
    if _segment_clear(pose, start, entry, CLEARANCE) and _segment_clear(pose, entry, goal, APPROACH_GAP - 1):
        return [start, entry, goal]
    centre = cog_pose(pose)[:2]
    offset = contact - centre
    along = float(offset @ normal)
    depth = along + np.sqrt(max(along**2 - offset @ offset + DETOUR_RADIUS**2, 0.0))
    staging = contact - normal * depth
    away = start - centre
    distance = float(np.linalg.norm(away))
    if distance < 1e-6:
        return None
    exit_point = centre + away * (DETOUR_RADIUS / distance)
    begin = np.arctan2(away[1], away[0])
    end = np.arctan2(*(staging - centre)[::-1])
    sweep = (begin - end) % (2 * np.pi) if clockwise else -((end - begin) % (2 * np.pi))
    steps = max(1, int(abs(sweep) // ARC_STEP))
    arc = [centre + DETOUR_RADIUS * np.array([np.cos(a), np.sin(a)])
           for a in begin - np.linspace(0.0, sweep, steps + 1)[1:]]
    path = [start, exit_point, *arc, staging, goal]
    path = [np.clip(p, 0.0, WORKSPACE_SIZE) for p in path]
    # The first leg leaves the block's neighbourhood, so it may start closer than CLEARANCE.
    if not (_segment_clear(pose, path[0], path[1], 0.5) and _path_clear(pose, path[1:-1])
            and _segment_clear(pose, path[-2], path[-1], APPROACH_GAP - 1)):
        return None
    return path


class PushTExpert:
    """Scripted Push-T demonstrator for any env exposing `agent_position`, `block_pose`, `goal_pose`.

    Call `reset(seed)` at each episode start; per-episode speeds, detour preference and
    tie-breaking are drawn from that seed.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode with randomness drawn from `seed`."""
        self._rng = np.random.default_rng(seed)
        self._travel_speed = self._rng.uniform(200.0, 320.0)  # px/s of the commanded target
        self._push_speed = self._rng.uniform(100.0, 180.0)
        self._clockwise = bool(self._rng.random() < 0.5)
        self._mode = "plan"
        self._index = -1
        self._path: list[np.ndarray] = []
        self._target = np.zeros(2)
        self._planned_pose = np.zeros(3)

    def __call__(self, env: gym.Env, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Agent target `(2,)` for the current state of `env` (read from its privileged state)."""
        sim = env.unwrapped
        agent, pose, goal = sim.agent_position, sim.block_pose, sim.goal_pose
        if self._mode == "approach" and not _same_pose(pose, self._planned_pose):
            self._mode = "plan"
        if self._mode == "push":
            action = self._push(agent, pose, goal)
            if action is not None:
                return action
            self._mode = "plan"
        if self._mode == "plan":
            self._choose(agent, pose, goal)
        return self._approach(agent, pose, goal)

    # --- decisions -------------------------------------------------------------------------------
    def _scores(self, agent: np.ndarray, pose: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per candidate: push length `(K,)` and cost reduction per second `(K,)`, travel by straight line."""
        along, curvature = push_gains(pose, goal)
        length = np.clip(along / curvature, 0.0, MAX_PUSH)
        points, normals, _, _ = push_model(pose)
        for k in np.flatnonzero(length > 0.5):
            while length[k] > 0.5 and not _inside_walls(predicted_pose(pose, k, length[k])):
                length[k] *= 0.5
        length[length <= 0.5] = 0.0
        gain = 2 * length * along - length**2 * curvature
        pre = points - normals * (AGENT_RADIUS + APPROACH_GAP)
        travel = np.linalg.norm(pre - agent, axis=1) / self._travel_speed
        return length, gain / (travel + length / self._push_speed + 0.5)

    def _choose(self, agent: np.ndarray, pose: np.ndarray, goal: np.ndarray) -> None:
        length, score = self._scores(agent, pose, goal)
        points, normals, _, _ = push_model(pose)
        options = []
        for k in np.argsort(-score)[:12]:
            if score[k] <= 0:
                break
            path = self._shortest_path(pose, agent, points[k], normals[k])
            if path is not None:
                push_time = length[k] / self._push_speed + 0.5
                pre = points[k] - normals[k] * (AGENT_RADIUS + APPROACH_GAP)
                # `score` assumed a straight approach; rescale it to the planned path's travel time.
                gain = score[k] * (np.linalg.norm(pre - agent) / self._travel_speed + push_time)
                options.append((gain / (_path_length(path) / self._travel_speed + push_time), k, path))
        if not options:
            # Nothing helps from here (e.g. pinned against a wall): back away from the block.
            self._index, self._path = -1, [agent, _retreat_point(pose, agent)]
        else:
            best = max(o[0] for o in options)
            near = [o for o in options if o[0] >= NEAR_BEST * best]
            _, self._index, self._path = near[self._rng.integers(len(near))]
        self._target = agent.copy()
        self._planned_pose = pose.copy()
        self._mode = "approach"

    def _shortest_path(
        self, pose: np.ndarray, agent: np.ndarray, contact: np.ndarray, normal: np.ndarray
    ) -> list[np.ndarray] | None:
        paths = [p for p in (plan_path(pose, agent, contact, normal, cw) for cw in (self._clockwise,
                 not self._clockwise)) if p is not None]
        if not paths:
            return None
        # The episode's preferred detour direction wins unless the other is clearly shorter.
        return paths[0] if _path_length(paths[0]) <= 1.3 * _path_length(paths[-1]) else paths[-1]

    # --- motion ----------------------------------------------------------------------------------
    def _approach(self, agent: np.ndarray, pose: np.ndarray, goal: np.ndarray) -> np.ndarray:
        budget = self._travel_speed * DT
        while budget > 0 and len(self._path) > 1:
            step = self._path[1] - self._target
            distance = float(np.linalg.norm(step))
            if distance <= budget:
                self._target = self._path[1].copy()
                self._path.pop(0)
                budget -= distance
            else:
                self._target = self._target + step * (budget / distance)
                budget = 0.0
        if len(self._path) == 1 and np.linalg.norm(agent - self._target) < 3.0:
            self._mode = "push" if self._index >= 0 else "plan"
            if self._mode == "push":
                action = self._push(agent, pose, goal)
                if action is not None:
                    return action
            self._mode = "plan"
        return self._target.copy()

    def _push(self, agent: np.ndarray, pose: np.ndarray, goal: np.ndarray) -> np.ndarray | None:
        """Target advancing into the committed contact, or None when the push is over."""
        length, score = self._scores(agent, pose, goal)
        k = self._index
        if length[k] <= 0.5 or score[k] < 0.5 * score.max():
            return None
        points, normals, _, _ = push_model(pose)
        touching = points[k] - normals[k] * AGENT_RADIUS
        offset = agent - touching
        # Slid off the contact (the face turned under the agent): plan afresh.
        if abs(offset @ np.array([-normals[k][1], normals[k][0]])) > 6.0:
            return None
        advance = min(length[k], self._push_speed * 0.2)
        self._target = touching + normals[k] * advance
        return self._target.copy()


def _same_pose(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.linalg.norm(a[:2] - b[:2]) < 1.0 and abs(wrap_angle(a[2] - b[2])) < 0.01)


def _retreat_point(pose: np.ndarray, agent: np.ndarray) -> np.ndarray:
    """A point `(2,)` further from the block's centre than the detour circle, in the agent's direction."""
    centre = cog_pose(pose)[:2]
    away = agent - centre
    norm = float(np.linalg.norm(away))
    direction = away / norm if norm > 1e-6 else np.array([1.0, 0.0])
    return np.clip(centre + direction * DETOUR_RADIUS, 0.0, WORKSPACE_SIZE)
