"""kill -9 in the middle of recording and of training (real subprocesses): the store keeps every
episode finished before the kill, and a resumed training run ends bit-identical to one never killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import torch

from diffusion_policy.core.checkpoint import load_tensors
from diffusion_policy.data.recorder import record_episodes, rollout_episode
from diffusion_policy.data.replay_buffer import ReplayBuffer
from envs import OBSTACLE_AVOID_ID
from envs.experts import make_expert

ROOT = Path(__file__).resolve().parents[1]
RECORD = """
import sys
from diffusion_policy.data.recorder import record_episodes
from diffusion_policy.data.replay_buffer import ReplayBuffer
from envs import OBSTACLE_AVOID_ID
from envs.experts import make_expert
record_episodes(OBSTACLE_AVOID_ID, lambda seed: make_expert(OBSTACLE_AVOID_ID, seed),
                ReplayBuffer.create(sys.argv[1]), 100000, successful_only=False, progress=False)
"""


def wait_until(condition, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"process ended early: {process.communicate()}"
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    assert process.returncode == -signal.SIGKILL


def n_episodes(path: Path) -> int:
    try:
        return ReplayBuffer.open(path).n_episodes
    except Exception:  # not created yet, or caught between two writes
        return 0


def test_kill_9_while_recording_keeps_every_finished_episode(tmp_path):
    path = tmp_path / "demos.zarr"
    process = subprocess.Popen([sys.executable, "-c", RECORD, str(path)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(lambda: n_episodes(path) >= 3, process)
    kill(process)
    buffer = ReplayBuffer.open(path)
    assert buffer.n_episodes >= 3
    expert = make_expert(OBSTACLE_AVOID_ID, 0)
    env = gym.make(OBSTACLE_AVOID_ID)
    for i in range(buffer.n_episodes):  # every stored episode is whole and exactly what seed i records
        expected = rollout_episode(env, expert, i)[0]
        stored = buffer.get_episode(i)
        assert stored.keys() == expected.keys()
        for key in expected:
            assert (stored[key] == expected[key]).all(), (i, key)
    # and recording can go on into the same store
    more = record_episodes(OBSTACLE_AVOID_ID, lambda seed: make_expert(OBSTACLE_AVOID_ID, seed),
                           ReplayBuffer.open(path, mode="a"), 1, seed=1000, successful_only=False, progress=False)
    assert more.episodes_saved == 1 and ReplayBuffer.open(path).n_episodes == buffer.n_episodes + 1


def train_command(demos: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "train.py"), "task=obstacle_avoid", "policy=diffusion_unet_small",
            "training=demo",
            "policy.network.down_dims=[8,16]", "policy.network.step_embed_dim=8", "policy.horizon=8",
            "policy.n_action_steps=4", "training.batch_size=8", "training.max_steps=1500",
            "training.checkpoint_every=50", "training.keep_checkpoints=3", "training.val_every=100",
            "training.progress=false", "eval.enabled=false", "training.seed=5", f"task.dataset.path={demos}",
            f"run_dir={run_dir}", *extra]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_tensors(run_dir / "checkpoints" / "step_00001500" / "model.safetensors")


def test_kill_9_while_training_then_resume_is_bit_identical(demos, tmp_path):
    straight = subprocess.run(train_command(demos, tmp_path / "straight"), cwd=ROOT, capture_output=True,
                              text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(train_command(demos, killed_dir), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    latest = killed_dir / "checkpoints" / "latest"
    wait_until(lambda: latest.is_file() and latest.read_text().strip() >= "step_00000100", process)
    kill(process)
    assert not (killed_dir / "checkpoints" / "step_00001500").exists()

    resumed = subprocess.run(train_command(demos, killed_dir, "resume=true"), cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a, b = final_weights(tmp_path / "straight"), final_weights(killed_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
