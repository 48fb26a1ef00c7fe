"""The real-time controller loop: fixed rate, asynchronous inference, latency compensation, safety.

Tick `k` is due at `t0 + k / rate_hz`. At each tick the loop reads the robot, folds in a chunk that
has arrived (skipping its actions for ticks already past), asks the background worker for the next
chunk when fewer than `request_threshold` actions remain planned, and sends the action planned
for this tick through the safety filter. It never waits for the policy: with nothing planned it
holds the last safe command, and without a fresh chunk for `safety.stop_after_s` it stops.

Start-up: the first chunk is computed before the clock starts (the robot is at rest, holding), and
the loop's first tick is the first one after it arrived, so the first actions are latency-
compensated like every later chunk.

A broken policy cannot drive the robot: a chunk of the wrong shape or with a non-finite value is
refused (the plan in hand goes on), one outside the safety bounds is clipped action by action, each
logged as a `bad_chunk` intervention; `safety.max_bad_chunks` bad chunks in a row stop the run. A
latency longer than a chunk covers is logged once as `slow_policy` (and warned about).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from diffusion_policy.deploy.predictor import ChunkPredictor, ChunkRequest
from diffusion_policy.deploy.robot import Robot
from diffusion_policy.deploy.run_log import RunLog
from diffusion_policy.deploy.safety import SafetyConfig, SafetyFilter
from diffusion_policy.deploy.transitions import SOFT_TRANSITIONS, ActionSchedule, check_transition, rtc_prefix
from diffusion_policy.deploy.worker import InferenceJob, InferenceResult, InferenceWorker

# A short interpreter switch interval lets the loop's thread take the GIL back from the inference
# thread within half a millisecond instead of the default 5 ms.
_SWITCH_INTERVAL_S = 5e-4
_LATENCY_WINDOW = 5


@dataclass
class ControllerConfig:
    """rate_hz: control rate. transition: see `deploy.transitions`. request_threshold: ask for a new
    chunk when at most this many actions remain planned (None: after `n_action_steps` actions, as
    the offline evaluator re-plans). max_ticks: stop after this many ticks (None: run until stopped).
    seed: chunk `i` samples its noise with `seed + i` (None: fresh noise). record_obs_key: an
    observation key logged every tick (e.g. the executed position, to plot against commands).
    rtc_margin: real-time chunking holds the actions of `ceil(recent max latency / period) +
    rtc_margin` ticks, so a chunk that arrives late still starts on a committed action.
    rtc_soft_steps: how many planned actions after the held ones `rtc_soft` / `rtc_guided` hold with
    decaying weights (None: the whole rest of the plan; 0: none). rtc_guidance: `rtc_guided`'s clip
    of the guidance weight (`DDIMPlan.sample_guided`). rtc_candidates: how many chunks `rtc_select`
    samples to choose from."""

    rate_hz: float = 10.0
    transition: str = "replace"
    request_threshold: int | None = None
    ensemble_decay: float = 0.01
    max_ticks: int | None = None
    seed: int | None = 0
    record_obs_key: str | None = None
    rtc_margin: int = 1
    rtc_soft_steps: int | None = None
    rtc_guidance: float = 100.0
    rtc_candidates: int = 4
    safety: SafetyConfig = field(default_factory=SafetyConfig)

    def __post_init__(self) -> None:
        if not 0 < self.rate_hz <= 1000:
            raise ValueError(f"rate_hz={self.rate_hz} must be in (0, 1000]")
        check_transition(self.transition)
        if self.request_threshold is not None and self.request_threshold < 0:
            raise ValueError(f"request_threshold={self.request_threshold} must be >= 0")
        if self.rtc_margin < 0:
            raise ValueError(f"rtc_margin={self.rtc_margin} must be >= 0")
        if self.rtc_soft_steps is not None and self.rtc_soft_steps < 0:
            raise ValueError(f"rtc_soft_steps={self.rtc_soft_steps} must be >= 0 (or None: the whole plan)")
        if not (math.isfinite(self.rtc_guidance) and self.rtc_guidance > 0):
            raise ValueError(f"rtc_guidance={self.rtc_guidance} must be a finite number > 0")
        if self.rtc_candidates < 1:
            raise ValueError(f"rtc_candidates={self.rtc_candidates} must be >= 1")
        if self.max_ticks is not None and self.max_ticks < 1:
            raise ValueError(f"max_ticks={self.max_ticks} must be >= 1")

    @property
    def period(self) -> float:
        return 1.0 / self.rate_hz


class ControllerLoop:
    """Drives `robot` with chunks from `predictor` at `config.rate_hz`; `run()` returns the `RunLog`."""

    def __init__(self, robot: Robot, predictor: ChunkPredictor, config: ControllerConfig,
                 clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep,
                 worker_factory: Callable[[ChunkPredictor, Callable[[], float]], InferenceWorker] = InferenceWorker,
                 ) -> None:
        """`clock`, `sleep` and `worker_factory` default to wall-clock time and a background thread;
        `deploy.virtual_time` swaps them to simulate latency instead."""
        self.robot, self.predictor, self.config, self.clock = robot, predictor, config, clock
        self.sleep, self.worker_factory = sleep, worker_factory
        spec = predictor.spec
        _check_robot(robot, predictor)
        self.threshold = (config.request_threshold if config.request_threshold is not None
                          else spec.horizon - spec.n_obs_steps + 1 - spec.n_action_steps)
        self.schedule = ActionSchedule(config.transition, config.ensemble_decay)
        self.safety = SafetyFilter.for_robot(config.safety, robot.action_spec.low, robot.action_spec.high,
                                             spec.action_dim)
        self.history: deque[dict[str, np.ndarray]] = deque(maxlen=spec.n_obs_steps)
        self.sent: deque[np.ndarray | None] = deque([None] * (spec.n_obs_steps - 1), maxlen=spec.n_obs_steps - 1)
        self.latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self.log = RunLog(rate_hz=config.rate_hz, transition=config.transition, threshold=self.threshold)
        self._next_chunk = 0
        self._last_chunk_time = 0.0
        self._bad_streak = 0
        self._warned_slow = False

    def run(self, stop_when: Callable[[], bool] | None = None) -> RunLog:
        """Run until `max_ticks`, `stop_when()` or a safety stop; always leaves the robot holding.

        A loop runs once (its plan and log belong to that run): build a new one per episode.
        """
        if self._next_chunk:
            raise RuntimeError("this ControllerLoop has already run; build a new one per episode")
        old_interval = sys.getswitchinterval()
        sys.setswitchinterval(_SWITCH_INTERVAL_S)
        worker = self.worker_factory(self.predictor, self.clock)
        self.robot.connect()
        try:
            t0, tick = self._start(worker)
            self._loop(worker, t0, tick, stop_when or (lambda: False))
        except Exception as err:  # a robot or policy failure: hold, then stop
            self._stop(self.log.n_ticks, f"{type(err).__name__}: {err}")
        finally:
            sys.setswitchinterval(old_interval)
            self.robot.close()
            worker.close()
        self.log.interventions = list(self.safety.interventions)
        return self.log

    # --- phases ----------------------------------------------------------------------------------
    def _start(self, worker: InferenceWorker) -> tuple[float, int]:
        """Plan the first chunk with the robot at rest; returns the clock origin and the first tick."""
        obs, t_obs = self._observe()
        self.history.extend([self.predictor.spec.mapping.observation(obs)] * self.history.maxlen)
        self._request(worker, tick=0, t_obs=t_obs)
        result = worker.wait(self.config.safety.stop_after_s)
        if result is None:
            raise TimeoutError(f"first chunk not ready within stop_after_s={self.config.safety.stop_after_s} s")
        tick = max(1, math.ceil((result.t_done - t_obs) / self.config.period))
        if result.error is None and self._check_chunk(result, tick):
            raise ValueError(f"first chunk refused: {self.safety.interventions[-1].detail}")
        self._accept(result, tick)
        return t_obs, tick

    def _loop(self, worker: InferenceWorker, t0: float, tick: int, stop_when: Callable[[], bool]) -> None:
        period = self.config.period
        while self.config.max_ticks is None or tick < self.config.max_ticks:
            due = t0 + tick * period
            _sleep_until(due, self.clock, self.sleep)
            t_start = self.clock()
            if stop_when():
                self.log.stop_reason = "stop_when"
                return
            if not self._tick(worker, tick, due, t_start):
                return
            late = math.floor((self.clock() - t0) / period) + 1 - (tick + 1)
            if late > 0:  # fell behind by whole periods: those ticks are lost
                self.log.missed_ticks.extend(range(tick + 1, tick + 1 + late))
            tick += 1 + max(late, 0)
        self.log.stop_reason = "max_ticks"

    def _tick(self, worker: InferenceWorker, tick: int, due: float, t_start: float) -> bool:
        """One control tick; False when the loop must stop."""
        obs, t_obs = self._observe()
        self.history.append(self.predictor.spec.mapping.observation(obs))
        result = worker.poll()
        if result is not None:
            if result.error is not None:
                self._stop(tick, f"policy raised {type(result.error).__name__}: {result.error}")
                return False
            refused = self._check_chunk(result, tick)
            if self._bad_streak >= self.config.safety.max_bad_chunks:
                self._stop(tick, f"{self._bad_streak} bad chunks in a row "
                                 f"(max_bad_chunks={self.config.safety.max_bad_chunks}); last: "
                                 f"{self.safety.interventions[-1].detail}")
                return False
            if not refused:
                self._accept(result, tick)
        if t_obs - self._last_chunk_time > self.config.safety.stop_after_s:
            self._stop(tick, f"watchdog: no fresh chunk for {t_obs - self._last_chunk_time:.3f} s")
            return False
        if not worker.busy and self.schedule.remaining(tick) <= self.threshold:
            self._request(worker, tick, t_obs)
        planned = self.schedule.pop(tick)
        command = self.safety.filter(None if planned is None else planned[0], self.clock(), tick)
        if command is not None:
            self.robot.send_action(command)
        t_sent = self.clock()
        self.sent.append(command)
        self.log.record_tick(tick, due, t_start, t_obs, t_sent, command, -1 if planned is None else planned[1],
                             self.schedule.remaining(tick + 1), obs.get(self.config.record_obs_key))
        return True

    # --- helpers ---------------------------------------------------------------------------------
    def _observe(self) -> tuple[dict[str, np.ndarray], float]:
        obs = self.robot.get_observation()
        return obs, self.clock()

    def _request(self, worker: InferenceWorker, tick: int, t_obs: float) -> None:
        spec = self.predictor.spec
        obs = {k: np.stack([frame[k] for frame in self.history]) for k in spec.obs_shapes}
        delay = math.ceil(max(self.latencies, default=0.0) / self.config.period) + self.config.rtc_margin
        prefix = weights = guidance = None
        candidates = 1
        if self.config.transition.startswith("rtc"):
            held = rtc_prefix(list(self.sent), self.schedule, tick, delay, spec.horizon,
                              soft=self.config.transition in SOFT_TRANSITIONS, soft_steps=self.config.rtc_soft_steps)
            if held is not None:
                prefix, weights = held
                guidance = self.config.rtc_guidance if self.config.transition == "rtc_guided" else None
                candidates = self.config.rtc_candidates if self.config.transition == "rtc_select" else 1
        seed = None if self.config.seed is None else self.config.seed + self._next_chunk
        request = ChunkRequest(obs, prefix, weights, seed, guidance, candidates)
        job = InferenceJob(self._next_chunk, tick, t_obs, request, delay)
        self._next_chunk += 1
        worker.submit(job)

    def _check_chunk(self, result: InferenceResult, tick: int) -> bool:
        """Log what is wrong with the arrived chunk and count the streak; True if it must be refused."""
        spec = self.predictor.spec
        cover = spec.horizon - spec.n_obs_steps + 1
        if result.latency_s > cover * self.config.period and not self._warned_slow:
            self._warned_slow = True
            detail = (f"inference latency {result.latency_s * 1e3:.1f} ms exceeds the {cover} ticks "
                      f"({cover * self.config.period * 1e3:.1f} ms) a chunk covers at {self.config.rate_hz} Hz")
            self.safety.log(self.clock(), tick, "slow_policy", detail)
            warnings.warn(detail, stacklevel=2)
        problem = self.safety.chunk_problem(result.chunk, (spec.horizon, spec.action_dim))
        if problem is None:
            self._bad_streak = 0
            return False
        detail, refuse = problem
        self._bad_streak += 1
        self.safety.log(self.clock(), tick, "bad_chunk", f"chunk {result.job.chunk_id}: {detail}"
                        + ("; refused, the plan in hand goes on" if refuse else "; clipped by the bounds"))
        return refuse

    def _accept(self, result: InferenceResult, now_tick: int) -> None:
        start = self.predictor.spec.n_obs_steps - 1
        request = result.job.request
        # Rows held with weight 1 from this tick on are the committed actions: the plan keeps them.
        weights = request.prefix_weights[start:] if request.prefix_weights is not None else np.zeros(0)
        n_held = int(np.argmin(np.append(weights, 0.0) == 1.0))
        skipped = self.schedule.merge(result.chunk[start:], result.job.tick, now_tick, result.job.chunk_id, n_held)
        self.latencies.append(result.latency_s)
        self._last_chunk_time = result.t_done
        self.log.record_inference(result, now_tick, skipped)

    def _stop(self, tick: int, reason: str) -> None:
        """Hold the last safe command (never a partial one), log, and end the run."""
        if self.safety.last_safe is not None:
            try:
                self.robot.send_action(self.safety.last_safe.copy())
            except Exception as err:  # the robot itself failed: nothing more can be sent
                reason += f"; hold failed: {type(err).__name__}: {err}"
        self.safety.log(self.clock(), tick, "stop", reason)
        self.log.stop_reason = reason


def _check_robot(robot: Robot, predictor: ChunkPredictor) -> None:
    """Raise ValueError naming the key unless the robot gives every observation the policy needs."""
    spec = predictor.spec
    for key, shape in spec.obs_shapes.items():
        if key not in robot.observation_spec:
            raise ValueError(f"policy needs observation {key!r} {tuple(shape)}; the robot gives "
                             f"{sorted(robot.observation_spec)}")
        if tuple(robot.observation_spec[key].shape) != tuple(shape):
            raise ValueError(f"policy needs observation {key!r} of shape {tuple(shape)}; the robot gives "
                             f"{tuple(robot.observation_spec[key].shape)}")
    if tuple(robot.action_spec.shape) != (spec.action_dim,):
        raise ValueError(f"policy gives actions ({spec.action_dim},); the robot takes {tuple(robot.action_spec.shape)}")


def _sleep_until(deadline: float, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
    while (left := deadline - clock()) > 0:
        sleep(left)
