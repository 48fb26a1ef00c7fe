"""Train a policy: `python scripts/train.py task=obstacle_avoid policy=diffusion_unet_small training=demo`.

Every option can be overridden on the command line (e.g. `training.max_steps=2000
policy.horizon=32`). The run directory holds the resolved config, checkpoints, metrics and the
final `policy/` directory, and (with evaluation on, `configs/eval/`) `eval/` results and the
best-scoring `best_policy/`; `resume=true run_dir=<dir>` continues an interrupted run exactly.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from diffusion_policy.eval.callback import BEST_POLICY_DIR
from diffusion_policy.train_policy import train_policy


@hydra.main(config_path="../configs", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    plain = OmegaConf.to_container(cfg, resolve=True)
    policy_dir = train_policy(plain["task"], plain["policy"], plain["training"], run_dir, resume=cfg.resume,
                              eval_cfg=plain.get("eval"))
    print(f"policy saved to {policy_dir}")
    if (run_dir / BEST_POLICY_DIR).is_dir():
        print(f"best evaluated policy in {run_dir / BEST_POLICY_DIR}")


if __name__ == "__main__":
    main()
