"""Closed-loop evaluation: the rollout loop, reproducibility, space checks, metrics, JSON and videos."""

from __future__ import annotations

import multiprocessing
import re

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from diffusion_policy.config_utils import from_dict
from diffusion_policy.data.normalizer import Normalizer
from diffusion_policy.eval.metrics import EvalResult, format_table, wilson_interval
from diffusion_policy.eval.rollout import EvalConfig, evaluate_policy, make_vector_env
from diffusion_policy.eval.video import VideoWriter
from diffusion_policy.policy import DiffusionPolicy, DiffusionPolicyConfig
from diffusion_policy.policy.base import BasePolicy
from diffusion_policy.policy.config import PolicyConfig
from envs import OBSTACLE_AVOID_ID

WAYPOINT = (0.45, 0.0)  # right of the obstacle: both straight legs start -> waypoint -> goal clear it
GOAL = (0.0, 0.8)


class ScriptedPolicy(BasePolicy):
    """ObstacleAvoid without learning: `steer` drives around the obstacle to the goal, `stand` targets
    its own position. `noise_scale` adds the evaluator's per-episode noise to the targets. Records the
    observation histories it is given."""

    kind = "scripted"
    config_class = PolicyConfig

    def __init__(self, mode: str = "steer", noise_scale: float = 0.0, obs_shapes=None, action_dim: int = 2):
        config = PolicyConfig(obs_shapes=obs_shapes or {"agent_pos": (2,)}, action_dim=action_dim, horizon=8,
                              n_obs_steps=2, n_action_steps=4)
        stats = {key: np.zeros((2, *shape)) for key, shape in config.obs_shapes.items()}
        super().__init__(config, Normalizer.fit(stats | {"action": np.zeros((2, action_dim))}))
        self.mode, self.noise_scale = mode, noise_scale
        self.seen: list[np.ndarray] = []

    def predict_action(self, obs, generator=None, noise=None):
        history = torch.as_tensor(np.asarray(obs["agent_pos"]), dtype=torch.float64)  # (B, To, 2)
        self.seen.append(history.numpy().copy())
        pos = history[:, -1]
        if self.mode == "stand":
            target = pos
        else:
            target = torch.where(pos[:, 1:] < -0.05, torch.tensor(WAYPOINT, dtype=torch.float64),
                                 torch.tensor(GOAL, dtype=torch.float64))
        chunk = target[:, None].repeat(1, self.config.n_action_steps, 1)
        if self.noise_scale:
            start = self.config.n_obs_steps - 1
            chunk = chunk + self.noise_scale * noise[:, start : start + self.config.n_action_steps].double()
        return {"action": chunk}


def tiny_diffusion_policy(seed: int = 0) -> DiffusionPolicy:
    """An untrained 2-level U-Net policy for ObstacleAvoid (actions are noise-driven, not useful)."""
    torch.manual_seed(seed)
    config = from_dict(DiffusionPolicyConfig, dict(
        obs_shapes={"agent_pos": (2,)}, action_dim=2, horizon=8, n_obs_steps=2, n_action_steps=4,
        num_inference_steps=4, network={"down_dims": (8, 16), "kernel_size": 3, "n_groups": 4, "step_embed_dim": 8}))
    rng = np.random.default_rng(seed)
    normalizer = Normalizer.fit({"agent_pos": rng.uniform(-1, 1, (64, 2)), "action": rng.uniform(-1, 1, (64, 2))})
    return DiffusionPolicy(config, normalizer).eval()


def eval_config(**overrides) -> EvalConfig:
    base = dict(env_id=OBSTACLE_AVOID_ID, n_episodes=5, n_envs=2, vector="sync", n_videos=0)
    return EvalConfig(**(base | overrides))


