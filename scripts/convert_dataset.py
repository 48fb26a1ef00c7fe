"""Convert demonstrations from another format into this package's Zarr store.

    python scripts/convert_dataset.py --from robomimic demo.hdf5 --out data/lift.zarr
    python scripts/convert_dataset.py --from zarr pusht_cchi_v7_replay.zarr --out data/pusht_dp.zarr

`robomimic`: an HDF5 file in robomimic's layout (obs keys keep their names; `actions` -> `action`,
`rewards` -> `reward`, `dones` -> `done`; `env_args` and the `mask/` filter keys are kept, and the
`train` / `valid` masks split training). `zarr`: a store in the original Diffusion Policy layout
(directory or `.zarr.zip`); float images become uint8, everything else keeps its values. An original
store also trains without conversion, through an observation mapping (docs/bring_your_own_data.md).

The store is written to a temporary directory and renamed at the end: a failed or interrupted
conversion leaves nothing at --out, and an existing store is replaced only with --overwrite.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from diffusion_policy.data.formats.convert import convert
from diffusion_policy.data.formats.dp_zarr import DPZarrSource
from diffusion_policy.data.formats.robomimic import RobomimicSource

READERS = {"robomimic": RobomimicSource, "zarr": DPZarrSource}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="fmt", choices=sorted(READERS), required=True, help="format of SRC")
    parser.add_argument("src", type=Path, help="the dataset to convert")
    parser.add_argument("--out", type=Path, required=True, help="the Zarr store to write (DST.zarr)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    parser.add_argument("--summary-json", type=Path, default=None, help="also write the summary as JSON")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it")
    source = READERS[args.fmt](args.src)
    try:
        summary = convert(source, args.out, overwrite=args.overwrite, progress=not args.no_progress)
    finally:
        source.close()
    print(summary.table())
    if args.summary_json is not None:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_text(json.dumps(summary.to_dict(), indent=2) + "\n")


if __name__ == "__main__":
    main()
