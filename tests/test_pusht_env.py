"""MuJoCo Push-T: spaces, seeding, scoring, physics golden values, bad input and rendering."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from envs import PUSHT_ID, PUSHT_MAX_STEPS
from envs.pusht import PushTEnv
from envs.pusht_geometry import (
    AGENT_RADIUS,
    GOAL_POSE,
    SUCCESS_COVERAGE,
    coverage,
    keypoints,
    reward_from_coverage,
    to_world,
)
from envs.pusht_render import AGENT_COLOR, GOAL_COLOR


def make(**kwargs) -> gym.Env:
    return gym.make(PUSHT_ID, **kwargs)


@pytest.mark.parametrize("obs_type, shapes", [("keypoints", {"agent_pos": (2,), "keypoints": (18,)}),
                                              ("state", {"agent_pos": (2,), "block_pose": (3,)})])
def test_observation_modes(obs_type, shapes):
    env = make(obs_type=obs_type)
    obs, info = env.reset(seed=3)
    assert {k: v.shape for k, v in obs.items()} == shapes
    assert env.observation_space.contains(obs)
    assert set(info) == {"coverage", "success"}
    assert env.spec.max_episode_steps == PUSHT_MAX_STEPS == 300
    sim = env.unwrapped
    if obs_type == "keypoints":
        np.testing.assert_allclose(obs["keypoints"].reshape(9, 2), keypoints(sim.block_pose), atol=1e-3)
    else:
        np.testing.assert_allclose(obs["block_pose"][:2], sim.block_pose[:2], atol=1e-3)
        assert 0 <= obs["block_pose"][2] < 2 * np.pi
    np.testing.assert_allclose(obs["agent_pos"], sim.agent_position, atol=1e-3)


def test_reset_is_reproducible_and_starts_are_valid():
    env = make(obs_type="state")
    first, _ = env.reset(seed=11)
    again, _ = env.reset(seed=11)
    other, _ = env.reset(seed=12)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["block_pose"], other["block_pose"])
    for seed in range(30):
        obs, _ = env.reset(seed=seed)
        corners = to_world(env.unwrapped.block_pose, np.array([[-60, 0], [60, 0], [15, 120], [-15, 120]]))
        assert corners.min() > 7 and corners.max() < 504
        assert np.all((obs["agent_pos"] >= 50) & (obs["agent_pos"] < 450))


def test_block_on_goal_scores_one_and_terminates():
    env = make()
    state = [100.0, 100.0, *GOAL_POSE]
    _, info = env.reset(options={"state": state})
    assert info["coverage"] == pytest.approx(1.0) and info["success"]
    _, reward, terminated, truncated, info = env.step(np.array([100.0, 100.0]))
    assert reward == 1.0 and terminated and not truncated and info["success"]


def test_reward_is_clipped_coverage_ratio():
    env = make()
    shifted = GOAL_POSE + np.array([6.0, 0.0, 0.0])
    _, info = env.reset(options={"state": [60.0, 60.0, *shifted]})
    _, reward, terminated, _, info = env.step(np.array([60.0, 60.0]))
    assert info["coverage"] == pytest.approx(coverage(shifted), abs=1e-6)
    assert info["coverage"] < SUCCESS_COVERAGE and not terminated
    assert reward == pytest.approx(reward_from_coverage(info["coverage"]))
    assert reward == pytest.approx(info["coverage"] / 0.95)


def test_straight_push_moves_block_by_the_push_distance():
    """Agent pushes the bar's outer edge head-on: pure translation by exactly the overlap commanded."""
    env = make(obs_type="state")
    block = np.array([256.0, 200.0, 0.0])  # bar's outer edge along y = 200, stem pointing to +y
    env.reset(options={"state": [256.0, 200.0 - AGENT_RADIUS - 20.0, *block]})
    for _ in range(20):
        env.step(np.array([256.0, 200.0 - AGENT_RADIUS + 30.0]))
    pose = env.unwrapped.block_pose
    np.testing.assert_allclose(pose, [256.0, 230.0, 0.0], atol=0.2)


def test_offset_push_turns_the_block_the_expected_way():
    """Pushing the bar's outer edge right of centre along +y turns the block by +angle (y-down screen: clockwise)."""
    env = make(obs_type="state")
    block = np.array([256.0, 200.0, 0.0])
    env.reset(options={"state": [296.0, 160.0, *block]})
    for _ in range(10):
        env.step(np.array([296.0, 200.0 - AGENT_RADIUS + 10.0]))
    pose = env.unwrapped.block_pose
    assert pose[2] > 0.02
    assert pose[1] > 200.0


def test_bad_actions_and_states_raise_with_the_value():
    env = make()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 3.0]))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="overlaps"):
        env.reset(options={"state": [256.0, 210.0, 256.0, 200.0, 0.0]})
    with pytest.raises(ValueError, match="wall"):
        env.reset(options={"state": [100.0, 100.0, 30.0, 200.0, 0.0]})
    with pytest.raises(ValueError, match="5 finite numbers"):
        env.reset(options={"state": [1.0, 2.0]})
    with pytest.raises(ValueError, match="obs_type"):
        PushTEnv(obs_type="rgb")