# --- the loop ---------------------------------------------------------------------------------
def test_steering_policy_always_succeeds_and_standing_never():
    steer = evaluate_policy(ScriptedPolicy("steer"), eval_config(), progress=False)
    assert steer.successes == [True] * 5 and steer.summary["success_rate"] == 1.0
    assert all(18 <= n <= 30 for n in steer.lengths)  # ~1.8 units of path at 0.1 per step
    assert all(-0.05 < s < 0 for s in steer.scores)  # score = max reward = -distance at arrival

    stand = evaluate_policy(ScriptedPolicy("stand"), eval_config(max_episode_steps=12), progress=False)
    assert stand.successes == [False] * 5 and stand.summary["success_rate"] == 0.0
    assert stand.lengths == [12] * 5  # truncated by the step limit, not earlier
    assert all(-1.7 < s < -1.5 for s in stand.scores)  # it stays ~1.6 from the goal
    assert stand.seeds == list(range(100_000, 100_005))


def test_history_repeats_first_observation_and_replans_every_n_action_steps():
    policy = ScriptedPolicy("steer")
    result = evaluate_policy(policy, eval_config(n_episodes=1, n_envs=1), progress=False)
    first, second = policy.seen[0], policy.seen[1]
    assert first.shape == (1, 2, 2)
    np.testing.assert_array_equal(first[:, 0], first[:, 1])  # reset observation repeated To times
    assert np.linalg.norm(second[0, 1] - second[0, 0]) == pytest.approx(0.1, abs=1e-6)  # last two steps
    assert np.linalg.norm(second[0, 1] - first[0, 1]) == pytest.approx(0.4, abs=1e-6)  # Ta=4 steps of 0.1
    assert len(policy.seen) == -(-result.lengths[0] // 4)  # one plan per 4 executed steps


def test_same_config_is_bit_reproducible_with_a_real_policy():
    config = eval_config(n_episodes=3, max_episode_steps=15)
    a = evaluate_policy(tiny_diffusion_policy(), config, progress=False)
    b = evaluate_policy(tiny_diffusion_policy(), config, progress=False)
    assert a.scores == b.scores and a.lengths == b.lengths
    assert len(set(a.scores)) == 3  # different seeds, different episodes


def test_per_episode_outcomes_do_not_depend_on_n_envs():
    policy = ScriptedPolicy("steer", noise_scale=0.05)
    results = [evaluate_policy(policy, eval_config(n_envs=n), progress=False) for n in (1, 2, 5)]
    assert len(set(results[0].lengths)) > 1  # the noise matters, so the check below means something
    for other in results[1:]:
        assert other.scores == results[0].scores and other.lengths == results[0].lengths


def test_async_matches_sync_reuses_envs_and_leaves_no_processes():
    policy = ScriptedPolicy("steer", noise_scale=0.05)
    sync = evaluate_policy(policy, eval_config(), progress=False)
    config = eval_config(vector="async")
    venv = make_vector_env(config)
    try:
        first = evaluate_policy(policy, config, progress=False, venv=venv)
        again = evaluate_policy(policy, config, progress=False, venv=venv)
    finally:
        venv.close()
    assert first.scores == sync.scores == again.scores and first.lengths == sync.lengths
    assert multiprocessing.active_children() == []


def test_policy_mode_is_restored():
    policy = tiny_diffusion_policy().train()
    evaluate_policy(policy, eval_config(n_episodes=1, max_episode_steps=4), progress=False)
    assert policy.training


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (ScriptedPolicy(obs_shapes={"agent_pos": (3,)}), f"env {OBSTACLE_AVOID_ID} observation['agent_pos'] "
                                                          "has shape (2,); the policy takes (3,)"),
        (ScriptedPolicy(obs_shapes={"keypoints": (18,)}), "neither policy key 'keypoints' nor its source"),
        (ScriptedPolicy(action_dim=3), "actions of shape (3,)"),
    ],
)
def test_space_mismatch_is_named_before_any_rollout(policy, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate_policy(policy, eval_config(), progress=False)
    assert policy.seen == []


def test_bad_action_shape_is_named():
    class Broken(ScriptedPolicy):
        def predict_action(self, obs, generator=None, noise=None):
            return {"action": torch.zeros(len(obs["agent_pos"]), 4)}

    with pytest.raises(ValueError, match=r"shape \(2, 4\); expected \(B, Ta, Da\)"):
        evaluate_policy(Broken(), eval_config(), progress=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_episodes": 0}, "n_episodes=0"),
        ({"n_envs": 0}, "n_envs=0"),
        ({"vector": "threads"}, "vector='threads'"),
        ({"n_videos": -1}, "n_videos=-1"),
        ({"seed": -1}, "seed=-1"),
        ({"max_episode_steps": 0}, "max_episode_steps=0"),
        ({"env_kwargs": {"render_mode": "human"}}, "render_mode"),
        ({"env_id": ""}, "env_id=''"),
    ],
)
def test_config_validation_names_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        eval_config(**overrides)


