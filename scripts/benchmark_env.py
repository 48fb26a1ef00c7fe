"""Push-T simulation speed, side by side: MuJoCo Push-T vs the original pymunk Push-T (gym-pusht).

    python scripts/benchmark_env.py            # writes benchmarks/pusht_env.json

Each case steps `gymnasium.make(id, obs_type=...)` (wrappers included) with uniformly random
targets in one process pinned to one core, resetting every 300 steps, and reports env steps per
second. The original runs only when gym-pusht is installed (`pip install -e '.[pusht-original]'`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from envs import PUSHT_ID, PUSHT_MAX_STEPS, PUSHT_PYMUNK_ID


def steps_per_second(env_id: str, obs_type: str, n_steps: int, seed: int = 0) -> float:
    """Env steps/s of `env_id` over `n_steps` random-target steps (resets included)."""
    env = gym.make(env_id, obs_type=obs_type)
    rng = np.random.default_rng(seed)
    targets = rng.uniform(0, 512, (n_steps, 2))
    env.reset(seed=seed)
    start = time.perf_counter()
    for i, target in enumerate(targets):
        _, _, terminated, truncated, _ = env.step(target)
        if terminated or truncated or (i + 1) % PUSHT_MAX_STEPS == 0:
            env.reset(seed=seed + i)
    elapsed = time.perf_counter() - start
    env.close()
    return n_steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6000, help="env steps per case")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/pusht_env.json"))
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cases = [(PUSHT_ID, "state"), (PUSHT_ID, "keypoints")]
    try:
        import gym_pusht  # noqa: F401
        cases += [(PUSHT_PYMUNK_ID, "state"), (PUSHT_PYMUNK_ID, "keypoints")]
    except ImportError:
        print("gym-pusht is not installed: the original simulation is skipped")
    results = {f"{env_id} {obs_type}": steps_per_second(env_id, obs_type, args.steps) for env_id, obs_type in cases}
    for name, rate in results.items():
        print(f"{name:45s} {rate:8.0f} steps/s")
    report = {"steps_per_second": results, "steps": args.steps, "machine": platform.processor() or platform.machine(),
              "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
