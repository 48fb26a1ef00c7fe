r"""Load test of the policy server on loopback: many clients, CURVE on and off, one greedy client.

    python scripts/benchmark_server_load.py                      # 8 clients x 200 requests per case
    python scripts/benchmark_server_load.py --clients 2 --requests 10 --out /tmp/load.json   # smoke run

The server runs `scripts/serve_policy.py` in its own process on a saved policy: the `make demo`
Push-T network (diffusion_unet_small, obs agent_pos (2,) + keypoints (18,), horizon 16, DDIM 10)
with random weights, since the cost of a request does not depend on what the weights learned.
Every case is bounded in count (`--requests` per client) and time (`--max-seconds`).

Cases:
- `plain` / `curve`: every client sends plain requests, without and with CURVE keys;
- `curve_greedy_candidates` / `curve_greedy_guidance`: one client sends the most expensive request
  the server allows (`candidates` = its max_candidates, or pseudo-inverse guidance) back to back,
  the others plain requests. The deadline is met when the plain clients' p99 stays under the
  server's `deadline_s` (requests that waited longer get a `DeadlineExceeded` error, counted).

Per case: throughput (replies/s), the plain clients' latency p50 / p99 / max, errors by type, the
greedy client's latency, and the server's resident memory before and after. Writes
`benchmarks/server_load.json`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zmq

from diffusion_policy.config_utils import from_dict
from diffusion_policy.core.cpu_features import cpu_model
from diffusion_policy.data.normalizer import Normalizer
from diffusion_policy.deploy.client import PolicyClient, RemotePolicyError
from diffusion_policy.deploy.keys import ClientKeys, generate_keypair
from diffusion_policy.deploy.predictor import ChunkRequest, PolicySpec
from diffusion_policy.deploy.server import ServerLimits
from diffusion_policy.policy import DiffusionPolicy, DiffusionPolicyConfig

ROOT = Path(__file__).resolve().parents[1]
OBS = {"agent_pos": (2,), "keypoints": (18,)}
NETWORK = {"down_dims": [32, 64, 128], "kernel_size": 5, "n_groups": 8, "step_embed_dim": 32}


def save_policy(directory: Path) -> PolicySpec:
    """The demo-sized Push-T policy with random weights, saved to `directory`."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = from_dict(DiffusionPolicyConfig, {"obs_shapes": OBS, "action_dim": 2, "network": NETWORK})
    stats = {key: rng.uniform(0, 512, (100, *shape)) for key, shape in OBS.items()}
    DiffusionPolicy(config, Normalizer.fit(stats | {"action": rng.uniform(0, 512, (100, 2))})).save(directory)
    return PolicySpec(OBS, 2, config.n_obs_steps, config.horizon, config.n_action_steps)


def make_keys(directory: Path) -> tuple[list[str], ClientKeys]:
    """Server flags and the client's keys for a CURVE run (one client key pair shared by every client)."""
    generate_keypair(directory / "server", "server")
    generate_keypair(directory / "client", "client")
    allowed = directory / "allowed"
    allowed.mkdir()
    (allowed / "client.key").write_bytes((directory / "client" / "client.key").read_bytes())
    flags = ["--server-key", str(directory / "server" / "server.key_secret"), "--allowed-clients", str(allowed)]
    return flags, ClientKeys(directory / "client" / "client.key_secret", directory / "server" / "server.key")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def requests(spec: PolicySpec, limits: ServerLimits) -> dict[str, ChunkRequest]:
    rng = np.random.default_rng(1)
    obs = {key: rng.uniform(0, 512, (spec.n_obs_steps, *shape)).astype(np.float32)
           for key, shape in spec.obs_shapes.items()}
    prefix = rng.uniform(0, 512, (6, spec.action_dim)).astype(np.float32)
    weights = np.linspace(1, 0, 6, dtype=np.float32)
    return {"plain": ChunkRequest(obs, seed=0),
            "candidates": ChunkRequest(obs, prefix, weights, seed=0, candidates=limits.max_candidates),
            "guidance": ChunkRequest(obs, prefix, weights, seed=0, prefix_guidance=100.0)}


