"""Meta-World adapter, experts, recording and the benchmark protocol (needs the `metaworld` extra)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

metaworld = pytest.importorskip("metaworld")

import envs  # noqa: E402,F401  registers the ids
from diffusion_policy.data.recorder import record_episodes  # noqa: E402
from diffusion_policy.data.replay_buffer import ReplayBuffer  # noqa: E402
from diffusion_policy.eval import metaworld_benchmark as bench  # noqa: E402
from envs import experts  # noqa: E402
from envs.experts import make_expert  # noqa: E402
from envs.metaworld import (  # noqa: E402
    DEFAULT_MAX_STEPS,
    METAWORLD_TASKS,
    STATE_DIM,
    STATE_KEY,
    STATE_PARTS,
    MetaWorldEnv,
    canonical_task,
    metaworld_env_id,
)
from scripts import benchmark_metaworld, generate_demos  # noqa: E402

REACH = metaworld_env_id("reach")


def _run_expert(env: gym.Env, seed: int) -> tuple[list[dict], dict, bool, bool]:
    expert = make_expert(env.spec.id if env.spec else REACH)
    obs, _ = env.reset(seed=seed)
    observations, terminated, truncated = [obs], False, False
    while not (terminated or truncated):
        obs, _, terminated, truncated, info = env.step(expert(env, obs))
        observations.append(obs)
    return observations, info, terminated, truncated


def test_task_list_matches_the_installed_package_and_every_task_is_registered() -> None:
    assert sorted(METAWORLD_TASKS) == sorted(metaworld.ALL_V3_ENVIRONMENTS)
    assert len(METAWORLD_TASKS) == 50
    for task in METAWORLD_TASKS:
        spec = gym.spec(metaworld_env_id(task))
        assert spec.max_episode_steps == DEFAULT_MAX_STEPS and spec.kwargs == {"task": task}
        assert metaworld_env_id(task) in experts.EXPERT_FACTORIES


def test_task_names_are_canonicalised_and_unknown_names_list_the_valid_ones() -> None:
    assert canonical_task("drawer-open") == canonical_task("drawer-open-v3") == "drawer-open-v3"
    assert canonical_task("diffusion_policy/MetaWorld-drawer-open-v3") == "drawer-open-v3"
    assert metaworld_env_id("reach") == "diffusion_policy/MetaWorld-reach-v3"
    with pytest.raises(ValueError, match=r"unknown Meta-World task 'drawer-opn'.*drawer-open, faucet-close"):
        canonical_task("drawer-opn")
    with pytest.raises(ValueError, match="unknown Meta-World task"):
        MetaWorldEnv("not-a-task")


def test_reset_places_objects_and_goal_afresh_from_the_seed() -> None:
    env = gym.make(metaworld_env_id("push"))
    first, _ = env.reset(seed=3)
    again, _ = env.reset(seed=3)
    other, _ = env.reset(seed=4)
    unseeded, _ = env.reset()
    np.testing.assert_array_equal(first[STATE_KEY], again[STATE_KEY])
    object_and_goal = np.r_[4:7, 36:39]
    for obs in (other, unseeded):
        assert np.abs(obs[STATE_KEY][object_and_goal] - first[STATE_KEY][object_and_goal]).max() > 1e-3
    for obs in (first, other, unseeded):
        assert obs[STATE_KEY].shape == (STATE_DIM,) and obs[STATE_KEY].dtype == np.float32
        assert env.observation_space.contains(obs)
    env.close()


def test_state_parts_are_the_current_step_slices_of_the_state() -> None:
    env = gym.make(metaworld_env_id("push"))
    obs, _ = env.reset(seed=5)
    obs, *_ = env.step(np.array([0.5, -0.3, 0.2, 1.0]))
    state = obs[STATE_KEY]
    assert sorted(obs) == sorted([STATE_KEY, "hand", "gripper", "objects", "goal"])
    assert {name: obs[name].shape for name in STATE_PARTS} == {"hand": (3,), "gripper": (1,), "objects": (14,),
                                                              "goal": (3,)}
    np.testing.assert_array_equal(obs["hand"], state[:3])
    np.testing.assert_array_equal(obs["gripper"], state[3:4])
    np.testing.assert_array_equal(obs["objects"], state[4:18])
    np.testing.assert_array_equal(obs["goal"], state[36:])
    np.testing.assert_array_equal(obs["goal"], env.unwrapped.inner._target_pos.astype(np.float32))
    assert not np.array_equal(obs["hand"], state[18:21])  # the previous step's hand is not the current one
    assert env.observation_space.contains(obs)
    env.close()


def test_without_the_extra_building_an_env_or_expert_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "metaworld", None)  # what `import metaworld` sees when it is not installed
    for build in (lambda: MetaWorldEnv("reach"), lambda: make_expert(REACH)):
        with pytest.raises(ImportError, match=r"pip install -e '\.\[metaworld\]'"):
            build()


def test_bad_actions_raise_naming_the_problem() -> None:
    env = MetaWorldEnv("reach")
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(4))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(4,\), got \(3,\)"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="not finite"):
        env.step(np.array([0.0, np.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match="render_mode"):
        MetaWorldEnv("reach", render_mode="human")
    env.close()


@pytest.mark.parametrize("task", ["reach", "drawer-open", "button-press-topdown"])
def test_expert_succeeds_and_the_episode_ends_at_the_first_success(task: str) -> None:
    env = gym.make(metaworld_env_id(task))
    for seed in range(3):
        observations, info, terminated, truncated = _run_expert(env, seed)
        assert terminated and not truncated and info["success"] is True
        assert len(observations) - 1 < DEFAULT_MAX_STEPS
        assert {"near_object", "obj_to_target"} <= set(info)
    env.close()


def test_without_termination_the_episode_runs_to_the_step_limit_and_success_counts_at_any_step() -> None:
    env = gym.make(REACH, terminate_on_success=False, max_episode_steps=60)
    observations, _, terminated, truncated = _run_expert(env, seed=0)
    assert truncated and not terminated and len(observations) - 1 == 60
    env.close()
    summary = record_episodes(REACH, lambda seed: make_expert(REACH, seed), ReplayBuffer.in_memory(), 2,
                              progress=False, env_kwargs={"terminate_on_success": False, "max_episode_steps": 60})
    assert summary.success_rate == 1.0 and summary.steps_saved == 2 * 60


def test_generate_demos_records_replayable_expert_episodes(tmp_path: Path) -> None:
    path = tmp_path / "reach.zarr"
    summary = generate_demos.main(["--env", REACH, "--episodes", "3", "--out", str(path), "--seed", "5"])
    assert (summary.episodes_saved, summary.success_rate) == (3, 1.0)
    buffer = ReplayBuffer.open(path)
    assert buffer.keys() == sorted(["action", STATE_KEY, *STATE_PARTS])
    env = gym.make(REACH)
    for i in range(3):
        episode = buffer.get_episode(i)
        assert episode["action"].shape == (len(episode[STATE_KEY]), 4)
        assert np.abs(episode["action"]).max() <= 1.0
        obs, _ = env.reset(seed=5 + i)
        for state, action in zip(episode[STATE_KEY], episode["action"], strict=True):
            np.testing.assert_array_equal(obs[STATE_KEY], state)
            obs, _, terminated, _, info = env.step(action)
        assert terminated and info["success"]
    env.close()


def test_render_draws_the_corner_camera_right_side_up() -> None:
    import mujoco

    env = MetaWorldEnv("drawer-open", render_mode="rgb_array", render_size=64)
    env.reset(seed=0)
    frame = env.render()
    raw = mujoco.Renderer(env.inner.model, 64, 64)
    raw.update_scene(env.inner.data, camera="corner2")
    upside_down = raw.render()
    raw.close()
    env.close()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    assert frame.std() > 10  # a scene, not a blank buffer
    np.testing.assert_array_equal(frame, upside_down[::-1])
    assert MetaWorldEnv("reach").render() is None


def test_record_demos_keeps_failures_out_and_stops_when_the_expert_keeps_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = bench.record_demos("reach", 2, tmp_path / "ok.zarr")
    assert attempts == 2 and ReplayBuffer.open(tmp_path / "ok.zarr").n_episodes == 2
    assert max(ReplayBuffer.open(tmp_path / "ok.zarr").episode_lengths) < DEFAULT_MAX_STEPS  # ends at success
    bench.record_demos("reach", 2, tmp_path / "full.zarr", to_time_limit=True)
    full = ReplayBuffer.open(tmp_path / "full.zarr")
    assert full.episode_lengths.tolist() == [DEFAULT_MAX_STEPS] * 2
    ok = ReplayBuffer.open(tmp_path / "ok.zarr").get_episode(0)
    np.testing.assert_array_equal(full.get_episode(0)["action"][: len(ok["action"])], ok["action"])

    class StandStill:
        def __init__(self, seed: int | None = None) -> None:
            pass

        def reset(self, seed: int | None = None) -> None:
            pass

        def __call__(self, env: gym.Env, obs: dict) -> np.ndarray:
            return np.zeros(4, dtype=np.float32)

    monkeypatch.setitem(experts.EXPERT_FACTORIES, REACH, StandStill)
    with pytest.raises(RuntimeError, match=r"reach-v3 expert succeeded in only 0 of 5 episodes; 1 demos"):
        bench.record_demos("reach", 1, tmp_path / "fail.zarr")


def test_markdown_table_reports_mean_std_published_numbers_and_budget() -> None:
    def result(task: str, rates: list[float]) -> bench.TaskResult:
        seeds = [bench.SeedResult(seed=i, success_rate=r, train_steps=500, train_minutes=2.0, eval_minutes=0.5)
                 for i, r in enumerate(rates)]
        return bench.TaskResult(task=task, n_demos=10, demo_attempts=10, n_episodes=50, expert_success_rate=1.0,
                                device="cpu", seeds=seeds)

    results = [result("reach-v3", [0.2, 0.3, 0.4]), result("drawer-open-v3", [1.0, 1.0, 1.0])]
    assert results[0].mean == pytest.approx(0.3) and results[0].std == pytest.approx(np.std([0.2, 0.3, 0.4]))
    table = bench.format_markdown(results)
    assert "| reach | 100 | 30.0 ± 8.2 | 18 | 24 | yes | 3 × 50 | 500 steps, 2.0 min, cpu |" in table
    assert "| drawer-open | 100 | 100.0 ± 0.0 | 93 | 100 | yes |" in table
    assert "| **mean** | | **65.0** | | 62.0 |" in table
    assert "| push | 100 | 50.0 | 30 | 51 | no | 1 × 50 |" in bench.format_markdown([result("push-v3", [0.5])])
    paused = result("push-v3", [0.5, 0.5, 0.5])
    for seed, minutes in zip(paused.seeds, (2.0, 30.0, 3.0)):
        seed.train_minutes = minutes  # one seed's wall clock ran on while it was paused: the median ignores it
    assert "| 500 steps, 3.0 min, cpu |" in bench.format_markdown([paused])


def test_benchmark_script_end_to_end_on_a_tiny_budget(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown Meta-World task 'rech'"):
        benchmark_metaworld.main(["--tasks", "rech"])
    out = tmp_path / "bench"
    results = benchmark_metaworld.main([
        "--tasks", "reach", "--demos", "2", "--seeds", "2", "--episodes", "2", "--envs", "2", "--videos", "1",
        "--vector", "sync", "--out", str(out),
        "--set", "training.max_steps=4", "training.progress=false", "training.log_every=2",
    ])
    (result,) = results
    assert result.task == "reach-v3" and result.n_demos == 2 and len(result.seeds) == 2
    assert all(0.0 <= s.success_rate <= 1.0 and s.train_steps == 4 for s in result.seeds)
    assert result.expert_success_rate == 1.0 and result.device == "cpu"
    assert "| reach | 100 |" in (out / "results.md").read_text()
    assert json.loads((out / "results.json").read_text())[0]["task"] == "reach-v3"
    assert (out / "results.png").stat().st_size > 0
    assert "max_steps: 4" in (out / "reach-v3" / "benchmark.yaml").read_text()
    assert len(list((out / "reach-v3" / "seed_0" / "eval" / "videos").glob("*.mp4"))) == 1
    assert ReplayBuffer.open(out / "reach-v3" / "demos.zarr").n_episodes == 2
    saved = json.loads((out / "reach-v3" / bench.RESULT_FILE).read_text())
    assert bench.TaskResult.from_dict(saved) == result
    # Again with one more seed: the two finished seeds are kept, not retrained; only seed 2 is new.
    (again,) = benchmark_metaworld.main([
        "--tasks", "reach", "--demos", "2", "--seeds", "3", "--episodes", "2", "--envs", "2", "--videos", "0",
        "--vector", "sync", "--out", str(out), "--skip-done",
        "--set", "training.max_steps=4", "training.progress=false", "training.log_every=2",
    ])
    assert again.seeds[:2] == result.seeds and [s.seed for s in again.seeds] == [0, 1, 2]
    # A seed that finished in a run interrupted before its task did is in the rebuilt table.
    extra = bench.SeedResult(seed=3, success_rate=1.0, train_steps=4, train_minutes=0.1, eval_minutes=0.1)
    (out / "reach-v3" / "seed_3").mkdir()
    (out / "reach-v3" / "seed_3" / bench.SEED_RESULT_FILE).write_text(json.dumps(dataclasses.asdict(extra)))
    (report,) = benchmark_metaworld.main(["--report-only", "--out", str(out)])
    assert [s.seed for s in report.seeds] == [0, 1, 2, 3] and report.seeds[3] == extra
    assert "| 4 × 2 |" in (out / "results.md").read_text()
