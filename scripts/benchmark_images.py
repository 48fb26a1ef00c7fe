"""Image data throughput: Zarr chunking and codecs, recording, reading and the training loader.

    python scripts/benchmark_images.py            # writes benchmarks/images.json
    python scripts/benchmark_images.py --quick    # fewer episodes and batches (smoke run)

Frames are 96x96 Push-T renders (`envs.pusht_render.render_frame`) of an agent and a block moving
smoothly from random poses, so consecutive frames are correlated like recorded episodes; each
episode also holds `agent_pos` (2,) and `action` (2,) float32. Every figure is the best of
`--repeat` runs (other processes may share the machine); the storage and loader cases run in
interleaved rounds, so load from elsewhere hits them alike. Stores are written to a temporary
directory and read back while in the page cache. Cases:

- `storage`: the image array alone, 1, 4, 16 or 37 (~1 MiB) frames per chunk x codec (Blosc, byte
  shuffle, CRC32C as the buffer writes Zarr format 3): write frames/s and MB/s, compression ratio,
  whole-array read frames/s, and random 2-frame windows/s (an `n_obs_steps=2` observation read
  straight from Zarr).
- `recording`: `ReplayBuffer.add_episode` with the defaults, frames/s and MB/s of all keys.
- `reading`: `copy_to_memory` frames/s, and `SequenceDataset(in_memory=False)` items/s.
- `open_check`: `ReplayBuffer.open` (which lists every chunk file) of a store of `--big-frames` frames.
- `loader`: `DataLoader(SequenceDataset(obs_keys=["pixels", "agent_pos"], horizon=16, n_obs_steps=2,
  n_action_steps=8), batch_size=64, shuffle=True)` for 0, 1, 2 workers, each batch turned into
  float `(B*To, C, H, W)` in [0, 1] and randomly cropped 96 -> 84 in the main process, in either
  order (`float_then_crop`, `crop_then_float`); samples/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader
from zarr.codecs import BloscCodec, Crc32cCodec

from diffusion_policy.data.dataset import SequenceDataset
from diffusion_policy.data.replay_buffer import ReplayBuffer
from diffusion_policy.data.storage import check_chunks_stored, create_options
from diffusion_policy.models.crop import random_crop
from envs.pusht_geometry import GOAL_POSE
from envs.pusht_render import render_frame

SIZE = 96
CROP = (84, 84)
MB = 1e6
CODECS: dict[str, Callable[[], list]] = {
    "zstd-3+crc32c": lambda: [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), Crc32cCodec()],
    "lz4-5+crc32c": lambda: [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec()],
    "zstd-3": lambda: [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")],
}


def smooth_walk(rng: np.random.Generator, length: int, dims: int, step: float) -> np.ndarray:
    """`(length, dims)` random walk whose velocity changes slowly (an exponential moving average)."""
    velocity, out = np.zeros(dims), np.empty((length, dims))
    for t in range(length):
        velocity = 0.9 * velocity + 0.1 * rng.normal(scale=step, size=dims)
        out[t] = velocity
    return np.cumsum(out, axis=0)


def make_episode(rng: np.random.Generator, length: int) -> dict[str, np.ndarray]:
    """One episode: `pixels` (L, 96, 96, 3) uint8, `agent_pos` and `action` (L, 2) float32."""
    agent = np.clip(rng.uniform(60, 452, 2) + smooth_walk(rng, length, 2, 30.0), 20, 492)
    block = np.concatenate([rng.uniform(150, 362, 2), rng.uniform(-np.pi, np.pi, 1)])
    block = block + smooth_walk(rng, length, 3, 1.0) * np.array([5.0, 5.0, 0.02])
    pixels = np.stack([render_frame(SIZE, agent[t], block[t], GOAL_POSE) for t in range(length)])
    action = np.concatenate([agent[1:], agent[-1:]]).astype(np.float32)  # the next agent position
    return {"pixels": pixels, "agent_pos": agent.astype(np.float32), "action": action}


def timed(run: Callable[..., object], *args: object) -> float:
    """Wall time of one call `run(*args)`, in seconds."""
    start = time.perf_counter()
    run(*args)
    return time.perf_counter() - start


def best_time(run: Callable[[], object], repeat: int) -> float:
    """Least wall time of `repeat` calls of `run`, in seconds."""
    return min(timed(run) for _ in range(repeat))


def stored_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def storage_sweep(episodes: list[np.ndarray], directory: Path, repeat: int, n_windows: int) -> list[dict]:
    """Write, size and read the image array alone for each codec x frames per chunk.

    Rounds run every case once, so a burst of load from other processes hits all cases alike; each
    figure is the best of `repeat` rounds.
    """
    cases = [(codec, frames) for codec in CODECS for frames in (1, 4, 16, 37)]
    n_frames = sum(len(e) for e in episodes)
    starts = np.random.default_rng(0).integers(0, n_frames - 1, n_windows)
    best = {case: {"write": np.inf, "read": np.inf, "windows": np.inf} for case in cases}
    for _ in range(repeat):
        for codec, frames in cases:
            path = directory / f"storage_{codec}_{frames}.zarr"
            times = best[codec, frames]
            times["write"] = min(times["write"], timed(write_images, path, episodes, frames, codec))
            array = zarr.open_array(str(path), mode="r")
            times["read"] = min(times["read"], timed(array.__getitem__, slice(None)))
            times["windows"] = min(times["windows"], timed(read_windows, array, starts))
    raw = n_frames * SIZE * SIZE * 3
    return [{"codec": codec, "chunk_frames": frames, "write_frames_per_s": n_frames / t["write"],
             "write_mb_per_s": raw / MB / t["write"],
             "compression_ratio": raw / stored_bytes(directory / f"storage_{codec}_{frames}.zarr"),
             "read_all_frames_per_s": n_frames / t["read"], "random_2_frame_windows_per_s": n_windows / t["windows"]}
            for (codec, frames), t in best.items()]


def read_windows(array: zarr.Array, starts: np.ndarray) -> None:
    """Read the 2-frame window at each of `starts`, one Zarr read each."""
    for start in starts:
        array[start : start + 2]


def write_images(path: Path, episodes: list[np.ndarray], chunk_frames: int, codec: str) -> None:
    """A new image array at `path`, appended episode by episode as `ReplayBuffer.add_episode` does."""
    options = {**create_options(3, (chunk_frames, SIZE, SIZE, 3)), "compressors": CODECS[codec]()}
    array = zarr.create_array(str(path), shape=(0, SIZE, SIZE, 3), dtype="uint8", overwrite=True, **options)
    for episode in episodes:
        start = array.shape[0]
        array.resize((start + len(episode), SIZE, SIZE, 3))
        array[start:] = episode


def recording_and_reading(episodes: list[dict], path: Path, repeat: int, n_items: int) -> dict:
    """`add_episode` into a new default store, then `copy_to_memory` and lazy dataset items from it."""

    def record() -> None:
        buffer = ReplayBuffer.create(path, overwrite=True)
        for episode in episodes:
            buffer.add_episode(episode)

    n_frames = sum(len(e["pixels"]) for e in episodes)
    raw = sum(v.nbytes for e in episodes for v in e.values())
    record_s = best_time(record, repeat)
    buffer = ReplayBuffer.open(path)
    copy_s = best_time(buffer.copy_to_memory, repeat)
    lazy = SequenceDataset(buffer, ["pixels", "agent_pos"], horizon=16, n_obs_steps=2, n_action_steps=8,
                           in_memory=False)
    items = np.random.default_rng(0).integers(0, len(lazy), n_items)
    lazy_s = best_time(lambda: [lazy[int(i)] for i in items], repeat)
    return {"recording": {"frames_per_s": n_frames / record_s, "mb_per_s": raw / MB / record_s,
                          "compression_ratio": raw / stored_bytes(path)},
            "reading": {"copy_to_memory_frames_per_s": n_frames / copy_s,
                        "zarr_dataset_items_per_s": n_items / lazy_s}}


def open_check(episodes: list[dict], path: Path, big_frames: int, repeat: int) -> dict:
    """Time `ReplayBuffer.open` of a store of ~`big_frames` frames (episodes repeated), and its chunk check."""
    buffer = ReplayBuffer.create(path, overwrite=True)
    while buffer.n_steps < big_frames:
        for episode in episodes:
            buffer.add_episode(episode)
    open_s = best_time(lambda: ReplayBuffer.open(path), repeat)
    pixels = zarr.open_group(str(path), mode="r")["data/pixels"]
    check_s = best_time(lambda: check_chunks_stored("pixels", pixels, buffer.n_steps), repeat)
    return {"frames": buffer.n_steps, "pixel_chunks": -(-buffer.n_steps // pixels.chunks[0]),
            "open_s": open_s, "check_pixels_s": check_s}


def float_then_crop(images: torch.Tensor) -> torch.Tensor:
    """`(B, To, H, W, C)` uint8 -> `(B*To, C, h, w)` float in [0, 1]: scale, then crop (as specified)."""
    return random_crop(images.flatten(0, 1).permute(0, 3, 1, 2).float().div_(255), CROP)


def crop_then_float(images: torch.Tensor) -> torch.Tensor:
    """The same result with the crop on uint8 first, so only the kept 84x84 pixels are converted."""
    return random_crop(images.flatten(0, 1).permute(0, 3, 1, 2), CROP).float().div_(255)


def prepare_batches(batches: Iterator[dict], prepare: Callable, n_batches: int) -> None:
    """Draw `n_batches` batches and `prepare` the images of each."""
    for _ in range(n_batches):
        prepare(next(batches)["obs"]["pixels"])


def loader_rates(dataset: SequenceDataset, n_batches: int, repeat: int) -> dict[str, float]:
    """Samples/s of the loader plus each way of preparing its images, for 0, 1 and 2 workers.

    Rounds run every case once (best of `repeat` rounds); the first batch of each run is not timed.
    """
    cases = {f"{prepare.__name__} workers={workers}": (prepare, DataLoader(
        dataset, batch_size=64, shuffle=True, num_workers=workers, drop_last=True, persistent_workers=workers > 0))
        for prepare in (float_then_crop, crop_then_float) for workers in (0, 1, 2)}
    best = dict.fromkeys(cases, 0.0)
    for _ in range(repeat):
        for name, (prepare, loader) in cases.items():
            batches = iter(loader)
            next(batches)  # worker start-up and first fill are not steady-state throughput
            elapsed = timed(prepare_batches, batches, prepare, n_batches)
            best[name] = max(best[name], n_batches * 64 / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=20, help="episodes of --length frames")
    parser.add_argument("--length", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is kept")
    parser.add_argument("--big-frames", type=int, default=25_000, help="store size for the open check")
    parser.add_argument("--batches", type=int, default=40, help="loader batches per run")
    parser.add_argument("--quick", action="store_true", help="4 episodes, 5 batches, 1 run, 3000-frame open check")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/images.json"))
    args = parser.parse_args()
    if args.quick:
        args.episodes, args.batches, args.repeat, args.big_frames = 4, 5, 1, 3000
    rng = np.random.default_rng(0)
    episodes = [make_episode(rng, args.length) for _ in range(args.episodes)]
    report: dict = {"frames": args.episodes * args.length, "frame_shape": [SIZE, SIZE, 3], "repeat": args.repeat}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        report["storage"] = storage_sweep([e["pixels"] for e in episodes], directory, args.repeat, n_windows=500)
        for case in report["storage"]:
            print({k: round(v, 2) if isinstance(v, float) else v for k, v in case.items()})
        report.update(recording_and_reading(episodes, directory / "buffer.zarr", args.repeat, n_items=500))
        report["open_check"] = open_check(episodes, directory / "big.zarr", args.big_frames, args.repeat)
        dataset = SequenceDataset(ReplayBuffer.open(directory / "buffer.zarr"), ["pixels", "agent_pos"],
                                  horizon=16, n_obs_steps=2, n_action_steps=8)
        report["loader_samples_per_s"] = loader_rates(dataset, args.batches, args.repeat)
    for name in ("recording", "reading", "open_check", "loader_samples_per_s"):
        print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in report[name].items()})
    report.update(machine=platform.processor() or platform.machine(), cpus=len(os.sched_getaffinity(0)),
                  torch_threads=torch.get_num_threads(), date=time.strftime("%Y-%m-%d"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
