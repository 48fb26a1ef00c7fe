"""Inference in a background thread, so the control loop never waits for the policy.

Torch releases the interpreter lock inside its kernels, so a thread is enough for a local policy;
for a policy on another machine the thread simply waits on the socket (`PolicyClient`).

Threads and torch. torch keeps one OpenMP thread pool per thread that computes with more than one
thread, and while a second pool exists libgomp throttles its spin-waiting, so every one of a chunk's
thousands of small parallel regions pays a sleep and a wake-up. Scripts therefore keep the loop's
thread single-threaded (`inference_owns_torch_threads`, entered before it touches torch) and the
worker sets its own count: by default every CPU but one, which stays free for the loop's ticks.
Measured with `run_robot.py` on a 2-core Xeon, 100 ticks, the 65.8M network with random weights:
inference p50 180 ms and jitter p99 0.3 ms with two pools (before); 145 ms and 0.2-1.0 ms with one
worker thread (the default here); 100 ms but 3-9 ms jitter with two worker threads, which leave the
loop no free core.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

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


def default_torch_threads() -> int:
    """Every CPU this process may use (or OMP_NUM_THREADS) but one, at least one: the worker's threads."""
    cpus = int(os.environ.get("OMP_NUM_THREADS") or 0) or len(os.sched_getaffinity(0))
    return max(1, cpus - 1)


@contextlib.contextmanager
def inference_owns_torch_threads() -> Iterator[None]:
    """Keep this thread's torch single-threaded while the block runs, so only the inference worker's
    thread has an OpenMP pool (see the module docstring). Enter it before this thread computes with
    torch at all: a pool, once made, stays for the life of the thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class InferenceWorker:
    """Runs one job at a time on `predictor` in a daemon thread computing with `torch_threads` threads
    (default: `default_torch_threads()`)."""

    def __init__(self, predictor: ChunkPredictor, clock=time.perf_counter, torch_threads: int | None = None) -> None:
        self.predictor = predictor
        self.clock = clock
        self.torch_threads = torch_threads if torch_threads is not None else default_torch_threads()
        if self.torch_threads < 1:
            raise ValueError(f"torch_threads={torch_threads} must be >= 1")
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
        torch.set_num_threads(self.torch_threads)  # per thread: the loop's thread may run single-threaded
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
