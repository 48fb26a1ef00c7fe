"""Deploy building blocks: chunk transitions, the RTC prefix, the safety filter, the real-time sim robot."""

from __future__ import annotations

import importlib.util
import json
import os
import types
from pathlib import Path

import numpy as np
import pytest

from diffusion_policy.deploy.plot import plot_commands, plot_transition_tradeoff
from diffusion_policy.deploy.predictor import ChunkRequest, PolicySpec
from diffusion_policy.deploy.run_log import RunLog, boundary_measurements
from diffusion_policy.deploy.safety import SafetyConfig, SafetyFilter
from diffusion_policy.deploy.sim_robot import MujocoSimRobot
from diffusion_policy.deploy.transitions import ActionSchedule, coherence_cost, rtc_prefix, soft_mask_weights
from envs import PUSHT_ID


def chunk(start: float, n: int = 6) -> np.ndarray:
    return (start + np.arange(n, dtype=float))[:, None]


def test_replace_skips_past_ticks_and_overwrites_the_rest():
    schedule = ActionSchedule("replace")
    assert schedule.merge(chunk(0), first_tick=10, now_tick=10, chunk_id=0) == 0
    assert schedule.merge(chunk(100), first_tick=12, now_tick=14, chunk_id=1) == 2  # ticks 12, 13 passed
    assert schedule.pop(10) == (pytest.approx([0.0]), 0)
    assert schedule.remaining(11) == 7  # tick 11, 12, 13 from chunk 0, then 14..17 from chunk 1
    assert schedule.pop(13)[0] == pytest.approx([3.0])  # pop forgets tick 11 and 12 too
    assert schedule.pop(14) == (pytest.approx([102.0]), 1)
    assert schedule.pop(30) is None


def test_held_rows_keep_the_committed_plan():
    schedule = ActionSchedule("rtc_inpaint")
    schedule.merge(chunk(0), first_tick=0, now_tick=0, chunk_id=0)
    schedule.merge(chunk(50), first_tick=3, now_tick=4, chunk_id=1, n_held=2)  # ticks 3, 4 were held
    assert schedule.pop(4) == (pytest.approx([4.0]), 0)  # still chunk 0's: the switch comes after
    assert schedule.pop(5) == (pytest.approx([52.0]), 1)
    schedule.merge(chunk(80), first_tick=20, now_tick=20, chunk_id=2, n_held=3)  # nothing planned there
    assert schedule.pop(20) == (pytest.approx([80.0]), 2)


def test_ensemble_weights_older_chunks_more():
    schedule = ActionSchedule("ensemble", ensemble_decay=np.log(2))  # weights 1, 1/2
    schedule.merge(chunk(0), 0, 0, chunk_id=0)
    schedule.merge(chunk(30), 2, 2, chunk_id=1)
    action, newest = schedule.pop(3)
    assert newest == 1 and action == pytest.approx([(3.0 + 0.5 * 31.0) / 1.5])
    assert schedule.planned(7) == (pytest.approx([35.0]), 1)  # only chunk 1 reaches tick 7


def test_soft_mask_decays_from_one_to_zero():
    w = soft_mask_weights(5)
    assert np.all(np.diff(w) < 0) and 0 < w[-1] < w[0] < 1
    assert soft_mask_weights(0).shape == (0,)


def test_rtc_prefix_holds_executed_and_committed_actions():
    schedule = ActionSchedule("rtc_inpaint")
    schedule.merge(chunk(0, 8), first_tick=0, now_tick=0, chunk_id=0)
    executed = [np.array([-1.0])]  # To - 1 = 1 action sent at tick 4
    prefix, weights = rtc_prefix(executed, schedule, tick=5, delay=2, horizon=16, soft=False)
    np.testing.assert_array_equal(prefix[:, 0], [-1.0, 5.0, 6.0])
    np.testing.assert_array_equal(weights, [1, 1, 1])
    prefix, weights = rtc_prefix(executed, schedule, tick=5, delay=2, horizon=16, soft=True)
    np.testing.assert_array_equal(prefix[:, 0], [-1.0, 5.0, 6.0, 7.0])  # tick 7 is the last planned
    assert weights[:3].tolist() == [1, 1, 1] and 0 < weights[3] < 1
    prefix, weights = rtc_prefix([None], schedule, tick=5, delay=1, horizon=16, soft=False)
    assert weights.tolist() == [0.0, 1.0]  # nothing was sent at tick 4: left free
    assert rtc_prefix([None], ActionSchedule("rtc_inpaint"), tick=0, delay=3, horizon=16, soft=True) is None


