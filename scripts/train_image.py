"""Train an image-generation baseline: `python scripts/train_image.py [image_model=diffusers] [image_training=gpu]`.

Every option can be overridden on the command line (e.g. `image_training.max_minutes=10
image_model.unet.channels=[64,128,256]`). The run directory holds the resolved config, metrics,
checkpoints, `train_summary.json`, the EMA model in `model/` and a sample grid `samples.png`
(one row per class, DDIM 50 steps, guidance 2). `resume=true run_dir=<dir>` continues a run.
Under `torchrun --nproc_per_node=N` it trains with N processes (docs/distributed.md).
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from diffusion_policy.core.distributed import is_main_process
from diffusion_policy.image_gen.grid import save_grid
from diffusion_policy.image_gen.model import ImageDiffusionModel
from diffusion_policy.image_gen.train import train_image_model


@hydra.main(config_path="../configs", config_name="train_image", version_base=None)
def main(cfg: DictConfig) -> None:
    run_dir = Path(cfg.run_dir)
    main_process = is_main_process()
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    plain = OmegaConf.to_container(cfg, resolve=True)
    model_dir = train_image_model(plain["data"], plain["image_model"], plain["image_training"], run_dir,
                                  resume=cfg.resume)
    if not main_process:
        return
    print(f"model saved to {model_dir}")
    model = ImageDiffusionModel.load(model_dir)
    per_class = int(cfg.samples_per_class)
    if per_class > 0 and model.config.num_classes is not None:
        labels = torch.arange(model.config.num_classes).repeat_interleave(per_class)
        images = model.generate(labels, generator=torch.Generator().manual_seed(0))
        print(f"samples written to {save_grid(images, run_dir / 'samples.png', nrow=per_class)}")


if __name__ == "__main__":
    main()
