"""The generic trainer: learning, exact resume after a crash, checkpoints, LR schedule, errors."""

from __future__ import annotations

import json
import time
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import diffusion_policy.core.trainer as trainer_module
from diffusion_policy.core.run_logger import WandbConfig
from diffusion_policy.core.trainer import Callback, Trainer, TrainerConfig, cosine_with_warmup


class LineDataset(Dataset):
    """y = 3x - 1 with 64 points."""

    def __init__(self, n: int = 64):
        self.x = torch.linspace(-1, 1, n).unsqueeze(-1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": 3 * self.x[i] - 1}


class NoisyRegressor(nn.Module):
    """Draws random noise in its loss, so resume must restore the RNG to be exact."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["x"] + 0.01 * torch.randn_like(batch["x"])
        return ((self.net(x) - batch["y"]) ** 2).mean()


def config(**overrides) -> TrainerConfig:
    base = dict(max_steps=40, batch_size=16, lr=1e-2, warmup_steps=5, val_every=10, log_every=5,
                checkpoint_every=10, progress=False, seed=3)
    return TrainerConfig(**(base | overrides))


class CrashAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.step == self.step:
            raise RuntimeError("simulated crash")


def make_trainer(run_dir, callbacks=(), **overrides) -> Trainer:
    torch.manual_seed(0)
    return Trainer(NoisyRegressor(), LineDataset(), config(**overrides), run_dir,
                   val_dataset=LineDataset(16), callbacks=callbacks)


def test_trainer_learns_and_logs(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=200)
    first = trainer.validation_loss()
    metrics = trainer.fit()
    assert metrics["val_loss"] < first / 20
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 200 and "loss" in rows[0]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000200"


def test_resume_after_crash_is_exact(tmp_path):
    straight = make_trainer(tmp_path / "a")
    straight.fit()

    crashed = make_trainer(tmp_path / "b", callbacks=[CrashAt(27)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.fit()
    resumed = make_trainer(tmp_path / "b")
    assert resumed.resume()
    assert resumed.step == 20  # the last complete checkpoint before the crash
    resumed.fit()

    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(straight.ema.model.state_dict().values(), resumed.ema.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.lr_scheduler.get_last_lr() == straight.lr_scheduler.get_last_lr()


def test_keeps_only_newest_checkpoints(tmp_path):
    make_trainer(tmp_path, keep_checkpoints=2).fit()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert names == ["step_00000030", "step_00000040"]
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no temporary leftovers


def test_resume_without_checkpoint_returns_false(tmp_path):
    assert make_trainer(tmp_path).resume() is False


def test_cosine_schedule_shape():
    f = cosine_with_warmup(warmup_steps=10, total_steps=110)
    assert f(0) == pytest.approx(1 / 11)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)
    assert f(110) == pytest.approx(0.0)


def test_non_finite_loss_raises(tmp_path):
    class Exploding(NoisyRegressor):
        def compute_loss(self, batch):
            return super().compute_loss(batch) * float("nan")

    trainer = Trainer(Exploding(), LineDataset(), config(), tmp_path)
    with pytest.raises(FloatingPointError, match="step 0"):
        trainer.fit()


@pytest.mark.parametrize(
    "overrides, match",
    [({"max_steps": 0}, "max_steps=0"), ({"max_minutes": 0.0}, "max_minutes=0.0"), ({"lr": -1.0}, "lr=-1.0"),
     ({"mixed_precision": "fp8"}, "fp8")],
)
def test_bad_config_names_value(overrides, match):
    with pytest.raises(ValueError, match=match):
        config(**overrides)


def test_model_without_loss_is_rejected(tmp_path):
    with pytest.raises(TypeError, match="Linear has no compute_loss"):
        Trainer(nn.Linear(1, 1), LineDataset(), config(), tmp_path)


def test_wandb_offline_writes_locally(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    trainer = make_trainer(tmp_path, max_steps=10, wandb=WandbConfig(mode="offline"))
    trainer.fit()
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_bf16_autocast_trains(tmp_path):
    """The mixed-precision path (used on GPU by default) also runs on CPU when asked for."""
    trainer = make_trainer(tmp_path, max_steps=60, mixed_precision="bf16")
    first = trainer.validation_loss()
    assert trainer.fit()["val_loss"] < first / 5


class SlowRegressor(NoisyRegressor):
    """Each step takes at least 10 ms, so a wall-clock budget maps to a predictable step count."""

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        time.sleep(0.01)
        return super().compute_loss(batch)


def test_time_budget_fixes_steps_and_schedule(tmp_path):
    torch.manual_seed(0)
    cfg = config(max_steps=10_000, max_minutes=0.01, calibration_steps=10, warmup_steps=2, checkpoint_every=1000,
                 val_every=1000)
    trainer = Trainer(SlowRegressor(), LineDataset(), cfg, tmp_path)
    trainer.fit()
    # 0.6 s at >= 10 ms per step: at most 60 steps, and the budget outlasts the 10 calibration steps.
    assert 10 < trainer.max_steps <= 60
    assert trainer.step == trainer.max_steps
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-9)  # the cosine ended on time
    state = torch.load(trainer.latest_checkpoint() / "train_state.pt", weights_only=True)
    assert state["max_steps"] == trainer.max_steps

    resumed = Trainer(SlowRegressor(), LineDataset(), cfg, tmp_path)
    assert resumed.resume() and resumed.max_steps == trainer.max_steps


def test_time_budget_never_exceeds_max_steps(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=15, max_minutes=10.0, calibration_steps=5)
    trainer.fit()
    assert trainer.step == trainer.max_steps == 15


def test_fused_optimizer_with_folded_clipping_matches_adamw_with_clip_grad_norm(tmp_path):
    """The default (FusedAdamW, clipping inside the kernel) trains exactly as AdamW + clip_grad_norm_,
    with a clip small enough to be active at every step."""
    from diffusion_policy.core.fused_adamw import FusedAdamW

    runs = {}
    for fused in (True, False):
        trainer = make_trainer(tmp_path / str(fused), max_steps=30, grad_clip_norm=0.05, fused_optimizer=fused)
        assert isinstance(trainer.optimizer, FusedAdamW) == fused
        trainer.fit()
        runs[fused] = [p.detach() for p in trainer.model.parameters()]
        if fused:
            assert float(trainer.optimizer.last_grad_norm) > 0.05  # clipping was active
    for a, b in zip(runs[True], runs[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_on_a_cpu_without_native_bf16_warns(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="without native bf16"):
        make_trainer(tmp_path, max_steps=1, mixed_precision="bf16")
    monkeypatch.setattr(trainer_module, "native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_trainer(tmp_path / "native", max_steps=1, mixed_precision="bf16")
