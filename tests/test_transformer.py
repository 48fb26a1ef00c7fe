"""The transformer denoiser (DP-T): causal attention over actions and observation steps, its parameter
groups, the policy built on it (round trip, refusals, overfitting a tiny set)."""

from __future__ import annotations

import pytest
import torch
from test_policy import line_buffer, normalizer, observation

from diffusion_policy.config_utils import from_dict
from diffusion_policy.core.trainer import Trainer, TrainerConfig
from diffusion_policy.data.dataset import SequenceDataset
from diffusion_policy.models.transformer1d import TransformerConfig, TransformerDenoiser
from diffusion_policy.policy import DiffusionPolicy, DiffusionPolicyConfig, load_policy

TINY = {"n_layer": 2, "n_head": 2, "n_emb": 32, "p_drop_attn": 0.0}


def denoiser(causal: bool = True) -> TransformerDenoiser:
    torch.manual_seed(0)
    return TransformerDenoiser(3, 2, horizon=6, n_obs_steps=2, obs_dim=4,
                               config=TransformerConfig(**TINY, causal=causal)).eval()


def test_actions_see_only_earlier_actions_and_observation_steps():
    net = denoiser()
    x, obs = torch.randn(2, 6, 3), torch.randn(2, 2, 4)
    out = net(x, 5, obs)
    assert out.shape == (2, 6, 2)
    later = x.clone()
    later[:, 3:] += 1.0
    changed = net(later, 5, obs)
    torch.testing.assert_close(changed[:, :3], out[:, :3])
    assert not torch.allclose(changed[:, 3:], out[:, 3:])
    second = obs.clone()
    second[:, 1] += 1.0  # observation step 1: unseen by action 0, seen from action 1 on
    changed = net(x, 5, second)
    torch.testing.assert_close(changed[:, 0], out[:, 0])
    assert not torch.allclose(changed[:, 1:], out[:, 1:])
    full = denoiser(causal=False)
    assert not torch.allclose(full(later, 5, obs)[:, :3], full(x, 5, obs)[:, :3])


def test_time_changes_the_output_and_shapes_are_checked():
    net = denoiser()
    x, obs = torch.randn(2, 6, 3), torch.randn(2, 2, 4)
    assert not torch.allclose(net(x, 1, obs), net(x, 90, obs))
    torch.testing.assert_close(net(x, torch.tensor([7, 7]), obs), net(x, 7, obs))
    with pytest.raises(ValueError, match="sample has 5 steps; this denoiser was built for 6"):
        net(x[:, :5], 1, obs)
    with pytest.raises(ValueError, match=r"observation tokens must be \(2, 2, D\), got \(2, 3, 4\)"):
        net(x, 1, torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="n_emb=30 must be divisible by n_head=4"):
        TransformerConfig(n_emb=30, n_head=4)


def test_weight_decay_only_on_weight_matrices():
    net = denoiser()
    decayed, plain = net.parameter_groups(0.1)
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decayed["params"]) and all(p.ndim != 2 for p in plain["params"])
    assert {id(p) for p in net.parameters()} == {id(p) for p in decayed["params"] + plain["params"]}
    assert len(decayed["params"]) + len(plain["params"]) == len(list(net.parameters()))
    assert any(p is net.position for p in plain["params"]) and any(p is net.norm.weight for p in plain["params"])


def transformer_config(**overrides) -> DiffusionPolicyConfig:
    base = dict(obs_shapes={"pos": (2,), "vel": (3,)}, action_dim=2, horizon=6, n_obs_steps=2, n_action_steps=4,
                denoiser="transformer", transformer=TINY)
    return from_dict(DiffusionPolicyConfig, base | overrides)


def test_policy_round_trip_groups_and_refusals(tmp_path):
    torch.manual_seed(0)
    policy = DiffusionPolicy(transformer_config(), normalizer()).eval()
    assert not policy.uses_fast_inference(1)  # the fast path is the U-Net's
    with pytest.raises(ValueError, match="inference='fast' needs the U-Net denoiser; this policy's is 'transformer'"):
        policy.inference = "fast"
    policy.save(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    assert loaded.config.denoiser == "transformer" and loaded.config.transformer.n_emb == 32
    noise = torch.randn(3, 6, 2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded.predict_action(observation(), noise=noise)["action_pred"],
                               policy.predict_action(observation(), noise=noise)["action_pred"])
    trainer = Trainer(policy, SequenceDataset(line_buffer(), ["pos"], horizon=6, n_obs_steps=2, n_action_steps=4),
                      TrainerConfig(weight_decay=0.1, progress=False, max_steps=1), tmp_path / "run")
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [0.1, 0.0]
    with pytest.raises(ValueError, match=r"denoiser='mamba' is not one of \('unet', 'transformer'\)"):
        transformer_config(denoiser="mamba")
    with pytest.raises(ValueError, match="denoiser='transformer' takes low-dim observations"):
        DiffusionPolicy(transformer_config(obs_shapes={"cam": (96, 96, 3)}), normalizer())


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
def test_transformer_policy_overfits_a_tiny_dataset(objective, tmp_path):
    dataset = SequenceDataset(line_buffer(), ["pos"], horizon=8, n_obs_steps=2, n_action_steps=4)
    config = from_dict(DiffusionPolicyConfig, dict(obs_shapes=dataset.obs_shapes, action_dim=2, horizon=8,
                                                    n_obs_steps=2, n_action_steps=4, denoiser="transformer",
                                                    transformer={**TINY, "n_emb": 64}, objective=objective,
                                                    noise_scheduler={"prediction_type": "sample"}))
    torch.manual_seed(0)
    policy = DiffusionPolicy(config, dataset.fit_normalizer())
    trainer = Trainer(policy, dataset, TrainerConfig(max_steps=2000, batch_size=16, lr=1e-3, warmup_steps=20,
                                                     use_ema=False, progress=False), tmp_path)
    trainer.fit()
    errors = torch.stack([
        (policy.eval().predict_action({"pos": dataset[i]["obs"]["pos"][None]},
                                      generator=torch.Generator().manual_seed(0))["action_pred"][0]
         - dataset[i]["action"]).abs() for i in (3, 10, 30)])  # the actions span [0.1, 1.1]
    assert float(errors.mean()) < 0.02 and float(errors.max()) < 0.15, errors
