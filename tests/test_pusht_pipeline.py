"""Push-T end to end at toy scale, on both simulations: record -> train -> closed-loop evaluation."""

from __future__ import annotations

import json

import pytest

from diffusion_policy.data.recorder import record_episodes
from diffusion_policy.data.replay_buffer import ReplayBuffer
from diffusion_policy.eval.rollout import EvalConfig, evaluate_policy
from diffusion_policy.policy import load_policy
from diffusion_policy.train_policy import train_policy
from envs import PUSHT_ID, PUSHT_PYMUNK_ID
from envs.experts import make_expert

TINY_POLICY = {
    "kind": "diffusion", "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4,
    "network": {"down_dims": [16, 32], "step_embed_dim": 16}, "num_inference_steps": 4,
}
TINY_TRAINING = {"max_steps": 30, "batch_size": 32, "lr": 1e-3, "warmup_steps": 5, "val_every": 30,
                 "checkpoint_every": 30, "progress": False}


@pytest.mark.parametrize("env_id", [PUSHT_ID, PUSHT_PYMUNK_ID])
def test_record_train_evaluate(env_id, tmp_path):
    if env_id == PUSHT_PYMUNK_ID:
        pytest.importorskip("gym_pusht")
    path = tmp_path / "demos.zarr"
    summary = record_episodes(env_id, lambda seed: make_expert(env_id, seed), ReplayBuffer.create(path), 3,
                              progress=False, env_kwargs={"obs_type": "keypoints"})
    assert summary.episodes_saved == 3 and summary.success_rate == 1.0
    buffer = ReplayBuffer.open(path, mode="r")
    assert set(buffer.keys()) == {"agent_pos", "keypoints", "action"}
    assert buffer["keypoints"].shape == (summary.steps_saved, 18)

    task = {"name": "pusht", "env_id": env_id, "env_kwargs": {"obs_type": "keypoints"},
            "dataset": {"path": str(path), "obs_keys": ["agent_pos", "keypoints"], "val_ratio": 0.0}}
    eval_cfg = {"enabled": True, "every_steps": 30, "n_episodes": 2, "n_envs": 2, "vector": "sync",
                "n_videos": 1, "max_episode_steps": 12}
    policy_dir = train_policy(task, TINY_POLICY, TINY_TRAINING, tmp_path / "run", eval_cfg=eval_cfg)
    best = json.loads((tmp_path / "run" / "best_policy" / "eval.json").read_text())
    assert best["step"] == 30

    result = evaluate_policy(load_policy(policy_dir), EvalConfig(
        env_id=env_id, env_kwargs={"obs_type": "keypoints"}, n_episodes=2, n_envs=2, vector="sync",
        n_videos=1, max_episode_steps=16), out_dir=tmp_path / "eval", progress=False)
    assert all(1 <= length <= 16 for length in result.lengths)
    assert all(0.0 <= score <= 1.0 for score in result.scores)
    assert (tmp_path / "eval" / "metrics.json").is_file()
    assert len(result.videos) == 1 and result.videos[0].endswith(".mp4")


def test_state_observations_mismatch_a_keypoint_policy(tmp_path):
    """A keypoints policy evaluated on state observations fails before any rollout, naming both shapes."""
    path = tmp_path / "demos.zarr"
    record_episodes(PUSHT_ID, lambda seed: make_expert(PUSHT_ID, seed), ReplayBuffer.create(path), 1,
                    progress=False)
    task = {"name": "pusht", "env_id": PUSHT_ID, "dataset": {"path": str(path),
                                                             "obs_keys": ["agent_pos", "keypoints"],
                                                             "val_ratio": 0.0}}
    policy_dir = train_policy(task, TINY_POLICY, TINY_TRAINING | {"max_steps": 2}, tmp_path / "run")
    with pytest.raises(ValueError, match="keypoints"):
        evaluate_policy(load_policy(policy_dir), EvalConfig(env_id=PUSHT_ID, env_kwargs={"obs_type": "state"},
                                                            n_episodes=1, n_envs=1, vector="sync"))
