"""The real-time controller loop with a fake robot and fake policies: timing, latency compensation,
chunk transitions, safety interventions and safe stops."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from diffusion_policy.deploy.controller import ControllerConfig, ControllerLoop
from diffusion_policy.deploy.predictor import ChunkRequest, PolicySpec
from diffusion_policy.deploy.robot import ArraySpec
from diffusion_policy.deploy.safety import SafetyConfig

SPEC = PolicySpec({"t": (1,)}, action_dim=1, n_obs_steps=2, horizon=16, n_action_steps=8)


class ClockRobot:
    """Observes its own clock; records every command with the time it arrived."""

    observation_spec = {"t": ArraySpec((1,))}
    action_spec = ArraySpec((1,))

    def __init__(self) -> None:
        self.t0 = time.perf_counter()  # relative times keep float32 chunks exact to ~1e-6 s
        self.received: list[tuple[float, np.ndarray]] = []
        self.connected = self.closed = False

    def connect(self) -> None:
        self.connected = True

    def get_observation(self) -> dict[str, np.ndarray]:
        return {"t": np.array([time.perf_counter() - self.t0], dtype=np.float64)}

    def send_action(self, action: np.ndarray) -> None:
        self.received.append((time.perf_counter() - self.t0, np.array(action)))

    def close(self) -> None:
        self.closed = True


class TimedPolicy:
    """Takes `latency` s per chunk; action j plans the time at which it should execute, so a command
    received at any other time is stale. With an RTC prefix it shifts the chunk onto the held
    actions (as inpainting makes a diffusion chunk continue them); it can fail or hang."""

    spec = SPEC

    def __init__(self, latency: float, period: float, fail_at: int | None = None, hang_at: int | None = None,
                 offsets: bool = False) -> None:
        self.latency, self.period, self.fail_at, self.hang_at, self.offsets = latency, period, fail_at, hang_at, offsets
        self.calls: list[ChunkRequest] = []

    def predict(self, request: ChunkRequest) -> np.ndarray:
        self.spec.check_request(request)
        self.calls.append(request)
        n = len(self.calls) - 1
        if n == self.fail_at:
            raise RuntimeError("policy blew up")
        time.sleep(60 if n == self.hang_at else self.latency)
        t_obs = request.obs["t"][-1, 0]
        chunk = t_obs + (np.arange(SPEC.horizon) - (SPEC.n_obs_steps - 1)) * self.period
        if self.offsets:  # each chunk disagrees with the last by a constant: visible at boundaries
            chunk = chunk + 0.5 * (n % 2)
        if request.prefix is not None:  # like inpainting, continue from the held actions
            held = request.prefix_weights == 1
            chunk = chunk + np.mean(request.prefix[held, 0] - chunk[: len(held)][held])
        return chunk[:, None].astype(np.float32)

    def close(self) -> None:
        pass


def run(policy, rate_hz=20.0, **config) -> tuple[ClockRobot, object, ControllerLoop]:
    robot = ClockRobot()
    loop = ControllerLoop(robot, policy, ControllerConfig(rate_hz=rate_hz, **config))
    return robot, loop.run(), loop


def test_slow_policy_misses_no_tick_and_sends_nothing_stale():
    period = 0.05
    robot, log, _ = run(TimedPolicy(latency=3 * period, period=period), max_ticks=60)
    summary = log.summary()
    assert log.stop_reason == "max_ticks" and robot.connected and robot.closed
    assert summary["deadline_misses"] == 0 and log.missed_ticks == []
    assert [t["tick"] for t in log.ticks] == list(range(log.ticks[0]["tick"], 60))
    assert summary["interventions"] == {}  # never starved, never held
    commands = np.array([a[0] for _, a in robot.received])
    assert len(commands) == len(log.ticks) and np.isfinite(commands).all()
    # Every command was planned for the tick that sent it, none for an earlier one: nothing stale.
    due = np.array([t["due"] for t in log.ticks]) - robot.t0
    assert np.abs(commands - due).max() < period / 3
    assert summary["skipped_actions"] >= 3 * summary["inferences"] - 3  # latency compensation at work
    assert summary["inference_latency_ms"]["p50"] >= 3 * period * 1e3


def test_rtc_joins_chunks_without_a_jump_where_replace_jumps():
    period = 0.04
    jumps = {}
    for transition in ("replace", "rtc_inpaint"):
        policy = TimedPolicy(latency=1.5 * period, period=period, offsets=True)
        _, log, _ = run(policy, rate_hz=1 / period, transition=transition, max_ticks=40)
        jumps[transition] = log.summary()["boundaries"]
        if transition == "rtc_inpaint":
            later = [c for c in policy.calls[1:] if c.prefix is not None]
            assert later and all(len(c.prefix) >= SPEC.n_obs_steps for c in later)
    assert jumps["replace"]["count"] >= 3 and jumps["rtc_inpaint"]["count"] >= 3
    assert jumps["replace"]["jump_max"] > 0.4  # the 0.5 disagreement between chunks
    assert jumps["rtc_inpaint"]["jump_max"] < 0.1  # the held actions bridge it


def test_nan_actions_are_never_sent():
    class NaNPolicy(TimedPolicy):
        def predict(self, request):
            chunk = super().predict(request)
            if len(self.calls) == 2:
                chunk[:] = np.nan
            return chunk

    robot, log, _ = run(NaNPolicy(latency=0.0, period=0.05), max_ticks=30)
    assert all(np.isfinite(a).all() for _, a in robot.received)
    assert log.stop_reason == "max_ticks"  # one bad chunk is refused; the plan in hand goes on
    refused = [i for i in log.interventions if i.kind == "bad_chunk"]
    assert len(refused) == 1
    assert refused[0].detail.startswith("chunk 1: chunk with NaN or inf in 16 of 16 rows "
                                        "(first: [0, 1, 2, 3, 4, 5, 6, 7])")
    assert all(i.time > 0 and i.tick > 0 for i in refused)


def test_policy_exception_holds_then_stops():
    robot, log, _ = run(TimedPolicy(latency=0.0, period=0.05, fail_at=2), max_ticks=100)
    assert "policy raised RuntimeError: policy blew up" in log.stop_reason
    assert log.n_ticks < 100 and robot.closed
    last_tick_command = log.ticks[-1]["command"]
    np.testing.assert_array_equal(robot.received[-1][1], last_tick_command)  # the hold repeats the last command
    assert log.interventions[-1].kind == "stop"


def test_watchdog_holds_then_stops_when_chunks_stop_coming():
    robot, log, _ = run(TimedPolicy(latency=0.0, period=0.05, hang_at=1), max_ticks=200,
                        safety=SafetyConfig(stop_after_s=1.2))  # longer than the 15 planned ticks
    kinds = log.summary()["interventions"]
    assert kinds["hold"] >= 1 and kinds["stop"] == 1
    assert log.stop_reason.startswith("watchdog: no fresh chunk")
    assert np.isfinite(np.array([a for _, a in robot.received])).all()


def test_safety_clips_and_rate_limits():
    config = SafetyConfig(low=[-1.0], high=[1e12], max_delta=0.01)
    robot, log, _ = run(TimedPolicy(latency=0.0, period=0.05), max_ticks=20, safety=config)
    commands = np.array([a[0] for _, a in robot.received])
    assert np.abs(np.diff(commands)).max() <= 0.01 + 1e-12
    assert log.summary()["interventions"]["rate_limited"] >= 1


def test_a_loop_runs_once():
    _, _, loop = run(TimedPolicy(latency=0.0, period=0.05), max_ticks=3)
    with pytest.raises(RuntimeError, match="already run"):
        loop.run()


def test_missing_observation_key_is_named():
    class NoT(ClockRobot):
        observation_spec = {"x": ArraySpec((1,))}

    with pytest.raises(ValueError, match="policy needs observation 't'"):
        ControllerLoop(NoT(), TimedPolicy(0.0, 0.05), ControllerConfig())


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="rate_hz=0"):
        ControllerConfig(rate_hz=0)
    with pytest.raises(ValueError, match="'smooth'"):
        ControllerConfig(transition="smooth")
    with pytest.raises(ValueError, match="max_delta"):
        SafetyConfig(max_delta=0.0)
    with pytest.raises(ValueError, match="rtc_guidance=0"):
        ControllerConfig(rtc_guidance=0)
    with pytest.raises(ValueError, match="rtc_candidates=0"):
        ControllerConfig(rtc_candidates=0)
    with pytest.raises(ValueError, match="rtc_soft_steps=-1"):
        ControllerConfig(rtc_soft_steps=-1)


def test_inference_runs_beside_the_loop():
    """While a chunk is computed the loop keeps ticking: inference happens in another thread."""
    seen = set()

    class ThreadSpy(TimedPolicy):
        def predict(self, request):
            seen.add(threading.current_thread().name)
            return super().predict(request)

    run(ThreadSpy(latency=0.0, period=0.05), max_ticks=10)
    assert seen == {"inference"}
