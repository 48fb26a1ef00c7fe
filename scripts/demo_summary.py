"""What `make demo` measured, in one JSON: `python scripts/demo_summary.py [--run runs/demo/pusht]`.

Reads what the demo's stages wrote and keeps the figures README quotes:
- the demonstrations (`data/pusht.zarr`: episodes, steps, the expert's success and recording time,
  which `generate_demos.py` stores in the store's `recording` attribute);
- the training (`<run>/config.yaml`, `metrics.jsonl`, the saved `policy/`): network, parameters,
  steps, batch, epochs, minutes (`<run>/stages.txt`, the stage times the Makefile appends);
- every evaluation under `<run>` (`eval*/metrics.json`): success, its 95% Wilson interval, mean score,
  mean length, seconds;
- the whole job's minutes, set-up included (from the virtual environment's creation when the
  Makefile made it in the same run, else from the first stage).

`make demo` runs it last and writes `<run>/summary.json`; `benchmarks/make_demo.json` is a copy of
the summary of a run from a fresh clone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import safe_open

from diffusion_policy.data.replay_buffer import ReplayBuffer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import machine_info  # noqa: E402  (the sibling script's machine record)


def stage_times(run: Path) -> dict[str, float]:
    """`{stage: unix time it started}` from `<run>/stages.txt` lines `NAME UNIX_SECONDS` (`end` last)."""
    path = run / "stages.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make demo`, whose recipe writes it")
    times = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        name, _, value = line.partition(" ")
        try:
            times[name] = float(value)
        except ValueError:
            raise ValueError(f"{path}:{number}: expected 'STAGE UNIX_SECONDS', got {line!r}") from None
    return times


def parameters(policy_dir: Path) -> int:
    """Number of network parameters in a saved policy (its `network.*` tensors)."""
    files = sorted(policy_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors file in {policy_dir}")
    total = 0
    for file in files:
        with safe_open(file, "pt") as f:
            total += sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys() if k.startswith("network."))
    return total


def summarize(run: Path, demos: Path, venv: Path | None) -> dict:
    times = stage_times(run)
    missing = [s for s in ("demos", "train", "eval", "end") if s not in times]
    if missing:
        raise ValueError(f"{run / 'stages.txt'} lacks stages {missing}: did `make demo` finish?")
    buffer = ReplayBuffer.open(demos, mode="r")
    config = yaml.safe_load((run / "config.yaml").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    training = config["training"]
    steps = max(row["step"] for row in rows)
    evaluations = {p.parent.name: json.loads(p.read_text())["summary"] for p in sorted(run.glob("eval*/metrics.json"))}
    start = times["demos"]
    setup_start = None
    if venv is not None and (venv / "pyvenv.cfg").is_file():
        created = (venv / "pyvenv.cfg").stat().st_mtime
        if 0 <= start - created < 3600:  # made by this very `make demo`
            setup_start = created
    return {
        "machine": machine_info(torch.device("cpu")),
        "job_minutes": (times["end"] - (setup_start or start)) / 60,
        "setup_included": setup_start is not None,
        "setup_minutes": (start - setup_start) / 60 if setup_start is not None else None,
        "demos": {**buffer.attrs.get("recording", {}), "episodes": buffer.n_episodes, "steps": buffer.n_steps,
                  "minutes": (times["train"] - times["demos"]) / 60},
        "training": {"down_dims": config["policy"]["network"]["down_dims"], "parameters": parameters(run / "policy"),
                     "steps": steps, "batch_size": training["batch_size"], "lr": training["lr"],
                     "epochs": max(row.get("epoch", 0) for row in rows) + 1,
                     "minutes": (times["eval"] - times["train"]) / 60},
        "evaluations": evaluations,
        "eval_minutes": (times["end"] - times["eval"]) / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/demo/pusht"))
    parser.add_argument("--demos", type=Path, default=Path("data/pusht.zarr"))
    parser.add_argument("--venv", type=Path, default=Path(".venv"))
    parser.add_argument("--out", type=Path, default=None, help="default <run>/summary.json")
    args = parser.parse_args()
    summary = summarize(args.run, args.demos, args.venv)
    out = args.out or args.run / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "machine"}, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
