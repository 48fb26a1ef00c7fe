"""Convert demonstrations between other formats and this package's Zarr store.

    python scripts/convert_dataset.py --from robomimic demo.hdf5 --out data/lift.zarr
    python scripts/convert_dataset.py --from lerobot path/to/lerobot_dataset --out data/aloha.zarr
    python scripts/convert_dataset.py --from zarr pusht_cchi_v7_replay.zarr --out data/pusht_dp.zarr
    python scripts/convert_dataset.py --to lerobot data/pusht.zarr --out exports/pusht_lerobot --fps 10

`robomimic`: an HDF5 file in robomimic's layout (obs keys keep their names; `actions` -> `action`,
`rewards` -> `reward`, `dones` -> `done`; `env_args` and the `mask/` filter keys are kept, and the
`train` / `valid` masks split training). `lerobot`: a local LeRobotDataset v2.1 or v3.0 directory
(videos decoded frame-exact; `observation.state` -> `state`, `observation.images.top` -> `top`).
`zarr`: a store in the original Diffusion Policy layout (directory or `.zarr.zip`); float images
become uint8, everything else keeps its values. `--to lerobot` exports one of our stores as a
LeRobotDataset v3.0 (numbers exact, cameras as AV1 mp4). See docs/bring_your_own_data.md.

Output is written to a temporary directory and renamed at the end: a failed or interrupted
conversion leaves nothing at --out, and an existing one is replaced only with --overwrite.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from diffusion_policy.data.formats.convert import convert
from diffusion_policy.data.formats.dp_zarr import DPZarrSource
from diffusion_policy.data.formats.lerobot_read import LeRobotSource
from diffusion_policy.data.formats.lerobot_write import export_lerobot
from diffusion_policy.data.formats.robomimic import RobomimicSource
from diffusion_policy.data.formats.video import DEFAULT_CODEC
from diffusion_policy.data.replay_buffer import ReplayBuffer

READERS = {"robomimic": RobomimicSource, "lerobot": LeRobotSource, "zarr": DPZarrSource}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="fmt", choices=sorted(READERS), help="format of SRC (into a Zarr store)")
    direction.add_argument("--to", dest="to", choices=["lerobot"], help="export the Zarr store SRC to this format")
    parser.add_argument("src", type=Path, help="the dataset to convert")
    parser.add_argument("--out", type=Path, required=True, help="what to write (DST.zarr, or a LeRobot directory)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--fps", type=int, default=None, help="--to lerobot: control rate (default: the store's fps)")
    parser.add_argument("--task", default=None, help="--to lerobot: one task string for every episode")
    parser.add_argument("--codec", default=DEFAULT_CODEC, help="--to lerobot: video codec (libsvtav1 = AV1)")
    parser.add_argument("--summary-json", type=Path, default=None, help="also write the summary as JSON")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it")
    return args


def export(args: argparse.Namespace) -> dict:
    buffer = ReplayBuffer.open(args.src)
    fps = args.fps or buffer.attrs.get("fps")
    if fps is None:
        raise SystemExit(f"{args.src} records no fps; pass --fps (the control rate of its episodes)")
    if float(fps) != int(fps):
        raise SystemExit(f"fps {fps} must be a whole number for LeRobot")
    tasks = None if args.task is None else [args.task] * buffer.n_episodes
    start = time.perf_counter()
    info = export_lerobot(buffer, args.out, fps=int(fps), tasks=tasks, codec=args.codec, overwrite=args.overwrite,
                          progress=not args.no_progress)
    seconds = time.perf_counter() - start
    print(f"{args.out}: LeRobotDataset v3.0, {info['total_episodes']} episodes, {info['total_frames']} frames, "
          f"{info['fps']} fps; {seconds:.1f} s ({info['total_frames'] / seconds:,.0f} frames/s)")
    for name, feature in info["features"].items():
        print(f"  {name:<32} {feature['dtype']:<8} {feature['shape']}")
    return {"path": str(args.out), "episodes": info["total_episodes"], "steps": info["total_frames"],
            "fps": info["fps"], "seconds": seconds, "frames_per_s": info["total_frames"] / seconds,
            "features": {k: {"dtype": f["dtype"], "shape": f["shape"]} for k, f in info["features"].items()}}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.to is not None:
        summary = export(args)
    else:
        source = READERS[args.fmt](args.src)
        try:
            result = convert(source, args.out, overwrite=args.overwrite, progress=not args.no_progress)
        finally:
            source.close()
        print(result.table())
        summary = result.to_dict()
    if args.summary_json is not None:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
