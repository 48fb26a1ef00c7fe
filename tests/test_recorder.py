"""Demonstration recorder: storage round trip, filtering, worker equivalence, Ctrl-C safety, CLI."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from diffusion_policy.data.recorder import record_episodes, rollout_episode
from diffusion_policy.data.replay_buffer import ReplayBuffer
from envs import OBSTACLE_AVOID_ID
from envs.experts import make_expert
from envs.obstacle_avoid import ObstacleAvoidEnv
from envs.obstacle_expert import ObstacleAvoidExpert

REPO_ROOT = Path(__file__).resolve().parents[1]
expert_factory = functools.partial(make_expert, OBSTACLE_AVOID_ID)


class FlakyExpert(ObstacleAvoidExpert):
    """The real expert on even seeds; holds still (and times out) on odd ones."""

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self.fails = seed is not None and seed % 2 == 1

    def __call__(self, env: gym.Env, obs: dict[str, np.ndarray]) -> np.ndarray:
        return obs["agent_pos"] if self.fails else super().__call__(env, obs)


class InterruptingExpert(FlakyExpert):
    """A FlakyExpert whose user presses Ctrl-C as episode `interrupt_at` (counted from 0) starts."""

    interrupt_at = 4

    def __init__(self, seed: int | None = None) -> None:
        self.resets = 0
        super().__init__(seed)

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self.resets += 1
        if self.resets > self.interrupt_at + 1:  # +1: the constructor's own reset
            raise KeyboardInterrupt


def _episodes(buffer: ReplayBuffer) -> list[dict[str, np.ndarray]]:
    return [buffer.get_episode(i) for i in range(buffer.n_episodes)]


def _expected_episode(policy: ObstacleAvoidExpert, seed: int) -> dict[str, np.ndarray]:
    return rollout_episode(gym.make(OBSTACLE_AVOID_ID), policy, seed)[0]


def _assert_same_episodes(actual: list[dict], expected: list[dict]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_round_trip_on_disk_keeps_aligned_obs_and_actions(tmp_path: Path) -> None:
    path = tmp_path / "demos.zarr"
    summary = record_episodes(OBSTACLE_AVOID_ID, expert_factory, ReplayBuffer.create(path), 5,
                              seed=10, progress=False)
    buffer = ReplayBuffer.open(path)
    assert (summary.episodes_run, summary.episodes_saved, summary.success_rate) == (5, 5, 1.0)
    assert summary.steps_saved == buffer.n_steps > 5 * 10 and buffer.n_episodes == 5
    assert buffer.keys() == ["action", "agent_pos"]
    env = gym.make(OBSTACLE_AVOID_ID)
    for i, episode in enumerate(_episodes(buffer)):
        assert episode["action"].dtype == np.float32
        assert episode["action"].shape == (len(episode["agent_pos"]), 2)
        # Replaying the stored actions from the same seed reproduces every stored observation.
        obs, _ = env.reset(seed=10 + i)
        for obs_t, action_t in zip(episode["agent_pos"], episode["action"], strict=True):
            np.testing.assert_array_equal(obs["agent_pos"], obs_t)
            obs, _, terminated, _, info = env.step(action_t)
        assert terminated and info["success"]


def test_successful_only_filters_failed_episodes() -> None:
    buffer = ReplayBuffer.in_memory()
    summary = record_episodes(OBSTACLE_AVOID_ID, FlakyExpert, buffer, 6, progress=False)
    assert (summary.episodes_run, summary.episodes_saved, summary.success_rate) == (6, 3, 0.5)
    expected = [_expected_episode(FlakyExpert(), seed) for seed in (0, 2, 4)]
    _assert_same_episodes(_episodes(buffer), expected)

    everything = ReplayBuffer.in_memory()
    summary = record_episodes(OBSTACLE_AVOID_ID, FlakyExpert, everything, 6,
                              successful_only=False, progress=False)
    assert summary.episodes_saved == 6 and summary.steps_saved == everything.n_steps
    assert everything.episode_lengths[1::2].tolist() == [100, 100, 100]  # failures run to the time limit


def test_two_workers_record_exactly_what_one_does() -> None:
    single, pooled = ReplayBuffer.in_memory(), ReplayBuffer.in_memory()
    one = record_episodes(OBSTACLE_AVOID_ID, expert_factory, single, 5, seed=3, progress=False)
    two = record_episodes(OBSTACLE_AVOID_ID, expert_factory, pooled, 5, seed=3, n_workers=2, progress=False)
    assert one == two
    np.testing.assert_array_equal(single.episode_ends, pooled.episode_ends)
    _assert_same_episodes(_episodes(pooled), _episodes(single))


def test_keyboard_interrupt_keeps_completed_successful_episodes(tmp_path: Path) -> None:
    path = tmp_path / "interrupted.zarr"
    with pytest.raises(KeyboardInterrupt):
        record_episodes(OBSTACLE_AVOID_ID, InterruptingExpert, ReplayBuffer.create(path), 10, progress=False)
    stored = ReplayBuffer.open(path)
    # Episodes 0-3 finished before the interrupt; of those, the even ones succeeded.
    assert stored.n_episodes == 2
    _assert_same_episodes(_episodes(stored), [_expected_episode(FlakyExpert(), seed) for seed in (0, 2)])


def test_invalid_arguments_raise() -> None:
    buffer = ReplayBuffer.in_memory()
    with pytest.raises(ValueError, match="n_episodes=0"):
        record_episodes(OBSTACLE_AVOID_ID, expert_factory, buffer, 0, progress=False)
    with pytest.raises(ValueError, match="n_workers=0"):
        record_episodes(OBSTACLE_AVOID_ID, expert_factory, buffer, 1, n_workers=0, progress=False)
    if "test/ObstacleAvoidNoLimit-v0" not in gym.registry:
        gym.register("test/ObstacleAvoidNoLimit-v0", entry_point=ObstacleAvoidEnv)
    with pytest.raises(ValueError, match="max_episode_steps"):
        record_episodes("test/ObstacleAvoidNoLimit-v0", expert_factory, buffer, 1, progress=False)


def test_generate_demos_script_writes_store_and_prints_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script_path = REPO_ROOT / "scripts" / "generate_demos.py"
    spec = importlib.util.spec_from_file_location("generate_demos", script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "cli.zarr"
    args = ["--env", OBSTACLE_AVOID_ID, "--episodes", "3", "--out", str(out), "--seed", "5"]
    summary = script.main(args)
    assert ReplayBuffer.open(out).n_episodes == summary.episodes_saved == 3
    printed = capsys.readouterr().out
    assert "episodes saved  3" in printed and "success rate    100.0%" in printed and str(out) in printed
    with pytest.raises(FileExistsError):
        script.main(args)
    summary = script.main([*args, "--overwrite", "--episodes", "2", "--summary", str(tmp_path / "s.json")])
    assert summary.episodes_saved == 2
    recorded = ReplayBuffer.open(out).attrs["recording"]
    written = json.loads((tmp_path / "s.json").read_text())
    assert recorded["episodes_run"] == written["episodes_run"] == 2 and recorded["seed"] == written["seed"] == 5
    assert written["mean_saved_length"] == pytest.approx(ReplayBuffer.open(out).n_steps / 2)
    assert written["env_id"] == OBSTACLE_AVOID_ID and written["success_rate"] == 1.0


def test_generate_demos_script_records_any_policy_and_env_options(tmp_path: Path) -> None:
    """`--policy module:callable` records a non-expert policy; `--env-kwargs` reaches gymnasium.make."""
    script_path = REPO_ROOT / "scripts" / "generate_demos.py"
    spec = importlib.util.spec_from_file_location("generate_demos", script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "pusht_state.zarr"
    summary = script.main(["--env", "diffusion_policy/PushT-v0", "--episodes", "1", "--out", str(out),
                           "--env-kwargs", '{"obs_type": "state"}', "--policy", "envs.pusht_expert:PushTExpert"])
    assert summary.episodes_saved == 1
    assert set(ReplayBuffer.open(out).keys()) == {"agent_pos", "block_pose", "action"}
    with pytest.raises(ValueError, match="module:callable"):
        script.main(["--env", OBSTACLE_AVOID_ID, "--out", str(tmp_path / "x.zarr"), "--policy", "nocolon"])
    with pytest.raises(KeyError, match="no expert"):
        script.main(["--env", "CartPole-v1", "--out", str(tmp_path / "y.zarr")])


class FleetingSuccessEnv(gym.Env):
    """Succeeds at step 3 only, then undoes it; the episode runs on to its 6-step limit."""

    observation_space = gym.spaces.Dict({"x": gym.spaces.Box(-1, 1, (1,), np.float32)})
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self.t = 0
        return {"x": np.zeros(1, np.float32)}, {}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        self.t += 1
        return {"x": np.zeros(1, np.float32)}, 0.0, False, False, {"success": self.t == 3}


def test_success_reached_at_any_step_counts_even_when_undone() -> None:
    gym.register("test/FleetingSuccess-v0", entry_point=FleetingSuccessEnv, max_episode_steps=6)
    episode, success = rollout_episode(gym.make("test/FleetingSuccess-v0"), _Still(), seed=0)
    assert success and len(episode["action"]) == 6


class _Still:
    def reset(self, seed: int | None = None) -> None:
        pass

    def __call__(self, env: gym.Env, obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.zeros(1, np.float32)
