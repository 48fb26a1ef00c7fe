r"""Make CURVE key pairs for the policy server and its clients (encryption plus an allow-list).

    python scripts/policy_keys.py --dir keys/server server      # on the GPU box
    python scripts/policy_keys.py --dir keys/robot robot1       # on each robot computer

Then copy `keys/robot/robot1.key` (public) into the server's allowed-clients directory and
`keys/server/server.key` (public) to the robot; secret `.key_secret` files never leave their machine.

    python scripts/serve_policy.py --policy runs/demo/pusht/policy --address tcp://0.0.0.0:5555 \
        --server-key keys/server/server.key_secret --allowed-clients keys/allowed
    python scripts/run_robot.py --policy runs/demo/pusht/policy --server tcp://gpu-box:5555 \
        --client-key keys/robot/robot1.key_secret --server-public-key keys/robot/server.key
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffusion_policy.deploy.keys import generate_keypair


def main(argv: list[str] | None = None) -> tuple[Path, Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="key pair name: writes <name>.key (public) and <name>.key_secret")
    parser.add_argument("--dir", type=Path, default=Path("keys"), help="directory to write the pair into")
    args = parser.parse_args(argv)
    public, secret = generate_keypair(args.dir, args.name)
    print(f"public key: {public}  (copy to the other side)\nsecret key: {secret}  (keep on this machine, mode 0600)")
    return public, secret


if __name__ == "__main__":
    main()
