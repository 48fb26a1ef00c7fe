"""Multimodality check on ObstacleAvoid: sample chunks at one observation from trained policies.

    python scripts/multimodality.py --diffusion runs/demo/diffusion/policy \
        --regression runs/demo/regression/policy --out runs/demo/multimodality

Writes `report.json` and `chunks.png` to `--out`; exits with status 1 when the diffusion policy
is not multimodal (each side >= 30% of chunks, < 5% through the obstacle).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from diffusion_policy.eval.multimodality import mode_report, plot_chunks, sample_chunks, start_observation
from diffusion_policy.policy import load_policy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusion", type=Path, required=True, help="saved diffusion policy directory")
    parser.add_argument("--regression", type=Path, help="saved MSE-regression policy directory (optional)")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/multimodality"))
    args = parser.parse_args(argv)

    policies = {"diffusion": args.diffusion} | ({"regression": args.regression} if args.regression else {})
    chunks, reports = {}, {}
    for name, path in policies.items():
        policy = load_policy(path)
        chunks[name] = sample_chunks(policy, start_observation(policy), args.samples, seed=args.seed)
        reports[name] = mode_report(chunks[name])

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps({k: r.as_dict() for k, r in reports.items()}, indent=2))
    plot_chunks(chunks, reports, args.out / "chunks.png")
    print(f"{'policy':<12}{'left':>8}{'right':>8}{'neither':>9}{'obstacle':>10}  multimodal")
    for name, r in reports.items():
        print(f"{name:<12}{r.left:>8.1%}{r.right:>8.1%}{r.neither:>9.1%}{r.through_obstacle:>10.1%}  {r.multimodal}")
    print(f"plot: {args.out / 'chunks.png'}")
    return 0 if reports["diffusion"].multimodal else 1


if __name__ == "__main__":
    sys.exit(main())
