"""Push-T simulation and rendering speed, side by side: MuJoCo Push-T vs the original pymunk Push-T.

    python scripts/benchmark_env.py            # writes benchmarks/pusht_env.json

Steps: each case steps `gymnasium.make(id, obs_type=...)` (wrappers included) with uniformly random
targets, resetting every 300 steps, and reports env steps per second (pixel observation types
render a 96 x 96 camera image every step). Frames: 96 x 96 top-down images per second from MuJoCo's
camera with MuJoCo's default settings (640 x 480 offscreen buffer, shadows, 4x multisampling) and
with ours (`envs.offscreen`: buffer sized to the image, neither), from the NumPy drawing, and from
the original's pixel observation. Everything runs in this one process pinned to one core; Mesa's
software rasteriser draws in the calling thread (`envs` sets `LP_NUM_THREADS=0`). The original runs
only when gym-pusht is installed (`pip install -e '.[pusht-original]'`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np

from diffusion_policy.core.cpu_features import cpu_model
from envs import PUSHT_ID, PUSHT_MAX_STEPS, PUSHT_PYMUNK_ID

IMAGE_SIZE = 96


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


def frames_per_second(render: Callable[[], np.ndarray], n_frames: int, max_seconds: float = 10.0) -> float:
    """Calls per second of `render` (one frame each) over `n_frames` or `max_seconds`, whichever
    ends first (slow renderers), after one warm-up call."""
    render()
    start = time.perf_counter()
    done = 0
    while done < n_frames and (done == 0 or time.perf_counter() - start < max_seconds):
        render()
        done += 1
    return done / (time.perf_counter() - start)


def render_cases(with_original: bool) -> dict[str, Callable[[], np.ndarray]]:
    """Ways to draw a 96 x 96 top-down Push-T frame of one seeded scene."""
    import mujoco

    from envs.pusht import PushTEnv

    env = PushTEnv(obs_type="pixels", image_size=IMAGE_SIZE)
    env.reset(seed=0)
    plain = mujoco.Renderer(env.model, IMAGE_SIZE, IMAGE_SIZE)  # before ours resizes the buffer
    plain.update_scene(env.data, camera="top")
    cases = {"MuJoCo camera, MuJoCo defaults": plain.render, "MuJoCo camera, ours": env.camera_image,
             "NumPy drawing": lambda: env.render_frame_at(IMAGE_SIZE)}
    if with_original:
        original = gym.make(PUSHT_PYMUNK_ID, obs_type="pixels").unwrapped
        original.reset(seed=0)
        cases["original (gym-pusht) pixels"] = lambda: original.original._render(visualize=False)
    try:
        cases.update(metaworld_cases())
    except ImportError:
        print("Meta-World is not installed: its lit scene is skipped")
    return cases


def metaworld_cases() -> dict[str, Callable[[], np.ndarray]]:
    """A lit, shadowed scene (Meta-World reach, `corner2` camera): where MuJoCo's defaults cost most."""
    from envs.metaworld import CAMERA, MetaWorldEnv

    default_env, tuned_env = (MetaWorldEnv("reach", render_mode="rgb_array", render_size=IMAGE_SIZE) for _ in "ab")
    default_env.reset(seed=0)
    tuned_env.reset(seed=0)
    inner = default_env.unwrapped._inner
    plain = __import__("mujoco").Renderer(inner.model, IMAGE_SIZE, IMAGE_SIZE)

    def render_plain() -> np.ndarray:
        plain.update_scene(inner.data, camera=CAMERA)
        return plain.render()

    return {"Meta-World camera, MuJoCo defaults": render_plain, "Meta-World camera, ours": tuned_env.render}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6000, help="env steps per case")
    parser.add_argument("--frames", type=int, default=1000, help="frames per rendering case")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/pusht_env.json"))
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    obs_types = ("state", "keypoints", "pixels_agent_pos")
    cases = [(PUSHT_ID, obs_type) for obs_type in obs_types]
    try:
        import gym_pusht  # noqa: F401
        with_original = True
        cases += [(PUSHT_PYMUNK_ID, obs_type) for obs_type in obs_types]
    except ImportError:
        with_original = False
        print("gym-pusht is not installed: the original simulation is skipped")
    results = {f"{env_id} {obs_type}": steps_per_second(env_id, obs_type, args.steps) for env_id, obs_type in cases}
    for name, rate in results.items():
        print(f"{name:45s} {rate:8.0f} steps/s")
    frames = {name: frames_per_second(render, args.frames) for name, render in render_cases(with_original).items()}
    for name, rate in frames.items():
        print(f"{name:45s} {rate:8.0f} frames/s ({IMAGE_SIZE}x{IMAGE_SIZE})")
    report = {"steps_per_second": results, "frames_per_second": frames, "image_size": IMAGE_SIZE,
              "steps": args.steps, "frames": args.frames, "machine": platform.processor() or platform.machine(),
              "cpu": cpu_model(), "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
