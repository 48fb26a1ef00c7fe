r"""Meta-World benchmark: for each task, N expert demos -> train (several seeds) -> closed-loop success.

Writes `<out>/results.md` (the table: task, expert success, ours mean ± std over training seeds,
the DP3 paper's numbers, the training budget), `results.json` and `results.png`, rebuilt after every
task from all finished tasks under `<out>` (`<out>/<task>/result.json`; the composed config of each
task is in `<out>/<task>/benchmark.yaml`): an interrupted run keeps what it finished, `--skip-done`
continues it without retraining finished seeds (and `--seeds 3` after `--seeds 1` adds two), and runs
over disjoint task lists can share `--out` (e.g. two processes with OMP_NUM_THREADS=1 on 2 cores).
Needs `pip install -e '.[metaworld]'`.

Examples:
    # the eight tasks of the DP3 paper's table, 10 demos, 3 seeds x 50 episodes
    python scripts/benchmark_metaworld.py --out runs/metaworld
    # any Meta-World tasks, another budget (hydra overrides of configs/train.yaml)
    python scripts/benchmark_metaworld.py --tasks reach drawer-open --seeds 1 \
        --set training.max_steps=1000 policy=diffusion_unet_lowdim
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from diffusion_policy.eval.metaworld_benchmark import (
    DEFAULT_TASKS,
    TaskResult,
    format_markdown,
    load_results,
    plot_results,
    run_task,
)
from diffusion_policy.eval.rollout import VECTOR_MODES
from envs.metaworld import canonical_task

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_OVERRIDES = ("task=metaworld", "policy=diffusion_unet_short", "training=metaworld")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; see `--help`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS),
                        help="Meta-World task names, with or without -v3 (default: the DP3 paper's eight)")
    parser.add_argument("--demos", type=int, default=10, help="expert demos per task")
    parser.add_argument("--demos-to-time-limit", action="store_true",
                        help="record each demo to the episode's step limit, not just to its first success")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per task (0, 1, ...)")
    parser.add_argument("--episodes", type=int, default=50, help="evaluation episodes per training seed")
    parser.add_argument("--envs", type=int, default=8, help="environments stepped in parallel")
    parser.add_argument("--videos", type=int, default=1, help="videos per evaluation")
    parser.add_argument("--vector", choices=VECTOR_MODES, default="async", help="env processes or in-process")
    parser.add_argument("--out", type=Path, default=Path("runs/metaworld"), help="output directory")
    parser.add_argument("--skip-done", action="store_true",
                        help="keep training seeds that already have a result under --out")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: rebuild the table from what is under --out (e.g. an interrupted run)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help=f"hydra overrides of configs/train.yaml, after {' '.join(DEFAULT_OVERRIDES)}")
    args = parser.parse_args(argv)
    args.tasks = [canonical_task(task) for task in args.tasks]  # unknown names fail here, listing valid ones
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds} must be at least 1")
    return args


def compose_config(overrides: list[str]) -> dict[str, Any]:
    """configs/train.yaml composed with the Meta-World defaults and `overrides`, as plain data."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose("train", overrides=[*DEFAULT_OVERRIDES, *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def main(argv: list[str] | None = None) -> list[TaskResult]:
    """Run the benchmark asked for by `argv`; returns every task's result."""
    args = parse_args(argv)
    cfg = compose_config(args.set)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    if args.report_only:
        write_report(args.out)
        return load_results(args.out)
    for task in args.tasks:
        print(f"== {task}")
        (args.out / task).mkdir(parents=True, exist_ok=True)
        (args.out / task / "benchmark.yaml").write_text(OmegaConf.to_yaml({**cfg, "benchmark": options}))
        run_task(
            task, args.out, cfg["task"], cfg["policy"], cfg["training"],
            n_demos=args.demos, train_seeds=tuple(range(args.seeds)), n_episodes=args.episodes,
            n_envs=args.envs, n_videos=args.videos, vector=args.vector, skip_done=args.skip_done,
            demos_to_time_limit=args.demos_to_time_limit,
        )
        write_report(args.out)
    return load_results(args.out)


def write_report(out: Path) -> None:
    """results.md / .json / .png from every task and finished seed under `out`; prints the table."""
    results = load_results(out)
    table = format_markdown(results)
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps([r.to_dict() for r in results], indent=2))
    plot_results(results, out / "results.png")
    print(table)


if __name__ == "__main__":
    main()
