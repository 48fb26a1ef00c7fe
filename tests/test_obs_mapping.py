"""Observation mapping: parsing, resolving against a dataset, float images, environment observations,
and the windows a dataset builds through it (an original Diffusion Policy layout store included)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from diffusion_policy.config_utils import from_dict
from diffusion_policy.data.dataset import SequenceDataset
from diffusion_policy.data.obs_mapping import ObsMapping, Source
from diffusion_policy.data.replay_buffer import ReplayBuffer
from diffusion_policy.deploy.predictor import PolicySpec
from diffusion_policy.policy import DiffusionPolicy, DiffusionPolicyConfig, load_policy
from tests.test_policy import SMALL_NET

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_original", ROOT / "scripts" / "make_original_pusht_store.py")
make_original = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_original)

ORIGINAL_OBS = {"agent_pos": {"key": "state", "slice": [0, 2]}, "keypoints": {"key": "keypoint", "reshape": [18]},
                "pixels": {"key": "img"}}
LENGTHS = (21, 17, 30)


def original_episodes(seed: int = 0, image_scale: float = 255.0) -> list[dict[str, np.ndarray]]:
    """Episodes in the original layout's keys and dtypes (float32 images in 0..image_scale)."""
    rng = np.random.default_rng(seed)
    episodes = []
    for length in LENGTHS:
        pixels = rng.integers(0, 256, (length, 40, 40, 3)).astype(np.float32)
        episodes.append({
            "img": pixels * (image_scale / 255.0),
            "state": rng.uniform(0, 512, (length, 5)).astype(np.float32),
            "keypoint": rng.uniform(0, 512, (length, 9, 2)).astype(np.float32),
            "action": rng.uniform(0, 512, (length, 2)).astype(np.float32),
            "n_contacts": np.zeros((length, 1), np.float32),
        })
    return episodes


@pytest.fixture
def original_store(tmp_path: Path) -> Path:
    path = tmp_path / "pusht_cchi_v7_replay.zarr"
    make_original.write_store(original_episodes(), path)
    return path


def dataset(buffer: ReplayBuffer, obs=ORIGINAL_OBS, **kwargs) -> SequenceDataset:
    return SequenceDataset(buffer, obs, "action", horizon=8, n_obs_steps=2, n_action_steps=4, **kwargs)


def tiny_config(data: SequenceDataset) -> DiffusionPolicyConfig:
    return from_dict(DiffusionPolicyConfig, dict(
        obs_shapes=data.obs_shapes, action_dim=data.action_dim, horizon=8, n_obs_steps=2, n_action_steps=4,
        obs_mapping=data.mapping.to_dict(), network=SMALL_NET,
        vision={"backbone_width": 8, "num_keypoints": 4, "feature_dim": 8, "crop_shape": (36, 36)}))


def test_original_layout_store_is_written_as_the_original(original_store):
    root = zarr.open_group(str(original_store), mode="r")
    assert root.metadata.zarr_format == 2
    shapes = {"img": (40, 40, 3), "state": (5,), "keypoint": (9, 2), "action": (2,), "n_contacts": (1,)}
    for key, shape in shapes.items():
        array = root[f"data/{key}"]
        assert array.shape == (sum(LENGTHS), *shape) and array.dtype == np.float32
        assert array.chunks == (161, *shape)
        (codec,) = array.compressors
        assert (codec.cname, codec.clevel, codec.shuffle) == ("zstd", 5, codec.BITSHUFFLE)
    assert root["meta/episode_ends"][:].tolist() == np.cumsum(LENGTHS).tolist()
    assert root["meta/episode_ends"].dtype == np.int64 and root["meta/episode_ends"].chunks == (208,)


