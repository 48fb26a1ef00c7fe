"""A policy trained on an original-layout Diffusion Policy store against one trained on our own store.

Both stores hold the same scripted-expert Push-T episodes (same seeds): ours as `generate_demos.py`
records it (`agent_pos`, `keypoints`), the other in the exact layout of the original
`pusht_cchi_v7_replay.zarr` (`make_original_pusht_store.py`: `state`, `keypoint` (9, 2), float32
`img`, ...), read through `configs/task/pusht_original_lowdim.yaml` with nothing renamed or
converted. Each is trained with the `make demo` budget and evaluated on the same seeds in MuJoCo
(`PushT-v0`), the original-layout policy also in the original pymunk env. Every step is the command
a user would run; this script only runs them and compares (Fisher's exact test on success).

    python scripts/benchmark_original_layout.py --out runs/original_layout \\
        --json benchmarks/original_layout_pusht.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

from diffusion_policy.eval.metrics import EvalResult, fisher_exact_p

PYTHON = sys.executable
SCRIPTS = Path(__file__).resolve().parent
MUJOCO = ("diffusion_policy/PushT-v0", {"obs_type": "keypoints"})
PYMUNK = ("diffusion_policy/PushT-pymunk-v0", {"obs_type": "keypoints"})


def run(command: list[str], log: list[str]) -> None:
    """Run one user command (printed, and kept for the JSON), failing loudly."""
    printable = " ".join(command).replace(PYTHON, "python")
    print(f"$ {printable}", flush=True)
    log.append(printable)
    subprocess.run(command, check=True)


def evaluate(policy: Path, env: tuple[str, dict], out: Path, episodes: int, log: list[str]) -> dict:
    """Evaluate `policy` in `env` for `episodes` seeded episodes; its metrics summary."""
    if not (out / "metrics.json").exists():
        run([PYTHON, str(SCRIPTS / "eval.py"), "--policy", str(policy), "--env", env[0], "--env-kwargs",
             json.dumps(env[1]), "--episodes", str(episodes), "--envs", "8", "--videos", "0", "--out", str(out),
             "--no-progress"], log)
    result = EvalResult.from_json(out / "metrics.json")
    return {"env_id": env[0], "successes": int(sum(result.successes)), **result.summary}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/original_layout"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/original_layout_pusht.json"))
    parser.add_argument("--demos", type=int, default=200)
    parser.add_argument("--episodes", type=int, default=100, help="evaluation episodes per policy and env")
    parser.add_argument("--training", default="pusht_demo", help="training config (the make demo budget)")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra hydra overrides for both trainings")
    args = parser.parse_args(argv)
    out, log = args.out, []
    stores = {"ours": out / "pusht.zarr", "original_layout": out / "pusht_original_layout.zarr"}
    if not stores["ours"].exists():
        run([PYTHON, str(SCRIPTS / "generate_demos.py"), "--env", MUJOCO[0], "--episodes", str(args.demos),
             "--out", str(stores["ours"]), "--workers", "2"], log)
    if not stores["original_layout"].exists():
        run([PYTHON, str(SCRIPTS / "make_original_pusht_store.py"), "--episodes", str(args.demos),
             "--out", str(stores["original_layout"])], log)
    tasks = {"ours": "pusht", "original_layout": "pusht_original_lowdim"}
    results: dict[str, dict] = {}
    for name, task in tasks.items():
        run_dir = out / name
        if not (run_dir / "policy" / "config.json").exists():
            run([PYTHON, str(SCRIPTS / "train.py"), f"task={task}", "policy=diffusion_unet_small",
                 f"training={args.training}", "eval.enabled=false", f"task.dataset.path={stores[name]}",
                 f"run_dir={run_dir}", *args.overrides], log)
        results[name] = {"task": task, "mujoco": evaluate(run_dir / "policy", MUJOCO, run_dir / "eval_mujoco",
                                                          args.episodes, log)}
    results["original_layout"]["pymunk"] = evaluate(out / "original_layout" / "policy", PYMUNK,
                                                    out / "original_layout" / "eval_pymunk", args.episodes, log)
    a, b = results["original_layout"]["mujoco"], results["ours"]["mujoco"]
    report = {
        "machine": {"date": datetime.datetime.now().isoformat(timespec="seconds"), "platform": platform.platform(),
                    "python": platform.python_version()},
        "demos": args.demos, "episodes": args.episodes, "training": args.training, "overrides": args.overrides,
        "commands": log, "results": results,
        "fisher_p_success_mujoco": fisher_exact_p(a["successes"], args.episodes, b["successes"], args.episodes),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    for name, per_env in results.items():
        for env in ("mujoco", "pymunk"):
            if env in per_env:
                r = per_env[env]
                print(f"{name:<16} {env:<7} success {r['success_rate']:.0%}  mean score {r['mean_score']:.3f}")
    print(f"Fisher p (MuJoCo success, original layout vs ours): {report['fisher_p_success_mujoco']:.3f}")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