def test_rtc_soft_region_can_be_shortened():
    schedule = ActionSchedule("rtc_soft")
    schedule.merge(chunk(0, 12), first_tick=0, now_tick=0, chunk_id=0)
    executed = [np.array([-1.0])]
    whole, w_whole = rtc_prefix(executed, schedule, tick=5, delay=2, horizon=16, soft=True)
    assert whole[:, 0].tolist() == [-1.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]  # to the end of the plan
    short, w_short = rtc_prefix(executed, schedule, tick=5, delay=2, horizon=16, soft=True, soft_steps=2)
    assert short[:, 0].tolist() == [-1.0, 5.0, 6.0, 7.0, 8.0]
    np.testing.assert_allclose(w_short, [1, 1, 1, *soft_mask_weights(2)])
    assert w_short[3] < w_whole[3]  # the short ramp lets go sooner
    capped, _ = rtc_prefix(executed, schedule, tick=5, delay=2, horizon=6, soft=True, soft_steps=10)
    assert len(capped) == 6


def test_safety_filter_guards_every_command():
    safety = SafetyFilter.for_robot(SafetyConfig(max_delta=[1.0, 10.0]), np.zeros(2), np.full(2, 5.0), 2)
    assert safety.filter(None, 0.0, 0) is None  # nothing safe to hold yet
    np.testing.assert_array_equal(safety.filter(np.array([9.0, 1.0]), 0.1, 1), [5.0, 1.0])
    np.testing.assert_array_equal(safety.filter(np.array([1.0, 4.0]), 0.2, 2), [4.0, 4.0])
    np.testing.assert_array_equal(safety.filter(np.array([np.nan, 0.0]), 0.3, 3), [4.0, 4.0])
    np.testing.assert_array_equal(safety.filter(None, 0.4, 4), [4.0, 4.0])
    assert [(i.kind, i.tick) for i in safety.interventions] == [
        ("hold", 0), ("clipped", 1), ("rate_limited", 2), ("non_finite", 3), ("hold", 4)]
    with pytest.raises(ValueError, match="exceed high"):
        SafetyFilter.for_robot(SafetyConfig(low=[1.0], high=[0.0]), None, None, 1)


def test_boundary_discontinuity_measures_jumps_between_chunks():
    commands = np.array([[0.0], [1.0], [2.0], [5.0], [6.0], [7.0]])
    stats = boundary_measurements(commands, np.array([0, 0, 0, 1, 1, 1]))
    assert stats["jump"].tolist() == [3.0] and stats["inside"].tolist() == [1.0] * 4
    assert stats["jerk"].tolist() == [pytest.approx(abs(6 - 3 * 5 + 3 * 2 - 1))]


@pytest.mark.parametrize("n_ticks", [0, 3])
def test_plot_of_a_run_that_sent_nothing_is_still_written(tmp_path, n_ticks):
    """A loaded machine can hold every tick of a short run (the first chunk arrives stale)."""
    log = RunLog(rate_hz=40.0, transition="rtc_soft", threshold=0)
    for tick in range(n_ticks):
        log.record_tick(tick, 0.1 * tick, 0.1 * tick, 0.1 * tick, 0.1 * tick, None, 0, 0, None)
    assert plot_commands(log, tmp_path / "commands.png").stat().st_size > 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("time_scale", [1.0, 2.0])
