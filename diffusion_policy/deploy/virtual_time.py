"""Virtual time for the controller loop: the same loop, robot and policy, with latency simulated.

In wall-clock runs the measured success depends on the machine: its speed sets the inference
latency, other work disturbs it, and an episode takes its real duration. Under a `VirtualClock`
time passes only when the loop sleeps, and a `LatencyWorker` computes each chunk at once but hands
it over exactly `latency_s` after its observation. A run is then deterministic given its seed, takes
only the time its computation needs, and isolates what a chunk transition does at a chosen latency
from how fast this machine is. `ControllerLoop.run` is unchanged; only its clock, sleep and worker
are swapped (`ControllerLoop(..., clock=clock, sleep=clock.sleep, worker_factory=...)`).
"""

from __future__ import annotations

import math

from diffusion_policy.deploy.predictor import ChunkPredictor
from diffusion_policy.deploy.worker import InferenceJob, InferenceResult, run_job


class VirtualClock:
    """Seconds that pass only by `sleep`: `clock()` reads the time, `sleep(dt)` moves it forward."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def __call__(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"cannot sleep {seconds=} s on a virtual clock")
        self._now += seconds


class LatencyWorker:
    """The `InferenceWorker` interface on a virtual clock: a chunk arrives `latency_s` after its observation."""

    def __init__(self, predictor: ChunkPredictor, clock: VirtualClock, latency_s: float) -> None:
        if not math.isfinite(latency_s) or latency_s < 0:
            raise ValueError(f"{latency_s=} must be a finite number of seconds >= 0")
        self.predictor, self.clock, self.latency_s = predictor, clock, float(latency_s)
        self._pending: InferenceResult | None = None

    @property
    def busy(self) -> bool:
        """True from `submit` until its result has been taken by `poll`/`wait`."""
        return self._pending is not None

    def submit(self, job: InferenceJob) -> None:
        if self.busy:
            raise RuntimeError(f"inference worker is busy; job for tick {job.tick} refused")
        t_submit = self.clock()
        self._pending = run_job(self.predictor, job, t_submit, lambda: max(t_submit, job.t_obs + self.latency_s))

    def poll(self) -> InferenceResult | None:
        """The result once its arrival time has come (non-blocking)."""
        return self.wait(0.0)

    def wait(self, timeout: float) -> InferenceResult | None:
        """The result, advancing the clock to its arrival if that is within `timeout` (else by `timeout`)."""
        if self._pending is None or self._pending.t_done > self.clock() + timeout:
            self.clock.sleep(max(0.0, timeout))
            return None
        self.clock.sleep(max(0.0, self._pending.t_done - self.clock()))
        result, self._pending = self._pending, None
        return result

    def close(self) -> None:
        """Nothing runs in the background."""
