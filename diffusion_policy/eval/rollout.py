"""Closed-loop evaluation: run a policy in vectorised Gymnasium environments and score the episodes.

Episodes run in waves of `n_envs`, episode `first + s` in env slot `s`. Each env keeps the last
`n_obs_steps` observations (at reset the first one repeated, as the original MultiStepWrapper does);
the policy predicts a chunk for all running envs in one batched call, each env executes the chunk's
`n_action_steps` actions (stopping when its episode ends), and the policy re-plans.

Reproducibility. Episode `i` is reset with `seed + i`, and the initial diffusion noise of each of its
chunks `(T, Da)` is drawn from its own CPU generator seeded with `seed + i`. So for a policy whose
only randomness is that noise (DDIM with eta 0, a regression policy, a scripted policy) each
episode's outcome does not depend on `n_envs`, up to floating-point differences of evaluating the
network at other batch sizes. Randomness drawn inside sampling steps (DDPM) comes from one generator
per wave, seeded with the wave's first episode seed, so it does depend on `n_envs`. For a fixed config
results are bit-identical run to run on CPU. The global torch / numpy / random states are not used.

Vector envs run with Gymnasium's NEXT_STEP autoreset: the step that ends an episode reports its true
final reward and info; an env whose episode has ended keeps being stepped (with a neutral action)
until its wave ends, and those steps are ignored. `vector="async"` runs each env in a process,
forked where the platform allows it: a worker then starts in milliseconds and callers need no
`if __name__ == "__main__":` guard (workers only step environments, never torch, so the parent's
torch threads are not a concern). Elsewhere workers are spawned, which re-imports the main script
and costs seconds per worker; reuse envs across evaluations (`venv=`) or use `vector="sync"` for
cheap envs.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv
from tqdm.auto import tqdm

import envs  # noqa: F401  registers the project's env ids
from diffusion_policy.config_utils import to_dict
from diffusion_policy.core.trainer import resolve_device
from diffusion_policy.eval.metrics import EvalResult
from diffusion_policy.eval.video import VideoWriter
from diffusion_policy.policy.base import BasePolicy

VECTOR_MODES = ("async", "sync")
# The evaluator sets these itself (videos, episode limit); an env_kwargs entry would conflict.
_RESERVED_ENV_KWARGS = ("render_mode", "max_episode_steps")


@dataclass
class EvalConfig:
    """What to evaluate on: `n_episodes` episodes of `env_id`, episode `i` reset with `seed + i`.

    `max_episode_steps` None takes the env spec's limit. `device` None keeps the policy where it is;
    otherwise `evaluate_policy` moves the policy there (in place, like `nn.Module.to`); "auto"
    picks CUDA when available. The first `n_videos` episodes are recorded when an output directory
    is given. `n_envs` and `n_videos` above `n_episodes` are capped at `n_episodes`.
    """

    env_id: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    n_episodes: int = 50
    n_envs: int = 8
    seed: int = 100_000
    vector: str = "async"
    n_videos: int = 2
    max_episode_steps: int | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.env_id, str) or not self.env_id:
            raise ValueError(f"env_id={self.env_id!r} must be a registered Gymnasium id")
        self.env_kwargs = dict(self.env_kwargs or {})
        reserved = sorted(set(self.env_kwargs) & set(_RESERVED_ENV_KWARGS))
        if reserved:
            raise ValueError(f"env_kwargs sets {reserved}, which the evaluator controls "
                             "(use n_videos and max_episode_steps instead)")
        for name in ("n_episodes", "n_envs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0 (Gymnasium seeds are non-negative)")
        if self.vector not in VECTOR_MODES:
            raise ValueError(f"vector={self.vector!r} is not one of {VECTOR_MODES}")
        if self.n_videos < 0:
            raise ValueError(f"n_videos={self.n_videos} must be >= 0")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps={self.max_episode_steps} must be >= 1 or None")


def check_spaces(policy: BasePolicy, observation_space: gym.Space, action_space: gym.Space, env_id: str) -> None:
    """Raise ValueError unless the env gives every observation key the policy needs, directly or through
    the policy's observation mapping (its dataset keys), and takes actions of shape `(Da,)`. Extra
    observation keys are fine."""
    if not isinstance(observation_space, spaces.Dict):
        raise ValueError(f"env {env_id} must have Dict observations; it has {observation_space}")
    blank = {key: np.zeros(space.shape, space.dtype) for key, space in observation_space.spaces.items()}
    try:
        policy.config.mapping.observation(blank, where=f"env {env_id} observation")
    except (KeyError, ValueError) as err:
        raise ValueError(f"policy expects observations {policy.config.obs_shapes}: {err}") from None
    expected = (policy.config.action_dim,)
    if not isinstance(action_space, spaces.Box) or action_space.shape != expected:
        raise ValueError(f"policy outputs actions of shape {expected}, env {env_id} takes {action_space}")


def make_vector_env(config: EvalConfig, render: bool = False) -> VectorEnv:
    """`min(n_envs, n_episodes)` copies of `config.env_id` (NEXT_STEP autoreset, `sync` or `async`).

    With `render`, the first `min(n_videos, n_envs)` envs render RGB frames (the only ones that can
    be recorded); the others are built without a render mode, so they never pay for rendering.
    """
    spec = gym.spec(config.env_id)
    max_steps = config.max_episode_steps or spec.max_episode_steps
    if max_steps is None:
        raise ValueError(f"env {config.env_id} has no max_episode_steps, so an episode may never end; "
                         "set EvalConfig.max_episode_steps")
    n_envs = min(config.n_envs, config.n_episodes)
    n_render = min(config.n_videos, n_envs) if render else 0
    # An EnvSpec (resolved here, where `envs` registered it) pickles by value, so spawned workers
    # rebuild the env from its entry point without needing the registry.
    fns = [functools.partial(gym.make, spec, render_mode="rgb_array" if s < n_render else None,
                             max_episode_steps=max_steps, **config.env_kwargs) for s in range(n_envs)]
    if config.vector == "sync":
        return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.NEXT_STEP)
    context = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return AsyncVectorEnv(fns, context=context, autoreset_mode=AutoresetMode.NEXT_STEP)


def evaluate_policy(
    policy: BasePolicy,
    config: EvalConfig,
    out_dir: str | Path | None = None,
    progress: bool = True,
    venv: VectorEnv | None = None,
) -> EvalResult:
    """Run `config.n_episodes` closed-loop episodes of `policy`; see the module docstring.

    `policy` maps obs `{key: (B, To, *shape)}` (and `noise` `(B, T, Da)`) to `{"action": (B, Ta, Da)}`.
    It runs in eval mode (its train/eval mode is restored afterwards). With `out_dir`, the first
    `n_videos` episodes go to `out_dir/videos/episode_<seed>.mp4` and the result to
    `out_dir/metrics.json`. `venv` reuses envs from `make_vector_env(config, render=True)` (the
    caller closes them; repeated evaluations then skip the worker start-up); by default they are
    built and closed here. Raises ValueError before any rollout if the spaces do not match.
    """
    start = time.perf_counter()
    n_envs = min(config.n_envs, config.n_episodes)
    own_venv = venv is None
    if venv is None:
        venv = make_vector_env(config, render=out_dir is not None)
    elif venv.num_envs != n_envs:
        raise ValueError(f"venv has {venv.num_envs} envs; {config.n_envs=} and {config.n_episodes=} need {n_envs}")
    video_dir = Path(out_dir) / "videos" if out_dir is not None and config.n_videos else None
    was_training = policy.training
    try:
        check_spaces(policy, venv.single_observation_space, venv.single_action_space, config.env_id)
        if config.device is not None:
            policy.to(resolve_device(config.device))
        policy.eval()
        waves = _run_waves(venv, policy, config, video_dir, progress)
    finally:
        if own_venv:
            venv.close()
        policy.train(was_training)
    result = EvalResult(
        env_id=config.env_id,
        seeds=[int(s) for w in waves for s in w.seeds[: w.count]],
        scores=[float(s) for w in waves for s in w.scores[: w.count]],
        successes=[bool(s) for w in waves for s in w.successes[: w.count]],
        lengths=[int(n) for w in waves for n in w.lengths[: w.count]],
        wall_time_s=time.perf_counter() - start,
        config=to_dict(config),
        videos=[str(w.videos[s]) for w in waves for s in sorted(w.videos)],
    )
    if out_dir is not None:
        result.to_json(Path(out_dir) / "metrics.json")
    return result


def _run_waves(
    venv: VectorEnv, policy: BasePolicy, config: EvalConfig, video_dir: Path | None, progress: bool
) -> list[_Wave]:
    fps = venv.metadata.get("render_fps") or 10
    waves: list[_Wave] = []
    with tqdm(total=config.n_episodes, desc=f"eval {config.env_id}", unit="episode",
              disable=not progress, leave=False) as bar:
        for first in range(0, config.n_episodes, venv.num_envs):
            count = min(venv.num_envs, config.n_episodes - first)
            wave = _Wave(first, count, venv.num_envs, config, policy.config.n_obs_steps, video_dir, fps)
            _run_wave(venv, policy, wave, bar)
            waves.append(wave)
            wins = sum(int(w.successes[: w.count].sum()) for w in waves)
            bar.set_postfix(success=f"{wins / (first + count):.0%}")
    return waves


class _Wave:
    """Episodes `first .. first + count - 1` in env slots `0 .. count - 1`; per-slot arrays are `(n_envs,)`.

    Slots from `count` on only pad the last wave (seeded like later episodes); they start finished.
    """

    def __init__(self, first: int, count: int, n_envs: int, config: EvalConfig, n_obs_steps: int,
                 video_dir: Path | None, fps: float):
        ids = np.arange(first, first + n_envs)
        self.count = count
        self.seeds = config.seed + ids
        self.live = np.arange(n_envs) < count
        self.scores = np.full(n_envs, -np.inf)
        self.successes = np.zeros(n_envs, dtype=bool)
        self.lengths = np.zeros(n_envs, dtype=np.int64)
        self.history: deque[dict[str, np.ndarray]] = deque(maxlen=n_obs_steps)
        self.noise_generators = [torch.Generator().manual_seed(int(s)) for s in self.seeds]
        recorded = [s for s in range(count) if ids[s] < config.n_videos] if video_dir is not None else []
        self.writers = {s: VideoWriter(video_dir / f"episode_{self.seeds[s]}.mp4", fps) for s in recorded}
        self.videos: dict[int, Path] = {}

    def update(self, was_live: np.ndarray, reward: np.ndarray, done: np.ndarray, info: dict[str, Any]) -> int:
        """Account one vector step to the episodes that were running; returns how many ended."""
        if "success" not in info:
            raise KeyError(f"env step info lacks 'success'; it has {sorted(k for k in info if not k.startswith('_'))}")
        success = np.asarray(info["success"], dtype=bool) & np.asarray(info.get("_success", True), dtype=bool)
        self.scores[was_live] = np.maximum(self.scores[was_live], reward[was_live])
        self.lengths[was_live] += 1
        self.successes[was_live] |= success[was_live]
        self.live &= ~done
        return int((was_live & done).sum())

    def record(self, venv: VectorEnv, was_live: np.ndarray) -> None:
        """Append the current frame of every recorded episode that was running; finish ended videos."""
        slots = [s for s in self.writers if was_live[s]]
        if not slots:
            return
        frames = venv.call("render")
        for s in slots:
            if frames[s] is None:
                raise ValueError(f"env slot {s} does not render; build envs with make_vector_env(config, render=True)")
            self.writers[s].append(frames[s])
            if not self.live[s]:
                self.videos[s] = self.writers.pop(s).close()

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()


def _run_wave(venv: VectorEnv, policy: BasePolicy, wave: _Wave, bar: tqdm) -> None:
    """Run the wave's episodes to their end, re-planning every `n_action_steps` steps."""
    device = _device_of(policy)
    generator = torch.Generator(device=device).manual_seed(int(wave.seeds[0]))
    action_space = venv.single_action_space
    neutral = np.clip(np.zeros(action_space.shape), action_space.low, action_space.high).astype(action_space.dtype)
    mapping = policy.config.mapping  # env observations -> the policy's keys, as in training
    try:
        obs, _ = venv.reset(seed=[int(s) for s in wave.seeds])
        policy.reset()
        wave.history.extend([mapping.observation(obs, batch_dims=1)] * wave.history.maxlen)
        wave.record(venv, wave.live.copy())
        while wave.live.any():
            active = np.flatnonzero(wave.live)
            chunk = _plan(policy, wave, active, generator, device)
            for t in range(chunk.shape[1]):
                was_live = wave.live.copy()
                actions = np.repeat(neutral[None], len(was_live), axis=0)
                actions[active[was_live[active]]] = chunk[was_live[active], t]
                obs, reward, terminated, truncated, info = venv.step(actions)
                wave.history.append(mapping.observation(obs, batch_dims=1))
                bar.update(wave.update(was_live, reward, terminated | truncated, info))
                wave.record(venv, was_live)
                if not wave.live.any():
                    break
    except BaseException:
        wave.abort()
        raise


@torch.no_grad()
def _plan(
    policy: BasePolicy, wave: _Wave, active: np.ndarray, generator: torch.Generator, device: torch.device
) -> np.ndarray:
    """Action chunk `(len(active), Ta, Da)` for the env slots `active`, from their observation histories."""
    cfg = policy.config
    obs = {key: np.stack([frame[key] for frame in wave.history], axis=1)[active] for key in cfg.obs_shapes}
    noise = torch.stack([torch.randn(cfg.horizon, cfg.action_dim, generator=wave.noise_generators[s])
                         for s in active])
    action = policy.predict_action(obs, generator=generator, noise=noise.to(device))["action"]
    action = action.detach().to("cpu", torch.float64).numpy()
    if action.ndim != 3 or action.shape[0] != len(active) or action.shape[1] < 1 or action.shape[2] != cfg.action_dim:
        raise ValueError(f"policy returned actions of shape {action.shape}; "
                         f"expected (B, Ta, Da) = ({len(active)}, >=1, {cfg.action_dim})")
    return action


def _device_of(policy: BasePolicy) -> torch.device:
    tensor = next(itertools.chain(policy.parameters(), policy.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")
