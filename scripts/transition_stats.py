"""Add the statistics to a file that merges several `compare_transitions.py` runs (e.g. docs/transitions_virtual.json).

    python scripts/transition_stats.py docs/transitions_virtual.json

Each row `"<run>/<mode>"` holds its per-episode `successes`, the `policy`, `virtual_latency_ms` and
request `threshold` of its run. Every real-time row gets `n_successes`, `n_episodes`, its 95% Wilson
interval (`success_wilson95`) and, when the file has a `replace` row for the same policy, latency and
threshold, `fisher_p_vs_replace`: the two-sided Fisher exact p of the success difference (the runs
use the same episode seeds). The file is rewritten atomically; running it again changes nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffusion_policy.core.checkpoint import save_json
from diffusion_policy.eval.metrics import fisher_exact_p, wilson_interval


def group_of(row: dict) -> tuple:
    """Rows that share policy, latency and request threshold are compared with each other."""
    return row["policy"], row["virtual_latency_ms"], row["threshold"]


def add_statistics(rows: dict[str, dict]) -> dict[str, dict]:
    """`rows` with the statistics added to every row that has per-episode `successes`."""
    live = {name: row for name, row in rows.items() if isinstance(row.get("successes"), list)}
    empty = [name for name, row in live.items() if not row["successes"]]
    if empty:
        raise ValueError(f"rows {empty} have no episodes")
    baselines = {group_of(row): row for name, row in live.items() if name.endswith("/replace")}
    for row in live.values():
        wins, n = sum(map(bool, row["successes"])), len(row["successes"])
        row["n_successes"], row["n_episodes"] = wins, n
        row["success_wilson95"] = list(wilson_interval(wins, n))
        baseline = baselines.get(group_of(row))
        if baseline is not None and baseline is not row:
            row["fisher_p_vs_replace"] = fisher_exact_p(wins, n, sum(map(bool, baseline["successes"])),
                                                        len(baseline["successes"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="merged transitions JSON, rewritten in place")
    args = parser.parse_args()
    rows = add_statistics(json.loads(args.file.read_text()))
    save_json(rows, args.file)
    for name, row in rows.items():
        if "fisher_p_vs_replace" in row:
            print(f"{name:<32} {row['n_successes']}/{row['n_episodes']}  p vs replace {row['fisher_p_vs_replace']:.3g}")


if __name__ == "__main__":
    main()
