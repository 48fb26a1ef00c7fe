"""Record scripted-expert Push-T demos into the exact layout of the original Diffusion Policy replay.

The original `pusht_cchi_v7_replay.zarr` (Chi et al.) is a Zarr v2 store with::

    data/img        (N, 96, 96, 3) float32 holding 0..255
    data/state      (N, 5)  float32  agent x, y, block x, y, block angle
    data/keypoint   (N, 9, 2) float32  the block's keypoints
    data/action     (N, 2)  float32  agent target
    data/n_contacts (N, 1)  float32
    meta/episode_ends (n_episodes,) int64, chunked (208,)

every data array chunked by 161 steps along time, Blosc zstd level 5 with bit-shuffle. This script
writes such a store from `diffusion_policy/PushT-v0` (block pose read from the simulator, keypoints
from `envs.pusht_geometry`; `n_contacts` is written as zeros, nothing here reads it), so the path from
an original-layout store to an evaluated policy can be run and tested without downloading one:

    python scripts/make_original_pusht_store.py --episodes 200 --out data/pusht_original_layout.zarr

Train on it with `task=pusht_original_lowdim` or `task=pusht_original_image` (configs/task/).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numcodecs
import numpy as np
import zarr
from tqdm.auto import tqdm

import envs  # noqa: F401  (registers the environments)
from diffusion_policy.core.checkpoint import atomic_directory
from diffusion_policy.data.recorder import rollout_episode
from envs.experts import make_expert
from envs.pusht_geometry import keypoints

ENV_ID = "diffusion_policy/PushT-v0"
CHUNK_STEPS = 161
ENDS_CHUNK = 208
COMPRESSOR = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)


class WithBlockPose(gym.ObservationWrapper):
    """Adds the simulator's block pose `(3,)` (origin x, y, angle) to each pixel observation."""

    def observation(self, observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**observation, "block_pose": np.asarray(self.env.unwrapped.block_pose, dtype=np.float32)}


def original_episode(episode: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A recorded episode (`pixels`, `agent_pos`, `block_pose`, `action`) in the original's keys and dtypes."""
    pose = episode["block_pose"]
    return {
        "img": episode["pixels"].astype(np.float32),
        "state": np.concatenate([episode["agent_pos"], pose], axis=1).astype(np.float32),
        "keypoint": np.stack([keypoints(p) for p in pose]).astype(np.float32),
        "action": episode["action"].astype(np.float32),
        "n_contacts": np.zeros((len(pose), 1), np.float32),
    }


def write_store(episodes: list[dict[str, np.ndarray]], out: Path) -> None:
    """Write `episodes` as an original-layout Zarr v2 store at `out` (built aside, then renamed into place)."""
    data = {key: np.concatenate([e[key] for e in episodes]) for key in episodes[0]}
    ends = np.cumsum([len(e["action"]) for e in episodes]).astype(np.int64)
    with atomic_directory(out) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        group = root.require_group("data")
        for key, values in data.items():
            # Every chunk is written, zeros too, as zarr 2 did when the original was made.
            array = group.create_array(key, shape=values.shape, dtype=values.dtype, compressors=COMPRESSOR,
                                       chunks=(CHUNK_STEPS, *values.shape[1:]), config={"write_empty_chunks": True})
            array[:] = values
        meta = root.require_group("meta")
        meta.create_array("episode_ends", shape=ends.shape, dtype=ends.dtype, compressors=COMPRESSOR,
                          chunks=(ENDS_CHUNK,))[:] = ends


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0, help="episode i uses seed + i (as generate_demos.py)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes {args.episodes} must be >= 1")
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    env = WithBlockPose(gym.make(ENV_ID, obs_type="pixels_agent_pos"))
    expert = make_expert(ENV_ID, args.seed)
    episodes, wins = [], 0
    try:
        for i in tqdm(range(args.episodes), desc="episodes", unit="ep"):
            episode, success = rollout_episode(env, expert, args.seed + i)
            if success:  # as generate_demos.py stores them: the same seeds give the same episodes
                episodes.append(original_episode(episode))
            wins += success
    finally:
        env.close()
    if not episodes:
        raise SystemExit(f"none of {args.episodes} expert episodes succeeded; nothing written")
    write_store(episodes, args.out)
    steps = sum(len(e["action"]) for e in episodes)
    print(f"{args.out}: {len(episodes)} episodes, {steps} steps, expert success {wins / args.episodes:.0%}")


if __name__ == "__main__":
    main()
