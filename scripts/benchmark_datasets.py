"""Bring-your-own-data numbers: conversion speed, loader throughput from disk and from memory, and
training on a pixel store larger than the memory the process may use.

    python scripts/benchmark_datasets.py --out runs/datasets --json benchmarks/datasets.json

Steps (each a command a user runs, or the library calls behind one):
1. `make_original_pusht_store.py`: scripted-expert Push-T demos with 96 x 96 frames in the original
   Diffusion Policy layout (float32 images), then `convert_dataset.py --from zarr` -> our store
   (frames/s). The same frames are written as a robomimic HDF5 file (two 96 x 96 cameras, as
   robomimic's image datasets hold them) and converted with `--from robomimic` (frames/s).
   Our store is exported to LeRobotDataset v3.0 (`--to lerobot`, AV1) and read back (`--from lerobot`):
   frames/s each way, numbers compared exactly, the image error of the codec, video decoding alone.
2. Loader throughput: image windows/s (`pixels` + `agent_pos`, To = 2, T = 16) through the trainer's
   DataLoader (batch 64, shuffled), from memory and from disk through the chunk cache, with 0 and 2
   worker processes; and from the big store of step 3 through a cache that holds a twentieth of it.
3. A store of the same episodes repeated until it holds `--big-gb` GB of decoded frames, then a short
   training (`scripts/train.py`, the CPU image policy) in a memory cgroup capped at `--cap-gb`: the
   dataset sees the cap, reads images from disk, and the peak memory of the run is recorded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from diffusion_policy.core.cpu_features import cpu_model, native_bf16
from diffusion_policy.data.dataset import SequenceDataset
from diffusion_policy.data.formats.video import decode_at
from diffusion_policy.data.replay_buffer import ReplayBuffer

PYTHON = sys.executable
SCRIPTS = Path(__file__).resolve().parent
OBS = {"pixels": {"key": "img"}, "agent_pos": {"key": "state", "slice": [0, 2]}}


def run(command: list[str]) -> None:
    print("$", " ".join(command).replace(PYTHON, "python").replace(f"{SCRIPTS}/", "scripts/"), flush=True)
    subprocess.run(command, check=True)


def write_robomimic(store: Path, out: Path) -> None:
    """The store's episodes as a robomimic HDF5 file: two cameras (the frame twice), eef xy, object pose."""
    import h5py

    buffer = ReplayBuffer.open(store)
    with h5py.File(out, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = buffer.n_steps
        data.attrs["env_args"] = json.dumps({"env_name": "PushT", "type": 1, "env_kwargs": {}})
        for i in range(buffer.n_episodes):
            episode = buffer.get_episode(i)
            group = data.create_group(f"demo_{i}")
            group.attrs["num_samples"] = len(episode["action"])
            group.create_dataset("actions", data=episode["action"])
            group.create_dataset("obs/agentview_image", data=episode["img"])
            group.create_dataset("obs/robot0_eye_in_hand_image", data=episode["img"])
            group.create_dataset("obs/robot0_eef_pos", data=episode["state"][:, :2])
            group.create_dataset("obs/object", data=episode["state"][:, 2:])


def conversion(out: Path, episodes: int) -> dict:
    """Original-layout store -> ours, and robomimic HDF5 -> ours: the converters' own summaries."""
    original, ours = out / "original_layout.zarr", out / "pixels.zarr"
    if not original.exists():
        run([PYTHON, str(SCRIPTS / "make_original_pusht_store.py"), "--episodes", str(episodes),
             "--out", str(original)])
    results = {}
    for fmt, src, dst in (("zarr", original, ours), ("robomimic", out / "pixels.hdf5", out / "from_robomimic.zarr")):
        if fmt == "robomimic" and not src.exists():
            write_robomimic(ours, src)
        summary = out / f"convert_{fmt}.json"
        run([PYTHON, str(SCRIPTS / "convert_dataset.py"), "--from", fmt, str(src), "--out", str(dst), "--overwrite",
             "--no-progress", "--summary-json", str(summary)])
        results[fmt] = json.loads(summary.read_text())
    return results


def lerobot_round_trip(out: Path) -> dict:
    """Our pixel store -> LeRobot v3.0 -> ours: speeds, numbers exact, image error of the codec, and
    the speed of video decoding alone."""
    ours, exported, back = out / "pixels.zarr", out / "pixels_lerobot", out / "from_lerobot.zarr"
    results = {}
    for name, command in (("export", ["--to", "lerobot", str(ours), "--out", str(exported), "--fps", "10",
                                      "--task", "Push the T-shaped block onto the target."]),
                          ("import", ["--from", "lerobot", str(exported), "--out", str(back)])):
        summary = out / f"lerobot_{name}.json"
        run([PYTHON, str(SCRIPTS / "convert_dataset.py"), *command, "--overwrite", "--no-progress",
             "--summary-json", str(summary)])
        results[name] = json.loads(summary.read_text())
    a, b = ReplayBuffer.open(ours), ReplayBuffer.open(back)
    results["numbers_exact"] = {key: bool(np.array_equal(a[key][:], b[key][:])) for key in a.keys() if key != "img"}
    error = np.abs(a["img"][:].astype(np.int16) - b["img"][:].astype(np.int16))
    results["image_abs_error"] = {"mean": float(error.mean()), "p99": float(np.percentile(error, 99)),
                                  "max": int(error.max()), "psnr_db": float(10 * np.log10(255**2 / np.mean(
                                      error.astype(np.float64) ** 2)))}
    video = next((exported / "videos").rglob("*.mp4"))
    frames = min(a.n_steps, 2000)
    start = time.perf_counter()
    decode_at(video, np.arange(frames) / 10.0, "benchmark")
    results["video_decode_frames_per_s"] = frames / (time.perf_counter() - start)
    return results


def windows_per_s(dataset: SequenceDataset, workers: int, batches: int) -> float:
    loader = DataLoader(dataset, batch_size=64, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0), persistent_workers=False)
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first reads are not the steady state
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * 64 / (time.perf_counter() - start)


