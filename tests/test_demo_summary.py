"""scripts/demo_summary.py: the figures of a `make demo` run, from the files its stages wrote."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from test_eval_rollout import tiny_diffusion_policy

from diffusion_policy.data.replay_buffer import ReplayBuffer
from diffusion_policy.eval.metrics import EvalResult

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("demo_summary", ROOT / "scripts" / "demo_summary.py")
demo_summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_summary)


def test_summary_of_a_demo_run(tmp_path):
    demos = ReplayBuffer.create(tmp_path / "demos.zarr")
    for length in (5, 7):
        demos.add_episode({"action": np.zeros((length, 2), np.float32)})
    demos.update_attrs({"recording": {"episodes_run": 3, "episodes_saved": 2, "success_rate": 2 / 3}})
    run = tmp_path / "run"
    tiny_diffusion_policy().save(run / "policy")
    (run / "config.yaml").write_text("policy:\n  network:\n    down_dims: [8, 16]\n"
                                     "training:\n  batch_size: 4\n  lr: 0.001\n")
    (run / "metrics.jsonl").write_text('{"step": 50, "loss": 1.0, "epoch": 3}\n'
                                       '{"step": 100, "loss": 0.5, "epoch": 7}\n')
    EvalResult("E-v0", [1, 2, 3, 4], [1.0, 0.5, 1.0, 0.2], [True, False, True, False], [10, 20, 30, 40],
               12.0).to_json(run / "eval" / "metrics.json")
    (run / "stages.txt").write_text("demos 1000\ntrain 1060\neval 1660\nend 1690\n")
    summary = demo_summary.summarize(run, tmp_path / "demos.zarr", venv=None)
    assert summary["job_minutes"] == pytest.approx(11.5) and not summary["setup_included"]
    assert summary["demos"] == {"episodes_run": 3, "episodes_saved": 2, "success_rate": pytest.approx(2 / 3),
                                "episodes": 2, "steps": 12, "minutes": pytest.approx(1.0)}
    network = tiny_diffusion_policy().network
    assert summary["training"] == {"down_dims": [8, 16], "parameters": sum(p.numel() for p in network.parameters()),
                                   "steps": 100, "batch_size": 4, "lr": 0.001, "epochs": 8,
                                   "minutes": pytest.approx(10.0)}
    evaluation = summary["evaluations"]["eval"]
    assert evaluation["success_rate"] == 0.5 and evaluation["mean_score"] == pytest.approx(0.675)
    assert json.dumps(summary)  # plain JSON

    (run / "stages.txt").write_text("demos 1000\ntrain 1060\n")
    with pytest.raises(ValueError, match=r"lacks stages \['eval', 'end'\]: did `make demo` finish\?"):
        demo_summary.summarize(run, tmp_path / "demos.zarr", venv=None)
    (run / "stages.txt").write_text("demos soon\n")
    with pytest.raises(ValueError, match=r"stages.txt:1: expected 'STAGE UNIX_SECONDS', got 'demos soon'"):
        demo_summary.summarize(run, tmp_path / "demos.zarr", venv=None)
