"""Test-session set-up (MuJoCo's offscreen backend, chosen before any test imports mujoco) and shared fixtures."""

from pathlib import Path

import pytest

from envs.offscreen import use_default_backend

use_default_backend()


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    """Four recorded ObstacleAvoid expert episodes in a Zarr store, shared by a test module."""
    from diffusion_policy.data.recorder import record_episodes
    from diffusion_policy.data.replay_buffer import ReplayBuffer
    from envs import OBSTACLE_AVOID_ID
    from envs.experts import make_expert

    path = tmp_path_factory.mktemp("data") / "demos.zarr"
    record_episodes(OBSTACLE_AVOID_ID, lambda seed: make_expert(OBSTACLE_AVOID_ID, seed),
                    ReplayBuffer.create(path), 4, progress=False)
    return path
