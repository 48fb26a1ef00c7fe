"""Benchmark the paper-size low-dim policy on this machine; writes JSON under benchmarks/.

    python scripts/benchmark.py                 # 2 threads, CPU, all cases
    python scripts/benchmark.py --quick         # fewer repetitions

Cases (Push-T state network: obs 20 x 2 steps, action 2, horizon 16, down_dims [256,512,1024],
about 65.8M parameters): one network forward at batch 1; one 10-step DDIM chunk at batch 1 through
`predict_action`; one training step (loss, backward, AdamW) at batch 64 and 256; dataset windows/s.
Latencies are wall-clock p50/p99 over repetitions after warm-up.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from diffusion_policy.data.dataset import SequenceDataset
from diffusion_policy.data.replay_buffer import ReplayBuffer
from diffusion_policy.policy import DiffusionPolicy, DiffusionPolicyConfig

OBS_DIM, ACTION_DIM, N_OBS_STEPS, HORIZON = 20, 2, 2, 16


def timings(fn: Callable[[], object], warmup: int, reps: int) -> dict[str, float]:
    """Run `fn` `warmup` times, then `reps` timed times; milliseconds p50 / p99 / mean."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "mean_ms": float(np.mean(times)), "reps": reps}


def synthetic_buffer(n_episodes: int = 500, length: int = 200, seed: int = 0) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer.in_memory()
    for _ in range(n_episodes):
        buffer.add_episode({"keypoints": rng.uniform(0, 512, (length, OBS_DIM)).astype(np.float32),
                            "action": rng.uniform(0, 512, (length, ACTION_DIM)).astype(np.float32)})
    return buffer


def paper_policy(dataset: SequenceDataset, device: torch.device) -> DiffusionPolicy:
    config = DiffusionPolicyConfig(obs_shapes=dataset.obs_shapes, action_dim=ACTION_DIM, horizon=HORIZON,
                                   n_obs_steps=N_OBS_STEPS, n_action_steps=8, num_inference_steps=10)
    return DiffusionPolicy(config, dataset.fit_normalizer()).to(device)


def batch_of(dataset: SequenceDataset, size: int, device: torch.device) -> dict:
    items = [dataset[i] for i in range(size)]
    return {"obs": {"keypoints": torch.stack([it["obs"]["keypoints"] for it in items]).to(device)},
            "action": torch.stack([it["action"] for it in items]).to(device)}


def run(quick: bool, device: torch.device) -> dict[str, dict[str, float]]:
    reps = 5 if quick else 30
    dataset = SequenceDataset(synthetic_buffer(), ["keypoints"], horizon=HORIZON, n_obs_steps=N_OBS_STEPS,
                              n_action_steps=8)
    policy = paper_policy(dataset, device).eval()
    results: dict[str, dict[str, float]] = {"parameters": {"count": sum(p.numel() for p in policy.parameters())}}
    obs = {"keypoints": batch_of(dataset, 1, device)["obs"]["keypoints"]}
    x = torch.randn(1, HORIZON, ACTION_DIM, device=device)
    cond = policy.condition(obs)
    with torch.no_grad():
        results["forward_b1"] = timings(lambda: policy.network(x, torch.tensor(10), cond), 3, reps * 2)
    results["ddim10_chunk_b1"] = timings(lambda: policy.predict_action(obs), 2, reps)

    policy.train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
    for size in (64, 256):
        batch = batch_of(dataset, size, device)

        def step(batch: dict = batch) -> None:
            optimizer.zero_grad(set_to_none=True)
            policy.compute_loss(batch).backward()
            optimizer.step()

        results[f"train_step_b{size}"] = timings(step, 1, max(3, reps // (2 if size == 64 else 6)))
        results[f"train_step_b{size}"]["samples_per_s"] = size / results[f"train_step_b{size}"]["p50_ms"] * 1e3

    n = 20_000 if quick else 100_000
    order = np.random.default_rng(0).integers(0, len(dataset), n)
    start = time.perf_counter()
    for i in order:
        dataset[int(i)]
    results["dataset_windows"] = {"windows_per_s": n / (time.perf_counter() - start), "windows": n}
    return results


def machine_info(device: torch.device) -> dict[str, object]:
    cpu = "unknown"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/<device>.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    report = {"machine": machine_info(device), "results": run(args.quick, device)}
    out = args.out or Path("benchmarks") / f"baseline_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for name, values in report["results"].items():
        print(f"{name:<18}" + "  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in values.items()))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
