"""Our policy beside LeRobot's DiffusionPolicy, same shapes, timed interleaved in one process.

    python scripts/benchmark_lerobot.py            # CPU, 2 threads -> benchmarks/lerobot_cpu.json

Shapes (LeRobot's Push-T keypoints task): 2-d `observation.state` + 16-d
`observation.environment_state`, 2 observation steps, horizon 16, 2-d actions, U-Net down_dims
[256, 512, 1024], 10 DDIM steps. Our policy gets the same 18 numbers per observation step as one key.

Cases, each timed A, B, C, ... interleaved after warm-up (`scripts/benchmark.py`'s harness):
Ratios are LeRobot's p50 over ours: `ratio` (chunk: LeRobot / ours as chosen), `ratio_fp32` and
`ratio_bf16` (training: LeRobot float32 / our float32 default, LeRobot `use_amp` / our bf16).

- `ddim10_chunk_b1`: one 10-step DDIM chunk at batch 1. LeRobot: `policy.diffusion.generate_actions`
  (its processors normalise outside the policy); ours: `predict_action` eager (plain `nn.Conv1d`,
  float32) and as `inference="auto"` picks on this CPU (normalisation included in both of ours).
- `train_step_b64`: loss, backward, gradient clipping at 10 and the optimizer step at batch 64.
  LeRobot: its own optimizer preset (`torch.optim.Adam`, lr 1e-4, betas (0.95, 0.999), weight decay
  1e-6) in float32, and with `use_amp` (bf16 autocast on CPU); ours: eager (plain convolutions,
  foreach AdamW), the trainer's float32 default and `training.mixed_precision=bf16`.

`lerobot` is not a dependency. The script needs a Python where both packages import, e.g.

    pip install lerobot==0.4.4 && pip install -e .       # with a torch that lerobot accepts (< 2.11)

On this project's machines torch is 2.13 (lerobot 0.4.4 pins torch < 2.11), so the numbers in
`benchmarks/lerobot_cpu.json` came from a throwaway venv with lerobot installed `--no-deps` beside
torch 2.13.0 (its exact recipe: tests/fixtures/lerobot/make_fixture.py), plus `diffusers==0.35.2`
and `pyserial` (imported by lerobot's policy package) and this package with `pip install --no-deps -e .`
(and `zarr`, `numcodecs`).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import (  # noqa: E402  (the sibling script's harness)
    ACTION_DIM,
    HORIZON,
    N_OBS_STEPS,
    batch_of,
    machine_info,
    make_policy,
    side_by_side,
    synthetic_dataset,
    training_step,
    with_plain_convolutions,
)

from diffusion_policy.core.cpu_malloc import keep_freed_memory  # noqa: E402

STATE_DIM, ENV_STATE_DIM = 2, 16
DOWN_DIMS = (256, 512, 1024)
INSTALL_HINT = ("lerobot is not importable in this Python. Install it beside this package "
                "(`pip install lerobot==0.4.4`, which needs torch < 2.11), or see this script's docstring "
                "for the no-deps venv the committed numbers came from.")


def lerobot_policy() -> nn.Module:
    """LeRobot's DiffusionPolicy for the keypoint Push-T shapes, with 10 DDIM inference steps."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy as LeRobotDiffusionPolicy

    config = DiffusionConfig(
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,)),
                        "observation.environment_state": PolicyFeature(FeatureType.ENV, (ENV_STATE_DIM,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
        n_obs_steps=N_OBS_STEPS, horizon=HORIZON, n_action_steps=8, down_dims=DOWN_DIMS,
        noise_scheduler_type="DDIM", num_inference_steps=10, device="cpu")
    torch.manual_seed(0)
    return LeRobotDiffusionPolicy(config)


def lerobot_batch(size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A normalised-looking LeRobot training batch: observations (B, 2, ·), actions (B, 16, 2)."""
    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)
    return {"observation.state": normal(size, N_OBS_STEPS, STATE_DIM),
            "observation.environment_state": normal(size, N_OBS_STEPS, ENV_STATE_DIM),
            "action": normal(size, HORIZON, ACTION_DIM).clamp(-1, 1),
            "action_is_pad": torch.zeros(size, HORIZON, dtype=torch.bool)}


def chunk_case(reps: int) -> dict:
    theirs = lerobot_policy().eval()
    obs = {k: v for k, v in lerobot_batch(1, torch.Generator().manual_seed(0)).items() if k.startswith("observation")}
    ours = make_policy(synthetic_dataset(STATE_DIM + ENV_STATE_DIM, n_episodes=20), DOWN_DIMS, torch.device("cpu"))
    ours.eval()
    plain = with_plain_convolutions(ours)
    plain.inference = "eager"
    ours.inference = "auto"
    our_obs = {"obs": torch.cat([obs["observation.state"], obs["observation.environment_state"]], -1) * 100 + 256}

    def lerobot_chunk() -> None:
        with torch.no_grad():
            theirs.diffusion.generate_actions(obs)

    result = side_by_side({"lerobot": lerobot_chunk, "ours_eager": lambda: plain.predict_action(our_obs),
                           "ours": lambda: ours.predict_action(our_obs)}, 2, reps, lambda: None)
    result["ours_dtype"] = str(ours.frozen_network().dtype)
    result["parameters"] = {"lerobot": sum(p.numel() for p in theirs.parameters()),
                            "ours": sum(p.numel() for p in ours.network.parameters())}
    return result


def train_case(batch_size: int, reps: int) -> dict:
    theirs = lerobot_policy().train()
    theirs_amp = copy.deepcopy(theirs)
    their_batch = lerobot_batch(batch_size, torch.Generator().manual_seed(0))
    dataset = synthetic_dataset(STATE_DIM + ENV_STATE_DIM)
    our_batch = batch_of(dataset, batch_size, torch.device("cpu"))
    fast = make_policy(dataset, DOWN_DIMS, torch.device("cpu")).train()
    fp32 = copy.deepcopy(fast)
    eager = with_plain_convolutions(fast)

    def lerobot_step(policy: nn.Module, amp: bool) -> Callable[[], None]:
        preset = policy.config.get_optimizer_preset()
        optimizer = preset.build(policy.get_optim_params())

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss, _ = policy.forward(their_batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), preset.grad_clip_norm)
            optimizer.step()
        return step

    def our_step(policy: nn.Module, fused: bool, bf16: bool) -> Callable[[], None]:
        return training_step(policy, our_batch, torch.device("cpu"), fused, bf16)

    paths = {"lerobot": lerobot_step(theirs, False), "lerobot_amp_bf16": lerobot_step(theirs_amp, True),
             "ours_eager": our_step(eager, False, False), "ours_fp32": our_step(fp32, True, False),
             "ours_bf16": our_step(fast, True, True)}
    result = side_by_side(paths, 1, reps, lambda: None)
    for path in paths:
        result[path]["samples_per_s"] = batch_size / result[path]["p50_ms"] * 1e3
    del result["ratio"]
    result["ratio_fp32"] = result["lerobot"]["p50_ms"] / result["ours_fp32"]["p50_ms"]
    result["ratio_bf16"] = result["lerobot_amp_bf16"]["p50_ms"] / result["ours_bf16"]["p50_ms"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/lerobot_cpu.json"))
    args = parser.parse_args()
    try:
        import lerobot
    except ImportError:
        raise SystemExit(INSTALL_HINT) from None
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    reps = 5 if args.quick else 30
    results = {"ddim10_chunk_b1": chunk_case(reps), "train_step_b64": train_case(64, max(3, reps // 3))}
    machine = {**machine_info(torch.device("cpu")), "lerobot": getattr(lerobot, "__version__", "unknown"),
               "numpy": np.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    for name, case in results.items():
        cells = "  ".join(f"{p} {v['p50_ms']:.1f} ms" for p, v in case.items() if isinstance(v, dict) and "p50_ms" in v)
        print(f"{name:<17} {cells}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
