"""ReplayBuffer: round trips over Zarr v2/v3 and memory, validation, crash safety, legacy stores."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr

from diffusion_policy.data.replay_buffer import ReplayBuffer


def make_episode(length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "action": rng.normal(size=(length, 2)).astype(np.float32),
        "state": rng.normal(size=(length, 5)),  # float64
        "step": np.arange(length, dtype=np.int32),
        "done": np.arange(length) == length - 1,
        "image": rng.integers(0, 256, size=(length, 8, 8, 3), dtype=np.uint8),
    }


LENGTHS = (5, 9, 1, 4)
EPISODES = [make_episode(n, seed) for seed, n in enumerate(LENGTHS)]


def assert_episodes_equal(buffer: ReplayBuffer, episodes: list[dict[str, np.ndarray]]) -> None:
    assert buffer.n_episodes == len(episodes)
    for i, expected in enumerate(episodes):
        got = buffer.get_episode(i)
        assert sorted(got) == sorted(expected)
        for key, value in expected.items():
            assert got[key].dtype == value.dtype, key
            np.testing.assert_array_equal(got[key], value, err_msg=key)


def tree_snapshot(path: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_disk_round_trip(tmp_path: Path, zarr_format: int) -> None:
    path = tmp_path / "buf.zarr"
    buffer = ReplayBuffer.create(path, zarr_format=zarr_format)
    for episode in EPISODES:
        buffer.add_episode(episode)
    assert_episodes_equal(buffer, EPISODES)

    reopened = ReplayBuffer.open(path)
    assert reopened.read_only and reopened.path == path
    assert reopened.keys() == ["action", "done", "image", "state", "step"]
    np.testing.assert_array_equal(reopened.episode_ends, np.cumsum(LENGTHS))
    assert reopened.episode_ends.dtype == np.int64
    np.testing.assert_array_equal(reopened.episode_lengths, LENGTHS)
    assert reopened.n_steps == sum(LENGTHS)
    assert_episodes_equal(reopened, EPISODES)
    np.testing.assert_array_equal(reopened.get_episode(-1, ["step"])["step"], np.arange(4))
    assert reopened.episode_slice(1) == slice(5, 14)
    np.testing.assert_array_equal(reopened["action"][5:14], EPISODES[1]["action"])

    memory = reopened.copy_to_memory()
    assert memory.path is None and not memory.read_only
    assert isinstance(memory["image"], np.ndarray)
    assert_episodes_equal(memory, EPISODES)
    assert memory.copy_to_memory(["action"]).keys() == ["action"]


def test_in_memory_buffer_grows_and_matches() -> None:
    buffer = ReplayBuffer.in_memory()
    assert buffer.n_episodes == 0 and buffer.n_steps == 0 and buffer.keys() == []
    for episode in EPISODES * 3:
        buffer.add_episode(episode)
    assert_episodes_equal(buffer, EPISODES * 3)
    assert buffer["state"].shape == (3 * sum(LENGTHS), 5)
    assert "image" in buffer and "nope" not in buffer


def test_chunks_and_compression(tmp_path: Path) -> None:
    ReplayBuffer.create(tmp_path / "v3.zarr").add_episode(EPISODES[0])
    data = zarr.open_group(str(tmp_path / "v3.zarr"), mode="r")["data"]
    assert data["image"].chunks == (2**20 // 192, 8, 8, 3)  # ~1 MiB of whole steps, images too
    assert data["action"].chunks == (2**20 // 8, 2)
    assert data["state"].chunks == (2**20 // 40, 5)
    blosc, checksum = data["action"].compressors
    assert isinstance(blosc, zarr.codecs.BloscCodec) and blosc.cname.value == "zstd"
    assert isinstance(checksum, zarr.codecs.Crc32cCodec)
    assert (tmp_path / "v3.zarr/data/image/c.0.0.0.0").is_file()  # flat chunk files: one listing finds them

    ReplayBuffer.create(tmp_path / "v2.zarr", zarr_format=2).add_episode(EPISODES[0])
    codec = zarr.open_group(str(tmp_path / "v2.zarr"), mode="r")["data/image"].compressors[0]
    assert isinstance(codec, numcodecs.Blosc) and codec.cname == "zstd"
    assert codec.shuffle == numcodecs.Blosc.SHUFFLE


def test_opens_original_v2_layout(tmp_path: Path) -> None:
    path = tmp_path / "legacy.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    compressor = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
    action = np.arange(20, dtype=np.float32).reshape(10, 2)
    state = np.arange(50, dtype=np.float32).reshape(10, 5) / 7
    root.create_array("data/action", data=action, chunks=(4, 2), compressors=compressor)
    root.create_array("data/state", data=state, chunks=(4, 5), compressors=compressor)
    ends = np.array([3, 10], np.int64)
    root.create_array("meta/episode_ends", data=ends, chunks=(4,), compressors=compressor)

    buffer = ReplayBuffer.open(path)
    assert buffer.keys() == ["action", "state"] and buffer.n_episodes == 2
    np.testing.assert_array_equal(buffer.get_episode(1)["state"], state[3:])
    np.testing.assert_array_equal(buffer["action"][0:3], action[:3])

    appendable = ReplayBuffer.open(path, mode="a")
    appendable.add_episode({"action": action[:2], "state": state[:2]})
    reopened = ReplayBuffer.open(path)
    np.testing.assert_array_equal(reopened.episode_ends, [3, 10, 12])
    np.testing.assert_array_equal(reopened.get_episode(2)["action"], action[:2])


def test_opens_zip_store_read_only(tmp_path: Path) -> None:
    path = tmp_path / "buf.zarr"
    buffer = ReplayBuffer.create(path)
    for episode in EPISODES[:2]:
        buffer.add_episode(episode)
    zip_path = tmp_path / "buf.zarr.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:  # a zip store holds the store's files at its root
        for file in path.rglob("*"):
            zf.write(file, file.relative_to(path).as_posix())
    zipped = ReplayBuffer.open(zip_path)
    assert_episodes_equal(zipped, EPISODES[:2])
    with pytest.raises(ValueError, match="zip"):
        ReplayBuffer.open(zip_path, mode="a")


def test_read_only_store_is_never_modified(tmp_path: Path) -> None:
    path = tmp_path / "buf.zarr"
    buffer = ReplayBuffer.create(path)
    buffer.add_episode(EPISODES[0])
    before = tree_snapshot(path)
    reader = ReplayBuffer.open(path, mode="r")
    with pytest.raises(PermissionError, match="read-only"):
        reader.add_episode(EPISODES[1])
    reader.get_episode(0)
    reader.copy_to_memory().add_episode(EPISODES[1])
    assert tree_snapshot(path) == before


def test_create_refuses_existing_path(tmp_path: Path) -> None:
    path = tmp_path / "buf.zarr"
    ReplayBuffer.create(path).add_episode(EPISODES[0])
    with pytest.raises(FileExistsError, match="buf.zarr"):
        ReplayBuffer.create(path)
    assert ReplayBuffer.create(path, overwrite=True).n_episodes == 0
    with pytest.raises(ValueError, match="zarr_format=4"):
        ReplayBuffer.create(tmp_path / "x.zarr", zarr_format=4)
    with pytest.raises(FileNotFoundError, match="missing.zarr"):
        ReplayBuffer.open(tmp_path / "missing.zarr")


def test_add_episode_validation() -> None:
    buffer = ReplayBuffer.in_memory()
    with pytest.raises(ValueError, match="empty"):
        buffer.add_episode({})
    with pytest.raises(ValueError, match=r"'action'.*length 0"):
        buffer.add_episode({"action": np.zeros((0, 2))})
    with pytest.raises(ValueError, match="'b'.*length 3.*2"):
        buffer.add_episode({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))})
    with pytest.raises(TypeError, match="'a'"):
        buffer.add_episode({"a": [1.0, 2.0]})
    with pytest.raises(TypeError, match="'a'"):
        buffer.add_episode({"a": np.float32(1.0)[()]})
    nan = np.zeros((4, 2))
    nan[2, 1] = np.nan
    with pytest.raises(ValueError, match="'a'.*time index 2"):
        buffer.add_episode({"a": nan})
    assert buffer.n_episodes == 0

    buffer.add_episode({"a": np.zeros((2, 3), np.float32), "b": np.zeros(2, np.int64)})
    with pytest.raises(ValueError, match=r"keys \['a'\]"):
        buffer.add_episode({"a": np.zeros((2, 3), np.float32)})
    with pytest.raises(ValueError, match=r"'a'.*expected \(3,\), got \(4,\)"):
        buffer.add_episode({"a": np.zeros((2, 4), np.float32), "b": np.zeros(2, np.int64)})
    with pytest.raises(ValueError, match="'b'.*expected int64, got int32"):
        buffer.add_episode({"a": np.zeros((2, 3), np.float32), "b": np.zeros(2, np.int32)})
    assert buffer.n_episodes == 1 and buffer.n_steps == 2


def test_lookup_errors() -> None:
    buffer = ReplayBuffer.in_memory()
    buffer.add_episode({"a": np.zeros((2, 1))})
    with pytest.raises(KeyError, match=r"'b'.*\['a'\]"):
        buffer["b"]
    with pytest.raises(KeyError, match="'b'"):
        buffer.get_episode(0, ["b"])
    with pytest.raises(IndexError, match="index 1"):
        buffer.get_episode(1)
    with pytest.raises(IndexError, match="index -2"):
        buffer.episode_slice(-2)


def two_episode_store(path: Path) -> zarr.Group:
    """A store of EPISODES[:2] at `path`, opened with zarr for writing behind the buffer's back."""
    buffer = ReplayBuffer.create(path)
    for episode in EPISODES[:2]:
        buffer.add_episode(episode)
    return zarr.open_group(str(path), mode="r+")


