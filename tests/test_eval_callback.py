"""EvalCallback: periodic evaluation, best-policy keeping, resume, untouched training RNG, train_policy wiring."""

from __future__ import annotations

import json
import multiprocessing
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from test_eval_rollout import ScriptedPolicy, tiny_diffusion_policy
from torch.utils.data import Dataset

from diffusion_policy.core.checkpoint import load_json, load_tensors
from diffusion_policy.core.trainer import Trainer, TrainerConfig
from diffusion_policy.eval.callback import EvalCallback
from diffusion_policy.eval.rollout import EvalConfig
from diffusion_policy.policy import DiffusionPolicy, load_policy
from diffusion_policy.train_policy import TaskConfig, build_eval_callback, train_policy
from envs import OBSTACLE_AVOID_ID

ROOT = Path(__file__).resolve().parents[1]


def eval_config(**overrides) -> EvalConfig:
    base = dict(env_id=OBSTACLE_AVOID_ID, n_episodes=2, n_envs=2, vector="sync", n_videos=0, max_episode_steps=30)
    return EvalConfig(**(base | overrides))


def fake_trainer(run_dir: Path, policy, max_steps: int = 100) -> SimpleNamespace:
    """What the callback reads of a Trainer."""
    return SimpleNamespace(run_dir=run_dir, step=0, eval_model=policy, device=torch.device("cpu"),
                           config=SimpleNamespace(max_steps=max_steps, progress=False))


def run_step(callback: EvalCallback, trainer: SimpleNamespace, step: int, mode: str) -> dict | None:
    trainer.step, trainer.eval_model.mode = step, mode
    return callback.on_step_end(trainer)