def test_sim_robot_physics_follows_the_clock(time_scale):
    clock = FakeClock()
    robot = MujocoSimRobot(PUSHT_ID, seed=3, time_scale=time_scale, clock=clock)
    with pytest.raises(RuntimeError, match="not connected"):
        robot.get_observation()
    robot.connect()
    start = robot.get_observation()["agent_pos"].copy()
    robot.send_action(start + np.array([40.0, 0.0]))
    assert robot.sim_time == 0.0
    clock.now += 0.25
    moved = robot.get_observation()["agent_pos"]
    assert robot.sim_time == pytest.approx(0.25 * time_scale)
    assert moved[0] > start[0] + 5 and moved[1] == pytest.approx(start[1], abs=1.0)  # the world moved on
    assert robot.outcome()["success"] is False and 0 <= robot.outcome()["score"] <= 1
    assert set(robot.observation_spec) == {"agent_pos", "keypoints"} and robot.action_spec.shape == (2,)
    robot.close()


def test_sim_robot_matches_stepping_the_env():
    """Held for one control period in real time, the sim ends where one env.step ends."""
    import gymnasium as gym

    clock = FakeClock()
    robot = MujocoSimRobot(PUSHT_ID, seed=5, clock=clock)
    robot.connect()
    target = robot.get_observation()["agent_pos"] + np.array([20.0, -10.0])
    robot.send_action(target)
    clock.now += 0.1
    real_time = robot.get_observation()
    env = gym.make(PUSHT_ID)
    env.reset(seed=5)
    stepped = env.step(target)[0]
    for key in stepped:
        np.testing.assert_allclose(real_time[key], stepped[key], atol=1e-4)


def test_spec_checks_the_prefix_and_its_guidance():
    spec = PolicySpec({"x": (1,)}, action_dim=2, n_obs_steps=2, horizon=8, n_action_steps=4)
    obs = {"x": np.zeros((2, 1))}
    prefix, weights = np.zeros((3, 2)), np.ones(3)
    spec.check_request(ChunkRequest(obs, prefix, weights, prefix_guidance=5.0))
    with pytest.raises(ValueError, match="without a prefix"):
        spec.check_request(ChunkRequest(obs, prefix_guidance=5.0))
    for bad in (0.0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match=f"prefix_guidance={bad!r}"):
            spec.check_request(ChunkRequest(obs, prefix, weights, prefix_guidance=bad))
    with pytest.raises(ValueError, match=r"prefix_weights must lie in \[0, 1\]"):
        spec.check_request(ChunkRequest(obs, prefix, np.full(3, 1.5)))


def test_coherence_cost_weighs_only_the_softly_held_rows():
    prefix = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    weights = np.array([1.0, 0.5, 0.25])
    chunks = np.zeros((3, 4, 2))
    chunks[0, :3] = prefix  # continues the prefix exactly
    chunks[1, :3] = prefix + [[9.0, 0.0], [0.0, 2.0], [0.0, 0.0]]  # off on the hard row (ignored) and row 1
    chunks[2, :3] = prefix + [[0.0, 0.0], [0.0, 0.0], [0.0, 4.0]]  # off on row 2 only
    np.testing.assert_allclose(coherence_cost(chunks, prefix, weights), [0.0, 0.5 * 4, 0.25 * 16])
    with pytest.raises(ValueError, match=r"do not fit"):
        coherence_cost(chunks, prefix, np.ones(2))


def test_spec_checks_candidates():
    spec = PolicySpec({"x": (1,)}, action_dim=2, n_obs_steps=2, horizon=8, n_action_steps=4)
    obs, prefix, weights = {"x": np.zeros((2, 1))}, np.zeros((3, 2)), np.ones(3)
    spec.check_request(ChunkRequest(obs, prefix, weights, candidates=8))
    for bad in (0, 65, 2.0, True):
        with pytest.raises(ValueError, match=f"candidates={bad!r}"):
            spec.check_request(ChunkRequest(obs, prefix, weights, candidates=bad))
    with pytest.raises(ValueError, match="without a prefix"):
        spec.check_request(ChunkRequest(obs, candidates=4))
    with pytest.raises(ValueError, match="exclude each other"):
        spec.check_request(ChunkRequest(obs, prefix, weights, prefix_guidance=5.0, candidates=4))