@pytest.mark.parametrize("in_memory", [True, False])
def test_windows_of_an_original_layout_store_are_the_mapped_values(original_store, caplog, in_memory):
    episodes = original_episodes()
    with caplog.at_level(logging.INFO, logger="diffusion_policy.data.obs_mapping"):
        data = dataset(ReplayBuffer.open(original_store), in_memory=in_memory)
    assert "float image 'img' holds values in 0..255" in caplog.text
    assert data.obs_shapes == {"agent_pos": (2,), "keypoints": (18,), "pixels": (40, 40, 3)}
    assert data.image_keys == ["pixels"] and data.action_dim == 2
    item = data[0]  # episode 0, window starting one padded step before its first frame
    assert item["obs"]["pixels"].dtype == torch.uint8
    np.testing.assert_array_equal(item["obs"]["pixels"][1].numpy(), episodes[0]["img"][0].astype(np.uint8))
    np.testing.assert_array_equal(item["obs"]["agent_pos"][1].numpy(), episodes[0]["state"][0, :2])
    np.testing.assert_array_equal(item["obs"]["keypoints"][1].numpy(), episodes[0]["keypoint"][0].reshape(18))
    np.testing.assert_array_equal(item["action"][1:].numpy(), episodes[0]["action"][:7])
    norm = data.fit_normalizer()
    assert sorted(norm.keys) == ["action", "agent_pos", "keypoints"]


def test_on_disk_and_in_memory_windows_agree(original_store):
    buffer = ReplayBuffer.open(original_store)
    memory, disk = dataset(buffer, in_memory=True), dataset(buffer, in_memory=False)
    assert len(memory) == len(disk)
    for i in (0, 5, len(memory) - 1):
        a, b = memory[i], disk[i]
        for key in a["obs"]:
            assert torch.equal(a["obs"][key], b["obs"][key])
        assert torch.equal(a["action"], b["action"])


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_float_image_range_is_detected_and_converted(tmp_path, scale):
    path = tmp_path / "store.zarr"
    make_original.write_store(original_episodes(image_scale=scale), path)
    data = dataset(ReplayBuffer.open(path), obs={"pixels": {"key": "img"}})
    assert data.mapping.obs["pixels"].image_range == scale
    expected = np.rint(original_episodes(image_scale=scale)[0]["img"][0] * (255.0 / scale)).astype(np.uint8)
    np.testing.assert_array_equal(data[0]["obs"]["pixels"][1].numpy(), expected)


def test_float_image_outside_both_ranges_names_key_and_range(tmp_path):
    episodes = original_episodes()
    episodes[1]["img"][3, 0, 0, 0] = 300.0
    path = tmp_path / "store.zarr"
    make_original.write_store(episodes, path)
    with pytest.raises(ValueError, match=r"float image 'img' spans \[0, 300\].*neither 0..1 nor 0..255"):
        dataset(ReplayBuffer.open(path), obs={"pixels": {"key": "img"}})
    # An explicit range is checked when the values are converted: the error names key and steps.
    with pytest.raises(ValueError, match=r"data/img steps 0.*\[0, 300\], outside its range \[0, 255\]"):
        dataset(ReplayBuffer.open(path), obs={"pixels": {"key": "img", "image_range": 255}})


def test_mapping_errors_name_the_problem(original_store):
    buffer = ReplayBuffer.open(original_store)
    with pytest.raises(KeyError, match=r"'agent_pos' reads dataset key 'stat'.*\['action', 'img', 'keypoint'"):
        dataset(buffer, obs={"agent_pos": {"key": "stat"}})
    with pytest.raises(ValueError, match=r"slice=\[3, 7\] of key 'state' lies outside its last axis of width 5"):
        dataset(buffer, obs={"agent_pos": {"key": "state", "slice": [3, 7]}})
    with pytest.raises(ValueError, match=r"reshape=\[17\] of key 'keypoint' does not fit .*\(9, 2\)"):
        dataset(buffer, obs={"keypoints": {"key": "keypoint", "reshape": [17]}})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['slise'\]"):
        dataset(buffer, obs={"agent_pos": {"key": "state", "slise": [0, 2]}})
    with pytest.raises(ValueError, match=r"image_range=255 given for 'agent_pos', which is not a float image"):
        dataset(buffer, obs={"agent_pos": {"key": "state", "image_range": 255}})
    with pytest.raises(ValueError, match=r"slice=\[2, 2\]"):
        Source("state", slice=(2, 2))
    with pytest.raises(ValueError, match="reserved for the action"):
        ObsMapping.parse({"action": "state"})


