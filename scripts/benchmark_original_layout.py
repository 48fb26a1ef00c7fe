"""A policy trained on an original-layout Diffusion Policy store against one trained on our own store.

Both stores hold the same scripted-expert Push-T episodes (same seeds): ours as `generate_demos.py`
records it (`agent_pos`, `keypoints`), the other in the exact layout of the original
`pusht_cchi_v7_replay.zarr` (`make_original_pusht_store.py`: `state`, `keypoint` (9, 2), float32
`img`, ...), read through `configs/task/pusht_original_lowdim.yaml` with nothing renamed or
converted. Each is trained with the `make demo` budget and evaluated on the same seeds in MuJoCo
(`PushT-v0`) and in the original pymunk env. Every step is the command
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

from diffusion_policy.core.cpu_features import cpu_model, native_bf16
from diffusion_policy.eval.metrics import EvalResult, fisher_exact_p

PYTHON = sys.executable
SCRIPTS = Path(__file__).resolve().parent
MUJOCO = ("diffusion_policy/PushT-v0", {"obs_type": "keypoints"})
PYMUNK = ("diffusion_policy/PushT-pymunk-v0", {"obs_type": "keypoints"})


def run(command: list[str], log: list[str], needed: bool = True) -> None:
    """Run one user command unless its output exists already (`needed` false); kept for the JSON either way."""
    printable = " ".join(command).replace(PYTHON, "python").replace(f"{SCRIPTS}/", "scripts/")
    log.append(printable)
    if needed:
        print(f"$ {printable}", flush=True)
        subprocess.run(command, check=True)


def evaluate(policy: Path, env: tuple[str, dict], out: Path, episodes: int, log: list[str]) -> dict:
    """Evaluate `policy` in `env` for `episodes` seeded episodes; its metrics summary."""
    run([PYTHON, str(SCRIPTS / "eval.py"), "--policy", str(policy), "--env", env[0], "--env-kwargs",
         json.dumps(env[1]), "--episodes", str(episodes), "--envs", "8", "--videos", "0", "--out", str(out),
         "--no-progress"], log, needed=not (out / "metrics.json").exists())
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
    run([PYTHON, str(SCRIPTS / "generate_demos.py"), "--env", MUJOCO[0], "--episodes", str(args.demos),
         "--out", str(stores["ours"]), "--workers", "2"], log, needed=not stores["ours"].exists())
    run([PYTHON, str(SCRIPTS / "make_original_pusht_store.py"), "--episodes", str(args.demos),
         "--out", str(stores["original_layout"])], log, needed=not stores["original_layout"].exists())
    tasks = {"ours": "pusht", "original_layout": "pusht_original_lowdim"}
    results: dict[str, dict] = {}
    for name, task in tasks.items():
        run_dir = out / name
        run([PYTHON, str(SCRIPTS / "train.py"), f"task={task}", "policy=diffusion_unet_small",
             f"training={args.training}", "eval.enabled=false", f"task.dataset.path={stores[name]}",
             f"run_dir={run_dir}", *args.overrides], log, needed=not (run_dir / "policy" / "config.json").exists())
        results[name] = {"task": task, **{env: evaluate(run_dir / "policy", spec, run_dir / f"eval_{env}",
                                                          args.episodes, log)
                                          for env, spec in (("mujoco", MUJOCO), ("pymunk", PYMUNK))}}
    a, b = results["original_layout"], results["ours"]
    report = {
        "machine": {"date": datetime.datetime.now().isoformat(timespec="seconds"), "platform": platform.platform(),
                    "cpu": cpu_model(), "native_bf16": native_bf16(),
                    "python": platform.python_version()},
        "demos": args.demos, "episodes": args.episodes, "training": args.training, "overrides": args.overrides,
        "commands": log, "results": results,
        **{f"fisher_p_success_{env}": fisher_exact_p(a[env]["successes"], args.episodes, b[env]["successes"],
                                                     args.episodes) for env in ("mujoco", "pymunk")},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    for name, per_env in results.items():
        for env in ("mujoco", "pymunk"):
            if env in per_env:
                r = per_env[env]
                print(f"{name:<16} {env:<7} success {r['success_rate']:.0%}  mean score {r['mean_score']:.3f}")
    for env in ("mujoco", "pymunk"):
        print(f"Fisher p ({env} success, original layout vs ours): {report[f'fisher_p_success_{env}']:.3f}")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
