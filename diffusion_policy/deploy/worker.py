"""Inference in a background thread, so the control loop never waits for the policy.

Torch releases the interpreter lock inside its kernels, so a thread is enough for a local policy;
for a policy on another machine the thread simply waits on the socket (`PolicyClient`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from diffusion_policy.deploy.predictor import ChunkPredictor, ChunkRequest


@dataclass
class InferenceJob:
    """A request for the chunk planned from the observation of tick `tick`, taken at `t_obs`."""

    chunk_id: int
    tick: int
    t_obs: float
    request: ChunkRequest
    delay_ticks: int = 0


@dataclass
class InferenceResult:
    """The job's chunk `(T, Da)`, or the exception `predict` raised; `t_done` on the loop's clock."""

    job: InferenceJob
    t_submit: float
    t_done: float
    chunk: np.ndarray | None = None
    error: BaseException | None = None

    @property
    def latency_s(self) -> float:
        return self.t_done - self.job.t_obs


class InferenceWorker:
    """Runs one job at a time on `predictor` in a daemon thread."""

    def __init__(self, predictor: ChunkPredictor, clock=time.perf_counter) -> None:
        self.predictor = predictor
        self.clock = clock
        self._jobs: queue.Queue[tuple[InferenceJob, float] | None] = queue.Queue()
        self._results: queue.Queue[InferenceResult] = queue.Queue()
        self._busy = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """True from `submit` until its result has been taken by `poll`/`wait`."""
        return self._busy.is_set()

    def submit(self, job: InferenceJob) -> None:
        if self.busy:
            raise RuntimeError(f"inference worker is busy; job for tick {job.tick} refused")
        self._busy.set()
        self._jobs.put((job, self.clock()))

    def poll(self) -> InferenceResult | None:
        """The finished result, if any (non-blocking)."""
        return self.wait(0.0)

    def wait(self, timeout: float) -> InferenceResult | None:
        """The finished result, waiting up to `timeout` seconds; None if still running."""
        try:
            result = self._results.get(timeout=timeout) if timeout > 0 else self._results.get_nowait()
        except queue.Empty:
            return None
        self._busy.clear()
        return result

    def close(self, timeout: float = 1.0) -> None:
        """Stop the thread after the job in progress (a hung predictor is abandoned after `timeout`)."""
        self._jobs.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, t_submit = item
            self._results.put(run_job(self.predictor, job, t_submit, self.clock))


def run_job(predictor: ChunkPredictor, job: InferenceJob, t_submit: float,
            done_time: Callable[[], float]) -> InferenceResult:
    """Run `job` on `predictor`: its chunk `(T, Da)` float64, or the exception it raised (for the loop to stop on)."""
    try:
        chunk = np.asarray(predictor.predict(job.request), dtype=np.float64)
        return InferenceResult(job, t_submit, done_time(), chunk=chunk)
    except Exception as err:  # reported to the loop, which stops safely
        return InferenceResult(job, t_submit, done_time(), error=err)
