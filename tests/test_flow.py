"""Flow matching: the path and its target, the training times, the Euler / Heun samplers through the one
sampling loop (inpainting included), a flow policy end to end (overfit, fast path, save / load), refusals."""

from __future__ import annotations

import math

import pytest
import torch
from test_policy import SMALL_NET, line_buffer, normalizer, observation

from diffusion_policy.config_utils import from_dict
from diffusion_policy.core.flow import (
    FlowConfig,
    FlowMatchScheduler,
    interpolate,
    sample_times,
    velocity_target,
)
from diffusion_policy.core.sampling import sample
from diffusion_policy.core.trainer import Trainer, TrainerConfig
from diffusion_policy.data.dataset import SequenceDataset
from diffusion_policy.policy import DiffusionPolicy, DiffusionPolicyConfig, load_policy


def test_path_ends_and_velocity():
    x0, noise = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 0.5]])
    torch.testing.assert_close(interpolate(x0, noise, torch.tensor([0.0])), x0)
    torch.testing.assert_close(interpolate(x0, noise, torch.tensor([1.0])), noise)
    torch.testing.assert_close(interpolate(x0, noise, torch.tensor([0.25])), torch.tensor([[1.5, -1.375]]))
    torch.testing.assert_close(velocity_target(x0, noise), torch.tensor([[2.0, 2.5]]))
    with pytest.raises(ValueError, match=r"x0 shape \(1, 2\) != noise shape \(2,\)"):
        velocity_target(x0, noise[0])


@pytest.mark.parametrize("kind, mean, low", [("uniform", 0.5, 0.0), ("logit_normal", 0.5, 0.0),
                                             ("beta", 1 - 0.999 * (1 - 0.6), 0.001)])
def test_training_times(kind, mean, low):
    torch.manual_seed(0)
    t = sample_times(20_000, FlowConfig(time_sampling=kind))
    assert t.shape == (20_000,) and t.dtype == torch.float32
    assert float(t.min()) >= low and float(t.max()) <= 1.0
    assert float(t.mean()) == pytest.approx(mean, abs=0.01)  # Beta(1.5, 1) has mean 0.6
    if kind == "logit_normal":  # concentrated in the middle: fewer draws near the ends than uniform
        assert float(((t < 0.1) | (t > 0.9)).float().mean()) < 0.12


def test_time_config_refusals():
    with pytest.raises(ValueError, match=r"time_sampling='gamma' is not one of \('uniform', 'logit_normal', 'beta'\)"):
        FlowConfig(time_sampling="gamma")
    with pytest.raises(ValueError, match="beta_max=0"):
        FlowConfig(beta_max=0)


@pytest.mark.parametrize("sampler, calls", [("euler", 1), ("heun", 2)])
def test_one_step_of_the_true_velocity_lands_on_the_data(sampler, calls):
    """On a straight path the exact velocity is constant: any step count integrates it exactly."""
    x0, noise = torch.tensor([[0.3, -0.7]]), torch.tensor([[1.2, 0.4]])
    seen = []

    def denoiser(x, t):
        seen.append(float(t))
        return velocity_target(x0, noise)

    scheduler = FlowMatchScheduler(sampler)
    out = sample(denoiser, scheduler, 1, noise=noise)
    torch.testing.assert_close(out, x0)
    assert seen == ([1000.0] if calls == 1 else [1000.0, 0.0])


def test_heun_is_second_order_and_euler_first():
    """dx/dt = x from t = 1 (x = 1) down to 0: exact x(0) = e^-1; halving the step halves Euler's error
    and quarters Heun's."""
    def errors(sampler):
        out = []
        for steps in (8, 16):
            x = sample(lambda x, t: x, FlowMatchScheduler(sampler, clip_sample=False), steps,
                       noise=torch.ones(1, dtype=torch.float64))
            out.append(abs(float(x) - math.exp(-1)))
        return out
    euler, heun = errors("euler"), errors("heun")
    assert euler[0] / euler[1] == pytest.approx(2.0, rel=0.1)
    assert heun[0] / heun[1] == pytest.approx(4.0, rel=0.1)
    assert heun[1] < euler[1] / 40  # 47x smaller at 16 steps


def test_scheduler_refusals_and_clip():
    with pytest.raises(ValueError, match=r"sampler='dpmsolver\+\+' is not one of \('euler', 'heun'\)"):
        FlowMatchScheduler("dpmsolver++")
    scheduler = FlowMatchScheduler("euler")
    with pytest.raises(ValueError, match="num_inference_steps=0 must be >= 1"):
        scheduler.set_timesteps(0)
    scheduler.set_timesteps(2)
    torch.testing.assert_close(scheduler.timesteps, torch.tensor([1000.0, 500.0]))
    x = scheduler.step(torch.full((1, 2), -4.0), 1000.0, torch.zeros(1, 2)).prev_sample  # 0 + (-0.5)(-4) = 2
    torch.testing.assert_close(x, torch.full((1, 2), 2.0))  # not the last step: not clipped
    x = scheduler.step(torch.full((1, 2), -4.0), 500.0, x).prev_sample
    torch.testing.assert_close(x, torch.full((1, 2), 1.0))  # last step: clipped to [-1, 1]
    with pytest.raises(RuntimeError, match="call set_timesteps first"):
        scheduler.step(torch.zeros(1, 2), 0.0, x)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_inpainting_holds_the_known_values(sampler):
    known = torch.tensor([[[0.5, -0.5], [0.2, 0.1], [0.0, 0.0]]])
    mask = torch.tensor([[[True], [True], [False]]])
    out = sample(lambda x, t: torch.zeros_like(x), FlowMatchScheduler(sampler), 5, shape=(1, 3, 2),
                 generator=torch.Generator().manual_seed(0), known=known, known_mask=mask)
    torch.testing.assert_close(out[:, :2], known[:, :2])