def test_crash_mid_append_hides_partial_episode(tmp_path: Path) -> None:
    path = tmp_path / "buf.zarr"
    # Simulate a crash: data of a third episode written, then episode_ends resized but never written.
    root = two_episode_store(path)
    for key, value in EPISODES[2].items():
        arr = root[f"data/{key}"]
        arr.resize((arr.shape[0] + 7, *arr.shape[1:]))
        arr[-7:] = np.broadcast_to(value[:1], (7, *value.shape[1:]))
    root["meta/episode_ends"].resize((3,))

    with pytest.warns(UserWarning, match=r"episode_ends\[2\]=0"):
        reader = ReplayBuffer.open(path)
    assert reader.n_episodes == 2 and reader.n_steps == 14
    assert reader["action"].shape == (14, 2) and len(reader["action"]) == 14
    np.testing.assert_array_equal(reader["action"][:], np.concatenate([e["action"] for e in EPISODES[:2]]))
    assert_episodes_equal(reader, EPISODES[:2])
    np.testing.assert_array_equal(reader.copy_to_memory()["image"][-1], EPISODES[1]["image"][-1])

    with pytest.warns(UserWarning):
        writer = ReplayBuffer.open(path, mode="a")
    writer.add_episode(EPISODES[3])
    reopened = ReplayBuffer.open(path)  # no warning: the append completed
    assert_episodes_equal(reopened, [EPISODES[0], EPISODES[1], EPISODES[3]])
    assert reopened["image"].shape[0] == reopened.n_steps


