"""Training past one process: torchrun with 2 gloo ranks on CPU against one process, a rank killed
mid-run and the resume, a worker restarted by torchrun, rank 0 as the only writer, and the refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusion_policy.core.resumable_sampler import ResumableBatchSampler
from diffusion_policy.core.trainer import Trainer, TrainerConfig

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "fixtures" / "distributed_worker.py"
sys.path.insert(0, str(WORKER.parent))
import distributed_worker  # noqa: E402

TRAINING = {"max_steps": 20, "batch_size": 16, "checkpoint_every": 5, "warmup_steps": 2, "lr": 1e-2,
            "log_every": 5, "val_every": 100}


def launch(tmp: Path, name: str, spec: dict, nproc: int = 2) -> tuple[subprocess.CompletedProcess, float]:
    """Run the worker under torchrun with `nproc` processes; (the finished process, seconds it took)."""
    spec_path = tmp / f"{name}.json"
    spec_path.write_text(json.dumps({"run_dir": str(tmp / name), **spec}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "--monitor-interval=0.5", str(WORKER), str(spec_path)]
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    return done, time.monotonic() - start


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final.safetensors")


def in_process(tmp: Path, name: str, kind: str, **training) -> dict[str, torch.Tensor]:
    """The worker's training in this process (a world of one)."""
    data = distributed_worker.dataset()
    config = TrainerConfig(**{**TRAINING, "progress": False, **training})
    torch.manual_seed(config.seed)
    trainer = Trainer(distributed_worker.model(kind, data), data, config, tmp / name)
    trainer.fit()
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_sampler_splits_every_global_batch_into_disjoint_rank_shares():
    n, batch = 50, 12
    single = list(ResumableBatchSampler(n, batch, seed=3))
    assert len(single) == n // batch and all(len(b) == batch for b in single)
    for world, accum in ((2, 1), (2, 3), (1, 2), (3, 2)):
        ranks = [list(ResumableBatchSampler(n, batch, 3, rank, world, accum)) for rank in range(world)]
        for k, global_batch in enumerate(single):
            parts = [ranks[r][k * accum + a] for r in range(world) for a in range(accum)]
            assert sorted(i for part in parts for i in part) == sorted(global_batch)
            assert all(len(part) == batch // (world * accum) for part in parts)
    resumed = ResumableBatchSampler(n, batch, 3, 1, 2, 3)
    resumed.set_epoch(0, 2)
    assert list(resumed) == list(ResumableBatchSampler(n, batch, 3, 1, 2, 3))[2 * 3:] and len(resumed) == 2 * 3


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=100, batch_size=16, seed=0, world_size=3), "16.*world size 3 x grad_accum 1 = 3"),
    (dict(n=100, batch_size=16, seed=0, grad_accum=3), "16.*world size 1 x grad_accum 3"),
    (dict(n=10, batch_size=16, seed=0, world_size=2), "10 training windows.*global batch of 16"),
    (dict(n=100, batch_size=16, seed=0, rank=2, world_size=2), "rank 2"),
])
def test_sampler_refuses_what_does_not_split(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResumableBatchSampler(**kwargs)


def test_two_ranks_equal_one_process_with_accumulation_and_one_big_batch(tmp_path):
    done, _ = launch(tmp_path, "ddp", {"model": "linear", "training": TRAINING})
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = weights(tmp_path / "ddp")
    accumulated = in_process(tmp_path, "accum", "linear", grad_accum=2)
    big = in_process(tmp_path, "big", "linear")
    for key, value in ddp.items():
        torch.testing.assert_close(value, accumulated[key], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(value, big[key], rtol=1e-5, atol=1e-6)  # summation order only
    assert not torch.equal(ddp["map.weight"], distributed_worker.LinearActions().map.weight)  # it trained


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A 2-rank diffusion-policy run of 20 steps, every rank recording the files it writes."""
    tmp = tmp_path_factory.mktemp("ddp")
    done, _ = launch(tmp, "full", {"model": "diffusion", "training": TRAINING, "writes_log": str(tmp / "writes")})
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, weights(tmp / "full")


def test_only_rank_zero_writes(uninterrupted):
    tmp, _ = uninterrupted
    rank0, rank1 = (json.loads((tmp / f"writes.rank{r}.json").read_text()) for r in (0, 1))
    assert any("checkpoints" in w for w in rank0) and any("metrics.jsonl" in w for w in rank0)
    assert rank1 == []
    assert sorted(p.name for p in (tmp / "full" / "checkpoints").iterdir()) == ["latest", "step_00000015",
                                                                               "step_00000020"]


def test_a_killed_rank_ends_the_job_naming_it_and_resume_is_bit_identical(uninterrupted, tmp_path):
    _, expected = uninterrupted
    spec = {"model": "diffusion", "training": TRAINING, "kill_rank": 1, "kill_step": 12}
    done, seconds = launch(tmp_path, "killed", spec)
    assert done.returncode != 0
    assert "rank      : 1" in done.stderr and "SIGKILL" in done.stderr
    assert seconds < 120
    assert (tmp_path / "killed" / "checkpoints" / "step_00000010").is_dir()
    assert not (tmp_path / "killed" / "final.safetensors").exists()
    done, _ = launch(tmp_path, "killed", {**spec, "kill_rank": None, "resume": True})
    assert done.returncode == 0, done.stderr[-3000:]
    got = weights(tmp_path / "killed")
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_a_worker_restarted_by_torchrun_resumes(tmp_path, monkeypatch):
    """`torchrun --max-restarts` sets TORCHELASTIC_RESTART_COUNT in the restarted workers: train_policy
    then resumes from the last checkpoint without being asked."""
    from diffusion_policy import train_policy as workflow

    resumed = []
    monkeypatch.setattr(workflow.Trainer, "resume", lambda self: resumed.append(self.step) or False)
    monkeypatch.setattr(workflow.Trainer, "fit", lambda self: {})
    monkeypatch.setattr(workflow, "build_dataset", lambda task, policy: distributed_worker.dataset())
    task = {"name": "t", "dataset": {"path": "unused", "obs_keys": ["obs"]}}
    policy = {"kind": "diffusion", "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4,
              "network": {"down_dims": [16, 32], "step_embed_dim": 16}}
    workflow.train_policy(task, policy, {"progress": False}, tmp_path / "a")
    assert resumed == []
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    workflow.train_policy(task, policy, {"progress": False}, tmp_path / "b")
    assert resumed == [0]


def test_resume_with_another_world_size_needs_the_flag(uninterrupted, tmp_path):
    tmp, _ = uninterrupted
    data = distributed_worker.dataset()
    checkpoint = tmp / "full" / "checkpoints" / "step_00000015"

    def trainer(**training) -> Trainer:
        config = TrainerConfig(**{**TRAINING, "progress": False, **training})
        return Trainer(distributed_worker.model("diffusion", data), data, config, tmp_path / "one")

    with pytest.raises(ValueError, match=r"2 process\(es\) with grad_accum=1; this run has 1 with grad_accum=1"):
        trainer().resume(checkpoint)
    with pytest.raises(ValueError, match="grad_accum=2"):
        trainer(grad_accum=2).resume(checkpoint)
    allowed = trainer(allow_world_size_change=True)
    with pytest.warns(UserWarning, match="no longer bit-identical"):
        allowed.resume(checkpoint)
    assert allowed.step == 15
    allowed.fit()
    assert allowed.step == 20


def torchrun_script(script: str, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "scripts" / script), *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_train_scripts_run_under_torchrun(demos, tmp_path):
    policy_run = tmp_path / "policy"
    done = torchrun_script(
        "train.py", "task=obstacle_avoid", "policy=diffusion_unet_small", "training=demo",
        "policy.network.down_dims=[8,16]", "policy.network.step_embed_dim=8", "training.max_steps=4",
        "training.batch_size=16", "training.progress=false", "eval.enabled=false", f"task.dataset.path={demos}",
        f"run_dir={policy_run}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("policy saved to") == 1  # rank 0 only
    assert (policy_run / "policy" / "config.json").is_file()
    assert len((policy_run / "metrics.jsonl").read_text().splitlines()) >= 1

    from test_image_scripts import TINY
    image_run = tmp_path / "image"
    done = torchrun_script("train_image.py", *TINY, f"run_dir={image_run}")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((image_run / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["processes"] == 2
    assert (image_run / "samples.png").is_file()
