"""scripts/run_robot.py end to end: a tiny Push-T policy on the real-time sim, in-process and served."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_policy.config_utils import from_dict
from diffusion_policy.data.normalizer import Normalizer
from diffusion_policy.policy import DiffusionPolicy, DiffusionPolicyConfig

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("run_robot", ROOT / "scripts" / "run_robot.py")
run_robot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_robot)


@pytest.fixture(scope="module")
def pusht_policy(tmp_path_factory) -> Path:
    """An untrained small policy with Push-T's observations and action range."""
    torch.manual_seed(0)
    config = from_dict(DiffusionPolicyConfig, dict(
        obs_shapes={"agent_pos": (2,), "keypoints": (18,)}, action_dim=2, horizon=8, n_obs_steps=2,
        n_action_steps=4, num_inference_steps=4,
        network={"down_dims": (8, 16), "kernel_size": 3, "n_groups": 4, "step_embed_dim": 8}))
    rng = np.random.default_rng(0)
    normalizer = Normalizer.fit({"agent_pos": rng.uniform(0, 512, (64, 2)), "keypoints": rng.uniform(0, 512, (64, 18)),
                                 "action": rng.uniform(0, 512, (64, 2))})
    path = tmp_path_factory.mktemp("policy") / "policy"
    DiffusionPolicy(config, normalizer).save(path)
    return path


@pytest.mark.parametrize("where", ["local", "spawned server"])
def test_run_robot_drives_the_sim_and_writes_its_logs(pusht_policy, tmp_path, where):
    out = tmp_path / "out"
    args = ["--policy", str(pusht_policy), "--episodes", "2", "--max-steps", "12", "--time-scale", "4",
            "--transition", "rtc_soft", "--out", str(out), "--plot"]
    summary = run_robot.main(args + (["--spawn-server"] if where != "local" else ["--soft-steps", "2"]))
    loop = summary["loop"]
    assert loop["ticks"] >= 2 * 9 and loop["deadline_misses"] == 0
    assert loop["inferences"] >= 4 and np.isfinite(loop["inference_latency_ms"]["p50"])
    assert set(loop["stop_reasons"]) <= {"max_ticks", "stop_when"}
    assert sorted(p.name for p in out.iterdir()) == ["commands.png", "episode_100000.json", "episode_100001.json",
                                                     "summary.json"]
    assert 0.0 <= summary["success_rate"] <= 1.0


def test_bad_arguments_are_named(pusht_policy):
    with pytest.raises(SystemExit):
        run_robot.parse_args(["--policy", str(pusht_policy), "--server", "tcp://x:1", "--spawn-server"])
    with pytest.raises(SystemExit):
        run_robot.parse_args(["--policy", str(pusht_policy), "--transition", "replace", "--soft-steps", "2"])


def test_virtual_time_runs_are_deterministic_and_use_the_asked_latency(pusht_policy, tmp_path):
    args = ["--policy", str(pusht_policy), "--episodes", "1", "--max-steps", "20", "--virtual-latency-ms", "150",
            "--transition", "rtc_guided", "--soft-steps", "2", "--guidance", "20"]
    first = run_robot.main(args + ["--out", str(tmp_path / "a")])
    second = run_robot.main(args + ["--out", str(tmp_path / "b")])
    assert first["episodes"] == second["episodes"]
    loop = first["loop"]
    assert loop["inference_latency_ms"]["p50"] == pytest.approx(150.0) and loop["deadline_misses"] == 0
    assert loop["skipped_actions"] == 2 * loop["inferences"]  # every chunk skips ceil(150 ms / 100 ms)
    with pytest.raises(SystemExit):
        run_robot.parse_args(["--policy", str(pusht_policy), "--virtual-latency-ms", "-5"])
