"""The policy-training workflow: task config + policy config + trainer config -> a saved policy.

`scripts/train.py` feeds it hydra's composed config; tests and notebooks call it with plain dicts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffusion_policy.config_utils import from_dict, to_dict
from diffusion_policy.core.distributed import restart_count
from diffusion_policy.core.trainer import Callback, Trainer, TrainerConfig, seed_everything
from diffusion_policy.data.dataset import SequenceDataset
from diffusion_policy.data.replay_buffer import ReplayBuffer
from diffusion_policy.eval.callback import EvalCallback
from diffusion_policy.eval.rollout import EvalConfig
from diffusion_policy.policy import POLICY_CLASSES, BasePolicy, PolicyConfig

# The dataset's windows follow the policy's chunking; unset options take PolicyConfig's defaults.
_CHUNKING_DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(PolicyConfig)
    if f.name in ("horizon", "n_obs_steps", "n_action_steps")
}


@dataclass
class DatasetConfig:
    """`obs_keys`: dataset keys, or `{policy key: source}`; `action_key`: a key or a source
    (`diffusion_policy.data.obs_mapping`). `in_memory`: copy the data into memory (true), read images
    from disk through a chunk cache (false), or decide from the memory available (null, default)."""

    path: str
    obs_keys: tuple[str, ...] | dict[str, Any]
    action_key: str | dict[str, Any] = "action"
    val_ratio: float = 0.05
    max_train_episodes: int | None = None
    seed: int = 42
    in_memory: bool | None = None


@dataclass
class TaskConfig:
    name: str
    dataset: DatasetConfig
    env_id: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)


def build_dataset(task: TaskConfig, policy_cfg: Mapping[str, Any]) -> SequenceDataset:
    """The training windows for `task`, shaped by the policy's horizon / To / Ta."""
    path = Path(task.dataset.path)
    if not path.exists():
        raise FileNotFoundError(
            f"dataset {path} does not exist; record one with scripts/generate_demos.py --env {task.env_id} --out {path}"
        )
    return SequenceDataset(
        ReplayBuffer.open(path, mode="r"),
        obs_keys=task.dataset.obs_keys,
        action_key=task.dataset.action_key,
        **{name: policy_cfg.get(name, _CHUNKING_DEFAULTS[name]) for name in _CHUNKING_DEFAULTS},
        val_ratio=task.dataset.val_ratio,
        seed=task.dataset.seed,
        max_train_episodes=task.dataset.max_train_episodes,
        in_memory=task.dataset.in_memory,
    )


def build_policy(policy_cfg: Mapping[str, Any], dataset: SequenceDataset) -> BasePolicy:
    """A fresh policy of `policy_cfg["kind"]` whose shapes and normaliser come from `dataset`."""
    options = dict(policy_cfg)
    kind = options.pop("kind", None)
    if kind not in POLICY_CLASSES:
        raise ValueError(f"policy kind={kind!r} is not one of {sorted(POLICY_CLASSES)}")
    cls = POLICY_CLASSES[kind]
    options.update(obs_shapes=dataset.obs_shapes, action_dim=dataset.action_dim,
                   obs_mapping=None if dataset.mapping.is_identity else dataset.mapping.to_dict())
    config = from_dict(cls.config_class, options)
    return cls(config, dataset.fit_normalizer(config.normalizer_mode))


def build_eval_callback(eval_cfg: Mapping[str, Any] | None, task: TaskConfig) -> EvalCallback | None:
    """The closed-loop evaluation callback described by `eval_cfg`, or None when it is absent or disabled.

    `eval_cfg` holds `EvalConfig` fields plus `every_steps` and an optional `enabled` (default true);
    `env_id` / `env_kwargs` left out or null take the task's.
    """
    if eval_cfg is None:
        return None
    options = dict(eval_cfg)
    if not options.pop("enabled", True):
        return None
    if "every_steps" not in options:
        raise ValueError(f"eval config needs every_steps; got options {sorted(options)}")
    every_steps = options.pop("every_steps")
    if options.get("env_id") is None:
        options["env_id"] = task.env_id
    if options.get("env_kwargs") is None:
        options["env_kwargs"] = task.env_kwargs
    if options["env_id"] is None:
        raise ValueError(f"task {task.name!r} has no env_id to evaluate in; set eval.env_id or eval.enabled=false")
    return EvalCallback(from_dict(EvalConfig, options), every_steps)


def train_policy(
    task_cfg: Mapping[str, Any],
    policy_cfg: Mapping[str, Any],
    trainer_cfg: Mapping[str, Any],
    run_dir: str | Path,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    eval_cfg: Mapping[str, Any] | None = None,
) -> Path:
    """Train a policy and save its evaluation (EMA) weights to `<run_dir>/policy`; returns that path.

    Under torchrun every rank calls this; rank 0 writes. A worker restarted by torchrun resumes itself.

    With `eval_cfg` (see `build_eval_callback`) the policy is also rolled out during training and
    the best one kept in `<run_dir>/best_policy`.
    """
    task = from_dict(TaskConfig, task_cfg)
    trainer_config = from_dict(TrainerConfig, trainer_cfg)
    eval_callback = build_eval_callback(eval_cfg, task)
    dataset = build_dataset(task, policy_cfg)
    seed_everything(trainer_config.seed)  # the policy's initial weights repeat for a seed
    policy = build_policy(policy_cfg, dataset)
    log_config = {"task": to_dict(task), "policy": dict(policy_cfg), "training": to_dict(trainer_config)}
    if eval_callback is not None:
        log_config["eval"] = {**to_dict(eval_callback.config), "every_steps": eval_callback.every_steps}
    trainer = Trainer(
        policy,
        dataset,
        trainer_config,
        run_dir,
        val_dataset=dataset.get_validation_dataset(),
        callbacks=[*callbacks, *([eval_callback] if eval_callback is not None else [])],
        log_config=log_config,
    )
    if resume or restart_count() > 0:  # torchrun --max-restarts: go on from the last checkpoint
        trainer.resume()
    trainer.fit()
    out = Path(run_dir) / "policy"
    if trainer.dist.is_main:
        trainer.eval_model.save(out)
    return out
