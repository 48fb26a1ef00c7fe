"""Train a policy: `python scripts/train.py task=pusht [policy=diffusion_unet_small] [training=pusht_demo]`.

A task must be named; the policy and training default to the `make demo` recipe (9-18 minutes
on 2 CPU cores). Every option can be overridden on the command line (e.g. `training.max_steps=2000
policy.horizon=32`); `--cfg job` prints the composed config, `--hydra-help` hydra's own options.
The run directory holds the resolved config, checkpoints, metrics and the final `policy/` directory,
and (with evaluation on, `configs/eval/`) `eval/` results and the best-scoring `best_policy/`;
`resume=true run_dir=<dir>` continues an interrupted run exactly.

Several processes (docs/distributed.md): `torchrun --nproc_per_node=N scripts/train.py task=...`;
`training.batch_size` is then the global batch, split across the N processes (and
`training.grad_accum` micro-batches each).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from diffusion_policy.core.distributed import is_main_process
from diffusion_policy.eval.callback import BEST_POLICY_DIR
from diffusion_policy.train_policy import train_policy

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ("task", "policy", "training", "eval")


def print_help() -> None:
    """The docstring and the options of this script's config groups (hydra's --help would list the
    image baselines' groups too, which live in the same directory)."""
    print(__doc__)
    print("Config groups (group=option):")
    for group in GROUPS:
        print(f"  {group}: {', '.join(sorted(p.stem for p in (CONFIGS / group).glob('*.yaml')))}")


@hydra.main(config_path="../configs", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    run_dir = Path(cfg.run_dir)
    main_process = is_main_process()
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    plain = OmegaConf.to_container(cfg, resolve=True)
    policy_dir = train_policy(plain["task"], plain["policy"], plain["training"], run_dir, resume=cfg.resume,
                              eval_cfg=plain.get("eval"))
    if not main_process:
        return
    print(f"policy saved to {policy_dir}")
    if (run_dir / BEST_POLICY_DIR).is_dir():
        print(f"best evaluated policy in {run_dir / BEST_POLICY_DIR}")


if __name__ == "__main__":
    if {"--help", "-h"} & set(sys.argv[1:]):
        print_help()
    else:
        main()
