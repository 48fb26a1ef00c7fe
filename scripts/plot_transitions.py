r"""Success against boundary jump for the modes of one or more `compare_transitions.py` runs.

Each argument is an output directory of `compare_transitions.py` (its `transitions.json`),
optionally followed by `=LABEL`; every real-time mode in it becomes one point, labelled
`<LABEL or directory name>: <mode>`. Offline rows are skipped.

Example:
    python scripts/plot_transitions.py "runs/vt/m1=70 ms" "runs/vt/x290=290 ms" --out runs/vt/tradeoff.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffusion_policy.deploy.plot import plot_transition_tradeoff


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="compare_transitions.py output directories, each as DIR or DIR=LABEL")
    parser.add_argument("--out", type=Path, default=Path("runs/transitions.png"))
    parser.add_argument("--title", default="chunk transitions")
    return parser.parse_args(argv)


def collect(runs: list[str]) -> dict[str, tuple[float, float, int, int]]:
    """`{"<label>: <mode>": (jump mean, jump max, successes, episodes)}` over the runs' real-time modes."""
    points = {}
    for spec in runs:
        run, _, label = spec.partition("=")
        path = Path(run) / "transitions.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {run} an output directory of compare_transitions.py?")
        for mode, row in json.loads(path.read_text()).items():
            if "loop" in row:
                jumps = row["loop"]["boundaries"]
                wins = sum(bool(e["success"]) for e in row["episodes"])
                n = len(row["episodes"])
                points[f"{label or Path(run).name}: {mode}"] = (jumps["jump_mean"], jumps["jump_max"], wins, n)
    return points


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    path = plot_transition_tradeoff(collect(args.runs), args.out, args.title)
    print(f"plot: {path}")
    return path


if __name__ == "__main__":
    main()
