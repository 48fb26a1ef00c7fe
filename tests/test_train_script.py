"""scripts/train.py end to end: hydra composition, overrides, run directory, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from diffusion_policy.policy import load_policy

ROOT = Path(__file__).resolve().parents[1]


def run_train(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_train_then_resume(demos, tmp_path):
    common = ["task=obstacle_avoid", "policy=diffusion_unet_small", "training=demo", "policy.network.down_dims=[8,16]",
              "policy.network.step_embed_dim=8", "policy.horizon=8", "policy.n_action_steps=4",
              "training.batch_size=8", "training.checkpoint_every=2", "training.progress=false",
              "eval.vector=sync", "eval.n_episodes=2", "eval.n_envs=2", "eval.n_videos=0",
              "eval.max_episode_steps=10", f"task.dataset.path={demos}", f"run_dir={tmp_path}"]
    first = run_train(*common, "training.max_steps=3")
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    assert "down_dims:\n    - 8\n    - 16" in (tmp_path / "config.yaml").read_text()

    second = run_train(*common, "training.max_steps=5", "resume=true")
    assert second.returncode == 0, second.stderr
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 5 and 4 not in steps[:-1]  # continued from step 3, did not restart
    policy = load_policy(tmp_path / "policy")
    assert policy.config.network.down_dims == (8, 16) and policy.config.horizon == 8
    # The closed-loop evaluation ran at the end and kept its policy as the best one so far.
    assert (tmp_path / "best_policy" / "eval.json").is_file()


def test_unknown_option_is_named(demos, tmp_path):
    result = run_train("task=obstacle_avoid", f"task.dataset.path={demos}", f"run_dir={tmp_path}",
                       "+training.lerning_rate=1")
    assert result.returncode != 0
    assert "lerning_rate" in result.stderr


def test_missing_dataset_says_how_to_make_one(tmp_path):
    result = run_train("task=obstacle_avoid", f"task.dataset.path={tmp_path / 'none.zarr'}", f"run_dir={tmp_path}")
    assert result.returncode != 0
    assert "generate_demos.py" in result.stderr


def test_resume_gives_the_weights_of_an_independent_uninterrupted_run(demos, tmp_path):
    common = ["task=obstacle_avoid", "policy=diffusion_unet_small", "training=demo", "policy.network.down_dims=[8,16]",
              "policy.network.step_embed_dim=8", "policy.horizon=8", "policy.n_action_steps=4",
              "training.batch_size=8", "training.checkpoint_every=3", "training.progress=false",
              "eval.enabled=false", f"task.dataset.path={demos}"]
    straight = run_train(*common, "training.max_steps=6", f"run_dir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr
    for extra in (["training.max_steps=3"], ["training.max_steps=6", "resume=true"]):
        result = run_train(*common, *extra, f"run_dir={tmp_path / 'resumed'}")
        assert result.returncode == 0, result.stderr
    weights = [(tmp_path / run / "policy" / "model.safetensors").read_bytes() for run in ("straight", "resumed")]
    assert weights[0] == weights[1]


def test_no_task_is_refused_with_the_list_of_tasks():
    result = run_train()
    assert result.returncode != 0
    assert "You must specify 'task'" in result.stderr and "pusht_original_lowdim" in result.stderr


def test_help_lists_only_the_policy_groups():
    result = run_train("--help")
    assert result.returncode == 0
    assert "task: metaworld, obstacle_avoid, pusht," in result.stdout
    assert "training: default, demo, metaworld, pusht_demo" in result.stdout
    assert "image_model" not in result.stdout and "image_training" not in result.stdout


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    """The README's Python block, with `make demo`'s policy replaced by one of the same shapes."""
    import re

    import torch

    from diffusion_policy.config_utils import from_dict
    from diffusion_policy.data.normalizer import Normalizer
    from diffusion_policy.policy import DiffusionPolicy, DiffusionPolicyConfig

    rng = np.random.default_rng(0)
    shapes = {"agent_pos": (2,), "keypoints": (18,)}
    config = from_dict(DiffusionPolicyConfig, {"obs_shapes": shapes, "action_dim": 2,
                                               "network": {"down_dims": [16, 32], "step_embed_dim": 16}})
    stats = {key: rng.uniform(0, 512, (50, *shape)) for key, shape in shapes.items()}
    torch.manual_seed(0)
    DiffusionPolicy(config, Normalizer.fit(stats | {"action": rng.uniform(0, 512, (50, 2))})).save(
        tmp_path / "runs" / "demo" / "pusht" / "policy")
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    example = next(block for block in blocks if "predict_action" in block)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert tuple(namespace["out"]["action"].shape) == (1, 8, 2)
    assert np.isfinite(namespace["frame"]["agent_pos"]).all()
