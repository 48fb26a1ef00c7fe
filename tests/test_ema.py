"""EMA of model weights: decay schedule, averaging, buffers, state round trip."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load, save
from torch import nn

from diffusion_policy.core.ema import EMA, EMAConfig


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_decay_golden_values() -> None:
    ema = EMA(_model())
    assert ema.decay(0) == 0.0
    assert ema.decay(10) == pytest.approx(0.8344400, abs=1e-7)  # 1 - 11 ** -0.75
    assert ema.decay(10**9) == 0.9999
    delayed = EMA(_model(), EMAConfig(update_after_step=5))
    assert delayed.decay(3) == 0.0 and delayed.decay(5) == 0.0
    assert delayed.decay(15) == pytest.approx(0.8344400, abs=1e-7)
    floored = EMA(_model(), EMAConfig(min_decay=0.5))
    assert floored.decay(1) == 0.5  # 1 - 2 ** -0.75 = 0.405 is below the floor


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="min_decay=0.9"):
        EMAConfig(min_decay=0.9, max_decay=0.5)
    with pytest.raises(ValueError, match="power=0"):
        EMAConfig(power=0)


def test_copy_is_frozen_and_independent() -> None:
    model = _model()
    ema = EMA(model)
    assert not ema.model.training
    assert all(not p.requires_grad for p in ema.model.parameters())
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not torch.equal(ema.model[0].weight, model[0].weight)


def test_constant_parameters_stay_constant() -> None:
    model = _model()
    ema = EMA(model)
    before = {k: v.clone() for k, v in ema.model.state_dict().items()}
    for _ in range(20):
        ema.update(model)
    for key, value in ema.model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(value, before[key]), key


def test_converges_toward_moved_parameter_at_documented_rate() -> None:
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model)
    ema.update(model)  # step 0: decay 0, a plain copy
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(5):
        ema.update(model)
    # Each update keeps a fraction decay(k) of the gap to the target.
    remaining = 1.0
    for k in range(1, 6):
        remaining *= 1 - (1 + k) ** -0.75
    assert ema.model.weight.item() == pytest.approx(1.0 - remaining, rel=1e-6)
    assert ema.step == 6


def test_buffers_are_copied() -> None:
    model = _model()
    ema = EMA(model)
    model.train()(torch.randn(8, 3))
    ema.update(model)
    ema.update(model)
    assert torch.equal(ema.model[1].running_mean, model[1].running_mean)
    assert int(ema.model[1].num_batches_tracked) == 1


def test_state_dict_round_trip_through_safetensors() -> None:
    model = _model()
    ema = EMA(model)
    for _ in range(3):
        with torch.no_grad():
            model[0].weight.add_(0.1)
        ema.update(model)
    restored = EMA(_model())
    restored.load_state_dict(load(save(ema.state_dict())))
    assert restored.step == 3
    for key, value in ema.model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[key], value), key
    with pytest.raises(KeyError, match="ema_step"):
        restored.load_state_dict(ema.model.state_dict())
