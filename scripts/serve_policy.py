r"""Serve a saved policy over ZeroMQ, for a controller loop on another machine (`run_robot.py --server`).

On this machine only (loopback, the default address):
    python scripts/serve_policy.py --policy runs/demo/pusht/policy

For robots on the network, with CURVE keys (scripts/policy_keys.py says how to make them):
    python scripts/serve_policy.py --policy runs/demo/pusht/policy --address tcp://0.0.0.0:5555 \
        --server-key keys/server/server.key_secret --allowed-clients keys/allowed

A non-loopback address without keys is refused unless --insecure is given.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from diffusion_policy.core.trainer import resolve_device
from diffusion_policy.deploy.keys import ServerKeys
from diffusion_policy.deploy.predictor import LocalPredictor
from diffusion_policy.deploy.server import PolicyServer, ServerLimits
from diffusion_policy.eval.run_dir import resolve_policy_dir
from diffusion_policy.policy import DiffusionPolicy, load_policy
from diffusion_policy.policy.diffusion_policy import INFERENCE_MODES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, type=Path, help="policy directory or training run directory")
    parser.add_argument("--address", default="tcp://127.0.0.1:5555", help="ZeroMQ endpoint to bind")
    parser.add_argument("--device", default="auto", help="torch device (auto: CUDA if available)")
    parser.add_argument("--inference", choices=INFERENCE_MODES, default="auto", help="diffusion sampling path")
    parser.add_argument("--server-key", type=Path, help="this server's CURVE .key_secret file")
    parser.add_argument("--allowed-clients", type=Path, help="directory of the allowed clients' .key files")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback address without keys (no authentication, no encryption)")
    defaults = ServerLimits()
    parser.add_argument("--max-candidates", type=int, default=defaults.max_candidates,
                        help="largest 'candidates' a request may ask for")
    parser.add_argument("--no-guidance", action="store_true", help="refuse prefix_guidance requests")
    parser.add_argument("--deadline", type=float, default=defaults.deadline_s,
                        help="seconds a request may wait for the policy before it gets an error")
    parser.add_argument("--per-client", type=int, default=defaults.per_client,
                        help="requests one client may have waiting")
    args = parser.parse_args(argv)
    if (args.server_key is None) != (args.allowed_clients is None):
        parser.error("--server-key and --allowed-clients go together")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    policy = load_policy(resolve_policy_dir(args.policy), resolve_device(args.device))
    if isinstance(policy, DiffusionPolicy):
        policy.inference = args.inference
    keys = ServerKeys(args.server_key, args.allowed_clients) if args.server_key is not None else None
    limits = ServerLimits(args.max_candidates, not args.no_guidance, args.deadline, args.per_client)
    try:
        server = PolicyServer(LocalPredictor(policy), args.address, limits=limits, keys=keys, insecure=args.insecure)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"serve_policy.py: {exc}") from None
    with server:
        print(f"serving {args.policy} on {server.address}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
