"""The Meta-World benchmark protocol: N expert demos per task -> train -> closed-loop success.

For each task: record `n_demos` successful demonstrations with Meta-World's scripted policy (episode
seeds 0, 1, ...; failed placements are run, counted and left out), measure the expert itself on the
evaluation placements, then for each training seed train a policy on the demos and evaluate it on
`n_episodes` fresh placements (seeds `eval_seed + i`, never used for demos). Success counts when the
task's success was reached at any step (see `envs.metaworld`).

Published numbers are the DP3 paper's (Ze et al., "3D Diffusion Policy", RSS 2024, Meta-World table,
10 demos, success %): image-based Diffusion Policy and DP3.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diffusion_policy.core.trainer import resolve_device
from diffusion_policy.data.recorder import record_episodes
from diffusion_policy.data.replay_buffer import ReplayBuffer
from diffusion_policy.eval.rollout import EvalConfig, evaluate_policy
from diffusion_policy.policy import load_policy
from diffusion_policy.train_policy import train_policy
from envs.experts import make_expert
from envs.metaworld import canonical_task, metaworld_env_id

# task -> (image Diffusion Policy, DP3) success %, DP3 paper (RSS 2024), 10 demos.
PUBLISHED: dict[str, tuple[float, float]] = {
    "reach-v3": (18, 24),
    "push-v3": (30, 51),
    "pick-place-v3": (0, 12),
    "drawer-open-v3": (93, 100),
    "door-open-v3": (98, 99),
    "button-press-topdown-v3": (98, 100),
    "assembly-v3": (15, 99),
    "stick-pull-v3": (11, 27),
}
DEFAULT_TASKS: tuple[str, ...] = tuple(PUBLISHED)
# Demos are recorded from seeds 0, 1, ...; at most this many attempts per wanted demo.
MAX_ATTEMPTS_PER_DEMO = 5
# Each finished task's result, `<out>/<task>/result.json`: tables are built from whatever is there,
# so runs over disjoint task lists (in parallel, or one after another) fill one table.
RESULT_FILE = "result.json"
SEED_RESULT_FILE = "seed_result.json"


@dataclass
class SeedResult:
    """One training seed of one task: success rate over the evaluation episodes and its cost."""

    seed: int
    success_rate: float
    train_steps: int
    train_minutes: float
    eval_minutes: float


@dataclass
class TaskResult:
    """One task: the demos, the expert's own success, and every training seed's result."""

    task: str
    n_demos: int
    demo_attempts: int
    n_episodes: int
    expert_success_rate: float
    device: str
    seeds: list[SeedResult] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskResult:
        """Inverse of `to_dict` (derived fields are recomputed, not read)."""
        fields = {k: v for k, v in data.items() if k not in ("mean", "std", "seeds")}
        return cls(**fields, seeds=[SeedResult(**seed) for seed in data["seeds"]])

    def to_dict(self) -> dict[str, Any]:
        """Plain data: every field, plus the mean and std over seeds."""
        return {**asdict(self), "mean": self.mean, "std": self.std}

    @property
    def success_rates(self) -> list[float]:
        return [s.success_rate for s in self.seeds]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.success_rates)

    @property
    def std(self) -> float:
        """Population std over training seeds (0 for one seed), as the DP3 paper reports."""
        return statistics.pstdev(self.success_rates)


def record_demos(task: str, n_demos: int, path: str | Path, n_workers: int = 1, to_time_limit: bool = False) -> int:
    """Record `n_demos` successful expert episodes of `task` into a new store at `path`.

    Episode seeds run 0, 1, ... until `n_demos` succeeded; returns the number of episodes run. A demo
    ends at its first successful step, or with `to_time_limit` runs on to the episode's step limit
    (as the DP3 paper's demos do), so it also shows what the expert does after success.
    Raises RuntimeError naming the task when the expert fails too often
    (`MAX_ATTEMPTS_PER_DEMO * n_demos` episodes).
    """
    if n_demos < 1:
        raise ValueError(f"{n_demos=} must be at least 1")
    task = canonical_task(task)
    env_id = metaworld_env_id(task)
    buffer = ReplayBuffer.create(path, overwrite=True)
    factory = functools.partial(make_expert, env_id)
    attempts, limit = 0, MAX_ATTEMPTS_PER_DEMO * n_demos
    while buffer.n_episodes < n_demos:
        if attempts >= limit:
            raise RuntimeError(f"the {task} expert succeeded in only {buffer.n_episodes} of {attempts} episodes; "
                               f"{n_demos} demos were asked for")
        wanted = n_demos - buffer.n_episodes
        summary = record_episodes(env_id, factory, buffer, wanted, seed=attempts, n_workers=n_workers,
                                  progress=False, env_kwargs={"terminate_on_success": not to_time_limit})
        attempts += summary.episodes_run
    return attempts


def expert_success_rate(task: str, n_episodes: int, seed: int) -> float:
    """The scripted expert's success rate on episodes seeded `seed + i` (the evaluation placements)."""
    env_id = metaworld_env_id(task)
    summary = record_episodes(env_id, functools.partial(make_expert, env_id), ReplayBuffer.in_memory(),
                              n_episodes, seed=seed, progress=False)
    return summary.success_rate


def task_config(task: str, dataset_path: str | Path, base: dict[str, Any]) -> dict[str, Any]:
    """`base` (a task config, e.g. configs/task/metaworld.yaml) pointed at `task` and its demos."""
    name = canonical_task(task)
    config = {**base, "name": f"metaworld_{name}", "env_id": metaworld_env_id(name)}
    config["dataset"] = {**base["dataset"], "path": str(dataset_path)}
    return config


def run_task(
    task: str,
    out_dir: str | Path,
    base_task: dict[str, Any],
    policy_cfg: dict[str, Any],
    trainer_cfg: dict[str, Any],
    *,
    n_demos: int = 10,
    train_seeds: tuple[int, ...] = (0, 1, 2),
    n_episodes: int = 50,
    eval_seed: int = 100_000,
    n_envs: int = 8,
    n_videos: int = 1,
    vector: str = "async",
    skip_done: bool = False,
    demos_to_time_limit: bool = False,
) -> TaskResult:
    """The whole protocol for one task; run directories and evaluations go under `out_dir/<task>/`.

    `demos_to_time_limit` is `record_demos`' `to_time_limit`.

    Each seed's result is kept in `<task>/seed_<s>/SEED_RESULT_FILE`; with `skip_done` a seed that
    has one is not trained again (so a later run with more seeds only adds the new ones).
    """
    name = canonical_task(task)
    task_dir = Path(out_dir) / name
    demos = task_dir / "demos.zarr"
    attempts = record_demos(name, n_demos, demos, to_time_limit=demos_to_time_limit)
    device = resolve_device(trainer_cfg.get("device", "auto"))
    result = TaskResult(task=name, n_demos=n_demos, demo_attempts=attempts, n_episodes=n_episodes,
                        expert_success_rate=expert_success_rate(name, n_episodes, eval_seed), device=str(device))
    task_cfg = task_config(name, demos, base_task)
    for seed in train_seeds:
        run_dir = task_dir / f"seed_{seed}"
        if skip_done and (run_dir / SEED_RESULT_FILE).exists():
            result.seeds.append(SeedResult(**json.loads((run_dir / SEED_RESULT_FILE).read_text())))
            continue
        start = time.perf_counter()
        policy_dir = train_policy(task_cfg, policy_cfg, {**trainer_cfg, "seed": seed}, run_dir)
        train_minutes = (time.perf_counter() - start) / 60
        policy = load_policy(policy_dir, device=device)
        start = time.perf_counter()
        evaluation = evaluate_policy(
            policy,
            EvalConfig(env_id=task_cfg["env_id"], n_episodes=n_episodes, n_envs=n_envs, seed=eval_seed,
                       vector=vector, n_videos=n_videos),
            out_dir=run_dir / "eval",
            progress=False,
        )
        seed_result = SeedResult(seed=seed, success_rate=evaluation.summary["success_rate"],
                                 train_steps=int(trainer_cfg["max_steps"]), train_minutes=train_minutes,
                                 eval_minutes=(time.perf_counter() - start) / 60)
        _write_json(run_dir / SEED_RESULT_FILE, asdict(seed_result))
        result.seeds.append(seed_result)
    _write_json(task_dir / RESULT_FILE, result.to_dict())
    return result


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def load_results(out_dir: str | Path) -> list[TaskResult]:
    """Every task's result under `out_dir`: the DP3 paper's tasks in its order, then the rest by name.

    A task counts once its expert was measured (`result.json`); its seeds are every finished one on
    disk (`seed_<s>/seed_result.json`), so an interrupted run's finished seeds are in the table.
    """
    results = []
    for path in Path(out_dir).glob(f"*/{RESULT_FILE}"):
        result = TaskResult.from_dict(json.loads(path.read_text()))
        seeds = {s.seed: s for s in result.seeds}
        for seed_file in path.parent.glob(f"seed_*/{SEED_RESULT_FILE}"):
            seed = SeedResult(**json.loads(seed_file.read_text()))
            seeds.setdefault(seed.seed, seed)
        result.seeds = [seeds[k] for k in sorted(seeds)]
        results.append(result)
    order = {task: i for i, task in enumerate(DEFAULT_TASKS)}
    return sorted(results, key=lambda r: (order.get(r.task, len(order)), r.task))


def format_markdown(results: list[TaskResult]) -> str:
    """The benchmark table: task, expert, ours (mean ± std over seeds; no std for one seed), published,
    and the budget (training steps and the median wall-clock minutes of a seed)."""
    lines = [
        "| task | expert | ours (mean ± std) | DP (image) | DP3 | ≥ DP3 | seeds × episodes | budget per seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        published = PUBLISHED.get(r.task)
        dp, dp3 = (f"{published[0]:.0f}", f"{published[1]:.0f}") if published else ("–", "–")
        meets = ("yes" if 100 * r.mean >= published[1] else "no") if published else "–"
        steps = r.seeds[0].train_steps if r.seeds else 0
        minutes = statistics.median(s.train_minutes for s in r.seeds) if r.seeds else 0.0
        lines.append(
            f"| {r.task.removesuffix('-v3')} | {100 * r.expert_success_rate:.0f} | "
            f"{100 * r.mean:.1f}{f' ± {100 * r.std:.1f}' if len(r.seeds) > 1 else ''} | {dp} | {dp3} | {meets} | "
            f"{len(r.seeds)} × {r.n_episodes} | {steps} steps, {minutes:.1f} min, {r.device} |"
        )
    if results:
        mean = statistics.fmean(r.mean for r in results)
        known = [r for r in results if r.task in PUBLISHED]
        dp3_mean = statistics.fmean(PUBLISHED[r.task][1] for r in known) if known else float("nan")
        lines.append(f"| **mean** | | **{100 * mean:.1f}** | | {dp3_mean:.1f} | | | |")
    return "\n".join(lines) + "\n"


def plot_results(results: list[TaskResult], path: str | Path) -> None:
    """Bar chart per task: ours (mean, std error bar over seeds) beside the published DP and DP3."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(results))
    published = [PUBLISHED.get(r.task, (np.nan, np.nan)) for r in results]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(results) + 2), 3.6))
    ax.bar(x - 0.27, [p[0] for p in published], 0.27, label="DP, image (DP3 paper)", color="#bbbbbb")
    ax.bar(x, [p[1] for p in published], 0.27, label="DP3 (DP3 paper)", color="#7f9fbf")
    ax.bar(x + 0.27, [100 * r.mean for r in results], 0.27, yerr=[100 * r.std for r in results],
           capsize=3, label="ours, state", color="#d95f02")
    ax.set_xticks(x, [r.task.removesuffix("-v3") for r in results], rotation=30, ha="right")
    ax.set_ylabel("success %")
    ax.set_ylim(0, 105)
    ax.set_title(f"Meta-World, {results[0].n_demos} demos" if results else "Meta-World")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
