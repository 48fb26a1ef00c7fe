"""SequenceDataset: item shapes/dtypes, padding, train/val split, normalizer on train only, errors."""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import diffusion_policy.data.dataset as dataset_module
from diffusion_policy.data.chunk_cache import ChunkCachedArray
from diffusion_policy.data.dataset import SequenceDataset
from diffusion_policy.data.replay_buffer import ReplayBuffer

LENGTHS = (12, 7, 10, 9, 15, 8)


def make_buffer(extreme_episode: int | None = None) -> ReplayBuffer:
    """Episodes whose state row t of episode e is (e, t); action = 10 * state (+ extremes in one episode)."""
    buffer = ReplayBuffer.in_memory()
    for e, length in enumerate(LENGTHS):
        t = np.arange(length)
        state = np.stack([np.full(length, e), t], axis=1).astype(np.float32)
        action = 10 * state
        if e == extreme_episode:
            action = action + 1000.0
        image = np.broadcast_to(t[:, None, None, None], (length, 4, 4, 3)).astype(np.uint8)
        buffer.add_episode({"state": state, "act": action, "image": image})
    return buffer


def make_dataset(buffer: ReplayBuffer, **kwargs) -> SequenceDataset:
    params = dict(obs_keys=["state", "image"], action_key="act", horizon=8, n_obs_steps=2, n_action_steps=4)
    return SequenceDataset(buffer, **{**params, **kwargs})


