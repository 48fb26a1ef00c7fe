r"""Serve a saved policy over ZeroMQ, for a controller loop on another machine (`run_robot.py --server`).

Example:
    python scripts/serve_policy.py --policy runs/demo/pusht/policy --address tcp://0.0.0.0:5555
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from diffusion_policy.core.trainer import resolve_device
from diffusion_policy.deploy.predictor import LocalPredictor
from diffusion_policy.deploy.server import PolicyServer
from diffusion_policy.eval.run_dir import resolve_policy_dir
from diffusion_policy.policy import DiffusionPolicy, load_policy
from diffusion_policy.policy.diffusion_policy import INFERENCE_MODES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, type=Path, help="policy directory or training run directory")
    parser.add_argument("--address", default="tcp://127.0.0.1:5555", help="ZeroMQ endpoint to bind")
    parser.add_argument("--device", default="auto", help="torch device (auto: CUDA if available)")
    parser.add_argument("--inference", choices=INFERENCE_MODES, default="auto", help="diffusion sampling path")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    policy = load_policy(resolve_policy_dir(args.policy), resolve_device(args.device))
    if isinstance(policy, DiffusionPolicy):
        policy.inference = args.inference
    with PolicyServer(LocalPredictor(policy), args.address) as server:
        print(f"serving {args.policy} on {server.address}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
