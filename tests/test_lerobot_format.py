"""LeRobotDataset in and out: fixtures written by lerobot itself (v2.1, v3.0) read back value for value,
ours -> LeRobot v3.0 -> ours exact in numbers and within the codec's error in images, bad input named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("av")
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from diffusion_policy.data.formats.convert import convert  # noqa: E402
from diffusion_policy.data.formats.lerobot_read import LeRobotSource, store_key  # noqa: E402
from diffusion_policy.data.formats.lerobot_write import export_lerobot, lerobot_name  # noqa: E402
from diffusion_policy.data.replay_buffer import ReplayBuffer  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lerobot"
LENGTHS = (5, 7, 4)


@pytest.mark.parametrize("version", ["v30", "v21"])
def test_fixtures_written_by_lerobot_read_value_for_value(version, tmp_path):
    source = LeRobotSource(FIXTURES / version)
    assert source.keys == {"observation.state": "state", "action": "action",
                           "observation.environment_state": "environment_state", "observation.image": "image"}
    summary = convert(source, tmp_path / "store.zarr", progress=False)
    buffer = ReplayBuffer.open(tmp_path / "store.zarr")
    assert summary.fps == 10.0 and buffer.attrs["fps"] == 10.0
    assert buffer.episode_lengths.tolist() == list(LENGTHS)
    assert buffer.attrs["source"]["episode_tasks"] == [["push the T"], ["push the T"], ["other task"]]
    assert buffer.attrs["source"]["keys"]["observation.image"] == "image"
    g = 0
    for ep, length in enumerate(LENGTHS):
        episode = buffer.get_episode(ep)
        f = np.arange(length, dtype=np.float32)
        np.testing.assert_array_equal(episode["state"], np.stack([np.full(length, ep), f], axis=1))
        np.testing.assert_array_equal(episode["action"], np.stack([10 * ep + f, -(10 * ep + f)], axis=1))
        np.testing.assert_array_equal(episode["environment_state"],
                                      np.stack([np.full(length, ep), f, g + f, 0.25 * f], axis=1))
        g += length
        # R = 30 + 80 ep and G = 20 + 30 f, through AV1 (lerobot's SVT-AV1 at crf 30): within 3.
        assert episode["image"].shape == (length, 32, 32, 3) and episode["image"].dtype == np.uint8
        np.testing.assert_allclose(episode["image"][..., 0].mean(axis=(1, 2)), 30 + 80 * ep, atol=3)
        np.testing.assert_allclose(episode["image"][..., 1].mean(axis=(1, 2)), 20 + 30 * f, atol=3)


def smooth_store(path: Path) -> ReplayBuffer:
    """Three episodes of every kind of key: vectors, (9, 2) keypoints, scalars, ints, a 48 x 64 camera."""
    buffer = ReplayBuffer.create(path)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:64]
    for ep, length in enumerate(LENGTHS):
        t = np.arange(length)
        frames = np.stack([np.stack([x * 3 + 10 * i, y * 2 + 40 * ep, np.full_like(x, 90)], -1)
                           for i in t]).astype(np.uint8)
        buffer.add_episode({"agent_pos": rng.uniform(0, 512, (length, 2)).astype(np.float32),
                            "keypoint": rng.uniform(0, 512, (length, 9, 2)).astype(np.float32),
                            "reward": rng.uniform(0, 1, length), "done": (t == length - 1),
                            "count": t.astype(np.int64), "action": rng.normal(size=(length, 2)),
                            "camera": frames})
    buffer.update_attrs({"fps": 10.0})
    return ReplayBuffer.open(path)


def test_round_trip_ours_to_lerobot_v30_and_back(tmp_path):
    ours = smooth_store(tmp_path / "ours.zarr")
    info = export_lerobot(ours, tmp_path / "lerobot", fps=10, tasks=["push", "push", "pull"], progress=False)
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == sum(LENGTHS)
    assert set(info["features"]) >= {"observation.agent_pos", "observation.keypoint", "next.reward", "next.done",
                                     "observation.count", "action", "observation.images.camera", "timestamp"}
    assert info["features"]["observation.images.camera"]["info"]["video.codec"] == "av1"
    tasks = pq.read_table(tmp_path / "lerobot" / "meta" / "tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["__index_level_0__"]
    stats = json.loads((tmp_path / "lerobot" / "meta" / "stats.json").read_text())
    np.testing.assert_allclose(stats["action"]["mean"], np.asarray(ours["action"][:]).mean(0))
    assert np.asarray(stats["observation.images.camera"]["mean"]).shape == (3, 1, 1)

    convert(LeRobotSource(tmp_path / "lerobot"), tmp_path / "back.zarr", progress=False)
    back = ReplayBuffer.open(tmp_path / "back.zarr")
    assert back.keys() == ours.keys()
    np.testing.assert_array_equal(back.episode_ends, ours.episode_ends)
    for key in ours.keys():
        a, b = np.asarray(ours[key][:]), np.asarray(back[key][:])
        assert a.dtype == b.dtype and a.shape == b.shape, key
        if key != "camera":
            np.testing.assert_array_equal(a, b)  # numbers bit-exact
    error = np.abs(back["camera"][:].astype(int) - ours["camera"][:].astype(int))
    assert error.mean() < 2.0 and np.percentile(error, 99) <= 12  # AV1 at crf 30 on smooth frames
    assert back.attrs["source"]["episode_tasks"] == [["push"], ["push"], ["pull"]]


def test_store_keys_and_lerobot_names_invert_each_other():
    for key, image in [("agent_pos", False), ("camera", True), ("action", False), ("reward", False),
                       ("done", False), ("state", False)]:
        assert store_key(lerobot_name(key, image)) == key
    assert store_key("observation.images.cam_high") == "cam_high"
    assert store_key("observation.some.nested") == "some_nested"


def exported(tmp_path: Path) -> Path:
    export_lerobot(smooth_store(tmp_path / "ours.zarr"), tmp_path / "lerobot", fps=10, progress=False)
    return tmp_path / "lerobot"


def rewrite_data(root: Path, change) -> None:
    path = root / "data" / "chunk-000" / "file-000.parquet"
    pq.write_table(change(pq.read_table(path)), path)


def test_unknown_codebase_version_is_refused(tmp_path):
    root = exported(tmp_path)
    info = json.loads((root / "meta" / "info.json").read_text())
    (root / "meta" / "info.json").write_text(json.dumps({**info, "codebase_version": "v1.6"}))
    with pytest.raises(ValueError, match=r"codebase_version 'v1.6' is not supported.*'v2.1', 'v3.0'"):
        LeRobotSource(root)


def test_non_monotonic_timestamps_are_named(tmp_path):
    root = exported(tmp_path)

    def swap(table):
        times = table.column("timestamp").to_numpy().copy()
        times[[6, 7]] = times[[7, 6]]  # episode 1, frames 1 and 2
        return table.set_column(table.column_names.index("timestamp"), "timestamp", pa.array(times))

    rewrite_data(root, swap)
    with pytest.raises(ValueError, match=r"episode 1: timestamps are not increasing at frame 2"):
        convert(LeRobotSource(root), tmp_path / "out.zarr", progress=False)
    assert not (tmp_path / "out.zarr").exists()


def test_video_shorter_than_its_rows_is_named(tmp_path):
    root = exported(tmp_path)
    episodes = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(episodes)
    column = "videos/observation.images.camera/from_timestamp"
    shifted = pa.array(table.column(column).to_numpy() + np.array([0.0, 0.0, 0.3]))  # episode 2 runs off the end
    pq.write_table(table.set_column(table.column_names.index(column), column, shifted), episodes)
    with pytest.raises(ValueError, match=r"episode 2: 'observation.images.camera': video .* fewer frames than the "
                                         r"table's rows: none at 1\.6000 s \(frame 1 of 4\)"):
        convert(LeRobotSource(root), tmp_path / "out.zarr", progress=False)


def test_missing_feature_column_and_overwrite_refusal(tmp_path):
    root = exported(tmp_path)
    with pytest.raises(FileExistsError, match="overwrite"):
        export_lerobot(ReplayBuffer.open(tmp_path / "ours.zarr"), root, fps=10, progress=False)
    rewrite_data(root, lambda table: table.drop(["observation.agent_pos"]))
    with pytest.raises(ValueError, match=r"feature 'observation.agent_pos' of meta/info.json has no column"):
        convert(LeRobotSource(root), tmp_path / "out.zarr", progress=False)


def test_lerobot_pusht_layout_trains_and_evaluates_with_the_shipped_task_config(tmp_path):
    """A dataset in lerobot/pusht's layout (observation.image, observation.state, action) -> our store ->
    the shipped task config -> a policy that runs in MuJoCo Push-T."""
    from omegaconf import OmegaConf

    from diffusion_policy.eval.rollout import EvalConfig, evaluate_policy
    from diffusion_policy.policy import load_policy
    from diffusion_policy.train_policy import train_policy
    from tests.test_pusht_pipeline import ROOT, TINY_POLICY, TINY_TRAINING

    rng = np.random.default_rng(0)
    store = ReplayBuffer.create(tmp_path / "pusht_like.zarr")
    for length in (12, 9):
        store.add_episode({"state": rng.uniform(0, 512, (length, 2)).astype(np.float32),
                           "image": rng.integers(0, 256, (length, 96, 96, 3), dtype=np.uint8),
                           "action": rng.uniform(0, 512, (length, 2)).astype(np.float32)})
    info = export_lerobot(ReplayBuffer.open(tmp_path / "pusht_like.zarr"), tmp_path / "lerobot_pusht", fps=10,
                          progress=False)
    assert {"observation.state", "observation.images.image", "action"} <= set(info["features"])
    convert(LeRobotSource(tmp_path / "lerobot_pusht"), tmp_path / "lerobot_pusht.zarr", progress=False)
    task = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "task" / "pusht_lerobot_image.yaml"))
    task["dataset"].update(path=str(tmp_path / "lerobot_pusht.zarr"), val_ratio=0.0)
    policy_cfg = {**TINY_POLICY, "vision": {"backbone_width": 8, "num_keypoints": 8, "feature_dim": 16}}
    policy = load_policy(train_policy(task, policy_cfg, {**TINY_TRAINING, "max_steps": 2}, tmp_path / "run"))
    result = evaluate_policy(policy, EvalConfig(env_id=task["env_id"], env_kwargs=task["env_kwargs"], n_episodes=1,
                                                n_envs=1, vector="sync", n_videos=0, max_episode_steps=6),
                             progress=False)
    assert result.lengths == [6]


@pytest.mark.parametrize(("codec", "name"), [("libx264", "h264"), ("libx265", "hevc")])
def test_h264_and_hevc_videos_decode_frame_exact(tmp_path, codec, name):
    """Older LeRobot datasets are H.264 or HEVC: both decode at the right frames (AV1 is covered above)."""
    ours = smooth_store(tmp_path / "ours.zarr")
    info = export_lerobot(ours, tmp_path / "lerobot", fps=10, codec=codec, progress=False)
    assert info["features"]["observation.images.camera"]["info"]["video.codec"] == name
    convert(LeRobotSource(tmp_path / "lerobot"), tmp_path / "back.zarr", progress=False)
    back = ReplayBuffer.open(tmp_path / "back.zarr")
    error = np.abs(back["camera"][:].astype(int) - ours["camera"][:].astype(int))
    assert error.mean() < 2.0  # a frame off by one step would differ by 10 in the red ramp
    np.testing.assert_array_equal(back["agent_pos"][:], ours["agent_pos"][:])
