"""Closed-loop evaluation during training, keeping the best policy so far.

Every `every_steps` optimisation steps (and at the last step) the trainer's evaluation weights (the
EMA copy when EMA is on) are rolled out; the results go to `run_dir/eval/step_XXXXXXXX/`
(`metrics.json`, videos) and `eval/mean_score`, `eval/success_rate` to the run's metrics. A score
above the best so far replaces `run_dir/best_policy/` (the policy directory plus `eval.json` with the
step and summary), atomically, so a resumed run knows the best score to beat.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from gymnasium.vector import VectorEnv

from diffusion_policy.core.checkpoint import atomic_directory, load_json, save_json
from diffusion_policy.core.trainer import Callback, Exportable, Trainer
from diffusion_policy.eval.rollout import EvalConfig, evaluate_policy, make_vector_env

BEST_POLICY_DIR = "best_policy"
BEST_EVAL_FILE = "eval.json"


class EvalCallback(Callback):
    """Evaluate `trainer.eval_model` with `config` every `every_steps` steps and at the end of training.

    The policy runs on the trainer's device (so `config.device` must be None). Evaluation neither
    reads nor advances the global torch / numpy / random generators as seen by training: training
    with and without this callback is bit-identical. The vector envs are built at the first
    evaluation and reused until training ends, so worker processes start once per run.
    """

    def __init__(self, config: EvalConfig, every_steps: int):
        if every_steps < 1:
            raise ValueError(f"{every_steps=} must be >= 1")
        if config.device is not None:
            raise ValueError(f"config.device={config.device!r} must be None: evaluation during training "
                             "runs on the trainer's device")
        self.config = config
        self.every_steps = every_steps
        self.best_score = -float("inf")
        self._venv: VectorEnv | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        if not isinstance(trainer.eval_model, Exportable):
            raise TypeError(f"{type(trainer.eval_model).__name__} cannot be saved as a policy (no save(path))")
        best = trainer.run_dir / BEST_POLICY_DIR / BEST_EVAL_FILE
        if best.is_file():
            self.best_score = float(load_json(best)["metrics"]["mean_score"])

    def on_step_end(self, trainer: Trainer) -> dict[str, float] | None:
        if trainer.step % self.every_steps and trainer.step != trainer.config.max_steps:
            return None
        out_dir = trainer.run_dir / "eval" / f"step_{trainer.step:08d}"
        if self._venv is None:
            self._venv = make_vector_env(self.config, render=True)
        policy = trainer.eval_model
        with preserved_rng(trainer.device):
            result = evaluate_policy(policy, self.config, out_dir, progress=trainer.config.progress,
                                     venv=self._venv)
        summary = result.summary
        if summary["mean_score"] > self.best_score:
            self.best_score = summary["mean_score"]
            save_best(policy, trainer.run_dir / BEST_POLICY_DIR, trainer.step, summary)
        return {"eval/mean_score": summary["mean_score"], "eval/success_rate": summary["success_rate"]}

    def on_train_end(self, trainer: Trainer) -> None:
        if self._venv is not None:
            self._venv.close()
            self._venv = None


def save_best(policy: Exportable, path: Path, step: int, summary: dict) -> None:
    """Write `policy` and `eval.json` (`{"step", "metrics"}`) to `path` as one atomic directory swap."""
    with atomic_directory(path) as tmp:
        policy.save(tmp)
        save_json({"step": step, "metrics": summary}, tmp / BEST_EVAL_FILE)


@contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Restore the global torch (CPU and `device`), numpy and random generator states on exit."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)