def load_script(name: str) -> types.ModuleType:
    """scripts/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_transition_tradeoff_plot_and_its_script(tmp_path):
    script = load_script("plot_transitions")
    run = tmp_path / "run"
    run.mkdir()
    loop = {"boundaries": {"jump_mean": 20.0, "jump_max": 90.0}}
    rows = {"offline (evaluate_policy)": {"success_rate": 0.5},
            "replace": {"loop": loop, "episodes": [{"success": True}, {"success": False}]},
            "rtc_soft:3": {"loop": {"boundaries": {"jump_mean": 10.0, "jump_max": 40.0}},
                           "episodes": [{"success": False}] * 3}}
    (run / "transitions.json").write_text(json.dumps(rows))
    assert script.collect([f"{run}=70 ms"]) == {"70 ms: replace": (20.0, 90.0, 1, 2),
                                                "70 ms: rtc_soft:3": (10.0, 40.0, 0, 3)}
    assert script.main([str(run), "--out", str(tmp_path / "t.png")]).stat().st_size > 0
    with pytest.raises(FileNotFoundError, match="compare_transitions.py"):
        script.collect([str(tmp_path)])
    with pytest.raises(ValueError, match="5 successes of 3 episodes"):
        plot_transition_tradeoff({"x": (1.0, 2.0, 5, 3)}, tmp_path / "bad.png")


def test_compare_transitions_computes_its_statistics():
    """Wilson intervals and Fisher's exact p against `replace` come from the script, into its JSON rows."""
    script = load_script("compare_transitions")
    loop = {"boundaries": {"jump_mean": 1.0, "jump_max": 2.0, "inside_step_mean": 0.5, "jerk_mean": 1.0,
                           "jerk_max": 3.0}, "inference_latency_ms": {"p50": 70.0, "p99": 80.0},
            "period_jitter_ms": {"p99": 0.2}, "deadline_misses": 0}
    rows = {"offline (evaluate_policy)": {"success_rate": 0.5, "mean_score": 0.8, "n_episodes": 100},
            "replace": {"success_rate": 0.3, "mean_score": 0.7, "loop": loop,
                        "episodes": [{"success": i < 30} for i in range(100)]},
            "rtc_soft:3": {"success_rate": 0.2, "mean_score": 0.6, "loop": loop,
                           "episodes": [{"success": i < 20} for i in range(100)]}}
    script.add_statistics(rows)
    assert rows["rtc_soft:3"]["fisher_p_vs_replace"] == pytest.approx(0.1412067463, rel=1e-9)  # scipy's value
    assert rows["rtc_soft:3"]["success_wilson95"] == pytest.approx([0.1333669333, 0.2888291656], rel=1e-9)
    assert rows["offline (evaluate_policy)"]["successes"] == 50 and "fisher_p_vs_replace" not in rows["replace"]
    table = script.table(rows)
    assert "| p vs replace |" in table.splitlines()[0]
    assert "| rtc_soft:3 | 20% (13%–29%) | 0.600 |" in table and table.splitlines()[-1].endswith("| 0.14 |")


def test_inference_worker_sets_its_own_torch_threads():
    import torch

    from diffusion_policy.deploy.worker import (
        InferenceJob,
        InferenceWorker,
        default_torch_threads,
        inference_owns_torch_threads,
    )

    class CountingPredictor:
        spec = None

        def __init__(self):
            self.threads = []

        def predict(self, request):
            self.threads.append(torch.get_num_threads())
            return np.zeros((4, 2), np.float32)

    before = torch.get_num_threads()
    with inference_owns_torch_threads():
        assert torch.get_num_threads() == 1
        for wanted, expected in ((None, default_torch_threads()), (1, 1)):
            predictor = CountingPredictor()
            worker = InferenceWorker(predictor, torch_threads=wanted)
            worker.submit(InferenceJob(0, 0, 0.0, None))
            assert worker.wait(5.0).error is None
            worker.close()
            assert predictor.threads == [expected]
        assert torch.get_num_threads() == 1  # the worker's setting stays in its own thread
    assert torch.get_num_threads() == before
    if not os.environ.get("OMP_NUM_THREADS"):
        assert default_torch_threads() == max(1, len(os.sched_getaffinity(0)) - 1)
    with pytest.raises(ValueError, match="torch_threads=0 must be >= 1"):
        InferenceWorker(CountingPredictor(), torch_threads=0)
