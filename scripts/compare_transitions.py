r"""Real-time Push-T with each chunk transition against offline evaluation of the same checkpoint.

For each transition, runs `scripts/run_robot.py`'s episodes (same seeds, wall-clock physics), then
evaluates the policy offline (`evaluate_policy`, same seeds), and writes `transitions.json` and a
markdown table `transitions.md`: success with its Wilson 95% interval, score, boundary jump / jerk
and loop timing per mode, and each mode's Fisher exact p against `replace` (when it is one of the
modes; same seeds), all also in the JSON.

Example (about 25 s per episode and mode at --time-scale 1):
    python scripts/compare_transitions.py --policy runs/demo/pusht/policy --episodes 25

With --virtual-latency-ms the loop runs in virtual time (run_robot.py): deterministic, and an episode
takes only its compute time (2-4 s here), so a transition can be measured over hundreds of episodes:
    python scripts/compare_transitions.py --policy runs/demo/pusht/policy --episodes 200 \
        --virtual-latency-ms 70 --transitions replace rtc_soft:3
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from diffusion_policy.core.checkpoint import save_json
from diffusion_policy.eval.metrics import fisher_exact_p, wilson_interval
from diffusion_policy.eval.rollout import EvalConfig, evaluate_policy
from diffusion_policy.eval.run_dir import resolve_policy_dir
from diffusion_policy.policy import DiffusionPolicy, load_policy

_spec = importlib.util.spec_from_file_location("run_robot", Path(__file__).parent / "run_robot.py")
run_robot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_robot)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, type=Path)
    parser.add_argument("--episodes", type=int, default=25)
    parser.add_argument("--seed", type=int, default=100_000)
    parser.add_argument("--transitions", nargs="+", default=["replace", "rtc_inpaint", "rtc_soft", "ensemble"],
                        help=f"any of {run_robot.TRANSITIONS}; rtc_soft:N, rtc_guided:N and rtc_select:N hold only N "
                        "planned actions after the held ones softly (run_robot.py --soft-steps N)")
    parser.add_argument("--virtual-latency-ms", type=float, help="run in virtual time with this latency")
    parser.add_argument("--margin", type=int, help="real-time chunking's extra held ticks (run_robot.py --margin)")
    parser.add_argument("--guidance", type=float, help="rtc_guided's clip of the guidance weight")
    parser.add_argument("--candidates", type=int, help="rtc_select's number of sampled chunks")
    parser.add_argument("--threshold", type=int, help="request a chunk when this many actions remain "
                        "(run_robot.py --threshold)")
    parser.add_argument("--skip-offline", action="store_true", help="do not evaluate the policy offline")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--inference", default="auto")
    parser.add_argument("--out", type=Path, default=Path("runs/transitions"))
    args = parser.parse_args(argv)
    for mode in args.transitions:
        name, _, steps = mode.partition(":")
        if name not in run_robot.TRANSITIONS or (steps and (name not in run_robot.SOFT_TRANSITIONS
                                                             or not steps.isdigit())):
            parser.error(f"transition {mode!r} is not one of {run_robot.TRANSITIONS} "
                         f"(or {'/'.join(run_robot.SOFT_TRANSITIONS)}:N)")
    return args


def offline(args: argparse.Namespace) -> dict:
    policy = load_policy(resolve_policy_dir(args.policy))
    if isinstance(policy, DiffusionPolicy):
        policy.inference = args.inference
    result = evaluate_policy(policy, EvalConfig(env_id=run_robot.PUSHT_ID, n_episodes=args.episodes, n_envs=1,
                                                seed=args.seed, vector="sync", n_videos=0))
    summary = {k: result.summary[k] for k in ("success_rate", "mean_score", "success_ci95")}
    return summary | {"n_episodes": args.episodes}


def add_statistics(rows: dict[str, dict], baseline: str = "replace") -> None:
    """Give every row its successes, Wilson 95% interval and, against the `baseline` row when there
    is one, the two-sided Fisher exact p of the success difference (same seeds, same episode count)."""
    counts = {}
    for name, r in rows.items():
        if "episodes" in r:
            counts[name] = (sum(bool(e["success"]) for e in r["episodes"]), len(r["episodes"]))
        else:  # the offline row: evaluate_policy's summary
            counts[name] = (round(r["success_rate"] * r["n_episodes"]), r["n_episodes"])
    for name, (wins, n) in counts.items():
        rows[name]["successes"], rows[name]["n_episodes"] = wins, n
        rows[name]["success_wilson95"] = list(wilson_interval(wins, n))
        if baseline in counts and name != baseline:
            rows[name][f"fisher_p_vs_{baseline}"] = fisher_exact_p(wins, n, *counts[baseline])


def table(rows: dict[str, dict], baseline: str = "replace") -> str:
    lines = ["| mode | success (95% CI) | mean score | boundary jump mean / max | inside-chunk step | jerk mean / max "
             f"| latency p50 / p99 (ms) | jitter p99 (ms) | deadline misses | p vs {baseline} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        low, high = r["success_wilson95"]
        success = f"{r['success_rate']:.0%} ({low:.0%}–{high:.0%})"
        p = r.get(f"fisher_p_vs_{baseline}")
        p_cell = "" if p is None else f"{p:.2g}"
        if "loop" not in r:
            lines.append(f"| {name} | {success} | {r['mean_score']:.3f} | | | | | | | {p_cell} |")
            continue
        b, lp = r["loop"]["boundaries"], r["loop"]
        lines.append(f"| {name} | {success} | {r['mean_score']:.3f} | {b['jump_mean']:.1f} / "
                     f"{b['jump_max']:.1f} | {b['inside_step_mean']:.1f} | {b['jerk_mean']:.1f} / {b['jerk_max']:.1f} "
                     f"| {lp['inference_latency_ms']['p50']:.0f} / {lp['inference_latency_ms']['p99']:.0f} "
                     f"| {lp['period_jitter_ms']['p99']:.2f} | {lp['deadline_misses']} | {p_cell} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    # The offline evaluation runs last: before it this thread has no torch thread pool, which lets a
    # wall-clock run's inference worker compute at full speed (deploy/worker.py).
    rows = {} if args.skip_offline else {"offline (evaluate_policy)": {}}
    passed = [flag for name in ("virtual_latency_ms", "margin", "guidance", "candidates", "threshold")
              if getattr(args, name) is not None for flag in ("--" + name.replace("_", "-"), str(getattr(args, name)))]
    for mode in args.transitions:
        transition, _, steps = mode.partition(":")
        rows[mode] = run_robot.main(
            ["--policy", str(args.policy), "--episodes", str(args.episodes), "--seed", str(args.seed),
             "--transition", transition, "--time-scale", str(args.time_scale), "--inference", args.inference,
             "--out", str(args.out / mode.replace(":", "_")), "--plot", *(["--soft-steps", steps] if steps else []),
             *passed])
        save_json(rows, args.out / "transitions.json")
    if not args.skip_offline:
        rows["offline (evaluate_policy)"] = offline(args)
        print(rows["offline (evaluate_policy)"])
    add_statistics(rows)
    save_json(rows, args.out / "transitions.json")
    (args.out / "transitions.md").write_text(table(rows))
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
