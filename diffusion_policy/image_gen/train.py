"""The image-training workflow: data config + model config + trainer config -> a saved image model.

The very same :class:`~diffusion_policy.core.trainer.Trainer` that trains policies trains the image
model: `scripts/train_image.py` feeds it hydra's composed config; tests call it with plain dicts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusion_policy.config_utils import from_dict, to_dict
from diffusion_policy.core.checkpoint import save_json
from diffusion_policy.core.distributed import restart_count
from diffusion_policy.core.trainer import Trainer, TrainerConfig
from diffusion_policy.image_gen.data import load_image_dataset
from diffusion_policy.image_gen.model import ImageDiffusionModel, ImageModelConfig

MODEL_DIR = "model"
SUMMARY_FILE = "train_summary.json"


@dataclass
class ImageDataConfig:
    """Which images to train on; `val_limit` test images give the validation loss."""

    name: str = "fashion_mnist"
    train_limit: int | None = None
    val_limit: int | None = 1000

    def __post_init__(self) -> None:
        for name in ("train_limit", "val_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} must be >= 1 (or None: all)")


def train_image_model(
    data_cfg: Mapping[str, Any],
    model_cfg: Mapping[str, Any],
    trainer_cfg: Mapping[str, Any],
    run_dir: str | Path,
    resume: bool = False,
) -> Path:
    """Train an image model; save its EMA weights to `<run_dir>/model` and return that path.

    `<run_dir>/train_summary.json` records the network, its parameter count, the steps trained and
    the wall-clock minutes, so runs can be compared at equal training time.
    """
    data = from_dict(ImageDataConfig, data_cfg)
    config = from_dict(ImageModelConfig, model_cfg)
    trainer_config = from_dict(TrainerConfig, trainer_cfg)
    train = load_image_dataset(data.name, "train", config.image_size, data.train_limit)
    val = load_image_dataset(data.name, "test", config.image_size, data.val_limit)
    if config.num_classes is not None and config.num_classes != train.num_classes:
        raise ValueError(f"num_classes={config.num_classes} but dataset {data.name!r} has {train.num_classes}")
    if config.in_channels != train.images.shape[1]:
        raise ValueError(f"in_channels={config.in_channels} but dataset {data.name!r} images have "
                         f"{train.images.shape[1]} channel(s)")
    model = ImageDiffusionModel(config)
    log_config = {"data": to_dict(data), "model": to_dict(config), "training": to_dict(trainer_config)}
    trainer = Trainer(model, train, trainer_config, run_dir, val_dataset=val, log_config=log_config)
    if resume or restart_count() > 0:  # torchrun --max-restarts: go on from the last checkpoint
        trainer.resume()
    start_step, start = trainer.step, time.perf_counter()
    metrics = trainer.fit()
    minutes = (time.perf_counter() - start) / 60.0
    out = Path(run_dir) / MODEL_DIR
    if not trainer.dist.is_main:
        return out
    trainer.eval_model.save(out)
    save_json({
        "network": config.network,
        "parameters": sum(p.numel() for p in model.network.parameters()),
        "steps": trainer.step,
        "steps_this_session": trainer.step - start_step,
        "minutes_this_session": minutes,
        "batch_size": trainer_config.batch_size,
        "processes": trainer.dist.world_size,
        "device": str(trainer.device),
        "final_metrics": metrics,
    }, Path(run_dir) / SUMMARY_FILE)
    return out
