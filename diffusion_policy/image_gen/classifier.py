"""A small CNN classifier whose penultimate layer is the feature space of the image-quality metrics.

There is no Inception network offline, so FID/KID/precision-recall for the image baselines are measured
in the features of this classifier, trained on the same data set (see `metrics.py`). The model is small
enough to train to >= 90% test accuracy on Fashion-MNIST in a few CPU minutes, and it is cached on disk
(`load_or_train_classifier`) so every evaluation uses the very same feature extractor.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffusion_policy.core.checkpoint import load_json, load_tensors, save_json, save_tensors

WEIGHTS_FILE = "classifier.safetensors"
INFO_FILE = "classifier.json"


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of `FeatureClassifier`: three conv stages of `width * (1, 2, 4)` channels, each halving
    the resolution, then a `feature_dim` fully-connected layer and the class logits."""

    in_channels: int = 1
    image_size: int = 32
    num_classes: int = 10
    width: int = 16
    feature_dim: int = 128
    dropout: float = 0.3

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_classes", "width", "feature_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.image_size < 8 or self.image_size % 8:
            raise ValueError(f"image_size={self.image_size} must be a positive multiple of 8 (three 2x poolings)")
        if self.width % 8:
            raise ValueError(f"width={self.width} must be divisible by 8 (GroupNorm groups)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    # GroupNorm rather than BatchNorm: features must not depend on which images share a batch.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(8, c_out), nn.ReLU())


class FeatureClassifier(nn.Module):
    """CNN image classifier for `(B, C, H, W)` images in [-1, 1].

    `features(x)` returns the penultimate activations `(B, feature_dim)`; `forward(x)` the logits
    `(B, num_classes)`.
    """

    def __init__(self, config: ClassifierConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is not None and kwargs:
            raise ValueError(f"pass either a config or keyword arguments, not both (got {sorted(kwargs)})")
        self.config = config if config is not None else ClassifierConfig(**kwargs)
        cfg = self.config
        w = cfg.width
        self.trunk = nn.Sequential(
            _conv_block(cfg.in_channels, w),
            nn.MaxPool2d(2),
            _conv_block(w, 2 * w),
            _conv_block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            _conv_block(2 * w, 4 * w),
            _conv_block(4 * w, 4 * w),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = 4 * w * (cfg.image_size // 8) ** 2
        self.embed = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(flat, cfg.feature_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.feature_dim, cfg.num_classes))

    def _check(self, x: Tensor) -> None:
        cfg = self.config
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"images of shape {tuple(x.shape)} do not match (B, {', '.join(map(str, expected))})")

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations: `(B, C, H, W)` -> `(B, feature_dim)`."""
        self._check(x)
        return self.embed(self.trunk(x))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits: `(B, C, H, W)` -> `(B, num_classes)`."""
        return self.head(self.features(x))


def _check_dataset(images: Tensor, labels: Tensor) -> None:
    if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)} must be (N, C, H, W) and (N,)")
    if images.shape[0] == 0:
        raise ValueError("empty dataset: 0 images")


