"""Side-by-side speed harness: the eager and fast paths of the paper-size networks, timed in one process.

    python scripts/benchmark.py                  # CPU, 2 threads -> benchmarks/cpu.json
    python scripts/benchmark.py --quick          # fewer repetitions (smoke run)
    python scripts/benchmark.py --device cuda    # -> benchmarks/cuda.json

Each case times its paths interleaved (A, B, A, B, ...) after warm-up, so machine noise hits both
alike, and reports p50 / p99 / mean latency per path and the ratio of p50s (eager / fast).

Cases:
"eager" is plain PyTorch: the same network with `nn.Conv1d` / `nn.ConvTranspose1d` layers in
float32, as the original code and LeRobot run it.

- `ddim10_chunk_b1` (Push-T state network, down_dims [256,512,1024], 65.8M parameters) and
  `ddim10_chunk_b1_image_net` (the image policy's U-Net, [512,1024,2048], ~255M): one 10-step DDIM
  chunk at batch 1 through `predict_action`: eager, the fast path with a bf16 snapshot (`fast_bf16`),
  and `inference="fast"` as this CPU gets it (bf16 with native bf16, else float32; `fast_dtype`),
  plus the largest action difference between eager and fast from the same noise (normalised units).
  A CPU without native bf16 can be emulated on one that has it:

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python scripts/benchmark.py --cases ddim10_chunk_b1 \
        --out benchmarks/cpu_avx2_emulated_chunk.json
- `ddim10_chunk_b4096_small_net`: the same paths for a batch of 4096 observations through the
  `make demo` network size ([32,64,128]): large batches (offline evaluation, candidate sampling) must
  not fall off the fast path. Without native bf16 the forced-bf16 path is left out: emulated, one
  such chunk did not finish in 20 minutes.

    python scripts/benchmark.py --cases ddim10_chunk_b4096_small_net
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python scripts/benchmark.py \
        --cases ddim10_chunk_b4096_small_net --out benchmarks/cpu_avx2_emulated_ddim10_chunk_b4096_small_net.json
- `ddim10_chunk_batch_sweep`: eager against `inference="fast"` at batches 1 to 4096 (small network) and
  1 to 1024 (the 65.8M one), the measurement behind `inference="auto"`'s batch limit:

    python scripts/benchmark.py --cases ddim10_chunk_batch_sweep
- `families_chunk_b1`: one chunk at batch 1 for each cell of the families study (docs/families.md):
  the `make demo` U-Net with DDPM + DDIM 10 and flow + Euler 10 / 4 / 1, and the paper's transformer.

    python scripts/benchmark.py --cases families_chunk_b1
- `train_step_b64`, `train_step_b256`: loss + backward + gradient clipping + AdamW, eager (fp32,
  foreach AdamW, `clip_grad_norm_`) vs fast (the trainer with `mixed_precision=bf16`: bf16 autocast
  over the GEMM convolutions, `FusedAdamW` with the clipping folded in); samples/s. A third path,
  `fp32`, is the trainer's CPU default (float32 GEMM convolutions, `FusedAdamW`). Both run with the trainer's
  allocator setting (`core/cpu_malloc.py`, process-wide on CPU).
- `ema_update`: one EMA update of the 65.8M network (the trainer does it after every step).
- `data_loading`: training windows/s through the trainer's DataLoader at batch 256.
- `memory_read`: sustained read bandwidth, and the weight-read floor of a bf16 10-step chunk it implies.
- `weight_only_gemms` (CPU): the convolution GEMMs of ten batch-1 forwards of the 65.8M network (a
  chunk's weight stream, 4-16 rows each), with bf16 weights (`addmm`, the fast path) against torch's
  weight-only int8 (`_weight_int8pack_mm`) and int4 (`_weight_int4pack_mm_for_cpu`, groups of 128)
  kernels, which read 2x and 4x fewer weight bytes.

    python scripts/benchmark.py --cases weight_only_gemms memory_read --out benchmarks/cpu_weight_only.json

A run of selected cases writes only those, by default to `benchmarks/<device>_<case>[_<case>...].json`,
so it never replaces the full `benchmarks/<device>.json`.

`--repeat N` runs the selected cases N times in one process, for the spread a noisy machine gives:

    python scripts/benchmark.py --cases train_step_b64 memory_read --repeat 8 \
        --out benchmarks/cpu_train_step_b64_repeats.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader

from diffusion_policy.core.cpu_features import cpu_model, native_bf16
from diffusion_policy.core.cpu_malloc import keep_freed_memory
from diffusion_policy.core.ema import EMA
from diffusion_policy.core.fused_adamw import FusedAdamW
from diffusion_policy.data.dataset import SequenceDataset
from diffusion_policy.data.replay_buffer import ReplayBuffer
from diffusion_policy.models.gemm_conv import GemmConv1d, GemmConvTranspose1d
from diffusion_policy.models.unet1d import UNet1DConfig
from diffusion_policy.models.unet1d_frozen import FrozenUnet1D
from diffusion_policy.policy import DiffusionPolicy, DiffusionPolicyConfig

HORIZON, N_OBS_STEPS, ACTION_DIM = 16, 2, 2
STATE_OBS_DIM = 20  # Push-T keypoints + agent position
IMAGE_OBS_DIM = 66  # one camera's 64 ResNet features + agent position
IMAGE_NET = (512, 1024, 2048)
INT4_GROUP = 128


def percentiles(times_ms: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(times_ms, 50)), "p99_ms": float(np.percentile(times_ms, 99)),
            "mean_ms": float(np.mean(times_ms)), "reps": len(times_ms)}


def side_by_side(paths: dict[str, Callable[[], object]], warmup: int, reps: int, sync: Callable[[], None]) -> dict:
    """Time each path `reps` times, interleaved, after `warmup` calls each; ratio = first p50 / last p50."""
    for fn in paths.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(reps):
        for name, fn in paths.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - start) * 1e3)
    result: dict = {name: percentiles(t) for name, t in times.items()}
    first, last = list(paths)[0], list(paths)[-1]
    result["ratio"] = result[first]["p50_ms"] / result[last]["p50_ms"]
    return result


def synthetic_dataset(obs_dim: int, n_episodes: int = 200, length: int = 200) -> SequenceDataset:
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer.in_memory()
    for _ in range(n_episodes):
        buffer.add_episode({"obs": rng.uniform(0, 512, (length, obs_dim)).astype(np.float32),
                            "action": rng.uniform(0, 512, (length, ACTION_DIM)).astype(np.float32)})
    return SequenceDataset(buffer, ["obs"], horizon=HORIZON, n_obs_steps=N_OBS_STEPS, n_action_steps=8)


def make_policy(dataset: SequenceDataset, down_dims: tuple[int, ...], device: torch.device) -> DiffusionPolicy:
    config = DiffusionPolicyConfig(obs_shapes=dataset.obs_shapes, action_dim=ACTION_DIM, horizon=HORIZON,
                                   n_obs_steps=N_OBS_STEPS, n_action_steps=8, num_inference_steps=10,
                                   network=UNet1DConfig(down_dims=down_dims))
    torch.manual_seed(0)
    return DiffusionPolicy(config, dataset.fit_normalizer()).to(device)


def with_plain_convolutions(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose GEMM convolutions are PyTorch's own ``nn.Conv1d`` / ``nn.ConvTranspose1d``."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, (GemmConv1d, GemmConvTranspose1d)):
                plain_type = nn.Conv1d if isinstance(child, GemmConv1d) else nn.ConvTranspose1d
                plain = plain_type(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                                   padding=child.padding, bias=child.bias is not None)
                plain.load_state_dict(child.state_dict())
                setattr(module, name, plain.to(child.weight.device))
    return model


def batch_of(dataset: SequenceDataset, size: int, device: torch.device) -> dict:
    items = [dataset[i] for i in range(size)]
    return {"obs": {"obs": torch.stack([it["obs"]["obs"] for it in items]).to(device)},
            "action": torch.stack([it["action"] for it in items]).to(device)}


def chunk_case(down_dims: tuple[int, ...], obs_dim: int, device: torch.device, reps: int, sync,
               batch: int = 1, forced_bf16: bool = True) -> dict:
    """10-step DDIM chunk at `batch`: eager vs fast latency (and the bf16 snapshot forced, with
    `forced_bf16`), and their action difference."""
    dataset = synthetic_dataset(obs_dim, n_episodes=20)
    policy = make_policy(dataset, down_dims, device).eval()
    plain = with_plain_convolutions(policy)
    plain.inference = "eager"
    policy.inference = "fast"
    bf16 = copy.deepcopy(policy)
    bf16.snapshot_dtype = torch.bfloat16
    obs = {"obs": batch_of(dataset, 1, device)["obs"]["obs"].repeat(batch, 1, 1)}
    paths = {"eager": lambda: plain.predict_action(obs), "fast_bf16": lambda: bf16.predict_action(obs),
             "fast": lambda: policy.predict_action(obs)}
    if not forced_bf16:
        del paths["fast_bf16"]
    result = side_by_side(paths, 2, reps, sync)
    result["fast_dtype"] = str(policy.frozen_network().dtype)
    noise = torch.randn(batch, HORIZON, ACTION_DIM, device=device)
    with torch.no_grad():
        cond = policy.condition(obs)
        eager = plain.sample_chunk(cond, None, noise)
        fast = policy.sample_chunk(cond, None, noise)
    result["parameters"] = sum(p.numel() for p in policy.network.parameters())
    result["max_abs_action_diff_normalized"] = float((eager - fast).abs().max())
    return result


def training_step(policy: nn.Module, batch: dict, device: torch.device, fused: bool, bf16: bool) -> Callable[[], None]:
    """One optimisation step of `policy` on `batch` (the paper's AdamW, clipping at 10): plain foreach
    AdamW + `clip_grad_norm_`, or `FusedAdamW` with the clipping folded in; bf16 autocast or not."""
    adamw = {"lr": 1e-4, "betas": (0.95, 0.999), "weight_decay": 1e-6}
    policy.train()
    if fused:
        optimizer = FusedAdamW(policy.parameters(), max_grad_norm=10.0, **adamw)
    else:
        optimizer = torch.optim.AdamW(policy.parameters(), foreach=True, **adamw)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = policy.compute_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not fused:
            nn.utils.clip_grad_norm_(policy.parameters(), 10.0)
        optimizer.step()
    return step


SWEEP_BATCHES = {(32, 64, 128): (1, 16, 64, 256, 1024, 4096), (256, 512, 1024): (1, 16, 64, 256, 1024)}


def chunk_batch_sweep(device: torch.device, reps: int, sync) -> dict:
    """Eager against the fast path (as this CPU gets it) for growing batches, for the `make demo` and the
    paper's state network: where the fast path stops paying, `inference="auto"` must take eager."""
    results: dict = {}
    for down_dims, batches in SWEEP_BATCHES.items():
        for batch in batches:
            case = chunk_case(down_dims, STATE_OBS_DIM, device, reps if batch < 1024 else 2, sync, batch,
                              forced_bf16=False)
            results[f"{list(down_dims)}_b{batch}"] = {k: case[k] for k in ("eager", "fast", "ratio", "fast_dtype")}
            print(f"{list(down_dims)} batch {batch}: eager / fast {case['ratio']:.2f}", flush=True)
    return results


FAMILY_CELLS = {  # name: policy options on top of the `make demo` networks (docs/families.md)
    "unet_ddpm_ddim10": {},
    "unet_flow_euler10": {"objective": "flow"},
    "unet_flow_euler4": {"objective": "flow", "num_inference_steps": 4},
    "unet_flow_euler1": {"objective": "flow", "num_inference_steps": 1},
    "transformer_ddpm_ddim10": {"denoiser": "transformer"},
}


def families_chunk_case(device: torch.device, reps: int, sync) -> dict:
    """Chunk latency at batch 1 of each cell of the families study, `inference="auto"` (the U-Net's fast
    path on CPU, the transformer's eager one): the `make demo` U-Net [32, 64, 128] and the paper's DP-T."""
    dataset = synthetic_dataset(STATE_OBS_DIM, n_episodes=20)
    obs = {"obs": batch_of(dataset, 1, device)["obs"]["obs"]}
    paths = {}
    for name, options in FAMILY_CELLS.items():
        config = DiffusionPolicyConfig(obs_shapes=dataset.obs_shapes, action_dim=ACTION_DIM, horizon=HORIZON,
                                       n_obs_steps=N_OBS_STEPS, n_action_steps=8,
                                       network=UNet1DConfig(down_dims=(32, 64, 128), step_embed_dim=32),
                                       **{"num_inference_steps": 10, **options})
        torch.manual_seed(0)
        policy = DiffusionPolicy(config, dataset.fit_normalizer()).to(device).eval()
        paths[name] = functools.partial(policy.predict_action, obs)
    result = side_by_side(paths, 2, reps, sync)
    del result["ratio"]
    return result


def train_case(batch_size: int, device: torch.device, reps: int, sync) -> dict:
    """One optimisation step: plain fp32 + foreach AdamW vs the trainer's bf16 + FusedAdamW recipe."""
    dataset = synthetic_dataset(STATE_OBS_DIM)
    batch = batch_of(dataset, batch_size, device)

    def stepper(policy: nn.Module, fused: bool, bf16: bool) -> Callable[[], None]:
        return training_step(policy, batch, device, fused, bf16)

    fast = make_policy(dataset, (256, 512, 1024), device)
    fp32 = copy.deepcopy(fast)
    eager = with_plain_convolutions(fast)
    paths = {"eager": stepper(eager, False, False), "fp32": stepper(fp32, True, False),
             "fast": stepper(fast, True, True)}
    result = side_by_side(paths, 1, reps, sync)
    for path in paths:
        result[path]["samples_per_s"] = batch_size / result[path]["p50_ms"] * 1e3
    return result


def ema_case(device: torch.device, reps: int, sync) -> dict:
    policy = make_policy(synthetic_dataset(STATE_OBS_DIM, n_episodes=5), (256, 512, 1024), device)
    ema = EMA(policy)
    return side_by_side({"ema_update": lambda: ema.update(policy)}, 2, reps, sync)["ema_update"]


def data_case(reps: int) -> dict:
    dataset = synthetic_dataset(STATE_OBS_DIM)
    loader = DataLoader(dataset, batch_size=256, shuffle=True, drop_last=True)
    batches = min(len(loader), 20 * reps)
    start = time.perf_counter()
    for i, _ in enumerate(loader):
        if i + 1 >= batches:
            break
    return {"samples_per_s": batches * 256 / (time.perf_counter() - start), "batch_size": 256, "batches": batches}


def memory_case(weight_bytes_per_step: int, device: torch.device, sync) -> dict:
    """Read bandwidth (sum over a 256 MiB bf16 buffer) and the bf16 10-step chunk floor it implies."""
    buffer = torch.ones(128 * 2**20, dtype=torch.bfloat16, device=device)
    timing = side_by_side({"read": lambda: buffer.sum()}, 2, 10, sync)["read"]
    gbps = buffer.numel() * 2 / timing["p50_ms"] / 1e6
    return {"read_gb_per_s": gbps, "bf16_conv_weights_mb": weight_bytes_per_step / 1e6,
            "ddim10_chunk_floor_ms": 10 * weight_bytes_per_step / gbps / 1e6}


class _RecordGemms(TorchFunctionMode):
    """Records ``(rows M, out N, reduction K)`` of every ``bf16 weight (N, K) @ columns (K, M)`` product."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, int, int]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch's protocol)
        if func in (torch.addmm, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__):
            weight, columns = args[-2:]
            if weight.dtype == torch.bfloat16 and weight.ndim == columns.ndim == 2:
                self.shapes.append((columns.shape[1], *weight.shape))
        return func(*args, **(kwargs or {}))


def conv_gemms(network: nn.Module) -> list[tuple[int, int, int]]:
    """``(M, N, K)`` of the bf16 convolution GEMMs of one batch-1 forward of the fast path, in order."""
    frozen = FrozenUnet1D(network)
    film = frozen.film(torch.zeros(1, network.global_cond_dim), torch.arange(10))
    with _RecordGemms() as recorder:
        frozen.denoise(torch.zeros(1, HORIZON, ACTION_DIM), film, 0)
    return recorder.shapes


def int8_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight (N, K)`` -> symmetric per-row int8 ``(N, K)`` and bf16 scales ``(N,)`` for ``_weight_int8pack_mm``."""
    scale = weight.abs().amax(1).clamp(min=1e-8) / 127
    return torch.round(weight / scale[:, None]).to(torch.int8), scale.bfloat16()


def int4_weights(weight: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight (N, K)`` -> packed asymmetric int4 and bf16 ``(K / group, N, 2)`` scales and zeros for
    ``_weight_int4pack_mm_for_cpu``, which dequantises a code ``q`` as ``(q - 8) * scale + zero``."""
    n, k = weight.shape
    groups = weight.reshape(n, k // group, group)
    low, high = groups.amin(-1), groups.amax(-1)
    step = (high - low).clamp(min=1e-8) / 15
    codes = torch.round((groups - low[..., None]) / step[..., None]).to(torch.int32).reshape(n, k)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 8)
    return packed, torch.stack([step.t(), (low + 8 * step).t()], -1).contiguous().bfloat16()


def weight_only_case(reps: int) -> dict:
    """Ten forwards' convolution GEMMs with bf16, int8 and int4 weights (random values, real shapes)."""
    network = make_policy(synthetic_dataset(STATE_OBS_DIM, n_episodes=5), (256, 512, 1024), torch.device("cpu")).network
    layers = []
    for m, n, k in conv_gemms(network):
        weight = 0.02 * torch.randn(n, k)
        int8, int8_scale = int8_weights(weight)
        int4, int4_scale_zero = int4_weights(weight)
        layers.append({
            "rows": torch.randn(m, k, dtype=torch.bfloat16), "cols": torch.randn(k, m, dtype=torch.bfloat16),
            "bf16": weight.bfloat16(), "bias": torch.zeros(n, 1, dtype=torch.bfloat16),
            "int8": int8, "int8_scale": int8_scale, "int4": int4, "int4_scale_zero": int4_scale_zero,
        })

    def stream(gemm: Callable[[dict], object]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(10):
                for layer in layers:
                    gemm(layer)
        return run

    result = side_by_side({
        "bf16": stream(lambda w: torch.addmm(w["bias"], w["bf16"], w["cols"])),
        "int8": stream(lambda w: torch.ops.aten._weight_int8pack_mm(w["rows"], w["int8"], w["int8_scale"])),
        "int4": stream(lambda w: torch.ops.aten._weight_int4pack_mm_for_cpu(w["rows"], w["int4"], INT4_GROUP,
                                                                            w["int4_scale_zero"])),
    }, 2, reps, lambda: None)
    weights = sum(layer["bf16"].numel() for layer in layers)
    for path, bytes_per_weight in (("bf16", 2), ("int8", 1), ("int4", 0.5)):
        result[path]["weight_gb_per_s"] = 10 * weights * bytes_per_weight / result[path]["p50_ms"] / 1e6
    result["gemms_per_forward"] = len(layers)
    result["rows_per_gemm"] = sorted({len(layer["rows"]) for layer in layers})
    return result


def run(quick: bool, device: torch.device, cases: list[str]) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    reps = 5 if quick else 30

    def memory() -> dict:
        state_net = make_policy(synthetic_dataset(STATE_OBS_DIM, n_episodes=5), (256, 512, 1024), device).network
        conv_bytes = 2 * sum(m.weight.numel() for m in state_net.modules()
                             if isinstance(m, (GemmConv1d, nn.ConvTranspose1d)))
        return memory_case(conv_bytes, device, sync)

    runners: dict[str, Callable[[], dict]] = {
        "ddim10_chunk_b1": lambda: chunk_case((256, 512, 1024), STATE_OBS_DIM, device, reps, sync),
        "ddim10_chunk_b1_image_net": lambda: chunk_case(IMAGE_NET, IMAGE_OBS_DIM, device, max(3, reps // 4), sync),
        "ddim10_chunk_b4096_small_net": lambda: chunk_case((32, 64, 128), STATE_OBS_DIM, device, 2, sync, 4096,
                                                           forced_bf16=native_bf16()),
        "ddim10_chunk_batch_sweep": lambda: chunk_batch_sweep(device, max(3, reps // 6), sync),
        "families_chunk_b1": lambda: families_chunk_case(device, reps, sync),
        "train_step_b64": lambda: train_case(64, device, max(3, reps // 3), sync),
        "train_step_b256": lambda: train_case(256, device, max(2, reps // 8), sync),
        "ema_update": lambda: ema_case(device, max(3, reps // 3), sync),
        "data_loading": lambda: data_case(2 if quick else 10),
        "memory_read": memory,
    }
    if device.type == "cpu":
        runners["weight_only_gemms"] = lambda: weight_only_case(max(3, reps // 3))
    unknown = sorted(set(cases) - set(runners))
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown} for {device.type}; valid: {sorted(runners)}")
    return {name: runner() for name, runner in runners.items() if not cases or name in cases}


def with_repeats(runs: list[dict]) -> dict:
    """The first run's results; with several runs, each case also gets `repeats` (per run: every path's
    p50 and the case's scalar figures) and `median_p50_ms` per path."""
    results = runs[0]
    if len(runs) == 1:
        return results
    for name, case in results.items():
        paths = [k for k, v in case.items() if isinstance(v, dict) and "p50_ms" in v]
        case["repeats"] = [{**{p: r[name][p]["p50_ms"] for p in paths},
                            **{k: v for k, v in r[name].items() if isinstance(v, (int, float))}} for r in runs]
        case["median_p50_ms"] = {p: statistics.median(x[p] for x in case["repeats"]) for p in paths}
    return results


def machine_info(device: torch.device) -> dict[str, object]:
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def print_report(results: dict) -> None:
    for name, values in results.items():
        if "ratio" in values:
            paths = [k for k in values if isinstance(values[k], dict) and "p50_ms" in values[k]]
            cells = "  ".join(f"{p} p50 {values[p]['p50_ms']:.1f} ms (p99 {values[p]['p99_ms']:.1f})" for p in paths)
            print(f"{name:<27} {cells}  ratio {values['ratio']:.2f}x")
        else:
            print(f"{name:<27} " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in values.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/<device>.json)")
    parser.add_argument("--cases", nargs="+", default=[], help="run only these cases (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="run the cases this many times; each case then "
                        "keeps every run's figures (`repeats`) and the median p50 per path (`median_p50_ms`)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat} must be >= 1")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        keep_freed_memory()  # as the trainer does
    runs = [run(args.quick, device, args.cases) for _ in range(args.repeat)]
    report = {"machine": machine_info(device), "results": with_repeats(runs)}
    out = args.out or Path("benchmarks") / ("_".join([device.type, *args.cases]) + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report["results"])
    print(f"written to {out}")


if __name__ == "__main__":
    main()
