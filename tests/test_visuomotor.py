"""Image-conditioned policies: camera + low-dim fusion, image checks, save/load, Push-T from pixels end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_policy.config_utils import from_dict
from diffusion_policy.core.trainer import Trainer, TrainerConfig
from diffusion_policy.data.dataset import SequenceDataset
from diffusion_policy.data.normalizer import Normalizer
from diffusion_policy.data.recorder import record_episodes
from diffusion_policy.data.replay_buffer import ReplayBuffer
from diffusion_policy.eval.rollout import EvalConfig, evaluate_policy
from diffusion_policy.models.lowdim_encoder import LowDimObsEncoder
from diffusion_policy.models.vision_encoder import MultiObsEncoder
from diffusion_policy.policy import DiffusionPolicy, DiffusionPolicyConfig, RegressionPolicy, load_policy
from diffusion_policy.train_policy import train_policy
from envs import PUSHT_ID, PUSHT_PYMUNK_ID
from envs.experts import make_expert

TINY_VISION = {"backbone_width": 8, "num_keypoints": 8, "feature_dim": 16, "crop_shape": [40, 40]}
SMALL_NET = {"down_dims": (16, 32), "kernel_size": 3, "n_groups": 4, "step_embed_dim": 16}


def image_config(**overrides) -> DiffusionPolicyConfig:
    base = dict(obs_shapes={"front": (48, 48, 3), "wrist": (48, 48, 1), "pos": (2,)}, action_dim=2, horizon=8,
                n_obs_steps=2, n_action_steps=4, network=SMALL_NET, vision=TINY_VISION)
    return from_dict(DiffusionPolicyConfig, base | overrides)


def lowdim_normalizer() -> Normalizer:
    rng = np.random.default_rng(0)
    return Normalizer.fit({"pos": rng.uniform(-2, 2, (50, 2)), "action": rng.uniform(0, 5, (50, 2))})


def image_obs(batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"front": torch.randint(0, 256, (batch, 2, 48, 48, 3), generator=g, dtype=torch.uint8),
            "wrist": torch.randint(0, 256, (batch, 2, 48, 48, 1), generator=g, dtype=torch.uint8),
            "pos": torch.randn(batch, 2, 2, generator=g)}


@pytest.fixture
def policy() -> DiffusionPolicy:
    torch.manual_seed(0)
    return DiffusionPolicy(image_config(), lowdim_normalizer()).eval()


def test_two_cameras_and_lowdim_fuse_into_the_condition(policy):
    assert isinstance(policy.obs_encoder, MultiObsEncoder)
    assert policy.config.image_keys == ["front", "wrist"]
    assert policy.obs_encoder.output_dim == 2 * (2 * 16 + 2)
    cond = policy.condition(image_obs())
    assert cond.shape == (3, 68)
    out = policy.predict_action(image_obs(), generator=torch.Generator().manual_seed(1))
    assert out["action"].shape == (3, 4, 2) and out["action_pred"].shape == (3, 8, 2)
    # Each camera matters: changing one camera's image changes the condition.
    changed = image_obs()
    changed["wrist"] = 255 - changed["wrist"]
    assert not torch.allclose(policy.condition(changed), cond)
    # A low-dim-only policy keeps the flat encoder.
    lowdim = DiffusionPolicy(image_config(obs_shapes={"pos": (2,)}), lowdim_normalizer())
    assert isinstance(lowdim.obs_encoder, LowDimObsEncoder)


def test_images_are_scaled_not_normalised_and_numpy_is_accepted(policy):
    obs = image_obs()
    expected = policy.obs_encoder({"front": obs["front"].float() / 255, "wrist": obs["wrist"].float() / 255,
                                   "pos": policy.normalizer.normalize("pos", obs["pos"])})
    torch.testing.assert_close(policy.condition(obs), expected)
    as_numpy = {k: v.numpy() for k, v in obs.items()}
    a = policy.predict_action(as_numpy, generator=torch.Generator().manual_seed(2))["action"]
    b = policy.predict_action(obs, generator=torch.Generator().manual_seed(2))["action"]
    torch.testing.assert_close(a, b)


def test_save_load_round_trip_gives_identical_actions(policy, tmp_path):
    policy.save(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    assert loaded.config == policy.config and loaded.config.vision.crop_shape == (40, 40)
    a = policy.predict_action(image_obs(), generator=torch.Generator().manual_seed(3))["action"]
    b = loaded.predict_action(image_obs(), generator=torch.Generator().manual_seed(3))["action"]
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("key, value, error, match", [
    ("front", torch.rand(3, 2, 48, 48, 3), TypeError, r"'front' .*float32.*uint8"),
    ("front", torch.zeros(3, 2, 3, 48, 48, dtype=torch.uint8), ValueError, r"'front'.*channel-first"),
    ("front", torch.zeros(3, 2, 64, 64, 3, dtype=torch.uint8), ValueError, r"'front'.*\(3, 2, 64, 64, 3\)"),
    ("wrist", torch.zeros(3, 2, 48, 48, 3, dtype=torch.uint8), ValueError, r"'wrist'.*\(3, 2, 48, 48, 3\)"),
])
def test_bad_images_name_the_key_and_shape(policy, key, value, error, match):
    with pytest.raises(error, match=match):
        policy.predict_action({**image_obs(), key: value})


@pytest.mark.parametrize("shape, match", [((3, 48, 48), "channel-first"), ((48, 48, 2), "last dimension"),
                                          ((2, 48, 48, 3), r"\(2, 48, 48, 3\)")])
def test_bad_image_shapes_in_the_config_are_rejected(shape, match):
    with pytest.raises(ValueError, match=match):
        image_config(obs_shapes={"front": shape, "pos": (2,)})


def test_two_axis_keys_are_low_dim_beside_a_camera():
    config = image_config(obs_shapes={"front": (48, 48, 3), "keypoints": (9, 2)})
    assert config.image_keys == ["front"]


def test_regression_policy_takes_images_too():
    from diffusion_policy.policy import RegressionPolicyConfig

    config = from_dict(RegressionPolicyConfig, dict(obs_shapes={"front": (48, 48, 3)}, action_dim=2, horizon=8,
                                                    n_obs_steps=2, n_action_steps=4, vision=TINY_VISION,
                                                    hidden_dims=(32,)))
    regression = RegressionPolicy(config, lowdim_normalizer()).eval()
    assert regression.predict_action({"front": image_obs()["front"]})["action"].shape == (3, 4, 2)


def dot_buffer() -> ReplayBuffer:
    """Episodes whose action is the position of a bright dot in a 40 x 40 camera image."""
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer.in_memory()
    for _ in range(4):
        xy = rng.uniform(6, 34, size=2)
        images = np.zeros((12, 40, 40, 3), np.uint8)
        rows, cols = np.ogrid[:40, :40]
        images[:, (rows - xy[1]) ** 2 + (cols - xy[0]) ** 2 <= 9] = 255
        buffer.add_episode({"front": images, "action": np.tile(xy.astype(np.float32), (12, 1))})
    return buffer


def test_image_policy_overfits_a_tiny_dataset(tmp_path):
    """The action depends only on where the dot is: the policy must read it from pixels."""
    dataset = SequenceDataset(dot_buffer(), ["front"], horizon=8, n_obs_steps=2, n_action_steps=4)
    config = image_config(obs_shapes=dataset.obs_shapes, noise_scheduler={"prediction_type": "sample"},
                          vision=TINY_VISION | {"crop_shape": None}, network=SMALL_NET | {"down_dims": (32, 64)})
    torch.manual_seed(0)
    policy = DiffusionPolicy(config, dataset.fit_normalizer())
    trainer = Trainer(policy, dataset, TrainerConfig(max_steps=400, batch_size=16, lr=3e-3, warmup_steps=20,
                                                     use_ema=False, progress=False), tmp_path)
    trainer.fit()
    policy.eval()
    errors = []
    for episode in range(4):
        item = dataset[episode * len(dataset) // 4]
        pred = policy.predict_action({"front": item["obs"]["front"][None]},
                                     generator=torch.Generator().manual_seed(0))["action_pred"][0]
        errors.append((pred - item["action"]).abs().max().item())
    assert max(errors) < 2.0  # pixels, over dots spread across [6, 34]: the dot's position was read


@pytest.mark.parametrize("env_id", [PUSHT_ID, PUSHT_PYMUNK_ID])
def test_pixels_record_train_evaluate(env_id, tmp_path):
    """Push-T from pixels at toy scale on both simulations; MuJoCo's rollouts run in forked workers."""
    if env_id == PUSHT_PYMUNK_ID:
        pytest.importorskip("gym_pusht")
    env_kwargs = {"obs_type": "pixels_agent_pos"}
    path = tmp_path / "demos.zarr"
    summary = record_episodes(env_id, lambda seed: make_expert(env_id, seed), ReplayBuffer.create(path), 2,
                              progress=False, env_kwargs=env_kwargs)
    buffer = ReplayBuffer.open(path)
    assert buffer["pixels"].shape == (summary.steps_saved, 96, 96, 3) and buffer["pixels"].dtype == np.uint8
    task = {"name": "pusht_pixels", "env_id": env_id, "env_kwargs": env_kwargs,
            "dataset": {"path": str(path), "obs_keys": ["pixels", "agent_pos"], "val_ratio": 0.0}}
    policy_cfg = {"kind": "diffusion", "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4, "num_inference_steps": 4,
                  "network": {"down_dims": [16, 32], "step_embed_dim": 16},
                  "vision": TINY_VISION | {"crop_shape": [84, 84]}}
    training = {"max_steps": 4, "batch_size": 8, "warmup_steps": 1, "val_every": 4, "checkpoint_every": 4,
                "progress": False}
    policy = load_policy(train_policy(task, policy_cfg, training, tmp_path / "run"))
    assert policy.config.obs_shapes == {"pixels": (96, 96, 3), "agent_pos": (2,)}
    assert "pixels" not in policy.normalizer.keys
    vector = "async" if env_id == PUSHT_ID else "sync"
    result = evaluate_policy(policy, EvalConfig(env_id=env_id, env_kwargs=env_kwargs, n_episodes=2, n_envs=2,
                                                vector=vector, n_videos=1, max_episode_steps=8),
                             out_dir=tmp_path / "eval", progress=False)
    assert all(1 <= length <= 8 for length in result.lengths)
    assert len(result.videos) == 1