def loader(store: Path, big: Path, batches: int) -> dict:
    """Windows/s from memory and from disk (a cache that holds the whole store once warm), and from the
    big store through a 256 MiB cache per process, which holds about a twentieth of it (cold reads)."""
    results = {}
    for mode, path, in_memory, cache in (("memory", store, True, None), ("disk_chunk_cache", store, False, None),
                                         ("big_store_disk_cache_256MiB", big, False, 256 << 20)):
        dataset = SequenceDataset(ReplayBuffer.open(path), OBS, horizon=16, n_obs_steps=2, n_action_steps=8,
                                  in_memory=in_memory, cache_bytes=cache)
        for workers in (0, 2):
            results[f"{mode}_workers{workers}"] = windows_per_s(dataset, workers, batches)
            print(f"{mode:<17} workers {workers}: {results[f'{mode}_workers{workers}']:,.0f} windows/s", flush=True)
    return results


def big_store(src: Path, out: Path, gigabytes: float) -> dict:
    """`src`'s episodes repeated until the decoded frames reach `gigabytes` GB."""
    source = ReplayBuffer.open(src)
    frame_bytes = int(np.prod(source["img"].shape[1:]))
    if not out.exists():
        buffer = ReplayBuffer.create(out)
        episodes = [source.get_episode(i) for i in range(source.n_episodes)]
        while buffer.n_steps * frame_bytes < gigabytes * 1e9:
            for episode in episodes:
                buffer.add_episode(episode)
    buffer = ReplayBuffer.open(out)
    return {"path": str(out), "episodes": buffer.n_episodes, "frames": buffer.n_steps,
            "decoded_image_gb": buffer.n_steps * frame_bytes / 1e9}


def capped_training(store: Path, run_dir: Path, cap_gb: float, steps: int) -> dict:
    """`scripts/train.py` on `store` inside a memory cgroup limited to `cap_gb` GB; its peak memory."""
    group = Path(f"/sys/fs/cgroup/memory/dp_benchmark_{os.getpid()}")
    try:
        group.mkdir()
    except OSError as err:
        return {"capped": False, "why": f"no writable cgroup v1 memory hierarchy ({err})"}
    try:
        (group / "memory.limit_in_bytes").write_text(str(int(cap_gb * 1e9)))
        command = [PYTHON, str(SCRIPTS / "train.py"), "task=pusht_original_image", "policy=diffusion_unet_image_small",
                   "training=pusht_image_cpu", f"training.max_steps={steps}", f"training.val_every={steps}",
                   f"training.checkpoint_every={steps}", "eval.enabled=false", "task.dataset.val_ratio=0",
                   f"task.dataset.path={store}", f"run_dir={run_dir}"]
        print("$", " ".join(command).replace(PYTHON, "python"), f"(in a cgroup capped at {cap_gb} GB)", flush=True)
        start = time.perf_counter()
        done = subprocess.run(command, preexec_fn=lambda: (group / "cgroup.procs").write_text(str(os.getpid())),
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        peak = int((group / "memory.max_usage_in_bytes").read_text())
        failcnt = int((group / "memory.failcnt").read_text())
    finally:
        group.rmdir()
    decision = [line for line in done.stderr.splitlines() + done.stdout.splitlines() if "may still use" in line]
    return {"capped": True, "cap_gb": cap_gb, "returncode": done.returncode, "steps": steps, "seconds": seconds,
            "peak_gb": peak / 1e9, "limit_hits": failcnt, "dataset_decision": decision[-1] if decision else None,
            "stderr_tail": done.stderr[-2000:] if done.returncode else ""}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/datasets"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/datasets.json"))
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--big-gb", type=float, default=4.0, help="decoded size of the store for the capped run")
    parser.add_argument("--cap-gb", type=float, default=2.0, help="memory cap of the training process")
    parser.add_argument("--steps", type=int, default=30, help="training steps of the capped run")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    report: dict = {"machine": {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                                "platform": platform.platform(), "cpu": cpu_model(),
                                "native_bf16": native_bf16(), "cpu_count": os.cpu_count()}}
    report["conversion"] = conversion(args.out, args.episodes)
    report["lerobot"] = lerobot_round_trip(args.out)
    report["big_store"] = big_store(args.out / "pixels.zarr", args.out / "big.zarr", args.big_gb)
    report["loader_windows_per_s"] = loader(args.out / "pixels.zarr", args.out / "big.zarr", args.batches)
    report["capped_training"] = capped_training(args.out / "big.zarr", args.out / "capped_run", args.cap_gb,
                                                args.steps)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("conversion", "lerobot")}, indent=2))
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
