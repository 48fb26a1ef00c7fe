"""Find a policy directory inside a training run, and the run (with its task config) above a policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from diffusion_policy.eval.callback import BEST_POLICY_DIR

POLICY_CONFIG = "config.json"
RUN_CONFIG = "config.yaml"
# A policy directory sits at most this deep below its run: <run>/checkpoints/step_XXXXXXXX/policy.
_RUN_SEARCH_DEPTH = 3


def resolve_policy_dir(path: Path) -> Path:
    """`path` itself if it is a policy directory, else a run's `best_policy/`, else its `policy/`."""
    for candidate in (path, path / BEST_POLICY_DIR, path / "policy"):
        if (candidate / POLICY_CONFIG).is_file():
            return candidate
    raise FileNotFoundError(f"{path} is neither a policy directory (no {POLICY_CONFIG}) "
                            f"nor a run directory with {BEST_POLICY_DIR}/ or policy/")


def find_run(policy_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The training run holding `policy_dir` and its task config, from the nearest `config.yaml` above it."""
    for run_dir in list(policy_dir.resolve().parents)[:_RUN_SEARCH_DEPTH]:
        if (run_dir / RUN_CONFIG).is_file():
            config = OmegaConf.to_container(OmegaConf.load(run_dir / RUN_CONFIG), resolve=True)
            return run_dir, config.get("task") or {}
    return None
