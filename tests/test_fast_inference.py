"""Fast inference: FrozenUnet1D reproduces the network, the policy's fast path tracks the eager one,
and the CUDA-graph chunk replays the fast path (its static-buffer code is checked on CPU too)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

import diffusion_policy.policy.diffusion_policy as policy_module
from diffusion_policy.core.ddim_plan import DDIMPlan
from diffusion_policy.core.schedulers import SchedulerConfig, make_scheduler
from diffusion_policy.models.unet1d import ConditionalUnet1D, UNet1DConfig
from diffusion_policy.models.unet1d_frozen import FrozenUnet1D
from diffusion_policy.policy import DiffusionPolicy
from diffusion_policy.policy.graphed_chunk import GraphedChunk
from tests.test_policy import normalizer, observation, small_config

CONFIGS = [
    (UNet1DConfig(down_dims=(32, 64, 128), step_embed_dim=32), 10),
    (UNet1DConfig(down_dims=(16, 32), n_groups=4, step_embed_dim=16, cond_predict_scale=False), 0),
    (UNet1DConfig(down_dims=(16,), n_groups=4, kernel_size=3, step_embed_dim=16), 6),
]


def random_network(config: UNet1DConfig, cond_dim: int) -> ConditionalUnet1D:
    torch.manual_seed(0)
    network = ConditionalUnet1D(3, cond_dim, config).eval()
    with torch.no_grad():
        for p in network.parameters():  # away from the init, so every term of the network matters
            p.add_(0.05 * torch.randn_like(p))
    return network


def outputs(network: ConditionalUnet1D, dtype: torch.dtype, cond_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 8, 3, generator=g)
    cond = torch.randn(4, cond_dim, generator=g) if cond_dim else None
    timesteps = torch.tensor([99, 40, 0])
    frozen = FrozenUnet1D(network, dtype)
    film = frozen.film(cond, timesteps)
    with torch.no_grad():
        eager = torch.stack([network(x, t, cond) for t in timesteps])
    fast = torch.stack([frozen.denoise(x, film, i) for i in range(len(timesteps))])
    return fast, eager


@pytest.mark.parametrize("config,cond_dim", CONFIGS)
def test_float32_snapshot_computes_what_the_network_computes(config, cond_dim):
    fast, eager = outputs(random_network(config, cond_dim), torch.float32, cond_dim)
    assert torch.allclose(fast, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config,cond_dim", CONFIGS)
def test_bf16_snapshot_is_within_two_percent(config, cond_dim):
    fast, eager = outputs(random_network(config, cond_dim), torch.bfloat16, cond_dim)
    assert (fast - eager).abs().max() <= 0.02 * eager.abs().max()


def test_snapshot_rejects_wrong_shapes():
    frozen = FrozenUnet1D(random_network(*CONFIGS[0]))
    with pytest.raises(ValueError, match=r"global_cond must have shape \(B, 10\)"):
        frozen.film(torch.zeros(2, 7), torch.tensor([5]))
    film = frozen.film(torch.zeros(2, 10), torch.tensor([5]))
    with pytest.raises(ValueError, match=r"\(2, 6, 3\)"):
        frozen.denoise(torch.zeros(2, 6, 3), film, 0)


def predictions(policy: DiffusionPolicy, mode: str) -> torch.Tensor:
    policy.inference = mode
    return policy.predict_action(observation(batch=5), generator=torch.Generator().manual_seed(3))["action_pred"]


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm", "dpmsolver++"])
def test_fast_policy_tracks_eager_with_the_same_noise(scheduler):
    torch.manual_seed(0)
    policy = DiffusionPolicy(small_config(inference_scheduler=scheduler, num_inference_steps=8), normalizer()).eval()
    assert policy.inference == "auto" and policy.uses_fast_inference()  # on CPU
    eager, fast = predictions(policy, "eager"), predictions(policy, "fast")
    assert eager.shape == fast.shape == (5, 8, 2)
    # 1% of the action range [0, 5], or of the values an untrained network reaches without clipping.
    assert (fast - eager).abs().max() <= 0.01 * max(5.0, float(eager.abs().max()))
    assert torch.equal(predictions(policy, "auto"), fast)


def test_snapshot_follows_weight_changes_and_is_not_copied():
    torch.manual_seed(0)
    policy = DiffusionPolicy(small_config(), normalizer()).eval()
    before = predictions(policy, "fast")
    snapshot = policy.frozen_network()
    assert policy.frozen_network() is snapshot
    with torch.no_grad():
        for p in policy.network.parameters():
            p.add_(0.02 * torch.randn_like(p))
    assert policy.frozen_network() is not snapshot
    after, eager = predictions(policy, "fast"), predictions(policy, "eager")
    assert not torch.allclose(after, before, atol=1e-3)
    assert (after - eager).abs().max() <= 0.1  # 2% of the action range, random weights
    assert copy.deepcopy(policy)._frozen is None


def test_unknown_inference_mode_is_named():
    policy = DiffusionPolicy(small_config(), normalizer())
    with pytest.raises(ValueError, match="'turbo'"):
        policy.inference = "turbo"


def graphed_setup(config: UNet1DConfig, cond_dim: int, device: str = "cpu"):
    frozen = FrozenUnet1D(random_network(config, cond_dim).to(device))
    plan = DDIMPlan(make_scheduler("ddim", SchedulerConfig()), 10)
    return frozen, plan


def fast_chunk(frozen: FrozenUnet1D, plan: DDIMPlan, cond: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
    film = frozen.film(cond, plan.timesteps)
    return plan.sample(lambda x, i: frozen.denoise(x, film, i), noise)


@pytest.mark.parametrize("config,cond_dim", CONFIGS)
def test_graphed_chunk_static_buffers_reproduce_the_fast_path(config, cond_dim):
    frozen, plan = graphed_setup(config, cond_dim)
    graphed = GraphedChunk(frozen, plan, (2, 8, 3), cond_dim, torch.device("cpu"))
    assert not graphed.captured  # no CUDA graph on a CPU: the same buffers, run eagerly
    g = torch.Generator().manual_seed(0)
    for _ in range(2):  # new inputs each call go through the same static buffers
        noise = torch.randn(2, 8, 3, generator=g)
        cond = torch.randn(2, cond_dim, generator=g) if cond_dim else None
        assert torch.equal(graphed(cond, noise), fast_chunk(frozen, plan, cond, noise))


def test_graphed_chunk_rejects_other_shapes_and_capture_without_cuda():
    frozen, plan = graphed_setup(*CONFIGS[0])
    graphed = GraphedChunk(frozen, plan, (2, 8, 3), 10, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"noise has shape \(1, 8, 3\).*\(2, 8, 3\)"):
        graphed(torch.zeros(2, 10), torch.zeros(1, 8, 3))
    with pytest.raises(ValueError, match=r"cond has shape \(2, 7\); expected \(2, 10\)"):
        graphed(torch.zeros(2, 7), torch.zeros(2, 8, 3))
    with pytest.raises(ValueError, match=r"cond has shape None"):
        graphed(None, torch.zeros(2, 8, 3))
    with pytest.raises(ValueError, match="needs a CUDA device, got cpu"):
        GraphedChunk(frozen, plan, (2, 8, 3), 10, torch.device("cpu"), capture=True)


def test_cpu_fast_path_builds_no_graph():
    torch.manual_seed(0)
    policy = DiffusionPolicy(small_config(), normalizer()).eval()
    predictions(policy, "fast")
    assert policy._graphed is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_replays_the_fast_path():
    frozen, plan = graphed_setup(*CONFIGS[0], device="cuda")
    graphed = GraphedChunk(frozen, plan, (2, 8, 3), 10, torch.device("cuda"))
    assert graphed.captured
    g = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(2):
        noise, cond = torch.randn(2, 8, 3, generator=g, device="cuda"), torch.randn(2, 10, generator=g, device="cuda")
        torch.testing.assert_close(graphed(cond, noise), fast_chunk(frozen, plan, cond, noise), rtol=1e-3, atol=1e-3)
    torch.manual_seed(0)
    policy = DiffusionPolicy(small_config(), normalizer()).eval().cuda()
    obs = {k: v.cuda() for k, v in observation(batch=5).items()}
    policy.inference = "fast"
    fast = policy.predict_action(obs, generator=torch.Generator(device="cuda").manual_seed(3))["action_pred"]
    assert policy._graphed is not None
    policy.inference = "eager"
    eager = policy.predict_action(obs, generator=torch.Generator(device="cuda").manual_seed(3))["action_pred"]
    assert (fast - eager).abs().max() <= 0.05
    assert copy.deepcopy(policy)._graphed is None


def test_snapshot_dtype_follows_the_cpu_and_can_be_overridden(monkeypatch):
    torch.manual_seed(0)
    policy = DiffusionPolicy(small_config(), normalizer()).eval()
    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(policy_module, "fast_dtype", lambda device, native=native: torch.bfloat16 if native
                            else torch.float32)
        assert policy.frozen_network().dtype == dtype  # retaken when the chosen dtype changes
    policy.snapshot_dtype = torch.bfloat16
    assert policy.frozen_network().dtype == torch.bfloat16
    # Without native bf16 the fast path computes what the eager one does, up to float32 rounding.
    policy.snapshot_dtype = None
    eager, fast = predictions(policy, "eager"), predictions(policy, "fast")
    assert torch.allclose(eager, fast, atol=1e-4)


def test_native_bf16_is_off_for_an_avx2_build_of_aten():
    code = "from diffusion_policy.core.cpu_features import native_bf16, fast_dtype; import torch; " \
           "print(native_bf16(), fast_dtype(torch.device('cpu')))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ATEN_CPU_CAPABILITY": "avx2"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "torch.float32"]


def test_auto_leaves_the_fast_path_for_batches_past_its_measured_limit(monkeypatch):
    torch.manual_seed(0)
    policy = DiffusionPolicy(small_config(), normalizer()).eval()  # horizon 8, first level 16 channels
    limit = policy_module.AUTO_FAST_ROWS_PER_CHANNEL * 16 // 8
    assert policy.uses_fast_inference(limit) and not policy.uses_fast_inference(limit + 1)
    policy.inference = "fast"
    assert policy.uses_fast_inference(limit + 1)
    monkeypatch.setattr(policy_module, "AUTO_FAST_ROWS_PER_CHANNEL", 1)  # every batch past the limit
    obs, noise = observation(batch=3), torch.randn(3, 8, 2, generator=torch.Generator().manual_seed(2))
    chunks = {}
    for mode in ("auto", "eager", "fast"):
        policy.inference = mode
        chunks[mode] = policy.predict_action(obs, noise=noise)["action_pred"]
    assert torch.equal(chunks["auto"], chunks["eager"]) and not torch.equal(chunks["auto"], chunks["fast"])
