"""A damaged store names what is damaged: metadata files by path, chunks by array and steps."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from diffusion_policy.data.replay_buffer import ReplayBuffer
from diffusion_policy.data.storage import CorruptChunkError, StoreMetadataError


@pytest.fixture
def store(tmp_path):
    buffer = ReplayBuffer.create(tmp_path / "s.zarr")
    rng = np.random.default_rng(0)
    for _ in range(3):
        buffer.add_episode({"action": rng.random((10, 2), np.float32), "obs": rng.random((10, 3))})
    return tmp_path / "s.zarr"


@pytest.mark.parametrize("member", ["zarr.json", "data/zarr.json", "data/action/zarr.json",
                                    "meta/episode_ends/zarr.json"])
@pytest.mark.parametrize("content", [b"garbage{", b"[1, 2]", b"\xff\xfe"])
def test_damaged_metadata_names_the_file(store, member, content):
    (store / member).write_bytes(content)
    with pytest.raises(StoreMetadataError) as info:
        ReplayBuffer.open(store)
    assert f"{store}: cannot open the store: {store / member}: " in str(info.value)


def test_damaged_episode_ends_chunk_names_array_and_steps(store):
    chunk = store / "meta" / "episode_ends" / "c.0"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(CorruptChunkError, match=r"s\.zarr/meta/episode_ends: steps 0-2 \(chunk 0\) cannot be decoded"):
        ReplayBuffer.open(store)


def test_missing_episode_ends_is_named(store):
    shutil.rmtree(store / "meta" / "episode_ends")
    with pytest.raises(ValueError, match=r"lacks data/ or meta/episode_ends; members: \['data', 'meta'\]"):
        ReplayBuffer.open(store)
