"""Metrics logging: always a local JSON-lines file, optionally Weights & Biases (online/offline)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WANDB_MODES = ("disabled", "offline", "online")


@dataclass
class WandbConfig:
    mode: str = "disabled"
    project: str = "diffusion-policy"
    name: str | None = None
    entity: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in WANDB_MODES:
            raise ValueError(f"wandb mode={self.mode!r} is not one of {WANDB_MODES}")


class RunLogger:
    """Appends `{"step": ..., **metrics}` rows to `<run_dir>/metrics.jsonl` and mirrors them to wandb.

    wandb is imported only when enabled; `offline` mode writes under `<run_dir>/wandb` and needs no
    network (sync later with `wandb sync`).
    """

    def __init__(self, run_dir: str | Path, wandb: WandbConfig, config: dict[str, Any] | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._wandb_run = None
        if wandb.mode != "disabled":
            import wandb as wandb_lib

            self._wandb_run = wandb_lib.init(
                project=wandb.project,
                name=wandb.name,
                entity=wandb.entity,
                mode=wandb.mode,
                dir=str(self.path.parent),
                config=config,
                resume="allow",
            )

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record `metrics` at optimisation step `step`."""
        row = {"step": step, **{k: _finite_or_none(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._wandb_run is not None:
            self._wandb_run.log(metrics, step=step)

    def close(self) -> None:
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