def random_shift_flip(x: Tensor, generator: torch.Generator, max_shift: int = 2) -> Tensor:
    """Augment `(B, C, H, W)` images: a random translation by up to `max_shift` pixels per axis and a
    horizontal flip with probability 1/2, each drawn per image.

    Borders are filled by replicating the edge pixels, which on Fashion-MNIST is the background.
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b, 1), generator=generator).to(x.device)
    rows = dy + torch.arange(h, device=x.device)
    cols = dx + torch.arange(w, device=x.device)
    flip = torch.rand(b, generator=generator).to(x.device) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indexing puts the indexed (B, H, W) dims first and the channel dim last.
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def train_classifier(
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int,
    batch_size: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    augment: bool = True,
    config: ClassifierConfig | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> FeatureClassifier:
    """Train a `FeatureClassifier` on `images (N, C, H, W)` in [-1, 1] and integer `labels (N,)`.

    AdamW with a one-cycle learning-rate schedule (peak `lr`), cross-entropy with label smoothing 0.1,
    and `random_shift_flip` augmentation when `augment`. Returns the model in eval mode.
    """
    _check_dataset(images, labels)
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs={epochs} and batch_size={batch_size} must be >= 1")
    if config is None:
        config = ClassifierConfig(
            in_channels=images.shape[1], image_size=images.shape[-1], num_classes=int(labels.max()) + 1
        )
    if labels.min() < 0 or labels.max() >= config.num_classes:
        raise ValueError(f"labels span [{labels.min()}, {labels.max()}], outside [0, {config.num_classes})")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = FeatureClassifier(config).to(device)
    steps_per_epoch = math.ceil(images.shape[0] / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    model.train()
    with tqdm(total=epochs * steps_per_epoch, desc="classifier", unit="step", disable=not progress) as bar:
        for _ in range(epochs):
            order = torch.randperm(images.shape[0], generator=generator)
            for start in range(0, images.shape[0], batch_size):
                idx = order[start : start + batch_size]
                x, y = images[idx].to(device), labels[idx].to(device)
                if augment:
                    x = random_shift_flip(x, generator)
                loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


@torch.no_grad()
def _batched(model: FeatureClassifier, images: Tensor, batch_size: int, fn: str) -> Tensor:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        run = getattr(model, fn)
        outs = [run(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs)


def extract_features(model: FeatureClassifier, images: Tensor, batch_size: int = 500) -> Tensor:
    """Penultimate-layer features `(N, feature_dim)` (float32, CPU) of `images (N, C, H, W)`, in eval mode."""
    return _batched(model, images, batch_size, "features")


def predicted_labels(model: FeatureClassifier, images: Tensor, batch_size: int = 500) -> Tensor:
    """Arg-max class `(N,)` (int64, CPU) of `images (N, C, H, W)`, in eval mode."""
    return _batched(model, images, batch_size, "forward").argmax(dim=1)


def accuracy(model: FeatureClassifier, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Fraction of `images (N, C, H, W)` whose predicted class equals `labels (N,)`."""
    _check_dataset(images, labels)
    return (predicted_labels(model, images, batch_size) == labels.cpu()).double().mean().item()


def load_or_train_classifier(
    cache_dir: str | Path,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    epochs: int = 8,
    seed: int = 0,
    *,
    augment: bool = True,
    batch_size: int = 256,
    lr: float = 3e-3,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[FeatureClassifier, dict[str, Any]]:
    """Return the classifier cached in `cache_dir`, training and caching it first if absent or if its
    recorded recipe (architecture, epochs, seed, batch size, lr, number of training images) differs.

    `train` and `test` are `(images (N, C, H, W), labels (N,))`. The info dict holds the recipe plus
    `test_accuracy` and `n_test`, and (not stored) `from_cache`: whether the weights were reloaded.
    """
    cache_dir = Path(cache_dir)
    (x_train, y_train), (x_test, y_test) = train, test
    _check_dataset(x_train, y_train)
    config = ClassifierConfig(
        in_channels=x_train.shape[1], image_size=x_train.shape[-1], num_classes=int(y_train.max()) + 1
    )
    recipe = {"config": asdict(config), "epochs": epochs, "seed": seed, "augment": augment,
              "batch_size": batch_size, "lr": lr, "n_train": int(x_train.shape[0])}
    info_path, weights_path = cache_dir / INFO_FILE, cache_dir / WEIGHTS_FILE
    if info_path.is_file() and weights_path.is_file():
        info = load_json(info_path)
        if {key: info.get(key) for key in recipe} == recipe:
            model = FeatureClassifier(config)
            model.load_state_dict(load_tensors(weights_path))
            return model.to(device).eval(), {**info, "from_cache": True}
    model = train_classifier(x_train, y_train, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, augment=augment,
                             config=config, device=device, progress=progress)
    info = {**recipe, "test_accuracy": accuracy(model, x_test, y_test), "n_test": int(x_test.shape[0])}
    # The JSON is what vouches for the weights: drop the stale one first and write the new one last, so a
    # crash in between never pairs new weights with old info or the reverse.
    info_path.unlink(missing_ok=True)
    save_tensors(model.state_dict(), weights_path)
    save_json(info, info_path)
    return model, {**info, "from_cache": False}