def test_two_axis_low_dim_keys_train_and_are_flattened(original_store):
    data = dataset(ReplayBuffer.open(original_store), obs={"agent_pos": {"key": "state", "slice": [0, 2]},
                                                            "keypoint": "keypoint"})
    assert data.obs_shapes["keypoint"] == (9, 2) and data.image_keys == []
    policy = DiffusionPolicy(tiny_config(data), data.fit_normalizer())
    assert policy.obs_encoder.output_dim == 2 * (2 + 18)
    batch = {"obs": {k: torch.stack([data[i]["obs"][k] for i in range(4)]) for k in data.obs_keys},
             "action": torch.stack([data[i]["action"] for i in range(4)])}
    assert torch.isfinite(policy.compute_loss(batch))


def test_policy_saves_its_mapping_and_maps_environment_observations(original_store, tmp_path):
    data = dataset(ReplayBuffer.open(original_store))
    DiffusionPolicy(tiny_config(data), data.fit_normalizer()).save(tmp_path / "policy")
    mapping = load_policy(tmp_path / "policy").config.mapping
    assert mapping.to_dict() == data.mapping.to_dict()
    rng = np.random.default_rng(1)
    # An environment that speaks the policy's keys (keypoints flattened, images uint8) ...
    env_obs = {"agent_pos": rng.uniform(0, 512, 2).astype(np.float32),
               "keypoints": rng.uniform(0, 512, 18).astype(np.float32),
               "pixels": rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), "extra": np.zeros(3)}
    direct = mapping.observation(env_obs)
    assert sorted(direct) == ["agent_pos", "keypoints", "pixels"]
    np.testing.assert_array_equal(direct["keypoints"], env_obs["keypoints"])
    # ... and a robot that speaks the dataset's (state, (9, 2) keypoints, float 0..255 image) give the same.
    robot_obs = {"state": np.concatenate([env_obs["agent_pos"], [1.0, 2.0, 3.0]]).astype(np.float32),
                 "keypoint": env_obs["keypoints"].reshape(9, 2), "img": env_obs["pixels"].astype(np.float32)}
    mapped = mapping.observation(robot_obs)
    for key in direct:
        np.testing.assert_array_equal(mapped[key], direct[key])
        assert mapped[key].dtype == direct[key].dtype
    batched = mapping.observation({k: np.stack([v, v]) for k, v in robot_obs.items()}, batch_dims=1)
    assert batched["keypoints"].shape == (2, 18) and batched["pixels"].shape == (2, 40, 40, 3)
    with pytest.raises(KeyError, match=r"neither policy key 'keypoints' nor its source 'keypoint'"):
        mapping.observation({"agent_pos": env_obs["agent_pos"], "pixels": env_obs["pixels"]})
    with pytest.raises(ValueError, match=r"\['agent_pos'\] has shape \(3,\); the policy takes \(2,\)"):
        mapping.observation({**env_obs, "agent_pos": np.zeros(3)})
    # The controller's spec carries the mapping to wherever the policy runs.
    spec = PolicySpec.from_dict(PolicySpec.of(load_policy(tmp_path / "policy")).to_dict())
    np.testing.assert_array_equal(spec.mapping.observation(robot_obs)["agent_pos"], direct["agent_pos"])


def test_list_of_keys_is_the_identity_mapping():
    mapping = ObsMapping.parse(["agent_pos", "keypoints"], "action")
    assert mapping.is_identity
    resolved = mapping.resolve({"agent_pos": np.zeros((3, 2)), "keypoints": np.zeros((3, 18)),
                                "action": np.zeros((3, 2))}, "store")
    assert resolved.shapes() == {"agent_pos": (2,), "keypoints": (18,)}
    assert ObsMapping.from_dict(resolved.to_dict()) == resolved
    with pytest.raises(ValueError, match="name a key twice"):
        ObsMapping.parse(["a", "a"])
