"""Loopback overhead of the policy server: what a remote policy costs beyond its own inference time.

    python scripts/benchmark_server.py               # server in a background thread of this process
    python scripts/benchmark_server.py --process     # server in its own process (the realistic setting)
    python scripts/benchmark_server.py --reps 200    # smoke run

The server holds a null predictor that returns a zero chunk at once, and each call's server-reported
`inference_s` is subtracted as well, so the numbers are transport + encoding + validation on both
sides, as the control loop sees them through `PolicyClient.predict`. Cases (To = 2, chunk (16, 2)):

- `lowdim`: obs {"agent_pos": (2,), "keypoints": (18,)} float32; target p50 and p99 <= 1 ms.
- `image`: the same plus "image": (96, 96, 3) uint8 per obs step (channel-last, as every image in the
  package); target p50 and p99 <= 5 ms.

Each case runs `--repeat` times (a fresh server each time); the reported p50 / p99 are the medians
over the repeats, with every repeat's own figures kept beside them, since one p99 over 2000 calls on
a 2-core machine moves by a few tenths of a millisecond from run to run. Results go to
`benchmarks/server.json` under `runs/<thread|process>`, so both modes share one file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from diffusion_policy.core.cpu_features import cpu_model
from diffusion_policy.deploy.client import PolicyClient
from diffusion_policy.deploy.codec import encode, pack_request
from diffusion_policy.deploy.predictor import ChunkRequest, PolicySpec
from diffusion_policy.deploy.server import PROTOCOL_VERSION, PolicyServer

LOWDIM = {"agent_pos": (2,), "keypoints": (18,)}
CASES = {
    "lowdim": (PolicySpec(LOWDIM, action_dim=2, n_obs_steps=2, horizon=16, n_action_steps=8), 1.0),
    "image": (PolicySpec(LOWDIM | {"image": (96, 96, 3)}, action_dim=2, n_obs_steps=2, horizon=16,
                         n_action_steps=8), 5.0),
}


class NullPredictor:
    """Returns a zero chunk immediately, so timings measure the transport alone."""

    def __init__(self, spec: PolicySpec) -> None:
        self.spec = spec

    def predict(self, request: ChunkRequest) -> np.ndarray:
        return np.zeros((self.spec.horizon, self.spec.action_dim), np.float32)

    def close(self) -> None:
        """Nothing to release."""


def serve_in_process(spec: dict[str, Any], addresses: multiprocessing.Queue) -> None:
    """Child process: serve a NullPredictor on a free port, report the address, serve until terminated."""
    server = PolicyServer(NullPredictor(PolicySpec.from_dict(spec)), "tcp://127.0.0.1:0")
    addresses.put(server.address)
    server.serve_forever()


def observation(spec: PolicySpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random obs `{key: (To, *shape)}`: uint8 for images (3-D shapes), float32 otherwise."""
    obs = {}
    for key, shape in spec.obs_shapes.items():
        full = (spec.n_obs_steps, *shape)
        obs[key] = (rng.integers(0, 256, full, dtype=np.uint8) if len(shape) == 3
                    else rng.normal(size=full).astype(np.float32))
    return obs


def time_calls(client: PolicyClient, request: ChunkRequest, warmup: int, reps: int) -> dict[str, Any]:
    """Overhead per call (wall time of predict minus server-side inference), in milliseconds."""
    for _ in range(warmup):
        client.predict(request)
    overhead, inference = [], []
    for _ in range(reps):
        start = time.perf_counter()
        client.predict(request)
        elapsed = time.perf_counter() - start
        overhead.append((elapsed - client.last_inference_s) * 1e3)
        inference.append(client.last_inference_s * 1e3)
    return {"p50_ms": float(np.percentile(overhead, 50)), "p99_ms": float(np.percentile(overhead, 99)),
            "mean_ms": float(np.mean(overhead)), "max_ms": float(np.max(overhead)),
            "inference_p50_ms": float(np.percentile(inference, 50)), "reps": reps}


def run_case(spec: PolicySpec, in_process: bool, warmup: int, reps: int) -> dict[str, Any]:
    request = ChunkRequest(observation(spec, np.random.default_rng(0)), seed=0)
    header, arrays = pack_request(request)
    request_bytes = sum(memoryview(f).nbytes for f in encode({"type": "predict", "id": 0, **header}, arrays))
    if in_process:
        addresses = multiprocessing.get_context("spawn").Queue()
        child = multiprocessing.get_context("spawn").Process(target=serve_in_process,
                                                              args=(spec.to_dict(), addresses), daemon=True)
        child.start()
        try:
            with PolicyClient(addresses.get(timeout=120), timeout_s=10.0, expected_spec=spec) as client:
                result = time_calls(client, request, warmup, reps)
        finally:
            child.terminate()
            child.join()
    else:
        with PolicyServer(NullPredictor(spec), "tcp://127.0.0.1:0").start_in_thread() as server:
            with PolicyClient(server.address, timeout_s=10.0, expected_spec=spec) as client:
                result = time_calls(client, request, warmup, reps)
    return result | {"request_bytes": request_bytes}


def machine_info() -> dict[str, Any]:
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "platform": platform.platform(),
            "python": platform.python_version(), "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
            "cpu": cpu_model(), "cpu_count": os.cpu_count(), "load_average_1m": os.getloadavg()[0],
            "protocol_version": PROTOCOL_VERSION}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--process", action="store_true", help="run the server in a separate (spawned) process")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each case; medians are reported")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/server.json"))
    args = parser.parse_args()
    mode = "process" if args.process else "thread"
    machine = machine_info()  # before the run, so the load average is the background's
    cases = {}
    for name, (spec, target_ms) in CASES.items():
        repeats = [run_case(spec, args.process, args.warmup, args.reps) for _ in range(args.repeat)]
        result = repeats[0] | {key: float(np.median([r[key] for r in repeats]))
                               for key in ("p50_ms", "p99_ms", "mean_ms", "max_ms", "inference_p50_ms")}
        result["repeats"] = [{"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"]} for r in repeats]
        cases[name] = result | {"target_ms": target_ms, "meets_target": result["p99_ms"] <= target_ms}
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    report["targets_ms"] = {name: target for name, (_, target) in CASES.items()}
    report.setdefault("runs", {})[mode] = {"machine": machine, "cases": cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"server in a {mode}; overhead per call excluding inference ({args.reps} calls, median of {args.repeat})")
    print(f"{'case':8} {'bytes':>7} {'p50 ms':>8} {'p99 ms':>8} {'target':>7}  ok  p99 of each run")
    for name, r in cases.items():
        each = " ".join(f"{x['p99_ms']:.2f}" for x in r["repeats"])
        print(f"{name:8} {r['request_bytes']:7d} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['target_ms']:7.1f}  "
              f"{'yes' if r['meets_target'] else 'NO '} {each}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
