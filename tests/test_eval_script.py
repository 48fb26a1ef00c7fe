"""scripts/eval.py: policy / run directory resolution, env from the run config, outputs, end to end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import pytest
from test_eval_rollout import tiny_diffusion_policy

from diffusion_policy.eval.metrics import EvalResult
from envs import OBSTACLE_AVOID_ID

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("eval_script", ROOT / "scripts" / "eval.py")
eval_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_script)

FAST = ["--episodes", "2", "--envs", "2", "--vector", "sync", "--max-steps", "6", "--no-progress"]


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A training run as scripts/train.py leaves it: config.yaml, policy/, best_policy/, a checkpoint."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"task:\n  name: oa\n  env_id: {OBSTACLE_AVOID_ID}\n"
                                     "  env_kwargs:\n    render_size: 32\n")
    for i, path in enumerate(["policy", "best_policy", "checkpoints/step_00000002/policy"]):
        tiny_diffusion_policy(seed=i).save(run / path)
    return run


def frame_shape(video: str) -> tuple[int, ...]:
    return next(imageio.get_reader(video, format="FFMPEG").iter_data()).shape


def test_end_to_end_on_a_run_directory(run_dir):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "eval.py"), "--policy", str(run_dir), *FAST,
                           "--videos", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"policy        {run_dir / 'best_policy'}" in done.stdout
    assert "success rate" in done.stdout and "seeds 100000..100001" in done.stdout
    (out,) = (run_dir / "eval").iterdir()
    assert out.name.startswith("best_policy_")
    video = out / "videos" / "episode_100000.mp4"
    assert f"video         {video}" in done.stdout
    assert frame_shape(str(video)) == (32, 32, 3)  # the run's env_kwargs were applied
    result = EvalResult.from_json(out / "metrics.json")
    assert result.env_id == OBSTACLE_AVOID_ID and result.n_episodes == 2 and result.videos == [str(video)]


def test_checkpoint_policy_finds_its_run_and_options_override(run_dir, capsys):
    policy = run_dir / "checkpoints" / "step_00000002" / "policy"
    result = eval_script.main(["--policy", str(policy), *FAST, "--videos", "1", "--seed", "7",
                               "--env-kwargs", '{"render_size": 16}', "--device", "cpu"])
    (out,) = (run_dir / "eval").iterdir()
    assert out.name.startswith("checkpoints_step_00000002_policy_")
    assert result.seeds == [7, 8] and result.config["env_kwargs"] == {"render_size": 16}
    assert frame_shape(result.videos[0]) == (16, 16, 3)
    assert "mean score" in capsys.readouterr().out


def test_plain_policy_directory_needs_env_and_writes_where_asked(tmp_path):
    tiny_diffusion_policy().save(tmp_path / "p")
    with pytest.raises(ValueError, match="--env is required"):
        eval_script.main(["--policy", str(tmp_path / "p"), *FAST])
    result = eval_script.main(["--policy", str(tmp_path / "p"), "--env", OBSTACLE_AVOID_ID, *FAST,
                               "--videos", "0", "--out", str(tmp_path / "out")])
    assert EvalResult.from_json(tmp_path / "out" / "metrics.json") == result
    assert result.config["env_kwargs"] == {}


def test_missing_policy_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is neither a policy directory"):
        eval_script.resolve_policy_dir(tmp_path)


def test_compare_policies_computes_fisher_against_the_first(tmp_path):
    spec = importlib.util.spec_from_file_location("compare_policies", ROOT / "scripts" / "compare_policies.py")
    compare_policies = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare_policies)
    seeds = list(range(100, 120))

    def result(wins: int, seed_list=seeds) -> EvalResult:
        return EvalResult("E-v0", seed_list, [0.5] * 20, [i < wins for i in range(20)], [10] * 20, 1.0)

    for name, wins in (("a", 15), ("b", 5)):
        result(wins).to_json(tmp_path / f"{name}.json")
    out = tmp_path / "cmp.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_policies.py"), "--out", str(out),
                           f"ddpm={tmp_path / 'a.json'}", f"flow={tmp_path / 'b.json'}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    flow = report["policies"]["flow"]
    # 15/20 against 5/20: p = 0.0038475 (scipy.stats.fisher_exact([[15, 5], [5, 15]])).
    assert flow["fisher_p_vs_first"] == pytest.approx(0.0038475, abs=1e-7) and flow["significant"]
    assert report["policies"]["ddpm"]["successes"] == 15 and "fisher_p_vs_first" not in report["policies"]["ddpm"]
    with pytest.raises(ValueError, match="evaluate both on the same seeds"):
        compare_policies.compare({"a": result(3), "b": result(3, list(range(20)))})


def test_steps_option_changes_the_sampling_and_is_checked(run_dir, monkeypatch):
    calls = []
    original = eval_script.evaluate_policy
    monkeypatch.setattr(eval_script, "evaluate_policy",
                        lambda policy, *a, **k: calls.append(policy.config.num_inference_steps) or original(policy, *a,
                                                                                                           **k))
    eval_script.main(["--policy", str(run_dir), *FAST, "--videos", "0", "--steps", "3", "--out", str(run_dir / "e")])
    assert calls == [3]
    with pytest.raises(ValueError, match=r"num_inference_steps=0 must be in \[1, num_train_timesteps="):
        eval_script.main(["--policy", str(run_dir), *FAST, "--videos", "0", "--steps", "0"])