def client_loop(address: str, keys: ClientKeys | None, request: ChunkRequest, n: int, stop_at: float,
                out: dict[str, Any]) -> None:
    latencies, errors = [], Counter()
    with PolicyClient(address, timeout_s=30.0, keys=keys) as client:
        for _ in range(n):
            if time.monotonic() > stop_at:
                break
            start = time.perf_counter()
            try:
                client.predict(request)
                latencies.append((time.perf_counter() - start) * 1e3)
            except (RemotePolicyError, TimeoutError) as exc:
                errors[str(exc).split(": ")[1] if ": " in str(exc) else type(exc).__name__] += 1
    out.update(latencies=latencies, errors=errors)


def run_case(policy_dir: Path, key_flags: list[str], keys: ClientKeys | None, kinds: list[str],
             spec: PolicySpec, args: argparse.Namespace) -> dict[str, Any]:
    """One server process, `len(kinds)` client threads each sending its kind of request."""
    server = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "serve_policy.py"), "--policy", str(policy_dir),
                               "--address", "tcp://127.0.0.1:0", *key_flags], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        address = server.stdout.readline().split()[-1]  # "serving <policy> on <bound endpoint>"
        limits = ServerLimits()
        by_kind = requests(spec, limits)
        with PolicyClient(address, timeout_s=60.0, keys=keys) as warm:
            for _ in range(5):
                warm.predict(by_kind["plain"])
        rss_before = rss_mib(server.pid)
        results = [{} for _ in kinds]
        stop_at = time.monotonic() + args.max_seconds
        threads = [threading.Thread(target=client_loop, args=(address, keys, by_kind[kind], args.requests, stop_at, r))
                   for kind, r in zip(kinds, results)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        rss_after = rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(10)
    plain = [x for kind, r in zip(kinds, results) if kind == "plain" for x in r["latencies"]]
    greedy = [x for kind, r in zip(kinds, results) if kind != "plain" for x in r["latencies"]]
    errors = sum((r["errors"] for r in results), Counter())
    replies = sum(len(r["latencies"]) for r in results) + sum(errors.values())
    return {
        "clients": len(kinds), "requests_per_client": args.requests, "curve": keys is not None,
        "greedy_kind": next((k for k in kinds if k != "plain"), None),
        "seconds": elapsed, "replies": replies, "replies_per_s": replies / elapsed,
        "plain_ok": len(plain), "plain_p50_ms": _pct(plain, 50), "plain_p99_ms": _pct(plain, 99),
        "plain_max_ms": max(plain, default=float("nan")),
        "greedy_ok": len(greedy), "greedy_p50_ms": _pct(greedy, 50), "errors": dict(errors),
        "deadline_s": limits.deadline_s, "plain_p99_under_deadline": _pct(plain, 99) < limits.deadline_s * 1e3,
        "server_rss_mib_before": rss_before, "server_rss_mib_after": rss_after,
    }


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="requests per client")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="time bound of each case")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "server_load.json")
    args = parser.parse_args(argv)
    machine = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu_model(),
               "platform": platform.platform(), "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
               "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    plain = ["plain"] * args.clients
    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = save_policy(tmp / "policy")
        key_flags, keys = make_keys(tmp / "keys")
        for name, flags, client_keys, kinds in [
            ("plain", [], None, plain),
            ("curve", key_flags, keys, plain),
            ("curve_greedy_candidates", key_flags, keys, ["candidates"] + plain[1:]),
            ("curve_greedy_guidance", key_flags, keys, ["guidance"] + plain[1:]),
        ]:
            cases[name] = run_case(tmp / "policy", flags, client_keys, kinds, spec, args)
            c = cases[name]
            print(f"{name:24} {c['replies_per_s']:7.1f} replies/s  plain p50 {c['plain_p50_ms']:7.1f} ms  "
                  f"p99 {c['plain_p99_ms']:7.1f} ms  errors {c['errors']}  RSS {c['server_rss_mib_before']:.0f}"
                  f" -> {c['server_rss_mib_after']:.0f} MiB", flush=True)
    command = " ".join(["python scripts/benchmark_server_load.py", *(sys.argv[1:] if argv is None else argv)])
    report = {"machine": machine, "command": command, "limits": asdict(ServerLimits()), "cases": cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
