"""The proof that the policy is a diffusion policy: it keeps both modes of the demonstrations.

Demonstrations of ObstacleAvoid pass left or right of a disc 50/50. At one fixed observation,
200 sampled chunks of the diffusion policy must split between the sides (each >= 30%) with < 5%
through the disc, while an MSE-regression policy trained on the same data averages the modes and
goes through it. Everything runs through the hydra configs and `train_policy`, as `make demo` does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from diffusion_policy.data.recorder import record_episodes
from diffusion_policy.data.replay_buffer import ReplayBuffer
from diffusion_policy.eval.multimodality import mode_report, sample_chunks, start_observation
from diffusion_policy.policy import load_policy
from diffusion_policy.train_policy import train_policy
from envs import OBSTACLE_AVOID_ID
from envs.experts import make_expert

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "obstacle_avoid.zarr"
    summary = record_episodes(OBSTACLE_AVOID_ID, lambda seed: make_expert(OBSTACLE_AVOID_ID, seed),
                              ReplayBuffer.create(path), 100, seed=0, progress=False)
    assert summary.episodes_saved == 100
    return path


def trained(policy: str, demos: Path, run_dir: Path, max_steps: int):
    overrides = ["task=obstacle_avoid", f"policy={policy}", "training=demo", f"training.max_steps={max_steps}",
                 "training.progress=false",
                 f"task.dataset.path={demos}", f"run_dir={run_dir}"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = OmegaConf.to_container(compose(config_name="train", overrides=overrides), resolve=True)
    return load_policy(train_policy(cfg["task"], cfg["policy"], cfg["training"], run_dir))


def test_diffusion_keeps_modes_regression_averages_them(demos, tmp_path):
    diffusion = trained("diffusion_unet_small", demos, tmp_path / "diffusion", max_steps=2000)
    report = mode_report(sample_chunks(diffusion, start_observation(diffusion), 200, seed=0))
    assert report.left >= 0.30 and report.right >= 0.30, report
    assert report.through_obstacle < 0.05, report

    regression = trained("regression_mlp", demos, tmp_path / "regression", max_steps=1000)
    averaged = mode_report(sample_chunks(regression, start_observation(regression), 200, seed=0))
    assert averaged.through_obstacle > 0.5, averaged