# --- metrics ------------------------------------------------------------------------------------
def test_wilson_interval_golden_values():
    # Roots of (p_hat - p)^2 = z^2 p (1 - p) / n, solved independently in 40-digit decimals.
    assert wilson_interval(40, 50) == pytest.approx((0.6696289406777459, 0.8875624998422389), abs=1e-12)
    assert wilson_interval(1, 3) == pytest.approx((0.06149194472039624, 0.7923403991979522), abs=1e-12)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775327998628892, abs=1e-12))
    assert wilson_interval(10, 10) == (pytest.approx(0.7224672001371108, abs=1e-12), 1.0)
    with pytest.raises(ValueError, match="successes=11"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="n=0"):
        wilson_interval(0, 0)


def test_summary_json_round_trip_and_table(tmp_path):
    result = EvalResult(env_id="x/Env-v0", seeds=[7, 8, 9, 10], scores=[1.0, 0.5, 0.25, 0.125],
                        successes=[True, False, True, True], lengths=[10, 20, 30, 40], wall_time_s=1.5,
                        config={"n_episodes": 4}, videos=["v/episode_7.mp4"])
    summary = result.summary
    assert summary["mean_score"] == 0.46875 and summary["success_rate"] == 0.75
    assert summary["mean_length"] == 25.0 and summary["n_episodes"] == 4
    assert summary["success_ci95"] == pytest.approx(list(wilson_interval(3, 4)))
    result.to_json(tmp_path / "metrics.json")
    assert EvalResult.from_json(tmp_path / "metrics.json") == result
    table = format_table(result)
    assert "75.0%" in table and "0.4688" in table and "seeds 7..10" in table
    with pytest.raises(ValueError, match="len\\(seeds\\)=4"):
        EvalResult(env_id="e", seeds=[1, 2, 3, 4], scores=[1.0], successes=[True] * 4, lengths=[1] * 4,
                   wall_time_s=0.0)


# --- videos -------------------------------------------------------------------------------------
def test_videos_of_first_episodes_decode_with_one_frame_per_step(tmp_path):
    config = eval_config(n_episodes=3, n_videos=2, env_kwargs={"render_size": 37})
    result = evaluate_policy(ScriptedPolicy("steer"), config, out_dir=tmp_path, progress=False)
    expected = [str(tmp_path / "videos" / f"episode_{seed}.mp4") for seed in (100_000, 100_001)]
    assert result.videos == expected
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["episode_100000.mp4", "episode_100001.mp4"]
    for path, length in zip(expected, result.lengths):
        frames = list(imageio.get_reader(path, format="FFMPEG").iter_data())
        assert len(frames) == length + 1  # the reset frame, then one per step
        assert frames[0].shape == (38, 38, 3)  # odd 37 padded to even for H.264
    assert EvalResult.from_json(tmp_path / "metrics.json") == result


def test_video_writer_rejects_bad_frames_and_leaves_nothing_on_abort(tmp_path):
    writer = VideoWriter(tmp_path / "v.mp4", fps=10)
    writer.append(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"frame 1 has shape \(8, 6, 3\)"):
        writer.append(np.zeros((8, 6, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        writer.append(np.zeros((8, 8, 3), np.float32))
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="has no frames"):
        VideoWriter(tmp_path / "empty.mp4", fps=10).close()
