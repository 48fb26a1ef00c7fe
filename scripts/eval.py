r"""Evaluate a saved policy in closed loop: mean score, success rate (Wilson 95% interval), videos.

Examples:
    # a training run directory: evaluates <run>/best_policy (else <run>/policy) in the run's task env
    python scripts/eval.py --policy runs/obstacle_avoid/diffusion_2025-01-01_12-00-00
    # any policy directory, in an env of your choice
    python scripts/eval.py --policy path/to/policy --episodes 100 --envs 16 --videos 4 \
        --env diffusion_policy/PushT-v0 --env-kwargs '{"obs_type": "keypoints"}'

Results go to --out (default `<run>/eval/<policy>_<timestamp>/`): `metrics.json` and `videos/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from diffusion_policy.core.trainer import resolve_device
from diffusion_policy.eval.metrics import EvalResult, format_table
from diffusion_policy.eval.rollout import VECTOR_MODES, EvalConfig, evaluate_policy
from diffusion_policy.eval.run_dir import find_run, resolve_policy_dir
from diffusion_policy.policy import DiffusionPolicy, load_policy
from diffusion_policy.policy.diffusion_policy import INFERENCE_MODES


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} must be a JSON object, like '{{\"obs_type\": \"state\"}}'")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; see `--help`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, type=Path, help="policy directory or training run directory")
    parser.add_argument("--env", help="Gymnasium id (default: the run's task env)")
    parser.add_argument("--env-kwargs", type=_json_object, help="JSON object of env options (default: the run's)")
    parser.add_argument("--episodes", type=int, default=50, help="episodes to run")
    parser.add_argument("--envs", type=int, default=8, help="environments stepped in parallel")
    parser.add_argument("--seed", type=int, default=100_000, help="episode i is reset with seed + i")
    parser.add_argument("--videos", type=int, default=2, help="record the first N episodes")
    parser.add_argument("--vector", choices=VECTOR_MODES, default="async", help="env processes or in-process")
    parser.add_argument("--max-steps", type=int, help="episode step limit (default: the env's)")
    parser.add_argument("--out", type=Path, help="output directory (default: <run>/eval/<policy>_<timestamp>)")
    parser.add_argument("--device", default="auto", help="torch device for the policy (auto: CUDA if available)")
    parser.add_argument("--inference", choices=INFERENCE_MODES, default="auto",
                        help="diffusion sampling path: auto (fast on CPU), eager (float32 as trained) or fast (bf16)")
    parser.add_argument("--steps", type=int, default=None,
                        help="diffusion sampling steps (default: the policy's num_inference_steps)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace, task: dict[str, Any]) -> EvalConfig:
    """The EvalConfig from the options, falling back to the run's task env (and its kwargs)."""
    env_id = args.env or task.get("env_id")
    if env_id is None:
        raise ValueError(f"--env is required: no training run config with a task env_id was found above {args.policy}")
    env_kwargs = args.env_kwargs
    if env_kwargs is None:
        # The run's env options only apply to the run's env.
        env_kwargs = (task.get("env_kwargs") or {}) if env_id == task.get("env_id") else {}
    return EvalConfig(env_id=env_id, env_kwargs=env_kwargs, n_episodes=args.episodes, n_envs=args.envs,
                      seed=args.seed, vector=args.vector, n_videos=args.videos,
                      max_episode_steps=args.max_steps, device=args.device)


def main(argv: list[str] | None = None) -> EvalResult:
    """Evaluate the policy named by `argv`, print the metrics table and where the results went."""
    args = parse_args(argv)
    policy_dir = resolve_policy_dir(args.policy)
    run = find_run(policy_dir)
    config = build_config(args, run[1] if run else {})
    out = args.out
    if out is None:
        base = run[0] if run else policy_dir.resolve().parent
        label = "_".join(policy_dir.resolve().relative_to(base).parts)
        out = base / "eval" / f"{label}_{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    policy = load_policy(policy_dir, resolve_device(args.device))
    if isinstance(policy, DiffusionPolicy):
        policy.inference = args.inference
        if args.steps is not None:  # checked against the policy's sampler and schedule
            policy.config = dataclasses.replace(policy.config, num_inference_steps=args.steps)
    elif args.steps is not None:
        raise ValueError(f"--steps {args.steps}: {policy_dir} is a {policy.kind!r} policy, which takes no steps")
    result = evaluate_policy(policy, config, out_dir=out, progress=not args.no_progress)
    print(f"policy        {policy_dir}")
    print(format_table(result))
    for video in result.videos:
        print(f"video         {video}")
    print(f"metrics       {out / 'metrics.json'}")
    return result


if __name__ == "__main__":
    main()
