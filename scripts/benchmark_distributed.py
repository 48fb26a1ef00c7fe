"""Training with several processes and the batched loader, measured on this machine.

    python scripts/benchmark_distributed.py                 # -> benchmarks/distributed_cpu.json

1. Loader: training windows/s through the trainer's DataLoader at batch 256, from memory, for a
   low-dim store (Push-T state: 20 numbers per step) and a 96 x 96 camera store (image + agent
   position), To = 2, T = 16, with 0, 1 and 2 worker processes; `per_item` is the loader as it was
   (one `__getitem__` per window, then PyTorch's collate), `batched` is `SequenceDataset.__getitems__`
   (one indexed read per key for the whole batch).
2. Training: samples/s of the trainer with 1 and 2 processes (`torchrun --nproc_per_node=2`, gloo),
   the same global batch, for the `make demo` network (U-Net [32, 64, 128], batch 128) and the
   paper's 65.8M state network ([256, 512, 1024], batch 64). One process uses every core's thread;
   torchrun gives each of its processes one thread (OMP_NUM_THREADS=1, its default).
   The timed steps follow warm-up steps; the rate is rank 0's (every step ends in an all-reduce, so
   ranks move together).

With a GPU: `--device cuda --nproc N` times 1 and N processes there (one GPU each).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import machine_info  # noqa: E402  (the sibling script's machine record)

from diffusion_policy.core.trainer import Callback, Trainer, TrainerConfig, collate_batch  # noqa: E402
from diffusion_policy.data.dataset import SequenceDataset  # noqa: E402
from diffusion_policy.data.replay_buffer import ReplayBuffer  # noqa: E402
from diffusion_policy.models.unet1d import UNet1DConfig  # noqa: E402
from diffusion_policy.policy import DiffusionPolicy, DiffusionPolicyConfig  # noqa: E402

NETWORKS = {"demo_net": ((32, 64, 128), 128), "paper_state_net": ((256, 512, 1024), 64)}


def synthetic_store(kind: str, n_episodes: int, length: int = 150) -> SequenceDataset:
    """`lowdim`: 20-d observations; `image`: a 96 x 96 x 3 uint8 camera + 2-d agent position."""
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer.in_memory()
    for _ in range(n_episodes):
        episode = {"action": rng.uniform(0, 512, (length, 2)).astype(np.float32)}
        if kind == "lowdim":
            episode["obs"] = rng.uniform(0, 512, (length, 20)).astype(np.float32)
        else:
            episode["img"] = rng.integers(0, 256, (length, 96, 96, 3), dtype=np.uint8)
            episode["agent_pos"] = rng.uniform(0, 512, (length, 2)).astype(np.float32)
        buffer.add_episode(episode)
    keys = ["obs"] if kind == "lowdim" else ["img", "agent_pos"]
    return SequenceDataset(buffer, keys, horizon=16, n_obs_steps=2, n_action_steps=8)


class PerItem(Dataset):
    """The dataset without `__getitems__`: the loader fetches window by window and collates."""

    def __init__(self, dataset: SequenceDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return self.dataset[i]


def loader_rate(dataset: Dataset, workers: int, batches: int, batch_size: int = 256) -> float:
    """Windows/s over `batches` shuffled batches (after the first, which starts the workers)."""
    shuffled = torch.utils.data.RandomSampler(dataset, num_samples=(batches + 1) * batch_size,
                                              generator=torch.Generator().manual_seed(0))
    sampler = torch.utils.data.BatchSampler(shuffled, batch_size, drop_last=True)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_batch,
                        persistent_workers=workers > 0)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def loader_case(batches: int) -> dict:
    results = {}
    for kind, episodes in (("lowdim", 200), ("image", 60)):
        dataset = synthetic_store(kind, episodes)
        results[kind] = {f"{path}_workers{w}": loader_rate(PerItem(dataset) if path == "per_item" else dataset,
                                                           w, batches)
                         for w in (0, 1, 2) for path in ("per_item", "batched")}
        for w in (0, 1, 2):
            results[kind][f"speedup_workers{w}"] = (results[kind][f"batched_workers{w}"]
                                                    / results[kind][f"per_item_workers{w}"])
    return results


class StepClock(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, trainer: Trainer) -> None:
        self.times.append(time.perf_counter())


def train_worker(network: str, steps: int, warmup: int, device: str, out: Path) -> None:
    """One process of the training measurement (run by torchrun, or alone for 1 process)."""
    down_dims, batch = NETWORKS[network]
    dataset = synthetic_store("lowdim", 200)
    config = DiffusionPolicyConfig(obs_shapes=dataset.obs_shapes, action_dim=2, horizon=16, n_obs_steps=2,
                                   n_action_steps=8, network=UNet1DConfig(down_dims=down_dims))
    torch.manual_seed(0)
    policy = DiffusionPolicy(config, dataset.fit_normalizer())
    clock = StepClock()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(policy, dataset, TrainerConfig(max_steps=warmup + steps, batch_size=batch, device=device,
                                                         checkpoint_every=10**9, val_every=10**9, progress=False),
                          run_dir, callbacks=[clock])
        trainer.fit()
    if trainer.dist.is_main:
        seconds = clock.times[-1] - clock.times[warmup - 1]
        out.write_text(json.dumps({"samples_per_s": steps * batch / seconds, "s_per_step": seconds / steps,
                                   "global_batch": batch, "world_size": trainer.dist.world_size,
                                   "torch_threads": torch.get_num_threads()}))


def training_case(nprocs: Sequence[int], steps: int, warmup: int, device: str) -> dict:
    results: dict = {}
    for network in NETWORKS:
        results[network] = {}
        for nproc in nprocs:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "rate.json"
                worker = [__file__, "--train-worker", network, "--steps", str(steps), "--warmup", str(warmup),
                          "--device", device, "--worker-out", str(out)]
                launcher = [sys.executable] if nproc == 1 else [
                    sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                subprocess.run(launcher + worker, check=True)
                results[network][f"processes_{nproc}"] = json.loads(out.read_text())
            print(network, nproc, results[network][f"processes_{nproc}"], flush=True)
        first, last = (results[network][f"processes_{n}"]["samples_per_s"] for n in (nprocs[0], nprocs[-1]))
        results[network]["speedup"] = last / first
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/distributed_<device>.json")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nproc", type=int, default=2, help="the process count compared with 1")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="training steps before the timed ones")
    parser.add_argument("--loader-batches", type=int, default=200)
    parser.add_argument("--cases", nargs="+", default=["loader", "training"], choices=["loader", "training"])
    parser.add_argument("--train-worker", choices=sorted(NETWORKS), help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error(f"--warmup {args.warmup} and --steps {args.steps} must be >= 1")
    if args.train_worker:
        train_worker(args.train_worker, args.steps, args.warmup, args.device, args.worker_out)
        return
    torch.set_num_threads(os.cpu_count() or 1)
    report: dict = {"machine": machine_info(torch.device(args.device)), "results": {}}
    if "loader" in args.cases:
        report["results"]["loader_batch256_windows_per_s"] = loader_case(args.loader_batches)
        print(json.dumps(report["results"]["loader_batch256_windows_per_s"], indent=1), flush=True)
    if "training" in args.cases:
        report["results"]["training"] = training_case([1, args.nproc], args.steps, args.warmup, args.device)
    out = args.out or Path("benchmarks") / f"distributed_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
