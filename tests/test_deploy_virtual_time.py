"""The controller loop in virtual time: simulated latency, determinism, and the same guarantees."""

from __future__ import annotations

import numpy as np
import pytest

from diffusion_policy.deploy.controller import ControllerConfig, ControllerLoop
from diffusion_policy.deploy.predictor import ChunkRequest, PolicySpec
from diffusion_policy.deploy.robot import ArraySpec
from diffusion_policy.deploy.sim_robot import MujocoSimRobot
from diffusion_policy.deploy.virtual_time import LatencyWorker, VirtualClock
from diffusion_policy.deploy.worker import InferenceJob
from envs import PUSHT_ID

SPEC = PolicySpec({"t": (1,)}, action_dim=1, n_obs_steps=2, horizon=16, n_action_steps=8)
PERIOD = 0.1


class VirtualClockRobot:
    """Observes the virtual time; records each command with the time it was sent."""

    observation_spec = {"t": ArraySpec((1,))}
    action_spec = ArraySpec((1,))

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.received: list[tuple[float, float]] = []

    def connect(self) -> None: ...

    def get_observation(self) -> dict[str, np.ndarray]:
        return {"t": np.array([self.clock()])}

    def send_action(self, action: np.ndarray) -> None:
        self.received.append((self.clock(), float(action[0])))

    def close(self) -> None: ...


class PlanTimePolicy:
    """Action j of a chunk is the time at which it should execute; records every request."""

    spec = SPEC

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[ChunkRequest] = []
        self.fail_at = fail_at

    def predict(self, request: ChunkRequest) -> np.ndarray:
        self.calls.append(request)
        if len(self.calls) - 1 == self.fail_at:
            raise RuntimeError("policy blew up")
        t_obs = request.obs["t"][-1, 0]
        return (t_obs + (np.arange(SPEC.horizon) - 1) * PERIOD)[:, None].astype(np.float32)

    def close(self) -> None: ...


def virtual_run(latency_s: float, policy=None, **config):
    clock = VirtualClock()
    robot, policy = VirtualClockRobot(clock), policy or PlanTimePolicy()
    loop = ControllerLoop(robot, policy, ControllerConfig(rate_hz=1 / PERIOD, max_ticks=60, **config), clock=clock,
                          sleep=clock.sleep, worker_factory=lambda p, c: LatencyWorker(p, clock, latency_s))
    return robot, loop.run(), policy


def test_virtual_clock_moves_only_by_sleep():
    clock = VirtualClock(2.0)
    assert clock() == clock() == 2.0
    clock.sleep(0.25)
    assert clock() == 2.25
    with pytest.raises(ValueError, match="seconds=-1"):
        clock.sleep(-1)


def test_latency_worker_hands_over_a_chunk_latency_after_its_observation():
    clock = VirtualClock()
    worker = LatencyWorker(PlanTimePolicy(), clock, latency_s=0.25)
    job = InferenceJob(0, tick=0, t_obs=0.0, request=ChunkRequest({"t": np.zeros((2, 1))}))
    worker.submit(job)
    assert worker.busy
    with pytest.raises(RuntimeError, match="busy"):
        worker.submit(job)
    assert worker.poll() is None
    assert worker.wait(0.1) is None and clock() == pytest.approx(0.1)
    result = worker.wait(1.0)
    assert clock() == pytest.approx(0.25) and result.latency_s == pytest.approx(0.25) and not worker.busy
    assert result.chunk.shape == (SPEC.horizon, 1)
    with pytest.raises(ValueError, match="latency_s=-0.1"):
        LatencyWorker(PlanTimePolicy(), clock, -0.1)


@pytest.mark.parametrize("latency_s", [0.07, 0.25])
def test_every_command_is_the_one_planned_for_its_tick(latency_s):
    """Latency compensation in virtual time: each command is the action planned for the instant it is
    sent (nothing stale), no tick is missed, and latency sets how many actions each chunk skips."""
    robot, log, policy = virtual_run(latency_s)
    sent = np.array(robot.received)
    assert len(sent) == 60 - log.ticks[0]["tick"] and not log.missed_ticks
    np.testing.assert_allclose(sent[:, 1], sent[:, 0], atol=1e-5)
    skipped = {record["skipped"] for record in log.inferences[1:]}
    assert skipped == {int(np.ceil(latency_s / PERIOD))}
    assert all(record["latency_s"] == pytest.approx(latency_s) for record in log.inferences)


def test_virtual_runs_are_deterministic_and_pass_rtc_guidance():
    first = virtual_run(0.07, transition="rtc_guided", rtc_soft_steps=3, rtc_guidance=7.0)
    second = virtual_run(0.07, transition="rtc_guided", rtc_soft_steps=3, rtc_guidance=7.0)
    assert first[0].received == second[0].received
    requests = first[2].calls[1:]
    assert requests and all(r.prefix_guidance == 7.0 and r.prefix is not None for r in requests)
    # 1 executed + ceil(0.07 / 0.1) + margin 1 held with weight 1, then 3 decaying weights.
    np.testing.assert_array_equal(requests[-1].prefix_weights[:3], 1.0)
    assert len(requests[-1].prefix_weights) == 6 and 0 < requests[-1].prefix_weights[3] < 1
    soft = virtual_run(0.07, transition="rtc_soft")[2].calls[1:]
    assert all(r.prefix_guidance is None and r.candidates == 1 for r in soft)
    select = virtual_run(0.07, transition="rtc_select", rtc_candidates=5)[2].calls[1:]
    assert select and all(r.candidates == 5 and r.prefix_guidance is None for r in select)


def test_a_policy_exception_in_virtual_time_holds_then_stops():
    robot, log, _ = virtual_run(0.07, policy=PlanTimePolicy(fail_at=2))
    assert "policy raised RuntimeError: policy blew up" in log.stop_reason
    assert robot.received[-1][1] == robot.received[-2][1]  # the hold repeats the last safe command


def test_sim_robot_in_virtual_time_is_deterministic():
    def episode() -> list[float]:
        clock = VirtualClock()
        robot = MujocoSimRobot(PUSHT_ID, seed=3, clock=clock)
        robot.connect()
        trace = []
        for k in range(5):
            robot.send_action(np.array([200.0 + 20 * k, 300.0]))
            clock.sleep(0.1)
            trace += robot.get_observation()["agent_pos"].tolist()
        robot.close()
        return trace

    assert episode() == episode()
