"""Image observations in the replay buffer and dataset: validation, round trips, damaged chunks, uint8 samples."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from diffusion_policy.data import storage
from diffusion_policy.data.dataset import SequenceDataset
from diffusion_policy.data.replay_buffer import ReplayBuffer
from diffusion_policy.data.storage import CorruptChunkError

LENGTHS = (10, 7, 9)  # 26 steps
FRAME_BYTES = 12 * 12 * 3


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 4 frames (chunk 2 holds steps 8-11) and 216 low-dim steps, so tiny stores have several."""
    monkeypatch.setattr(storage, "_CHUNK_BYTES", 4 * FRAME_BYTES)


def smooth_frames(length: int, seed: int) -> np.ndarray:
    """`(length, 12, 12, 3)` uint8 frames that compress well, like rendered scenes (a moving square)."""
    frames = np.full((length, 12, 12, 3), 255, np.uint8)
    for t in range(length):
        corner = (seed + t) % 8
        frames[t, corner : corner + 4, corner : corner + 4] = (40 * seed % 256, 100, 7 * t % 256)
    return frames


def noisy_frames(length: int, seed: int) -> np.ndarray:
    """Incompressible `(length, 12, 12, 3)` uint8 frames: Blosc stores their chunks uncompressed."""
    return np.random.default_rng(seed).integers(0, 256, (length, 12, 12, 3), dtype=np.uint8)


def make_episodes(frames=smooth_frames) -> list[dict[str, np.ndarray]]:
    episodes = []
    for seed, length in enumerate(LENGTHS):
        t = np.arange(length, dtype=np.float32)
        pos = np.stack([t, np.full(length, seed, np.float32)], axis=1)
        episodes.append({"pixels": frames(length, seed), "agent_pos": pos, "action": pos + 0.5})
    return episodes


def write_store(path: Path, zarr_format: int, episodes: list[dict[str, np.ndarray]]) -> ReplayBuffer:
    buffer = ReplayBuffer.create(path, zarr_format=zarr_format)
    for episode in episodes:
        buffer.add_episode(episode)
    return buffer


def chunk_file(path: Path, key: str, chunk: int) -> Path:
    array = zarr.open_group(str(path), mode="r")[f"data/{key}"]
    return path / "data" / key / array.metadata.encode_chunk_key((chunk, *[0] * (array.ndim - 1)))


@pytest.mark.parametrize(
    ("image", "error", "message"),
    [
        (np.zeros((5, 12, 12, 3), np.float32), TypeError, r"'pixels' of shape \(5, 12, 12, 3\) has dtype float32"),
        (np.zeros((5, 3, 12, 12), np.uint8), ValueError, r"'pixels'.*\(3, 12, 12\).*channel-first.*\(5, 3, 12, 12\)"),
        (np.zeros((5, 12, 12, 2), np.uint8), ValueError, r"'pixels'.*\(12, 12, 2\).*\(5, 12, 12, 2\)"),
    ],
)
def test_add_episode_rejects_bad_images(image: np.ndarray, error: type, message: str) -> None:
    buffer = ReplayBuffer.in_memory()
    with pytest.raises(error, match=message):
        buffer.add_episode({"pixels": image, "action": np.zeros((5, 2), np.float32)})
    assert buffer.n_episodes == 0
    buffer.add_episode({"grid": np.zeros((5, 2, 3), np.float32)})  # per-step rank 2 is low-dim: any dtype


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_image_round_trip_is_bit_exact(tmp_path: Path, zarr_format: int) -> None:
    episodes = make_episodes(noisy_frames)
    write_store(tmp_path / "buf.zarr", zarr_format, episodes)
    buffer = ReplayBuffer.open(tmp_path / "buf.zarr")
    memory = buffer.copy_to_memory()
    for i, episode in enumerate(episodes):
        for source in (buffer, memory):
            got = source.get_episode(i)["pixels"]
            assert got.dtype == np.uint8
            np.testing.assert_array_equal(got, episode["pixels"])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_all_black_frames_are_stored_not_mistaken_for_missing(tmp_path: Path, zarr_format: int) -> None:
    black = {"pixels": np.zeros((9, 12, 12, 3), np.uint8), "action": np.zeros((9, 2), np.float32)}
    write_store(tmp_path / "buf.zarr", zarr_format, [black])
    appender = ReplayBuffer.open(tmp_path / "buf.zarr", mode="a")  # arrays reopened for appending
    appender.add_episode(black)
    assert chunk_file(tmp_path / "buf.zarr", "pixels", 4).is_file()
    assert ReplayBuffer.open(tmp_path / "buf.zarr")["pixels"][:].max() == 0


