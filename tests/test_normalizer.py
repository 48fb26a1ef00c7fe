"""Normalizer: limits/gaussian maps, round trips, state_dict restore, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from diffusion_policy.data.normalizer import Normalizer


def sample_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    state = rng.uniform(-3.0, 5.0, size=(40, 3, 4))  # stats per last dim, reduced over (40, 3)
    state[..., 2] = 7.5  # constant feature
    return {"state": state, "action": rng.normal(2.0, 4.0, size=(100, 2)).astype(np.float32)}


def test_limits_maps_min_max_to_unit_range() -> None:
    data = sample_data()
    norm = Normalizer.fit(data)
    x = torch.from_numpy(data["state"]).float()
    y = norm.normalize("state", x).reshape(-1, 4)
    assert y.shape == (120, 4)
    np.testing.assert_allclose(y.min(0).values[[0, 1, 3]], -1.0, atol=1e-6)
    np.testing.assert_allclose(y.max(0).values[[0, 1, 3]], 1.0, atol=1e-6)
    np.testing.assert_allclose(y[:, 2], 0.0, atol=1e-6)  # constant feature is only shifted
    assert norm.params["state"].scale[2] == 1.0
    expected_min = data["state"].reshape(-1, 4).min(0)
    np.testing.assert_allclose(norm.params["state"].min.numpy(), expected_min, rtol=1e-6)


def test_limits_golden_values() -> None:
    norm = Normalizer.fit({"a": np.array([[0.0, 10.0], [4.0, 10.00001], [2.0, 10.0]])})
    np.testing.assert_allclose(norm.params["a"].scale.numpy(), [0.5, 1.0])
    np.testing.assert_allclose(norm.params["a"].offset.numpy(), [-1.0, -10.000005])
    out = norm.normalize("a", torch.tensor([[0.0, 10.0], [4.0, 10.0], [3.0, 11.0]]))
    np.testing.assert_allclose(out.numpy(), [[-1.0, -5e-6], [1.0, -5e-6], [0.5, 1.0 - 5e-6]], atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int16])
def test_stats_match_numpy(dtype: type) -> None:
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(3001, 2, 4)) * 50 + 1e3).astype(dtype)  # rows not a multiple of the fold width
    stats = Normalizer.fit({"x": x}).params["x"]
    ref = x.reshape(-1, 4).astype(np.float64)
    for name in ["min", "max", "mean", "std"]:
        expected = getattr(ref, name)(axis=0)
        np.testing.assert_allclose(getattr(stats, name).numpy(), expected, rtol=1e-6, err_msg=name)


def test_gaussian_gives_zero_mean_unit_std() -> None:
    data = sample_data()
    norm = Normalizer.fit(data, mode={"action": "gaussian"})
    y = norm.normalize("action", torch.from_numpy(data["action"]))
    np.testing.assert_allclose(y.mean(0).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(0, unbiased=False).numpy(), 1.0, atol=1e-5)
    z = norm.normalize("state", torch.from_numpy(data["state"]).float())  # limits by default
    assert z.min() >= -1.0 - 1e-6 and z.max() <= 1.0 + 1e-6

    constant = Normalizer.fit({"c": np.full((5, 1), 3.0)}, mode="gaussian")
    np.testing.assert_allclose(constant.normalize("c", torch.tensor([[3.0]])).numpy(), [[0.0]])


@pytest.mark.parametrize("mode", ["limits", "gaussian"])
def test_round_trip(mode: str) -> None:
    data = sample_data()
    norm = Normalizer.fit({k: torch.from_numpy(v) for k, v in data.items()}, mode=mode)
    assert norm.keys == ["action", "state"]
    x = torch.randn(6, 5, 2) * 3
    back = norm.unnormalize("action", norm.normalize("action", x))
    np.testing.assert_allclose(back.numpy(), x.numpy(), atol=1e-5)
    batch = {"action": x, "image": torch.zeros(2, 3)}
    out = norm.normalize_dict(batch)
    assert out["image"] is batch["image"]
    torch.testing.assert_close(out["action"], norm.normalize("action", x))


def test_state_dict_round_trip_through_safetensors() -> None:
    norm = Normalizer.fit(sample_data(), mode={"state": "gaussian"})
    state = norm.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert "params.state.scale" in state and "params.action.std" in state
    restored = Normalizer.from_state_dict(load(save(state)))
    assert restored.keys == norm.keys
    x = torch.randn(3, 4)
    torch.testing.assert_close(restored.normalize("state", x), norm.normalize("state", x))
    torch.testing.assert_close(restored.unnormalize("action", x[:, :2]), norm.unnormalize("action", x[:, :2]))
    with pytest.raises(ValueError, match="'weird'"):
        Normalizer.from_state_dict({"weird": torch.zeros(2)})
    incomplete = {k: v for k, v in state.items() if k != "params.action.offset"}
    with pytest.raises(RuntimeError, match="params.action.offset"):
        Normalizer.from_state_dict(incomplete)


def test_moves_with_module_to() -> None:
    norm = Normalizer.fit(sample_data()).to(torch.float64)
    assert norm.params["action"].scale.dtype == torch.float64
    assert norm.normalize("action", torch.zeros(1, 2, dtype=torch.float64)).dtype == torch.float64


def test_errors() -> None:
    norm = Normalizer.fit(sample_data())
    with pytest.raises(KeyError, match=r"'obs'.*\['action', 'state'\]"):
        norm.normalize("obs", torch.zeros(2))
    with pytest.raises(ValueError, match=r"'action'.*\(4, 3\).*2"):
        norm.unnormalize("action", torch.zeros(4, 3))
    with pytest.raises(ValueError, match="'agent.pos'"):
        Normalizer.fit({"agent.pos": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="'median'"):
        Normalizer.fit({"a": np.zeros((3, 2))}, mode="median")
    with pytest.raises(KeyError, match="'b'"):
        Normalizer.fit({"a": np.zeros((3, 2))}, mode={"b": "limits"})
    with pytest.raises(ValueError, match="'a'.*NaN"):
        Normalizer.fit({"a": np.array([[0.0], [np.nan]])})
    with pytest.raises(ValueError, match=r"'a'.*\(0, 2\)"):
        Normalizer.fit({"a": np.zeros((0, 2))})
