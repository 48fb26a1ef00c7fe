r"""Drive the real-time simulated Push-T robot with a trained policy, locally or through a policy server.

The physics runs in wall-clock time (x --time-scale), the controller loop at 10 Hz x --time-scale,
inference in a background thread (or on the server); see docs/deploy.md. With --virtual-latency-ms
the same loop runs in virtual time instead: every chunk arrives that long after its observation,
the run is deterministic and takes only its compute time (deploy/virtual_time.py).

Examples:
    python scripts/run_robot.py --policy runs/demo/pusht/policy --episodes 10
    python scripts/run_robot.py --policy runs/demo/pusht/policy --transition rtc_soft --plot
    python scripts/run_robot.py --policy runs/demo/pusht/policy --spawn-server     # server in a subprocess
    python scripts/run_robot.py --policy runs/demo/pusht/policy --server tcp://gpu-box:5555
    python scripts/run_robot.py --policy runs/demo/pusht/policy --virtual-latency-ms 70 --episodes 100

Per episode it prints success, score and loop timing; `--out` gets `summary.json`, one
`episode_<seed>.json` run log per episode and, with --plot, `commands.png` (first episode).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from diffusion_policy.core.checkpoint import save_json
from diffusion_policy.core.trainer import resolve_device
from diffusion_policy.deploy.client import PolicyClient
from diffusion_policy.deploy.controller import ControllerConfig, ControllerLoop
from diffusion_policy.deploy.keys import ClientKeys
from diffusion_policy.deploy.plot import plot_commands
from diffusion_policy.deploy.predictor import ChunkPredictor, LocalPredictor
from diffusion_policy.deploy.run_log import RunLog, pooled_summary
from diffusion_policy.deploy.safety import SafetyConfig
from diffusion_policy.deploy.sim_robot import MujocoSimRobot
from diffusion_policy.deploy.transitions import SOFT_TRANSITIONS, TRANSITIONS
from diffusion_policy.deploy.virtual_time import LatencyWorker, VirtualClock
from diffusion_policy.deploy.worker import InferenceWorker, inference_owns_torch_threads
from diffusion_policy.eval.run_dir import resolve_policy_dir
from diffusion_policy.policy import DiffusionPolicy, load_policy
from diffusion_policy.policy.diffusion_policy import INFERENCE_MODES
from envs import PUSHT_ID

TASK_HZ = 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, type=Path, help="policy directory or training run directory")
    parser.add_argument("--env", default=PUSHT_ID, help="Gymnasium id of a real-time capable MuJoCo env")
    parser.add_argument("--episodes", type=int, default=10, help="episodes to run, one after the other")
    parser.add_argument("--seed", type=int, default=100_000, help="episode i is reset with seed + i")
    parser.add_argument("--max-steps", type=int, default=300, help="control ticks per episode (Push-T: 300)")
    parser.add_argument("--transition", choices=TRANSITIONS, default="replace", help="chunk transition (replace: the "
                        "best success measured, docs/deploy.md)")
    parser.add_argument("--soft-steps", type=int, help="rtc_soft / rtc_guided: hold only this many planned actions "
                        "after the held ones softly (default: the whole rest of the plan)")
    parser.add_argument("--guidance", type=float, default=ControllerConfig.rtc_guidance,
                        help="rtc_guided: clip of the guidance weight")
    parser.add_argument("--candidates", type=int, default=ControllerConfig.rtc_candidates,
                        help="rtc_select: chunks sampled to choose from")
    parser.add_argument("--margin", type=int, default=ControllerConfig.rtc_margin,
                        help="real-time chunking: extra ticks held beyond the recent maximum latency")
    parser.add_argument("--virtual-latency-ms", type=float, help="run in virtual time, every chunk arriving this "
                        "long after its observation (default: wall-clock time)")
    parser.add_argument("--threshold", type=int, help="request a chunk when this many actions remain "
                        "(default: after n_action_steps actions, as offline evaluation re-plans)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per wall second")
    parser.add_argument("--max-delta", type=float, help="safety: largest target change per tick (pixels)")
    parser.add_argument("--server", help="use the policy server at this ZeroMQ address instead of --policy locally")
    parser.add_argument("--spawn-server", action="store_true", help="serve --policy from a local subprocess")
    parser.add_argument("--client-key", type=Path, help="--server with CURVE: this client's .key_secret file")
    parser.add_argument("--server-public-key", type=Path, help="--server with CURVE: the server's .key file")
    parser.add_argument("--inference", choices=INFERENCE_MODES, default="auto", help="diffusion sampling path")
    parser.add_argument("--inference-threads", type=int, help="torch threads of a local policy's inference "
                        "worker (default: every CPU but one, which the control loop keeps)")
    parser.add_argument("--out", type=Path, default=Path("runs/robot"), help="output directory")
    parser.add_argument("--plot", action="store_true", help="plot commanded vs executed (first episode)")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes {args.episodes} must be >= 1")
    if args.soft_steps is not None and (args.soft_steps < 0 or args.transition not in SOFT_TRANSITIONS):
        parser.error(f"--soft-steps {args.soft_steps} needs --transition in {SOFT_TRANSITIONS} and a value >= 0")
    if args.virtual_latency_ms is not None and not args.virtual_latency_ms >= 0:
        parser.error(f"--virtual-latency-ms {args.virtual_latency_ms} must be >= 0")
    if args.server and args.spawn_server:
        parser.error("--server and --spawn-server exclude each other")
    if (args.client_key is None) != (args.server_public_key is None):
        parser.error("--client-key and --server-public-key go together")
    return args


@contextlib.contextmanager
def open_predictor(args: argparse.Namespace) -> Iterator[ChunkPredictor]:
    """The policy in-process, behind a spawned local server, or at --server."""
    if args.server is None and not args.spawn_server:
        policy = load_policy(resolve_policy_dir(args.policy), resolve_device("auto"))
        if isinstance(policy, DiffusionPolicy):
            policy.inference = args.inference
        yield LocalPredictor(policy)
        return
    server = None
    address = args.server
    if args.spawn_server:
        # Port "*": the operating system picks a free one when the server binds; the server prints it.
        server = subprocess.Popen([sys.executable, str(Path(__file__).parent / "serve_policy.py"),
                                   "--policy", str(args.policy), "--address", "tcp://127.0.0.1:*",
                                   "--inference", args.inference], stdout=subprocess.PIPE, text=True)
        line = server.stdout.readline()  # "serving <policy> on <bound address>" once the socket is bound
        if " on " not in line:
            server.kill()
            raise RuntimeError(f"the spawned policy server did not start (it printed {line!r}); run "
                               f"scripts/serve_policy.py --policy {args.policy} to see why")
        address = line.rsplit(" on ", 1)[1].strip()
    try:
        keys = ClientKeys(args.client_key, args.server_public_key) if args.client_key is not None else None
        with PolicyClient(address, timeout_s=30.0, keys=keys) as client:
            yield client
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)


def run_episode(predictor: ChunkPredictor, args: argparse.Namespace, seed: int) -> tuple[RunLog, dict]:
    config = ControllerConfig(rate_hz=TASK_HZ * args.time_scale, transition=args.transition,
                              rtc_soft_steps=args.soft_steps, rtc_guidance=args.guidance, rtc_margin=args.margin,
                              rtc_candidates=args.candidates,
                              request_threshold=args.threshold, max_ticks=args.max_steps, seed=seed,
                              record_obs_key="agent_pos", safety=SafetyConfig(max_delta=args.max_delta))
    if args.virtual_latency_ms is None:
        robot = MujocoSimRobot(args.env, seed=seed, time_scale=args.time_scale)
        loop = ControllerLoop(robot, predictor, config, worker_factory=lambda p, c: InferenceWorker(
            p, c, torch_threads=args.inference_threads))
    else:
        clock = VirtualClock()
        latency_s = args.virtual_latency_ms / 1000
        robot = MujocoSimRobot(args.env, seed=seed, time_scale=args.time_scale, clock=clock)
        loop = ControllerLoop(robot, predictor, config, clock=clock, sleep=clock.sleep,
                              worker_factory=lambda p, c: LatencyWorker(p, clock, latency_s))
    log = loop.run(stop_when=lambda: robot.success)
    return log, robot.outcome()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logs, outcomes = [], []
    # A local policy in wall-clock time computes in the worker thread; this thread then stays single-
    # threaded so that the worker's torch runs at full speed (deploy/worker.py).
    local_wall_clock = args.virtual_latency_ms is None and args.server is None and not args.spawn_server
    threads = inference_owns_torch_threads() if local_wall_clock else contextlib.nullcontext()
    with threads, open_predictor(args) as predictor:
        for i in range(args.episodes):
            seed = args.seed + i
            log, outcome = run_episode(predictor, args, seed)
            logs.append(log)
            outcomes.append(outcome)
            log.to_json(args.out / f"episode_{seed}.json")
            s = log.summary()
            print(f"episode {seed}: success={outcome['success']!s:5} score={outcome['score']:.3f} "
                  f"ticks={s['ticks']} jitter p99={s['period_jitter_ms']['p99']:.2f} ms "
                  f"latency p50={s['inference_latency_ms']['p50']:.1f} ms misses={s['deadline_misses']} "
                  f"stop={log.stop_reason}", flush=True)
            if args.plot and i == 0:
                print(f"plot: {plot_commands(log, args.out / 'commands.png', 'agent position')}")
    summary = {"success_rate": sum(o["success"] for o in outcomes) / len(outcomes),
               "mean_score": sum(o["score"] for o in outcomes) / len(outcomes),
               "episodes": outcomes, "args": {k: str(v) for k, v in vars(args).items()},
               "loop": pooled_summary(logs)}
    save_json(summary, args.out / "summary.json")
    print(json.dumps({k: summary[k] for k in ("success_rate", "mean_score", "loop")}, indent=1))
    return summary


if __name__ == "__main__":
    main()