def damage(file: Path, how: str) -> None:
    data = file.read_bytes()
    if how == "garbage":
        file.write_bytes(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    else:
        file.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("zarr_format", "frames", "how"),
    [
        (2, smooth_frames, "garbage"),
        (3, smooth_frames, "garbage"),
        (2, smooth_frames, "truncated"),
        (3, smooth_frames, "truncated"),
        (3, noisy_frames, "truncated"),  # an uncompressed Blosc chunk: only the format-3 checksum sees the cut
    ],
)
def test_damaged_chunk_names_key_and_steps(tmp_path: Path, zarr_format: int, frames, how: str) -> None:
    path = tmp_path / "buf.zarr"
    episodes = make_episodes(frames)
    write_store(path, zarr_format, episodes)
    damage(chunk_file(path, "pixels", 2), how)
    buffer = ReplayBuffer.open(path)  # the file is there: opening succeeds, reading it fails
    message = re.escape(f"{path}/data/pixels: steps 8-11 (chunk 2) cannot be decoded")
    with pytest.raises(CorruptChunkError, match=message):
        buffer["pixels"][5:20]
    with pytest.raises(CorruptChunkError, match=message):
        buffer["pixels"][9]
    with pytest.raises(CorruptChunkError, match=message):
        buffer.get_episode(0)
    with pytest.raises(CorruptChunkError, match=message):
        buffer.copy_to_memory()
    np.testing.assert_array_equal(buffer["pixels"][:8], episodes[0]["pixels"][:8])  # other chunks still read
    np.testing.assert_array_equal(buffer.get_episode(2)["pixels"], episodes[2]["pixels"])


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize(("key", "chunk", "steps"), [("pixels", 2, "8-11"), ("pixels", 6, "24-25"),
                                                    ("agent_pos", 0, "0-25")])
def test_missing_chunk_is_detected_on_open(tmp_path: Path, zarr_format: int, key: str, chunk: int,
                                           steps: str) -> None:
    path = tmp_path / "buf.zarr"
    write_store(path, zarr_format, make_episodes())
    chunk_file(path, key, chunk).unlink()
    message = re.escape(f"{path}/data/{key}: steps {steps} (chunk {chunk}) have no chunk file (1 of ")
    for mode in ("r", "a"):
        with pytest.raises(CorruptChunkError, match=message):
            ReplayBuffer.open(path, mode=mode)


def test_missing_chunk_of_a_foreign_array_only_warns(tmp_path: Path) -> None:
    path = tmp_path / "buf.zarr"
    write_store(path, 3, make_episodes())
    data = zarr.open_group(str(path), mode="r+")["data"]
    data.create_array("reward", data=np.zeros(26, np.float32))  # Zarr's default writer skips all-zero chunks
    with pytest.warns(UserWarning, match=re.escape(f"{path}/data/reward: steps 0-25 (chunk 0) have no chunk file")):
        buffer = ReplayBuffer.open(path)
    np.testing.assert_array_equal(buffer["reward"][:], np.zeros(26))


def test_missing_chunk_beyond_the_episodes_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "buf.zarr"
    write_store(path, 3, make_episodes())
    root = zarr.open_group(str(path), mode="r+")
    root["meta/episode_ends"][:] = [10, 17, 20]  # as if the last episode were shorter: chunk 6 is unused
    chunk_file(path, "pixels", 6).unlink()
    assert ReplayBuffer.open(path).n_steps == 20


