"""Converters: robomimic HDF5 and original-layout Zarr into our store; atomic writes; bad input named."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from diffusion_policy.data.dataset import SequenceDataset
from diffusion_policy.data.formats.convert import convert
from diffusion_policy.data.formats.dp_zarr import DPZarrSource
from diffusion_policy.data.formats.robomimic import RobomimicSource
from diffusion_policy.data.replay_buffer import ReplayBuffer

pytest.importorskip("h5py")
from tests.fixtures.robomimic_file import ENV_ARGS, demo_arrays, write_robomimic  # noqa: E402
from tests.test_obs_mapping import make_original, original_episodes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = {0: 5, 1: 7, 2: 4, 9: 6, 10: 3, 11: 8}  # demo_10 must follow demo_9, not demo_1


def test_robomimic_demos_in_numeric_order_with_every_key_and_value(tmp_path):
    path = write_robomimic(tmp_path / "lift.hdf5", LENGTHS)
    summary = convert(RobomimicSource(path), tmp_path / "lift.zarr", progress=False)
    buffer = ReplayBuffer.open(tmp_path / "lift.zarr")
    assert summary.episodes == 6 and summary.steps == sum(LENGTHS.values())
    assert buffer.episode_lengths.tolist() == list(LENGTHS.values())
    assert buffer.keys() == ["action", "agentview_image", "done", "object", "reward", "robot0_eef_pos"]
    for index, (k, length) in enumerate(LENGTHS.items()):
        episode, expected = buffer.get_episode(index), demo_arrays(k, length)
        np.testing.assert_array_equal(episode["action"], expected["actions"])
        np.testing.assert_array_equal(episode["robot0_eef_pos"], expected["obs/robot0_eef_pos"])
        np.testing.assert_array_equal(episode["agentview_image"], expected["obs/agentview_image"])
        np.testing.assert_array_equal(episode["reward"], expected["rewards"])
        np.testing.assert_array_equal(episode["done"], expected["dones"])
    assert buffer["agentview_image"].dtype == np.uint8 and buffer["agentview_image"].shape[1:] == (12, 12, 3)
    assert buffer.attrs["source"]["env_args"] == ENV_ARGS
    assert buffer.attrs["source"]["format"] == "robomimic"
    assert summary.keys["agentview_image"] == ((12, 12, 3), "uint8")


def test_robomimic_masks_become_the_training_split(tmp_path):
    masks = {"train": ["demo_0", "demo_2", "demo_10", "demo_11"], "valid": ["demo_1", "demo_9"],
             "20_percent": ["demo_9"]}
    path = write_robomimic(tmp_path / "lift.hdf5", LENGTHS, masks)
    convert(RobomimicSource(path), tmp_path / "lift.zarr", progress=False)
    buffer = ReplayBuffer.open(tmp_path / "lift.zarr")
    assert buffer.attrs["masks"] == {"train": [0, 2, 4, 5], "valid": [1, 3], "20_percent": [3]}
    dataset = SequenceDataset(buffer, ["robot0_eef_pos", "agentview_image"], horizon=4, n_obs_steps=2,
                              n_action_steps=2, val_ratio=0.5)
    assert dataset.train_episodes.tolist() == [0, 2, 4, 5] and dataset.val_episodes.tolist() == [1, 3]
    assert dataset.obs_shapes == {"agentview_image": (12, 12, 3), "robot0_eef_pos": (3,)}


@pytest.mark.parametrize(("bad", "masks", "match"), [
    ({"demo_9/obs/object": np.zeros((2, 10))}, None,
     r"episode 3 \(data/demo_9\): episode\['object'\] has length 2, other keys have 6"),
    ({"demo_1/actions": np.full((7, 7), np.nan)}, None, r"episode 1 \(data/demo_1\): episode\['action'\] "
                                                        r"is not finite at time index 0"),
    (None, {"train": ["demo_0", "demo_3"]}, r"mask/train names demo 'demo_3', which does not exist"),
])
def test_bad_robomimic_input_is_named_and_leaves_nothing(tmp_path, bad, masks, match):
    path = write_robomimic(tmp_path / "bad.hdf5", LENGTHS, masks, bad)
    with pytest.raises(ValueError, match=match):
        convert(RobomimicSource(path), tmp_path / "out.zarr", progress=False)
    assert not (tmp_path / "out.zarr").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.hdf5"]  # no temporary directory left either


def test_existing_store_is_kept_unless_overwrite(tmp_path):
    path = write_robomimic(tmp_path / "lift.hdf5", {0: 3})
    out = tmp_path / "lift.zarr"
    convert(RobomimicSource(path), out, progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        convert(RobomimicSource(path), out, progress=False)
    bad = write_robomimic(tmp_path / "bad.hdf5", {0: 3, 1: 4}, bad={"demo_1/actions": np.full((4, 7), np.inf)})
    with pytest.raises(ValueError, match="not finite"):
        convert(RobomimicSource(bad), out, overwrite=True, progress=False)
    assert ReplayBuffer.open(out).n_episodes == 1  # the failed overwrite left the old store whole
    convert(RobomimicSource(write_robomimic(tmp_path / "two.hdf5", {0: 3, 1: 4})), out, overwrite=True,
            progress=False)
    assert ReplayBuffer.open(out).n_episodes == 2


def test_original_layout_zarr_converts_with_uint8_images_and_unchanged_values(tmp_path):
    src = tmp_path / "pusht_cchi_v7_replay.zarr"
    make_original.write_store(original_episodes(), src)
    summary = convert(DPZarrSource(src), tmp_path / "ours.zarr", progress=False)
    ours, original = ReplayBuffer.open(tmp_path / "ours.zarr"), ReplayBuffer.open(src)
    np.testing.assert_array_equal(ours.episode_ends, original.episode_ends)
    for key in ("state", "keypoint", "action", "n_contacts"):
        np.testing.assert_array_equal(ours[key][:], original[key][:])
        assert ours[key].dtype == original[key].dtype
    assert ours["img"].dtype == np.uint8
    np.testing.assert_array_equal(ours["img"][:], original["img"][:].astype(np.uint8))
    assert summary.keys["keypoint"] == ((9, 2), "float32")


def test_convert_script_writes_summary_and_refuses_to_overwrite(tmp_path):
    src = write_robomimic(tmp_path / "lift.hdf5", LENGTHS, {"train": ["demo_0"], "valid": ["demo_1"]})
    command = [sys.executable, str(ROOT / "scripts" / "convert_dataset.py"), "--from", "robomimic", str(src),
               "--out", str(tmp_path / "lift.zarr"), "--summary-json", str(tmp_path / "summary.json"),
               "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "6 episodes, 33 steps" in done.stdout and "agentview_image" in done.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["keys"]["robot0_eef_pos"] == {"shape": [3], "dtype": "float64"}
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 2 and "pass --overwrite" in again.stderr


def test_zip_store_of_the_original_layout_opens_and_converts(tmp_path):
    src = tmp_path / "store.zarr"
    make_original.write_store(original_episodes(), src)
    with zipfile.ZipFile(tmp_path / "store.zarr.zip", "w", zipfile.ZIP_STORED) as archive:
        for file in sorted(src.rglob("*")):
            if file.is_file():
                archive.write(file, file.relative_to(src).as_posix())
    summary = convert(DPZarrSource(tmp_path / "store.zarr.zip"), tmp_path / "ours.zarr", progress=False)
    assert summary.episodes == 3
    np.testing.assert_array_equal(ReplayBuffer.open(tmp_path / "ours.zarr")["state"][:],
                                  ReplayBuffer.open(src)["state"][:])
