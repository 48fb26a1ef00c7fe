"""DiffusionPolicy / RegressionPolicy: shapes, reproducibility, save/load, bad input, overfitting."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from diffusion_policy.config_utils import from_dict
from diffusion_policy.core.trainer import Trainer, TrainerConfig
from diffusion_policy.data.dataset import SequenceDataset
from diffusion_policy.data.normalizer import Normalizer
from diffusion_policy.data.replay_buffer import ReplayBuffer
from diffusion_policy.policy import (
    DiffusionPolicy,
    DiffusionPolicyConfig,
    RegressionPolicy,
    RegressionPolicyConfig,
    load_policy,
)

SMALL_NET = {"down_dims": (16, 32), "kernel_size": 3, "n_groups": 4, "step_embed_dim": 16}


def small_config(**overrides) -> DiffusionPolicyConfig:
    base = dict(obs_shapes={"pos": (2,), "vel": (3,)}, action_dim=2, horizon=8, n_obs_steps=2, n_action_steps=4,
                network=SMALL_NET)
    return from_dict(DiffusionPolicyConfig, base | overrides)


def normalizer() -> Normalizer:
    rng = np.random.default_rng(0)
    return Normalizer.fit({"pos": rng.uniform(-2, 2, (50, 2)), "vel": rng.normal(size=(50, 3)),
                           "action": rng.uniform(0, 5, (50, 2))})


def observation(batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pos": torch.randn(batch, 2, 2, generator=g), "vel": torch.randn(batch, 2, 3, generator=g)}


@pytest.fixture
def policy() -> DiffusionPolicy:
    torch.manual_seed(0)
    return DiffusionPolicy(small_config(), normalizer()).eval()


def test_predict_action_shapes_and_slice(policy):
    out = policy.predict_action(observation(), generator=torch.Generator().manual_seed(1))
    assert out["action_pred"].shape == (3, 8, 2)
    assert out["action"].shape == (3, 4, 2)
    torch.testing.assert_close(out["action"], out["action_pred"][:, 1:5])


def test_sampling_reproducible_by_generator_and_noise(policy):
    a = policy.predict_action(observation(), generator=torch.Generator().manual_seed(7))["action_pred"]
    b = policy.predict_action(observation(), generator=torch.Generator().manual_seed(7))["action_pred"]
    c = policy.predict_action(observation(), generator=torch.Generator().manual_seed(8))["action_pred"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    noise = torch.randn(3, 8, 2)
    torch.testing.assert_close(policy.predict_action(observation(), noise=noise)["action_pred"],
                               policy.predict_action(observation(), noise=noise)["action_pred"], rtol=0, atol=0)


def test_numpy_observations_accepted(policy):
    obs = {k: v.numpy().astype(np.float64) for k, v in observation().items()}
    noise = torch.randn(3, 8, 2)
    torch.testing.assert_close(policy.predict_action(obs, noise=noise)["action"],
                               policy.predict_action(observation(), noise=noise)["action"])


def test_save_load_round_trip(policy, tmp_path):
    policy.save(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "MANIFEST.sha256", "config.json", "model.safetensors", "normalizer.safetensors"]
    loaded = load_policy(tmp_path / "p")
    assert isinstance(loaded, DiffusionPolicy) and loaded.config == policy.config
    noise = torch.randn(3, 8, 2)
    torch.testing.assert_close(loaded.predict_action(observation(), noise=noise)["action_pred"],
                               policy.predict_action(observation(), noise=noise)["action_pred"], rtol=0, atol=0)


def test_save_load_keeps_the_conditioning_of_keys_given_out_of_order(tmp_path):
    torch.manual_seed(0)
    policy = DiffusionPolicy(small_config(obs_shapes={"vel": (3,), "pos": (2,)}), normalizer()).eval()
    assert list(policy.config.obs_shapes) == ["pos", "vel"]
    policy.save(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    obs = observation()
    torch.testing.assert_close(loaded.condition(obs), policy.condition(obs), rtol=0, atol=0)
    torch.testing.assert_close(policy.condition(obs)[:, :2], policy.normalizer.normalize("pos", obs["pos"])[:, 0])


def test_load_into_mismatched_config_names_field(policy, tmp_path):
    policy.save(tmp_path / "p")
    other = DiffusionPolicy(small_config(horizon=16), normalizer())
    with pytest.raises(ValueError, match="horizon: checkpoint 8 vs policy 16"):
        other.load_weights(tmp_path / "p")


def test_loading_wrong_kind_raises(policy, tmp_path):
    policy.save(tmp_path / "p")
    with pytest.raises(ValueError, match=r"config.json holds kind='diffusion'; expected one of \['regression'\]"):
        RegressionPolicy.load(tmp_path / "p")


@pytest.mark.parametrize(
    "obs, error, match",
    [
        ({"pos": torch.zeros(3, 2, 2)}, KeyError, "'vel' is missing"),
        ({"pos": torch.zeros(3, 2, 2), "vel": torch.zeros(3, 2, 4)}, ValueError, r"'vel' has shape \(3, 2, 4\)"),
        ({"pos": torch.zeros(3, 1, 2), "vel": torch.zeros(3, 1, 3)}, ValueError, r"'pos' has shape \(3, 1, 2\)"),
        ({"pos": torch.zeros(3, 2, 2), "vel": torch.zeros(2, 2, 3)}, ValueError, r"'vel' has shape \(2, 2, 3\)"),
        ({"pos": torch.zeros(3, 2, 2, dtype=torch.bool), "vel": torch.zeros(3, 2, 3)}, TypeError, "torch.bool"),
        ({"pos": torch.full((3, 2, 2), float("nan")), "vel": torch.zeros(3, 2, 3)}, ValueError, "'pos' contains NaN"),
    ],
)
def test_bad_observations_name_the_problem(policy, obs, error, match):
    with pytest.raises(error, match=match):
        policy.predict_action(obs)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"horizon": 7, "n_action_steps": 2}, r"horizon=7 must be divisible by 2\*\*\(len\(down_dims\)-1\) = 2"),
        ({"inference_scheduler": "euler_magic"}, "euler_magic"),
        ({"num_inference_steps": 500}, "num_inference_steps=500"),
        ({"n_action_steps": 8}, "exceeds self.horizon=8"),
        ({"noise_scheduler": {"prediction_type": "score"}}, "score"),
        ({"obs_shapes": {}}, "obs_shapes"),
        ({"obs_noise": -0.1}, "obs_noise=-0.1"),
        ({"obs_noise": float("nan")}, "obs_noise=nan"),
    ],
)
def test_bad_config_names_value(overrides, match):
    with pytest.raises(ValueError, match=match):
        small_config(**overrides)


def test_obs_noise_only_in_training_mode():
    torch.manual_seed(0)
    noisy = DiffusionPolicy(small_config(obs_noise=0.5), normalizer())
    clean = DiffusionPolicy(small_config(), normalizer())
    obs = observation(batch=4096)
    expected = clean.condition(obs)
    torch.testing.assert_close(noisy.eval().condition(obs), expected, rtol=0, atol=0)
    deviation = noisy.train().condition(obs) - expected
    assert abs(deviation.std().item() - 0.5) < 0.01 and abs(deviation.mean().item()) < 0.01
    torch.testing.assert_close(clean.train().condition(obs), expected, rtol=0, atol=0)


def test_normalizer_missing_key_rejected():
    with pytest.raises(KeyError, match="'vel'"):
        DiffusionPolicy(small_config(), Normalizer.fit({"pos": np.zeros((4, 2)), "action": np.zeros((4, 2))}))


def test_paper_network_size():
    config = DiffusionPolicyConfig(obs_shapes={"keypoints": (20,)}, action_dim=2)
    dummy = Normalizer.fit({"keypoints": np.zeros((2, 20)), "action": np.zeros((2, 2))})
    n_params = sum(p.numel() for p in DiffusionPolicy(config, dummy).network.parameters())
    assert abs(n_params - 65.8e6) / 65.8e6 < 0.005


def line_buffer() -> ReplayBuffer:
    """Two episodes whose action chunk is a deterministic function of the observation."""
    buffer = ReplayBuffer.in_memory()
    for sign in (1.0, -1.0):
        t = np.linspace(0, 1, 24, dtype=np.float32)[:, None]
        pos = np.concatenate([t, sign * t], axis=1)
        buffer.add_episode({"pos": pos, "action": pos + np.float32(0.1)})
    return buffer


@pytest.mark.parametrize("kind", ["diffusion", "regression"])
def test_overfits_tiny_dataset(kind, tmp_path):
    dataset = SequenceDataset(line_buffer(), ["pos"], horizon=8, n_obs_steps=2, n_action_steps=4)
    common = dict(obs_shapes=dataset.obs_shapes, action_dim=2, horizon=8, n_obs_steps=2, n_action_steps=4)
    if kind == "diffusion":
        config = from_dict(DiffusionPolicyConfig, common | {"network": {**SMALL_NET, "down_dims": (32, 64)},
                                                            "noise_scheduler": {"prediction_type": "sample"}})
        policy = DiffusionPolicy(config, dataset.fit_normalizer())
    else:
        policy = RegressionPolicy(RegressionPolicyConfig(**common, hidden_dims=(64, 64)), dataset.fit_normalizer())
    torch.manual_seed(0)
    trainer = Trainer(policy, dataset, TrainerConfig(max_steps=600, batch_size=16, lr=3e-3, warmup_steps=20,
                                                     use_ema=False, progress=False), tmp_path)
    trainer.fit()
    item = dataset[10]
    obs = {"pos": item["obs"]["pos"][None]}
    pred = policy.eval().predict_action(obs, generator=torch.Generator().manual_seed(0))["action_pred"][0]
    assert (pred - item["action"]).abs().max() < 0.05


def test_huge_observation_raises_instead_of_returning_nan_actions():
    torch.manual_seed(0)
    policy = DiffusionPolicy(small_config(), normalizer()).eval()
    obs = observation(batch=2)
    obs["pos"] = torch.full_like(obs["pos"], 1e30)
    with pytest.raises(ValueError, match=r"non-finite action chunk from observations with pos in \[1e\+30, 1e\+30\], "
                                         r"vel in .*; its training data had pos in \[-1.98905, 1.98884\]"):
        policy.predict_action(obs)


def test_extra_observation_keys_warn_once(policy):
    obs = observation() | {"camera": torch.zeros(3, 2, 4)}
    noise = torch.randn(3, 8, 2)
    with pytest.warns(UserWarning, match=r"observation keys \['camera'\] are not the policy's and are ignored; "
                                         r"it takes \['pos', 'vel'\]"):
        out = policy.predict_action(obs, noise=noise)
    torch.testing.assert_close(out["action_pred"], policy.predict_action(observation(), noise=noise)["action_pred"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy.predict_action(obs, noise=noise)  # the same keys again: no second warning


def test_batch_of_zero_observations_is_named():
    policy = DiffusionPolicy(small_config(), normalizer()).eval()
    with pytest.raises(ValueError, match=r"'pos' has shape \(0, 2, 2\): a batch of 0 observations"):
        policy.predict_action({"pos": torch.zeros(0, 2, 2), "vel": torch.zeros(0, 2, 3)})