def test_keeps_the_best_policy_and_its_step_across_resume(tmp_path):
    policy = ScriptedPolicy().train()
    trainer = fake_trainer(tmp_path, policy)
    callback = EvalCallback(eval_config(n_videos=1), every_steps=2)
    callback.on_train_start(trainer)
    assert run_step(callback, trainer, 1, "steer") is None  # not an evaluation step
    stand = run_step(callback, trainer, 2, "stand")
    assert stand["eval/success_rate"] == 0.0 and policy.training  # train mode restored
    steer = run_step(callback, trainer, 4, "steer")
    assert steer["eval/success_rate"] == 1.0 and steer["eval/mean_score"] > stand["eval/mean_score"]
    run_step(callback, trainer, 6, "stand")  # worse: best stays at step 4
    best = load_json(tmp_path / "best_policy" / "eval.json")
    assert best["step"] == 4 and best["metrics"]["mean_score"] == steer["eval/mean_score"]
    assert (tmp_path / "best_policy" / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["step_00000002", "step_00000004", "step_00000006"]
    assert (tmp_path / "eval" / "step_00000004" / "videos" / "episode_100000.mp4").stat().st_size > 0

    resumed = EvalCallback(eval_config(), every_steps=2)
    resumed.on_train_start(trainer)
    assert resumed.best_score == steer["eval/mean_score"]
    run_step(resumed, trainer, 8, "stand")
    assert load_json(tmp_path / "best_policy" / "eval.json")["step"] == 4
    assert run_step(resumed, trainer, 99, "stand") is None
    assert run_step(resumed, trainer, 100, "stand") is not None  # the last step is always evaluated


def test_async_envs_start_once_and_close_at_train_end(tmp_path):
    trainer = fake_trainer(tmp_path, ScriptedPolicy())
    callback = EvalCallback(eval_config(vector="async"), every_steps=1)
    callback.on_train_start(trainer)
    run_step(callback, trainer, 1, "steer")
    workers = multiprocessing.active_children()
    run_step(callback, trainer, 2, "steer")
    assert len(workers) == 2 and multiprocessing.active_children() == workers
    callback.on_train_end(trainer)
    assert multiprocessing.active_children() == []


def test_rejects_bad_options():
    with pytest.raises(ValueError, match="every_steps=0"):
        EvalCallback(eval_config(), every_steps=0)
    with pytest.raises(ValueError, match="device='cpu'"):
        EvalCallback(eval_config(device="cpu"), every_steps=1)


class GreedyRngPolicy(DiffusionPolicy):
    """Draws from every global generator when acting, as a careless policy might."""

    def predict_action(self, obs, generator=None, noise=None):
        torch.rand(1), np.random.rand(), random.random()
        return super().predict_action(obs, generator=generator, noise=noise)


class RandomWindows(Dataset):
    """16 fixed random training windows shaped like ObstacleAvoid's."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.obs = torch.rand(16, 2, 2, generator=g) * 2 - 1
        self.action = torch.rand(16, 8, 2, generator=g) * 2 - 1

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict:
        return {"obs": {"agent_pos": self.obs[i]}, "action": self.action[i]}


def train_weights(run_dir: Path, with_eval: bool) -> dict[str, torch.Tensor]:
    base = tiny_diffusion_policy()
    policy = GreedyRngPolicy(base.config, base.normalizer)
    policy.load_state_dict(base.state_dict())
    callbacks = [EvalCallback(eval_config(max_episode_steps=6), every_steps=2)] if with_eval else []
    config = TrainerConfig(max_steps=5, batch_size=4, lr=1e-3, warmup_steps=1, checkpoint_every=100,
                           progress=False, seed=5)
    Trainer(policy, RandomWindows(), config, run_dir, callbacks=callbacks).fit()
    return load_tensors(run_dir / "checkpoints" / "step_00000005" / "model.safetensors")


def test_training_is_bit_identical_with_and_without_evaluation(tmp_path):
    plain = train_weights(tmp_path / "plain", with_eval=False)
    evaluated = train_weights(tmp_path / "eval", with_eval=True)
    assert plain.keys() == evaluated.keys()
    assert all(torch.equal(plain[k], evaluated[k]) for k in plain)
    rows = [json.loads(line) for line in (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/mean_score" in r] == [2, 4, 5]


def test_train_policy_evaluates_and_keeps_best_policy(demos, tmp_path):
    task = {"name": "oa", "env_id": OBSTACLE_AVOID_ID, "dataset": {"path": str(demos), "obs_keys": ["agent_pos"]}}
    policy_cfg = {"kind": "diffusion", "horizon": 8, "n_action_steps": 4, "num_inference_steps": 4,
                  "network": {"down_dims": [8, 16], "kernel_size": 3, "n_groups": 4, "step_embed_dim": 8}}
    trainer_cfg = {"max_steps": 4, "batch_size": 8, "warmup_steps": 1, "progress": False}
    eval_cfg = {"enabled": True, "every_steps": 2, "env_id": None, "env_kwargs": None, "n_episodes": 2,
                "n_envs": 2, "vector": "sync", "n_videos": 1, "max_episode_steps": 8}
    train_policy(task, policy_cfg, trainer_cfg, tmp_path, eval_cfg=eval_cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/success_rate" in r] == [2, 4]
    best = load_json(tmp_path / "best_policy" / "eval.json")
    assert best["step"] in (2, 4) and best["metrics"]["n_episodes"] == 2
    assert load_policy(tmp_path / "best_policy").config.horizon == 8
    assert (tmp_path / "eval" / "step_00000002" / "videos" / "episode_100000.mp4").is_file()


def test_build_eval_callback_defaults_to_the_task_env_and_reads_the_yaml():
    task = TaskConfig(name="oa", dataset={"path": "x", "obs_keys": ("agent_pos",)}, env_id=OBSTACLE_AVOID_ID,
                      env_kwargs={"render_size": 64})
    options = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "eval" / "default.yaml"))
    callback = build_eval_callback(options, task)
    assert callback.every_steps == options["every_steps"]
    assert callback.config.env_id == OBSTACLE_AVOID_ID and callback.config.env_kwargs == {"render_size": 64}
    assert callback.config.n_episodes == options["n_episodes"] and callback.config.vector == options["vector"]
    assert build_eval_callback(None, task) is None
    assert build_eval_callback(options | {"enabled": False}, task) is None
    with pytest.raises(ValueError, match="eval.enabled=false"):
        build_eval_callback(options, TaskConfig(name="real_robot", dataset=task.dataset))
    with pytest.raises(ValueError, match="every_steps"):
        build_eval_callback({"n_episodes": 3}, task)
