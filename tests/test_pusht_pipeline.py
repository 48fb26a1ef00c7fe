"""Push-T end to end at toy scale, on both simulations: record -> train -> closed-loop evaluation."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from diffusion_policy.data.recorder import record_episodes
from diffusion_policy.data.replay_buffer import ReplayBuffer
from diffusion_policy.eval.rollout import EvalConfig, evaluate_policy
from diffusion_policy.policy import load_policy
from diffusion_policy.train_policy import train_policy
from envs import PUSHT_ID, PUSHT_PYMUNK_ID
from envs.experts import make_expert

ROOT = Path(__file__).resolve().parents[1]
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


@pytest.mark.parametrize("task_name", ["pusht_original_lowdim", "pusht_original_image"])
def test_original_layout_store_trains_and_evaluates_on_both_simulations(task_name, tmp_path):
    """The shipped task config alone takes a store in the original Diffusion Policy layout to a policy
    that runs in MuJoCo and in the original pymunk Push-T, nothing renamed or converted by hand."""
    path = tmp_path / "pusht_cchi_v7_replay.zarr"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_original_pusht_store.py"), "--episodes", "2",
                    "--out", str(path)], check=True, capture_output=True)
    task = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "task" / f"{task_name}.yaml"))
    task["dataset"].update(path=str(path), val_ratio=0.0)
    policy_cfg = TINY_POLICY
    if task_name.endswith("image"):
        policy_cfg = {**TINY_POLICY, "vision": {"backbone_width": 8, "num_keypoints": 8, "feature_dim": 16}}
    policy = load_policy(train_policy(task, policy_cfg, {**TINY_TRAINING, "max_steps": 4}, tmp_path / "run"))
    assert policy.config.mapping.obs["agent_pos"].key == "state"
    envs = [PUSHT_ID] + ([PUSHT_PYMUNK_ID] if importlib.util.find_spec("gym_pusht") else [])
    for env_id in envs:
        result = evaluate_policy(policy, EvalConfig(env_id=env_id, env_kwargs=task["env_kwargs"], n_episodes=1,
                                                    n_envs=1, vector="sync", n_videos=0, max_episode_steps=8),
                                 progress=False)
        assert result.lengths == [8]


def test_two_trainings_with_the_same_seed_give_the_same_weights(tmp_path):
    path = tmp_path / "demos.zarr"
    record_episodes(PUSHT_ID, lambda seed: make_expert(PUSHT_ID, seed), ReplayBuffer.create(path), 2, progress=False,
                    env_kwargs={"obs_type": "keypoints"})
    task = {"name": "pusht", "env_id": PUSHT_ID, "dataset": {"path": str(path), "obs_keys": ["agent_pos", "keypoints"],
                                                             "val_ratio": 0.0}}
    runs = [train_policy(task, TINY_POLICY, {**TINY_TRAINING, "max_steps": 3}, tmp_path / f"run{i}") for i in (0, 1)]
    assert (runs[0] / "model.safetensors").read_bytes() == (runs[1] / "model.safetensors").read_bytes()
    other = train_policy(task, TINY_POLICY, {**TINY_TRAINING, "max_steps": 3, "seed": 7}, tmp_path / "run_seed7")
    assert (other / "model.safetensors").read_bytes() != (runs[0] / "model.safetensors").read_bytes()
