"""Record demonstration episodes from a policy (usually a scripted expert) into a ReplayBuffer.

Episode `i` always runs with `env.reset(seed=seed + i)` and `policy.reset(seed=seed + i)`, so a
recording depends only on `seed`, not on how many worker processes produced it. Each finished
episode is appended to the buffer at once, in episode order: an interrupted recording (Ctrl-C)
keeps every episode completed before the interruption.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm import tqdm

import envs  # noqa: F401  registers the project's env ids here and in spawned workers
from diffusion_policy.data.dataset import ACTION_KEY
from diffusion_policy.data.replay_buffer import ReplayBuffer
from envs.experts import Expert

# Per-process state of a pool worker, built once by `_init_worker`.
_worker_env: gym.Env | None = None
_worker_policy: Expert | None = None


@dataclass(frozen=True)
class RecordingSummary:
    """Outcome of `record_episodes`; `success_rate` is over all episodes run, saved or not."""

    episodes_run: int
    episodes_saved: int
    steps_saved: int
    success_rate: float


def make_recording_env(env_id: str, env_kwargs: dict[str, Any] | None = None) -> gym.Env:
    """`gymnasium.make(env_id, **env_kwargs)`, refusing envs whose episodes have no step limit."""
    env = gym.make(env_id, **(env_kwargs or {}))
    if env.spec is None or env.spec.max_episode_steps is None:
        env.close()
        raise ValueError(f"{env_id=} has no max_episode_steps, so an episode may never end; "
                         "register one or pass env_kwargs={'max_episode_steps': ...}")
    return env


def rollout_episode(env: gym.Env, policy: Expert, seed: int) -> tuple[dict[str, np.ndarray], bool]:
    """Run one episode seeded with `seed`; returns (episode, success).

    The episode holds every observation key `(L, ...)` (the observation *before* each action) and
    `"action"` `(L, Da)` float32, so row t pairs obs_t with action_t. The episode succeeded when
    `info["success"]` was true at any step, as the evaluator counts it.
    """
    obs, _ = env.reset(seed=seed)
    policy.reset(seed=seed)
    if not isinstance(obs, dict):
        raise TypeError(f"{env.spec.id} observations must be dicts of arrays, got {type(obs).__name__}")
    if ACTION_KEY in obs:
        raise ValueError(f"{env.spec.id} has an observation key {ACTION_KEY!r}, which clashes with actions")
    observations: dict[str, list[np.ndarray]] = {key: [] for key in obs}
    actions: list[np.ndarray] = []
    terminated = truncated = success = False
    while not (terminated or truncated):
        action = np.array(policy(env, obs), dtype=np.float32)
        for key, value in obs.items():
            observations[key].append(np.array(value))
        actions.append(action)
        obs, _, terminated, truncated, info = env.step(action)
        if "success" not in info:
            raise KeyError(f"{env.spec.id} step info lacks 'success'; it has {sorted(info)}")
        success = success or bool(info["success"])
    episode = {key: np.stack(values) for key, values in observations.items()}
    episode[ACTION_KEY] = np.stack(actions)
    return episode, success


def _init_worker(
    env_id: str, env_kwargs: dict[str, Any] | None, policy_factory: Callable[[int], Expert], seed: int
) -> None:
    global _worker_env, _worker_policy
    # Ctrl-C reaches the whole process group; only the parent should react (it stops the pool).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_env = make_recording_env(env_id, env_kwargs)
    _worker_policy = policy_factory(seed)


def _rollout_in_worker(episode_seed: int) -> tuple[dict[str, np.ndarray], bool]:
    assert _worker_env is not None and _worker_policy is not None, "worker used before _init_worker"
    return rollout_episode(_worker_env, _worker_policy, episode_seed)


def _rollouts(
    env_id: str,
    policy_factory: Callable[[int], Expert],
    seeds: list[int],
    seed: int,
    n_workers: int,
    env_kwargs: dict[str, Any] | None,
) -> Iterator[tuple[dict[str, np.ndarray], bool]]:
    """Yield (episode, success) for each of `seeds`, in order, from this process or a spawn pool."""
    if n_workers == 1:
        env = make_recording_env(env_id, env_kwargs)
        policy = policy_factory(seed)
        try:
            for episode_seed in seeds:
                yield rollout_episode(env, policy, episode_seed)
        finally:
            env.close()
        return
    # spawn: workers start clean (no forked copies of the parent's threads, torch or Zarr handles).
    context = multiprocessing.get_context("spawn")
    initargs = (env_id, env_kwargs, policy_factory, seed)
    with context.Pool(n_workers, initializer=_init_worker, initargs=initargs) as pool:
        yield from pool.imap(_rollout_in_worker, seeds)


def record_episodes(
    env_id: str,
    policy_factory: Callable[[int], Expert],
    buffer: ReplayBuffer,
    n_episodes: int,
    *,
    seed: int = 0,
    successful_only: bool = True,
    n_workers: int = 1,
    progress: bool = True,
    env_kwargs: dict[str, Any] | None = None,
) -> RecordingSummary:
    """Run `n_episodes` episodes of `env_id` and append them to `buffer` as they finish.

    `policy_factory(seed)` builds the policy once per process (picklable when `n_workers > 1`);
    the policy must draw all per-episode randomness from its `reset(seed=seed + i)`. Episodes hold
    each observation key `(L, ...)` and `"action"` `(L, Da)`; with `successful_only`, failed
    episodes are run but not stored. `n_workers > 1` runs episodes in a spawn process pool and
    stores exactly what `n_workers=1` would.
    """
    if n_episodes < 1:
        raise ValueError(f"{n_episodes=} must be at least 1")
    if n_workers < 1:
        raise ValueError(f"{n_workers=} must be at least 1")
    seeds = [seed + i for i in range(n_episodes)]
    n_workers = min(n_workers, n_episodes)
    episodes_run = successes = episodes_saved = steps_saved = 0
    rollouts = _rollouts(env_id, policy_factory, seeds, seed, n_workers, env_kwargs)
    # closing(): an exception here (Ctrl-C while writing) still shuts the worker pool down at once.
    with closing(rollouts), tqdm(total=n_episodes, desc=env_id, unit="episode", disable=not progress) as bar:
        for episode, success in rollouts:
            episodes_run += 1
            successes += success
            if success or not successful_only:
                buffer.add_episode(episode)
                episodes_saved += 1
                steps_saved += len(episode[ACTION_KEY])
            bar.set_postfix(success=f"{successes / episodes_run:.0%}", saved=episodes_saved, refresh=False)
            bar.update()
    return RecordingSummary(episodes_run, episodes_saved, steps_saved, successes / episodes_run)
