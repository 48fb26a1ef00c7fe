"""Closed-loop results of several policies side by side, with Fisher's exact test against the first.

    python scripts/compare_policies.py --out benchmarks/compare.json \
        ddpm=runs/a/eval100/metrics.json flow=runs/b/eval100/metrics.json

Each `NAME=PATH` is a `metrics.json` that `scripts/eval.py` wrote. The evaluations must cover the
same episode seeds on the same environment (run eval.py with the same --seed and --episodes), so the
policies met the same initial states. For each policy the JSON holds success (and its 95% Wilson
interval), mean score, mean episode length and, from the second on, the two-sided p-value of
Fisher's exact test that its success rate equals the first policy's; p < 0.05 is marked significant.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffusion_policy.core.cpu_features import cpu_model
from diffusion_policy.eval.metrics import EvalResult, fisher_exact_p


def named_path(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=PATH/TO/metrics.json")
    return name, Path(path)


def compare(results: dict[str, EvalResult]) -> dict:
    """`{name: summary + fisher_p_vs_first + significant}` for evaluations over the same seeds."""
    names = list(results)
    first = results[names[0]]
    for name in names[1:]:
        result = results[name]
        if (result.env_id, result.seeds) != (first.env_id, first.seeds):
            raise ValueError(f"{name!r} was evaluated on {result.env_id} seeds {result.seeds[:3]}... "
                             f"({result.n_episodes} episodes), {names[0]!r} on {first.env_id} seeds "
                             f"{first.seeds[:3]}... ({first.n_episodes}): evaluate both on the same seeds")
    wins_first = sum(first.successes)
    table = {}
    for name, result in results.items():
        row = dict(result.summary)
        row["successes"] = sum(result.successes)
        if name != names[0]:
            row["fisher_p_vs_first"] = fisher_exact_p(row["successes"], result.n_episodes, wins_first,
                                                      first.n_episodes)
            row["significant"] = row["fisher_p_vs_first"] < 0.05
        table[name] = row
    return {"env_id": first.env_id, "episodes": first.n_episodes, "first_seed": first.seeds[0],
            "reference": names[0], "policies": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("evaluations", nargs="+", type=named_path, metavar="NAME=PATH")
    parser.add_argument("--out", type=Path, required=True, help="JSON to write")
    args = parser.parse_args()
    if len(args.evaluations) < 2:
        parser.error("give at least two NAME=PATH evaluations")
    names = [name for name, _ in args.evaluations]
    if len(set(names)) != len(names):
        parser.error(f"names must differ: {names}")
    for name, path in args.evaluations:
        if not path.is_file():
            parser.error(f"{name}: {path} does not exist (write it with scripts/eval.py --out DIR)")
    report = compare({name: EvalResult.from_json(path) for name, path in args.evaluations})
    report["sources"] = {name: str(path) for name, path in args.evaluations}
    report["cpu"] = cpu_model()  # of this machine: run the evaluations on the same one
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, row in report["policies"].items():
        low, high = row["success_ci95"]
        p = f"  p = {row['fisher_p_vs_first']:.3g}" if "fisher_p_vs_first" in row else ""
        print(f"{name:<12} success {row['success_rate']:.0%} ({low:.0%}-{high:.0%})  score {row['mean_score']:.3f}{p}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
