"""Record scripted-expert demonstrations of a registered environment into a Zarr replay buffer.

Example:
    python scripts/generate_demos.py --env diffusion_policy/ObstacleAvoid-v0 --episodes 100 \
        --out data/obstacle_avoid.zarr --seed 0 --workers 2
"""

from __future__ import annotations

import argparse
import functools

from diffusion_policy.data.recorder import RecordingSummary, record_episodes
from diffusion_policy.data.replay_buffer import ReplayBuffer
from envs.experts import EXPERT_FACTORIES, make_expert


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; see `--help`."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", required=True, choices=sorted(EXPERT_FACTORIES),
                        help="registered Gymnasium id that has a scripted expert")
    parser.add_argument("--episodes", type=int, default=100, help="episodes to run")
    parser.add_argument("--out", required=True, help="path of the Zarr store to create")
    parser.add_argument("--seed", type=int, default=0, help="episode i uses seed + i")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--keep-failures", action="store_true", help="also store unsuccessful episodes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
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


def main(argv: list[str] | None = None) -> RecordingSummary:
    """Record the demonstrations asked for by `argv` and print a summary."""
    args = parse_args(argv)
    buffer = ReplayBuffer.create(args.out, overwrite=args.overwrite)
    summary = record_episodes(
        args.env,
        functools.partial(make_expert, args.env),
        buffer,
        args.episodes,
        seed=args.seed,
        successful_only=not args.keep_failures,
        n_workers=args.workers,
    )
    print(format_summary(summary, args.out))
    return summary


if __name__ == "__main__":
    main()
