"""Plots of controller runs: commanded vs executed actions (chunk boundaries and interventions marked),
and success against boundary jump across chunk transitions."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffusion_policy.deploy.run_log import RunLog  # noqa: E402
from diffusion_policy.eval.metrics import wilson_interval  # noqa: E402


def plot_commands(log: RunLog, path: str | Path, observed_label: str = "executed") -> Path:
    """One panel per action dimension: commands per tick (steps), the recorded observation key
    (`ControllerConfig.record_obs_key`) when logged, chunk boundaries (grey) and interventions (red)."""
    commands = log.commands()
    if commands.size == 0:  # every tick held (or none ran): one empty panel, still written
        commands = np.full((log.n_ticks, 1), np.nan)
    t_first = log.ticks[0]["due"] if log.ticks else 0.0
    t = np.array([tick["sent"] for tick in log.ticks]) - t_first
    chunks = np.array([tick["chunk"] for tick in log.ticks])
    observed = [tick["observed"] for tick in log.ticks]
    n_dims = commands.shape[1]
    fig, axes = plt.subplots(n_dims, 1, figsize=(9, 2.6 * n_dims), sharex=True, squeeze=False)
    for d, ax in enumerate(axes[:, 0]):
        ax.step(t, commands[:, d], where="post", label="commanded", lw=1.2)
        if observed and all(o is not None and len(o) == n_dims for o in observed):
            ax.plot(t, np.array(observed)[:, d], label=observed_label, lw=1.0)
        for k in np.flatnonzero(chunks[1:] != chunks[:-1]) + 1:
            ax.axvline(t[k], color="0.8", lw=0.6, zorder=0)
        for event in log.interventions:
            ax.axvline(event.time - t_first, color="tab:red", lw=0.8, alpha=0.6)
        ax.set_ylabel(f"action[{d}]")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[0, 0].set_title(f"{log.transition} at {log.rate_hz:g} Hz (grey: chunk boundaries, red: interventions)")
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_transition_tradeoff(points: dict[str, tuple[float, float, int, int]], path: str | Path,
                             title: str = "chunk transitions") -> Path:
    """Success against boundary jump, one point per run: `{label: (jump mean, jump max, successes, episodes)}`.

    Two panels (mean and max jump on x), success rate on y with its 95% Wilson interval.
    """
    if not points:
        raise ValueError("no points to plot")
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5), sharey=True)
    for i, (label, (jump_mean, jump_max, wins, n)) in enumerate(points.items()):
        if n < 1 or not 0 <= wins <= n:
            raise ValueError(f"{label!r}: {wins} successes of {n} episodes")
        rate, (low, high) = wins / n, wilson_interval(wins, n)
        color = plt.cm.tab20(i % 20)
        for ax, jump in zip(axes, (jump_mean, jump_max)):
            ax.errorbar(jump, rate, yerr=[[rate - low], [high - rate]], fmt="o", color=color, capsize=3,
                        label=label if ax is axes[0] else None)
    axes[0].set_xlabel("boundary jump, mean (action units)")
    axes[1].set_xlabel("boundary jump, max (action units)")
    axes[0].set_ylabel("success rate (95% interval)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: better is up and to the left")
    fig.legend(loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.12 + 0.025 * (len(points) // 3), 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