def make_dataset(buffer: ReplayBuffer, obs_keys=("pixels", "agent_pos"), **kwargs) -> SequenceDataset:
    return SequenceDataset(buffer, list(obs_keys), horizon=8, n_obs_steps=3, n_action_steps=4, **kwargs)


@pytest.mark.parametrize("in_memory", [True, False])
def test_dataset_yields_uint8_image_windows(tmp_path: Path, in_memory: bool) -> None:
    episodes = make_episodes(noisy_frames)
    write_store(tmp_path / "buf.zarr", 3, episodes)
    dataset = make_dataset(ReplayBuffer.open(tmp_path / "buf.zarr"), in_memory=in_memory)
    assert dataset.obs_shapes == {"pixels": (12, 12, 3), "agent_pos": (2,)}
    assert dataset.image_keys == ["pixels"]
    if in_memory:
        assert dataset._arrays["pixels"].dtype == np.uint8 and isinstance(dataset._arrays["pixels"], np.ndarray)
    # windows per episode: L - 8 + (3 - 1) + (4 - 1) + 1 = L - 2; the first starts 2 steps before step 0
    first, last = dataset[0], dataset[LENGTHS[0] - 3]
    for item in (first, last):
        assert item["obs"]["pixels"].dtype == torch.uint8 and item["obs"]["pixels"].shape == (3, 12, 12, 3)
        assert item["obs"]["agent_pos"].dtype == torch.float32 and item["obs"]["agent_pos"].shape == (3, 2)
    frames = episodes[0]["pixels"]
    np.testing.assert_array_equal(first["obs"]["pixels"].numpy(), frames[[0, 0, 0]])  # edge padding
    np.testing.assert_array_equal(last["obs"]["pixels"].numpy(), frames[[5, 6, 7]])
    second_episode = dataset[LENGTHS[0] - 2 + 4]  # window starting at step 2 of episode 1
    np.testing.assert_array_equal(second_episode["obs"]["pixels"].numpy(), episodes[1]["pixels"][2:5])

    batch = torch.utils.data.default_collate([dataset[i] for i in range(4)])
    assert batch["obs"]["pixels"].dtype == torch.uint8 and batch["obs"]["pixels"].shape == (4, 3, 12, 12, 3)


def test_normalizer_skips_images_and_keeps_low_dim_stats() -> None:
    buffer = ReplayBuffer.in_memory()
    for episode in make_episodes():
        buffer.add_episode(episode)
    with_images = make_dataset(buffer, val_ratio=0.3, seed=0).fit_normalizer()
    low_dim_only = make_dataset(buffer, obs_keys=["agent_pos"], val_ratio=0.3, seed=0).fit_normalizer()
    assert with_images.keys == ["action", "agent_pos"]
    torch.testing.assert_close(with_images.state_dict(), low_dim_only.state_dict(), rtol=0, atol=0)


def test_dataset_reads_float_images_as_uint8_and_rejects_other_non_uint8_images(tmp_path: Path) -> None:
    path = tmp_path / "buf.zarr"
    write_store(path, 3, make_episodes())
    data = zarr.open_group(str(path), mode="r+")["data"]
    data.create_array("float_pixels", data=np.full((26, 12, 12, 3), 0.5, np.float32))  # written behind the buffer
    data.create_array("int_pixels", data=np.full((26, 12, 12, 3), 7, np.int16))
    dataset = make_dataset(ReplayBuffer.open(path), obs_keys=["float_pixels"])  # 0..1 detected
    assert dataset[0]["obs"]["float_pixels"].dtype == torch.uint8
    assert (dataset[0]["obs"]["float_pixels"] == 128).all()  # rint(0.5 * 255)
    with pytest.raises(TypeError, match=r"'int_pixels'.*int16"):
        make_dataset(ReplayBuffer.open(path), obs_keys=["int_pixels"])