def test_item_shapes_dtypes_and_padding() -> None:
    dataset = make_dataset(make_buffer())
    assert dataset.obs_shapes == {"state": (2,), "image": (4, 4, 3)} and dataset.action_dim == 2
    # windows per episode: L - 8 + (2 - 1) + (4 - 1) + 1 = L - 3
    assert len(dataset) == sum(length - 3 for length in LENGTHS)
    item = dataset[0]
    assert set(item) == {"obs", "action"} and set(item["obs"]) == {"state", "image"}
    assert item["obs"]["state"].shape == (2, 2) and item["obs"]["image"].shape == (2, 4, 4, 3)
    assert item["action"].shape == (8, 2)
    assert item["obs"]["state"].dtype == item["action"].dtype == torch.float32
    assert item["obs"]["image"].dtype == torch.uint8 and dataset.image_keys == ["image"]
    # first window starts one step before the episode: its first frame repeats step 0
    torch.testing.assert_close(item["obs"]["state"], torch.tensor([[0.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(item["action"][:, 1], torch.tensor([0.0, 0, 10, 20, 30, 40, 50, 60]))
    assert item["obs"]["image"][1].max() == 0
    # last window of episode 0 runs 3 steps past its end: the last frame repeats
    last = dataset[LENGTHS[0] - 4]
    torch.testing.assert_close(last["action"][:, 1], torch.tensor([70.0, 80, 90, 100, 110, 110, 110, 110]))
    torch.testing.assert_close(last["obs"]["image"][:, 0, 0, 0], torch.tensor([7, 8], dtype=torch.uint8))


def test_zarr_backed_matches_in_memory(tmp_path: Path) -> None:
    memory = make_buffer()
    disk = ReplayBuffer.create(tmp_path / "buf.zarr")
    for i in range(memory.n_episodes):
        disk.add_episode(memory.get_episode(i))
    lazy = make_dataset(ReplayBuffer.open(tmp_path / "buf.zarr"), in_memory=False)
    eager = make_dataset(ReplayBuffer.open(tmp_path / "buf.zarr"))
    for i in (0, 5, len(eager) - 1):
        a, b = lazy[i], eager[i]
        torch.testing.assert_close(a["action"], b["action"])
        torch.testing.assert_close(a["obs"]["image"], b["obs"]["image"])


def test_validation_split_is_disjoint() -> None:
    dataset = make_dataset(make_buffer(), val_ratio=0.34, seed=0)
    val = dataset.get_validation_dataset()
    assert len(dataset.val_episodes) == 2 and len(dataset.train_episodes) == 4
    assert not set(dataset.train_episodes) & set(dataset.val_episodes)
    np.testing.assert_array_equal(val.val_episodes, dataset.val_episodes)

    def episodes_seen(ds: SequenceDataset) -> set[int]:
        return {int(ds[i]["obs"]["state"][0, 0]) for i in range(len(ds))}

    assert episodes_seen(dataset) == set(dataset.train_episodes.tolist())
    assert episodes_seen(val) == set(dataset.val_episodes.tolist())
    assert len(val) == sum(LENGTHS[e] - 3 for e in dataset.val_episodes)

    capped = make_dataset(make_buffer(), val_ratio=0.34, seed=0, max_train_episodes=1)
    assert len(capped.train_episodes) == 1 and set(capped.train_episodes) <= set(dataset.train_episodes)


def test_fit_normalizer_uses_train_episodes_only() -> None:
    dataset = make_dataset(make_buffer(), val_ratio=0.2, seed=1)
    (val_episode,) = dataset.val_episodes
    dataset = make_dataset(make_buffer(extreme_episode=int(val_episode)), val_ratio=0.2, seed=1)
    norm = dataset.fit_normalizer()
    assert norm.keys == ["action", "state"]  # images are scaled by the policy, not normalised
    train = dataset.train_episodes
    assert norm.params["action"].max[1].item() == 10.0 * (max(LENGTHS[e] for e in train) - 1)
    assert norm.params["action"].min.tolist() == [10.0 * train.min(), 0.0]
    assert norm.params["state"].max[0].item() == train.max()
    gaussian = dataset.fit_normalizer(mode="gaussian")
    assert gaussian.params["action"].max[0].item() < 1000.0


def test_errors() -> None:
    buffer = make_buffer()
    with pytest.raises(KeyError, match=r"'pos'.*\['act', 'image', 'state'\]"):
        make_dataset(buffer, obs_keys=["pos"])
    with pytest.raises(KeyError, match="'action'"):
        make_dataset(buffer, action_key="action")
    with pytest.raises(ValueError, match=r"'image'.*\(N, Da\)"):
        make_dataset(buffer, action_key="image")
    with pytest.raises(ValueError, match="n_obs_steps=3.*horizon=2"):
        make_dataset(buffer, horizon=2, n_obs_steps=3)
    with pytest.raises(ValueError, match="n_obs_steps=0"):
        make_dataset(buffer, n_obs_steps=0)
    with pytest.raises(ValueError, match="n_action_steps=9"):
        make_dataset(buffer, n_action_steps=9)


def test_non_finite_data_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "buf.zarr"
    disk = ReplayBuffer.create(path)
    buffer = make_buffer()
    for i in range(buffer.n_episodes):
        disk.add_episode(buffer.get_episode(i))
    zarr.open_group(str(path), mode="r+")["data/state"][17, 1] = np.inf  # written behind the buffer's back
    with pytest.raises(ValueError, match="'state'.*step 17"):
        make_dataset(ReplayBuffer.open(path))


def test_dataset_is_a_snapshot_of_the_buffer() -> None:
    buffer = make_buffer()
    dataset = make_dataset(buffer)
    n_windows, norm = len(dataset), dataset.fit_normalizer()
    extra = np.full((20, 2), 99.0, np.float32)
    buffer.add_episode({"state": extra, "act": extra, "image": np.zeros((20, 4, 4, 3), np.uint8)})
    assert len(dataset) == n_windows
    torch.testing.assert_close(dataset.fit_normalizer().state_dict(), norm.state_dict())


def camera_store(path: Path) -> ReplayBuffer:
    """6 episodes x 40 steps of 96 x 96 frames (37 frames per stored chunk), each frame filled with its step."""
    disk = ReplayBuffer.create(path)
    for e in range(6):
        t = np.arange(40)
        frames = (t + 40 * e)[:, None, None, None] % 251 + np.zeros((1, 96, 96, 3))
        disk.add_episode({"image": frames.astype(np.uint8),
                          "state": np.stack([np.full(40, e), t], axis=1).astype(np.float32),
                          "act": np.stack([t, -t], axis=1).astype(np.float32)})
    return ReplayBuffer.open(path)


def test_chunk_cache_reads_what_zarr_holds_and_keeps_at_most_its_capacity(tmp_path: Path) -> None:
    images = camera_store(tmp_path / "cams.zarr")["image"]
    assert images.chunk_steps == 37
    chunk_bytes = 37 * 96 * 96 * 3
    cached = ChunkCachedArray(images, capacity_bytes=2 * chunk_bytes)
    everything = images[:]
    for lo, hi in [(0, 3), (35, 40), (36, 75), (230, 240), (0, 240)]:
        np.testing.assert_array_equal(cached[lo:hi], everything[lo:hi])
        assert cached._cached_bytes <= 2 * chunk_bytes
    misses = cached.misses
    cached[221:223]  # in the chunk read last
    assert cached.misses == misses
    assert pickle.loads(pickle.dumps(cached))._cached_bytes == 0  # a DataLoader worker starts empty
    with pytest.raises(TypeError, match="contiguous step slices"):
        cached[[0, 1]]


def test_dataset_reads_images_from_disk_when_the_copy_would_not_fit(tmp_path: Path, monkeypatch, caplog) -> None:
    disk = camera_store(tmp_path / "cams.zarr")
    monkeypatch.setattr(dataset_module, "available_memory", lambda: 100_000)  # far less than the frames
    with caplog.at_level(logging.INFO, logger="diffusion_policy.data.dataset"):
        lazy = make_dataset(disk)
    assert "image keys read from disk through a chunk cache" in caplog.text
    assert isinstance(lazy._arrays["image"], ChunkCachedArray) and not lazy.in_memory
    monkeypatch.setattr(dataset_module, "available_memory", lambda: 1 << 40)
    eager = make_dataset(disk)
    assert eager.in_memory
    for i in range(0, len(eager), 7):
        a, b = eager[i], lazy[i]
        assert all(torch.equal(a["obs"][k], b["obs"][k]) for k in a["obs"]) and torch.equal(a["action"], b["action"])


def test_available_memory_sees_an_address_space_limit() -> None:
    code = ("import resource; from diffusion_policy.data.chunk_cache import available_memory; "
            "resource.setrlimit(resource.RLIMIT_AS, (16 << 30, resource.RLIM_INFINITY)); print(available_memory())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert 0 < int(out) < 16 << 30


def stacked(dataset: SequenceDataset, ids: list[int]) -> dict:
    items = [dataset[i] for i in ids]
    return {"obs": {k: torch.stack([it["obs"][k] for it in items]) for k in items[0]["obs"]},
            "action": torch.stack([it["action"] for it in items])}


def assert_same_batch(a: dict, b: dict) -> None:
    assert a["obs"].keys() == b["obs"].keys()
    for key in a["obs"]:
        assert a["obs"][key].dtype == b["obs"][key].dtype and torch.equal(a["obs"][key], b["obs"][key]), key
    assert torch.equal(a["action"], b["action"])


def test_a_batch_gathered_at_once_equals_its_windows_stacked(tmp_path: Path, monkeypatch) -> None:
    dataset = make_dataset(make_buffer())
    ids = [0, len(dataset) - 1, 5, 5, -1, 17]  # both padded ends, a repeat, a negative index
    batch = dataset.__getitems__(ids)
    assert batch["obs"]["state"].shape == (6, 2, 2) and batch["obs"]["image"].shape == (6, 2, 4, 4, 3)
    assert batch["obs"]["image"].dtype == torch.uint8 and batch["action"].shape == (6, 8, 2)
    assert_same_batch(batch, stacked(dataset, ids))
    with pytest.raises(IndexError, match=rf"\[{len(dataset)}\] out of range for {len(dataset)} windows"):
        dataset.__getitems__([0, len(dataset)])
    monkeypatch.setattr(dataset_module, "available_memory", lambda: 100_000)
    lazy = make_dataset(camera_store(tmp_path / "cams.zarr"))  # cameras from disk: window by window
    assert not lazy.in_memory
    assert_same_batch(lazy.__getitems__([3, 80, 4]), stacked(lazy, [3, 80, 4]))
