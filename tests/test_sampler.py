"""SequenceSampler windows (golden indices, padding, masks) and split_episodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffusion_policy.data.replay_buffer import ReplayBuffer
from diffusion_policy.data.sampler import SequenceSampler, split_episodes


def all_indices(sampler: SequenceSampler) -> np.ndarray:
    return np.stack([sampler.indices(i) for i in range(len(sampler))])


def test_golden_indices_with_padding() -> None:
    # episodes: [0, 1, 2] and [3, 4, 5, 6]; horizon 3, pad_before 1, pad_after 2
    sampler = SequenceSampler(np.array([3, 7]), horizon=3, pad_before=1, pad_after=2)
    expected = np.array([
        [0, 0, 1], [0, 1, 2], [1, 2, 2], [2, 2, 2],  # episode 0: offsets -1..2
        [3, 3, 4], [3, 4, 5], [4, 5, 6], [5, 6, 6], [6, 6, 6],  # episode 1: offsets -1..3
    ])
    assert len(sampler) == len(expected)
    np.testing.assert_array_equal(all_indices(sampler), expected)
    assert sampler.indices(0).dtype == np.int64
    np.testing.assert_array_equal(sampler.indices(-1), [6, 6, 6])


def test_golden_indices_without_padding_and_short_episodes() -> None:
    # lengths 2, 4, 1: with horizon 3 and no padding only episode 1 has windows
    sampler = SequenceSampler(np.array([2, 6, 7]), horizon=3)
    np.testing.assert_array_equal(all_indices(sampler), [[2, 3, 4], [3, 4, 5]])


@pytest.mark.parametrize("horizon,pad_before,pad_after", [(1, 0, 0), (4, 1, 3), (8, 7, 7), (5, 0, 2)])
def test_window_count_formula(horizon: int, pad_before: int, pad_after: int) -> None:
    lengths = np.array([1, 2, 5, 9, 16])
    sampler = SequenceSampler(np.cumsum(lengths), horizon, pad_before, pad_after)
    expected = np.maximum(0, lengths - horizon + pad_before + pad_after + 1).sum()
    assert len(sampler) == expected
    windows = all_indices(sampler)
    assert windows.shape == (expected, horizon)
    assert np.all(np.diff(windows, axis=1) >= 0) and np.all(np.diff(windows, axis=1) <= 1)


def test_episode_mask_excludes_episodes() -> None:
    ends = np.array([3, 7, 10])
    sampler = SequenceSampler(ends, horizon=2, episode_mask=np.array([True, False, True]))
    np.testing.assert_array_equal(all_indices(sampler), [[0, 1], [1, 2], [7, 8], [8, 9]])
    assert len(SequenceSampler(ends, horizon=2, episode_mask=np.zeros(3, bool))) == 0


def test_sample_gathers_with_first_k(tmp_path: Path) -> None:
    data = {"obs": np.arange(7 * 2).reshape(7, 2), "action": np.arange(7, dtype=np.float32) * 10}
    sampler = SequenceSampler(np.array([3, 7]), horizon=3, pad_before=1, pad_after=2)
    out = sampler.sample(data, 4, first_k={"obs": 2})
    np.testing.assert_array_equal(out["obs"], data["obs"][[3, 3]])
    np.testing.assert_array_equal(out["action"], [30.0, 30.0, 40.0])
    out = sampler.sample(data, 3)
    np.testing.assert_array_equal(out["action"], [20.0, 20.0, 20.0])

    buffer = ReplayBuffer.create(tmp_path / "buf.zarr")
    buffer.add_episode({k: v[:3] for k, v in data.items()})
    buffer.add_episode({k: v[3:] for k, v in data.items()})
    zarr_arrays = {key: buffer[key] for key in data}
    for i in range(len(sampler)):
        from_zarr = sampler.sample(zarr_arrays, i, first_k={"obs": 1})
        from_numpy = sampler.sample(data, i, first_k={"obs": 1})
        for key in data:
            np.testing.assert_array_equal(from_zarr[key], from_numpy[key])


def test_sampler_errors() -> None:
    with pytest.raises(ValueError, match="horizon=0"):
        SequenceSampler(np.array([3]), horizon=0)
    with pytest.raises(ValueError, match="pad_before=3"):
        SequenceSampler(np.array([3]), horizon=3, pad_before=3)
    with pytest.raises(ValueError, match=r"episode_ends\[1\]=3"):
        SequenceSampler(np.array([3, 3]), horizon=2)
    with pytest.raises(ValueError, match="episode_mask"):
        SequenceSampler(np.array([3, 5]), horizon=2, episode_mask=np.array([True]))
    sampler = SequenceSampler(np.array([3]), horizon=2)
    with pytest.raises(IndexError, match="window index 2"):
        sampler.indices(2)
    with pytest.raises(ValueError, match=r"first_k\['a'\]=3"):
        sampler.sample({"a": np.zeros(3)}, 0, first_k={"a": 3})
    with pytest.raises(KeyError, match="'b'"):
        sampler.sample({"a": np.zeros(3)}, 0, first_k={"b": 1})


def test_split_is_deterministic_disjoint_and_whole() -> None:
    train, val = split_episodes(20, 0.25, seed=3)
    again_train, again_val = split_episodes(20, 0.25, seed=3)
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(val, again_val)
    assert train.dtype == bool and train.shape == (20,)
    assert val.sum() == 5 and not np.any(train & val) and np.all(train | val)
    other_train, _ = split_episodes(20, 0.25, seed=4)
    assert not np.array_equal(train, other_train)


def test_split_edge_cases() -> None:
    train, val = split_episodes(10, 0.0, seed=0)
    assert train.all() and not val.any()
    _, val = split_episodes(3, 0.01, seed=0)
    assert val.sum() == 1  # at least one validation episode
    train, val = split_episodes(2, 0.9, seed=0)
    assert train.sum() == 1 and val.sum() == 1  # never all episodes to validation
    train, val = split_episodes(1, 0.5, seed=0)
    assert train.all() and not val.any()

    train, val = split_episodes(20, 0.2, seed=1, max_train_episodes=5)
    assert train.sum() == 5 and val.sum() == 4 and not np.any(train & val)
    np.testing.assert_array_equal(train, split_episodes(20, 0.2, seed=1, max_train_episodes=5)[0])
    np.testing.assert_array_equal(val, split_episodes(20, 0.2, seed=1)[1])  # the cap does not move val

    with pytest.raises(ValueError, match="val_ratio=1.0"):
        split_episodes(10, 1.0, seed=0)
    with pytest.raises(ValueError, match="val_ratio=-0.1"):
        split_episodes(10, -0.1, seed=0)
    with pytest.raises(ValueError, match="max_train_episodes=0"):
        split_episodes(10, 0.1, seed=0, max_train_episodes=0)