def test_failure_mid_append_leaves_episode_invisible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "buf.zarr"
    buffer = ReplayBuffer.create(path)
    buffer.add_episode(EPISODES[0])
    real_write, calls = ReplayBuffer._write, []

    def failing_write(self: ReplayBuffer, *args: object) -> None:
        calls.append(args[0])
        if len(calls) == 3:  # "crash" after two of the five arrays were written
            raise KeyboardInterrupt
        real_write(self, *args)

    monkeypatch.setattr(ReplayBuffer, "_write", failing_write)
    with pytest.raises(KeyboardInterrupt):
        buffer.add_episode(EPISODES[1])
    monkeypatch.undo()
    assert buffer.n_episodes == 1
    reopened = ReplayBuffer.open(path, mode="a")
    assert_episodes_equal(reopened, EPISODES[:1])
    reopened.add_episode(EPISODES[2])
    assert_episodes_equal(ReplayBuffer.open(path), [EPISODES[0], EPISODES[2]])


def test_crash_during_first_append_allows_new_schema(tmp_path: Path) -> None:
    path = tmp_path / "buf.zarr"
    ReplayBuffer.create(path).add_episode({"old": np.ones((3, 2))})
    root = zarr.open_group(str(path), mode="r+")
    root["meta/episode_ends"].resize((0,))  # as if the first episode's end never landed
    writer = ReplayBuffer.open(path, mode="a")
    assert writer.n_episodes == 0
    writer.add_episode(EPISODES[0])
    assert_episodes_equal(ReplayBuffer.open(path), EPISODES[:1])


def test_open_rejects_corrupt_episode_ends(tmp_path: Path) -> None:
    path = tmp_path / "buf.zarr"
    buffer = ReplayBuffer.create(path)
    for episode in EPISODES:
        buffer.add_episode(episode)
    root = zarr.open_group(str(path), mode="r+")
    root["meta/episode_ends"][:] = [5, 14, 14, 19]
    with pytest.raises(ValueError, match=r"episode_ends\[2\]=14"):
        ReplayBuffer.open(path)

    root["meta/episode_ends"][:] = [5, 14, 15, 19]
    root["data/state"].resize((17, 5))
    with pytest.raises(ValueError, match="data/state has 17 steps"):
        ReplayBuffer.open(path)

    shutil.rmtree(path / "meta")
    with pytest.raises(ValueError, match="episode_ends"):
        ReplayBuffer.open(path)


def test_trailing_non_increasing_end_other_than_zero_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "buf.zarr"
    root = two_episode_store(path)
    root["meta/episode_ends"].resize((3,))
    root["meta/episode_ends"][2] = 5  # not what an interrupted append leaves (0)
    with pytest.raises(ValueError, match=r"meta/episode_ends\[2\]=5 is not after the previous end 14"):
        ReplayBuffer.open(path)