def test_out_of_range_targets_are_clipped_to_the_workspace():
    env = make(obs_type="state")
    env.reset(options={"state": [256.0, 450.0, 256.0, 100.0, 0.0]})
    for _ in range(15):
        obs, *_ = env.step(np.array([1000.0, 2000.0]))
    np.testing.assert_allclose(obs["agent_pos"], [512.0, 512.0], atol=0.5)


def test_diverged_simulation_raises():
    env = make()
    env.reset(seed=0)
    env.unwrapped.data.qpos[2] = np.nan
    with pytest.raises(RuntimeError, match="diverged"):
        env.step(np.array([256.0, 256.0]))


def test_render_draws_agent_and_goal():
    env = make(render_mode="rgb_array", render_size=128)
    env.reset(options={"state": [40.0, 40.0, 400.0, 350.0, 0.0]})
    frame = env.render()
    assert frame.shape == (128, 128, 3) and frame.dtype == np.uint8
    assert tuple(frame[10, 10]) == AGENT_COLOR  # pixel centre (20, 20) lies within 15 px of (40, 40)
    goal_centre = to_world(GOAL_POSE, np.array([0.0, 15.0]))  # middle of the goal's bar
    row, col = (goal_centre / 4).astype(int)[::-1]
    assert tuple(frame[row, col]) == GOAL_COLOR
    assert PushTEnv().render() is None


def test_gymnasium_env_checker_passes():
    check_env(make().unwrapped, skip_render_check=True)


def test_physics_matches_the_original_pymunk_task():
    """The same push in both simulations moves the block to nearly the same pose."""
    pytest.importorskip("gym_pusht")
    from envs import PUSHT_PYMUNK_ID
    from envs.pusht_pymunk import legacy_reset_state

    block = np.array([220.0, 250.0, 0.4])
    contact = to_world(block, np.array([20.0, 0.0]))  # on the bar's outer edge, right of centre
    inward = to_world(block, np.array([0.0, 1.0])) - block[:2]
    agent = contact - inward * (AGENT_RADIUS + 20.0)
    targets = [agent + k * 6.0 * inward for k in range(1, 16)]
    poses = []
    for env_id, options in [(PUSHT_ID, {"state": [*agent, *block]}),
                            (PUSHT_PYMUNK_ID, {"reset_to_state": legacy_reset_state(agent, block)})]:
        env = gym.make(env_id)
        env.reset(options=options)
        np.testing.assert_allclose(env.unwrapped.block_pose, block, atol=1e-6)
        for target in targets:
            env.step(target)
        poses.append(env.unwrapped.block_pose)
    moved = np.linalg.norm(poses[1][:2] - block[:2])
    assert moved > 20.0, "the push should move the block"
    assert np.linalg.norm(poses[0][:2] - poses[1][:2]) < 0.1 * moved
    assert abs(poses[0][2] - poses[1][2]) < 0.05


def _colour_centroid(image: np.ndarray, colour: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    """(row, col) centroid of the pixels within `tol` of `colour` in an (H, W, 3) image."""
    rows, cols = np.nonzero(np.abs(image.astype(int) - np.array(colour)).max(axis=-1) <= tol)
    assert len(rows), f"no pixel of colour {colour}"
    return np.array([rows.mean(), cols.mean()])


@pytest.mark.parametrize("obs_type", ["pixels", "pixels_agent_pos"])
def test_pixel_observations_are_the_top_down_camera(obs_type):
    env = make(obs_type=obs_type)
    obs, _ = env.reset(options={"state": [100.0, 400.0, 300.0, 150.0, 0.0]})
    assert set(obs) == ({"pixels", "agent_pos"} if obs_type == "pixels_agent_pos" else {"pixels"})
    assert env.observation_space.contains(obs)
    image = obs["pixels"]
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    scale = 96 / 512
    # Image row = y, column = x: the agent at (x, y) = (100, 400) lies low on the left.
    np.testing.assert_allclose(_colour_centroid(image, AGENT_COLOR), [400 * scale, 100 * scale], atol=1.0)
    np.testing.assert_allclose(_colour_centroid(image, GOAL_COLOR),
                               _colour_centroid(env.unwrapped.render_frame_at(96), GOAL_COLOR), atol=0.5)
    for _ in range(5):
        moved, *_ = env.step(np.array([200.0, 400.0]))
    assert _colour_centroid(moved["pixels"], AGENT_COLOR)[1] > _colour_centroid(image, AGENT_COLOR)[1] + 10
    env.close()


def test_camera_image_matches_the_numpy_drawing_and_is_deterministic():
    env = PushTEnv(obs_type="pixels")
    first, _ = env.reset(seed=5)
    again, _ = env.reset(seed=5)
    np.testing.assert_array_equal(first["pixels"], again["pixels"])
    drawn = env.render_frame_at(96)
    differs = np.abs(first["pixels"].astype(int) - drawn.astype(int)).max(axis=-1) > 40
    assert differs.mean() < 0.01  # the two renderers disagree only on a few edge pixels
    env.close()
    small = PushTEnv(obs_type="pixels", image_size=64)
    assert small.reset(seed=5)[0]["pixels"].shape == (64, 64, 3)
    small.close()
    with pytest.raises(ValueError, match="image_size"):
        PushTEnv(obs_type="pixels", image_size=8)
