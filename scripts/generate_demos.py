"""Record demonstrations of a registered environment into a Zarr replay buffer.

By default the env's scripted expert acts; `--policy module:callable` records any other policy,
where `callable(seed)` returns an object with `reset(seed)` and `__call__(env, obs) -> action`
(see `envs.experts.Expert`). Ctrl-C keeps every completed episode.

Example:
    python scripts/generate_demos.py --env diffusion_policy/PushT-v0 --episodes 200 \
        --out data/pusht.zarr --seed 0 --workers 2
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from diffusion_policy.core.checkpoint import save_json
from diffusion_policy.core.cpu_features import cpu_model
from diffusion_policy.data.recorder import RecordingSummary, record_episodes
from diffusion_policy.data.replay_buffer import ReplayBuffer
from envs.experts import Expert, make_expert


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; see `--help`."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", required=True, help="registered Gymnasium id")
    parser.add_argument("--policy", default=None,
                        help="module:callable building the acting policy from a seed (default: the env's expert)")
    parser.add_argument("--env-kwargs", type=json.loads, default={},
                        help='JSON options for gymnasium.make, e.g. \'{"obs_type": "state"}\'')
    parser.add_argument("--episodes", type=int, default=100, help="episodes to run")
    parser.add_argument("--out", required=True, help="path of the Zarr store to create")
    parser.add_argument("--seed", type=int, default=0, help="episode i uses seed + i")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--keep-failures", action="store_true", help="also store unsuccessful episodes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    parser.add_argument("--summary", type=Path, default=None,
                        help="also write the recording summary (with the mean saved episode length) to this JSON")
    return parser.parse_args(argv)


def format_summary(summary: RecordingSummary, path: str) -> str:
    """Two-column text table of a recording's outcome."""
    rows = [
        ("episodes run", str(summary.episodes_run)),
        ("episodes saved", str(summary.episodes_saved)),
        ("steps saved", str(summary.steps_saved)),
        ("success rate", f"{summary.success_rate:.1%}"),
        ("path", path),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def policy_factory(env_id: str, spec: str | None) -> Callable[[int], Expert]:
    """The env's expert factory, or the `module:callable` named by `spec`."""
    if spec is None:
        make_expert(env_id)  # fails early, naming the envs that have experts
        return functools.partial(make_expert, env_id)
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--policy {spec!r} must look like 'package.module:callable'")
    factory = getattr(importlib.import_module(module_name), attribute, None)
    if not callable(factory):
        raise ValueError(f"--policy {spec!r}: {module_name} has no callable {attribute!r}")
    return factory


def main(argv: list[str] | None = None) -> RecordingSummary:
    """Record the demonstrations asked for by `argv` and print a summary."""
    args = parse_args(argv)
    factory = policy_factory(args.env, args.policy)
    buffer = ReplayBuffer.create(args.out, overwrite=args.overwrite)
    start = time.perf_counter()
    summary = record_episodes(
        args.env,
        factory,
        buffer,
        args.episodes,
        seed=args.seed,
        successful_only=not args.keep_failures,
        n_workers=args.workers,
        env_kwargs=args.env_kwargs,
    )
    # Kept with the data: the expert's success over every episode run (failures are not saved).
    recording = {**dataclasses.asdict(summary), "env_id": args.env, "seed": args.seed,
                 "seconds": time.perf_counter() - start}
    buffer.update_attrs({"recording": recording})
    if args.summary is not None:
        mean_length = summary.steps_saved / summary.episodes_saved if summary.episodes_saved else None
        save_json({**recording, "env_kwargs": args.env_kwargs, "mean_saved_length": mean_length,
                   "machine": cpu_model()}, args.summary)
    print(format_summary(summary, args.out))
    return summary


if __name__ == "__main__":
    main()
