"""ObstacleAvoid environment, its path classifiers and its scripted expert."""

from __future__ import annotations

import importlib
import warnings

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs import OBSTACLE_AVOID_ID
from envs.experts import make_expert
from envs.obstacle_avoid import (
    GOAL,
    MAX_STEP,
    OBSTACLE_CENTER,
    OBSTACLE_RADIUS,
    ObstacleAvoidEnv,
    path_enters_obstacle,
    path_side,
)


def _step_to(env: gym.Env, start: tuple[float, float], action: tuple[float, float]) -> tuple:
    env.reset(seed=0, options={"start": start})
    return env.step(np.array(action, dtype=np.float32))


def _expert_episode(env: gym.Env, seed: int) -> tuple[np.ndarray, np.ndarray, bool, int]:
    """Positions (L+1, 2), actions (L, 2), success and side chosen by the expert."""
    obs, _ = env.reset(seed=seed)
    expert = make_expert(OBSTACLE_AVOID_ID, seed)
    positions, actions = [obs["agent_pos"]], []
    terminated = truncated = False
    while not (terminated or truncated):
        actions.append(expert(env, obs))
        obs, _, terminated, truncated, info = env.step(actions[-1])
        positions.append(obs["agent_pos"])
    return np.array(positions), np.array(actions), bool(terminated and info["success"]), expert.side


def test_registration_is_idempotent_and_sets_time_limit() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(envs)
    env = gym.make(OBSTACLE_AVOID_ID)
    assert env.spec.max_episode_steps == 100
    assert isinstance(env.unwrapped, ObstacleAvoidEnv)
    np.testing.assert_array_equal(env.unwrapped.goal, [0.0, 0.8])
    np.testing.assert_array_equal(env.unwrapped.obstacle_center, [0.0, 0.0])
    assert env.unwrapped.obstacle_radius == OBSTACLE_RADIUS == 0.3


def test_reset_is_seeded_and_start_can_be_set() -> None:
    env = gym.make(OBSTACLE_AVOID_ID)
    first, _ = env.reset(seed=7)
    again, _ = env.reset(seed=7)
    other, _ = env.reset(seed=8)
    np.testing.assert_array_equal(first["agent_pos"], again["agent_pos"])
    assert not np.array_equal(first["agent_pos"], other["agent_pos"])
    starts = np.array([env.reset(seed=s)[0]["agent_pos"] for s in range(50)])
    assert starts.dtype == np.float32 and env.observation_space.contains({"agent_pos": starts[0]})
    assert np.all(np.abs(starts[:, 0]) <= 0.05) and np.all((starts[:, 1] >= -0.85) & (starts[:, 1] <= -0.75))
    obs, info = env.reset(seed=0, options={"start": (0.25, -0.5)})
    np.testing.assert_array_equal(obs["agent_pos"], np.float32([0.25, -0.5]))
    assert info["success"] is False


@pytest.mark.parametrize("start", [(0.0, 0.1), (1.5, 0.0), (np.nan, 0.0), (0.1, 0.2, 0.3)])
def test_invalid_start_raises(start: tuple) -> None:
    with pytest.raises(ValueError, match="start"):
        gym.make(OBSTACLE_AVOID_ID).reset(seed=0, options={"start": start})


def test_step_moves_at_most_max_step_toward_clipped_target() -> None:
    env = gym.make(OBSTACLE_AVOID_ID)
    obs, reward, terminated, truncated, info = _step_to(env, (0.0, -0.8), (0.0, -0.5))
    np.testing.assert_allclose(obs["agent_pos"], [0.0, -0.7], atol=1e-6)
    assert reward == pytest.approx(-1.5) and info["distance"] == pytest.approx(1.5)
    assert not terminated and not truncated
    obs, *_ = _step_to(env, (0.5, -0.5), (0.53, -0.46))  # within reach: lands on the target
    np.testing.assert_allclose(obs["agent_pos"], [0.53, -0.46], atol=1e-6)
    obs, *_ = _step_to(env, (0.95, -0.8), (5.0, -0.8))  # target clipped to the workspace edge
    np.testing.assert_allclose(obs["agent_pos"], [1.0, -0.8], atol=1e-6)
    assert MAX_STEP == 0.1


def test_agent_is_projected_onto_obstacle_boundary() -> None:
    env = gym.make(OBSTACLE_AVOID_ID)
    obs, *_ = _step_to(env, (0.0, -0.35), (0.0, 0.0))
    np.testing.assert_allclose(obs["agent_pos"], [0.0, -0.3], atol=1e-6)
    obs, *_ = _step_to(env, (0.1, -0.35), (0.1, 0.0))  # would land at (0.1, -0.25), inside
    expected = np.array([0.1, -0.25]) * (OBSTACLE_RADIUS / np.hypot(0.1, 0.25))
    np.testing.assert_allclose(obs["agent_pos"], expected, atol=1e-6)


def test_reaching_goal_terminates_with_success_and_time_limit_truncates() -> None:
    env = gym.make(OBSTACLE_AVOID_ID)
    obs, reward, terminated, truncated, info = _step_to(env, (0.03, 0.72), tuple(GOAL))
    assert terminated and not truncated and info["success"] is True and reward == pytest.approx(0.0, abs=1e-7)
    obs, _ = env.reset(seed=0)
    for step in range(1, 101):
        obs, _, terminated, truncated, info = env.step(obs["agent_pos"])
        assert truncated == (step == 100) and not terminated
    assert info["success"] is False