def flow_config(**overrides) -> DiffusionPolicyConfig:
    base = dict(obs_shapes={"pos": (2,), "vel": (3,)}, action_dim=2, horizon=8, n_obs_steps=2, n_action_steps=4,
                network=SMALL_NET, objective="flow")
    return from_dict(DiffusionPolicyConfig, base | overrides)


def test_policy_config_picks_and_refuses_samplers():
    assert flow_config().inference_scheduler == "euler"
    assert flow_config(objective="ddpm").inference_scheduler == "ddim"
    assert flow_config(num_inference_steps=500).num_inference_steps == 500  # no schedule bounds a flow
    with pytest.raises(ValueError, match=r"sampler='dpmsolver\+\+' does not sample a objective='flow' "
                                         r"model; valid: \('euler', 'heun'\)"):
        flow_config(inference_scheduler="dpmsolver++")
    with pytest.raises(ValueError, match=r"sampler='heun' does not sample a objective='ddpm' model; valid: "
                                         r"\('ddim', 'ddpm', 'dpmsolver\+\+'\)"):
        flow_config(objective="ddpm", inference_scheduler="heun")
    with pytest.raises(ValueError, match=r"objective='score' is not one of \('ddpm', 'flow'\)"):
        flow_config(objective="score")
    with pytest.raises(ValueError, match="num_inference_steps=0 must be >= 1"):
        flow_config(num_inference_steps=0)
    with pytest.raises(ValueError, match=r"num_inference_steps=101 must be in \[1, num_train_timesteps=100\]"):
        flow_config(objective="ddpm", num_inference_steps=101)


def test_flow_policy_round_trip_and_fast_path(tmp_path):
    torch.manual_seed(0)
    policy = DiffusionPolicy(flow_config(inference_scheduler="heun", num_inference_steps=3,
                                         flow={"time_sampling": "beta"}), normalizer()).eval()
    policy.save(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    assert (loaded.config.objective, loaded.config.inference_scheduler) == ("flow", "heun")
    assert loaded.config.flow.time_sampling == "beta"
    noise = torch.randn(3, 8, 2, generator=torch.Generator().manual_seed(1))
    policy.inference = loaded.inference = "eager"
    torch.testing.assert_close(loaded.predict_action(observation(), noise=noise)["action_pred"],
                               policy.predict_action(observation(), noise=noise)["action_pred"])
    eager = policy.predict_action(observation(), noise=noise)["action_pred"]
    policy.inference = "fast"
    fast = policy.predict_action(observation(), noise=noise)["action_pred"]
    assert (fast - eager).abs().max() < 0.05 * float(eager.abs().max())


def test_flow_policy_overfits_a_tiny_dataset(tmp_path):
    dataset = SequenceDataset(line_buffer(), ["pos"], horizon=8, n_obs_steps=2, n_action_steps=4)
    config = from_dict(DiffusionPolicyConfig, dict(obs_shapes=dataset.obs_shapes, action_dim=2, horizon=8,
                                                    n_obs_steps=2, n_action_steps=4, objective="flow",
                                                    network={**SMALL_NET, "down_dims": (32, 64)}))
    torch.manual_seed(0)  # the initial weights too: the result does not depend on the tests run before
    policy = DiffusionPolicy(config, dataset.fit_normalizer())
    trainer = Trainer(policy, dataset, TrainerConfig(max_steps=1500, batch_size=16, lr=3e-3, warmup_steps=20,
                                                     use_ema=False, progress=False), tmp_path)
    trainer.fit()
    errors = []
    for i in (3, 10, 30):
        item = dataset[i]
        pred = policy.eval().predict_action({"pos": item["obs"]["pos"][None]},
                                            generator=torch.Generator().manual_seed(0))["action_pred"][0]
        errors.append((pred - item["action"]).abs())
    errors = torch.stack(errors)  # (3 windows, T, Da); the actions span [0.1, 1.1]
    assert float(errors.mean()) < 0.02 and float(errors.max()) < 0.1, errors


def test_image_model_trains_and_samples_with_flow_matching(tmp_path):
    from test_image_gen import tiny_config

    from diffusion_policy.image_gen.model import ImageDiffusionModel

    torch.manual_seed(0)
    model = ImageDiffusionModel(tiny_config(objective="flow", flow={"time_sampling": "logit_normal"}))
    images = torch.rand(6, 1, 8, 8) * 2 - 1
    batch = {"image": images, "label": torch.arange(6) % 10}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        torch.manual_seed(1)  # the same times and noise every step: the loss must fall
        loss = model.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]
    labels = torch.tensor([1, 2])
    for sampler in ("euler", "heun", None):
        out = model.generate(labels, sampler=sampler, steps=3, generator=torch.Generator().manual_seed(0))
        assert out.shape == (2, 1, 8, 8) and out.abs().max() <= 1.0
    with pytest.raises(ValueError, match=r"sampler='ddim' does not sample a objective='flow' model"):
        model.generate(labels, sampler="ddim", steps=3)
    model.save(tmp_path / "m")
    loaded = ImageDiffusionModel.load(tmp_path / "m")
    assert loaded.config.objective == "flow" and loaded.config.flow.time_sampling == "logit_normal"
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loaded.generate(labels, steps=4, noise=noise), model.eval().generate(labels, steps=4,
                                                                                                      noise=noise))