@pytest.mark.parametrize("action", [[np.nan, 0.0], [0.0, np.inf]])
def test_non_finite_action_raises(action: list[float]) -> None:
    env = gym.make(OBSTACLE_AVOID_ID)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.unwrapped.step(np.array(action))


def test_render_rgb_array_draws_obstacle_goal_and_agent() -> None:
    env = gym.make(OBSTACLE_AVOID_ID, render_mode="rgb_array")
    env.reset(seed=0, options={"start": (-0.5, -0.5)})
    frame = env.render()
    assert frame.shape == (128, 128, 3) and frame.dtype == np.uint8

    def pixel(x: float, y: float) -> list[int]:
        return frame[int((1 - y) / 2 * 128), int((x + 1) / 2 * 128)].tolist()

    assert pixel(0.0, 0.0) == [110, 110, 110]  # obstacle
    assert pixel(0.0, 0.8) == [60, 180, 75]  # goal
    assert pixel(-0.5, -0.5) == [30, 90, 220]  # agent
    assert pixel(0.6, -0.6) == [255, 255, 255]
    assert ObstacleAvoidEnv().render() is None
    with pytest.raises(ValueError, match="render_mode"):
        ObstacleAvoidEnv(render_mode="human")


def test_path_enters_obstacle_checks_points_and_segments() -> None:
    paths = np.array([
        [[0.0, -0.8], [0.0, 0.8]],  # straight through: only the segment is inside
        [[-0.5, -0.8], [-0.5, 0.8]],  # well left
        [[-0.2, -1.0], [-0.2, 1.0]],  # passes 0.2 from the centre: inside the 0.25 check disc
        [[-0.27, -1.0], [-0.27, 1.0]],  # 0.27: outside 0.25, inside the real 0.3 disc
        [[0.1, 0.1], [0.1, 0.1]],  # a still point inside
    ])
    np.testing.assert_array_equal(path_enters_obstacle(paths), [True, False, True, False, True])
    np.testing.assert_array_equal(path_enters_obstacle(paths, radius=0.3), [True, False, True, True, True])
    np.testing.assert_array_equal(path_enters_obstacle(np.array([[[0.0, 0.1]], [[0.0, 0.9]]])), [True, False])
    with pytest.raises(ValueError, match="shape"):
        path_enters_obstacle(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        path_enters_obstacle(np.full((1, 3, 2), np.nan))


def test_path_side_uses_mean_x_inside_band() -> None:
    y = np.linspace(-0.8, 0.8, 9)
    paths = np.stack([
        np.stack([np.full(9, -0.5), y], axis=-1),  # left
        np.stack([np.full(9, 0.45), y], axis=-1),  # right
        np.stack([np.full(9, 0.05), y], axis=-1),  # through the middle
        np.stack([np.linspace(-0.5, 0.5, 9), np.full(9, -0.7)], axis=-1),  # never in the band
        np.stack([np.where(np.abs(y) < 0.4, 0.3, -0.9), y], axis=-1),  # only band points count
    ])
    np.testing.assert_array_equal(path_side(paths), [-1, 1, 0, 0, 1])
    assert path_side(paths).dtype == np.int64
    with pytest.raises(ValueError, match="shape"):
        path_side(np.zeros((2, 3, 3)))


def test_expert_succeeds_avoids_obstacle_and_splits_sides() -> None:
    env = gym.make(OBSTACLE_AVOID_ID)
    episodes = [_expert_episode(env, seed) for seed in range(200)]
    positions = [p for p, *_ in episodes]
    assert all(success for _, _, success, _ in episodes)
    assert max(len(p) - 1 for p in positions) < 100
    assert not any(path_enters_obstacle(p[None], radius=OBSTACLE_RADIUS)[0] for p in positions)
    sides = np.array([side for *_, side in episodes])
    np.testing.assert_array_equal([path_side(p[None])[0] for p in positions], sides)
    assert 0.4 <= np.mean(sides == -1) <= 0.6 and 0.4 <= np.mean(sides == 1) <= 0.6
    # Env and expert share the seed; the side must not be a function of the sampled start.
    start_left = np.array([p[0, 0] < 0 for p in positions])
    assert 0.35 <= np.mean(start_left == (sides == -1)) <= 0.65


def test_expert_drags_cursor_ahead_at_bounded_speed() -> None:
    positions, actions, _, _ = _expert_episode(gym.make(OBSTACLE_AVOID_ID), seed=3)
    lead = np.linalg.norm(actions - positions[:-1], axis=-1)
    assert np.all(lead <= MAX_STEP + 1e-6) and np.all(lead[:-1] >= 0.7 * MAX_STEP - 1e-6)
    np.testing.assert_allclose(positions[1:], actions, atol=1e-6)  # each target is reached exactly
    again_positions, again_actions, _, _ = _expert_episode(gym.make(OBSTACLE_AVOID_ID), seed=3)
    np.testing.assert_array_equal(actions, again_actions)


def test_make_expert_unknown_id_names_known_ones() -> None:
    with pytest.raises(KeyError, match=r"nope/Missing-v0.*ObstacleAvoid-v0"):
        make_expert("nope/Missing-v0")
    assert make_expert(OBSTACLE_AVOID_ID, seed=1).side in (-1, 1)
    np.testing.assert_array_equal(OBSTACLE_CENTER, [0.0, 0.0])
