"""Offline quality of an image model: balanced class-conditional samples scored in a local classifier's
feature space, the real-vs-real floor, and the sampler table (quality vs steps vs seconds).

These numbers live in the feature space of our small Fashion-MNIST classifier
(:mod:`diffusion_policy.image_gen.classifier`); they are not comparable with Inception-FID.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffusion_policy.core.targets import samplers_for
from diffusion_policy.image_gen.classifier import FeatureClassifier, load_or_train_classifier
from diffusion_policy.image_gen.data import load_image_dataset
from diffusion_policy.image_gen.metrics import ImageQuality, evaluate_images
from diffusion_policy.image_gen.model import ImageDiffusionModel

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

SAMPLER_SETTINGS: tuple[tuple[str, int], ...] = (
    ("ddpm", 1000), ("ddpm", 100), ("ddim", 50), ("ddim", 20), ("ddim", 10), ("dpmsolver++", 20), ("dpmsolver++", 10),
)
FLOW_SAMPLER_SETTINGS: tuple[tuple[str, int], ...] = (
    ("euler", 50), ("euler", 20), ("euler", 10), ("heun", 25), ("heun", 10), ("heun", 5),
)  # Heun calls the network twice per step: heun 25 costs what euler 50 does

# Shift/flip augmentation suits clothes; it turns digits into other digits (and 2 px is a quarter of 8 x 8).
CLASSIFIER_RECIPES: dict[str, dict[str, Any]] = {
    "fashion_mnist": {"epochs": 8, "augment": True},
    "digits": {"epochs": 30, "augment": False},
}


def local_classifier(
    dataset: str, image_size: int, cache_root: str | Path
) -> tuple[FeatureClassifier, dict[str, Any], Tensor, Tensor]:
    """The feature classifier of ``dataset`` (trained on its train split once with its
    :data:`CLASSIFIER_RECIPES` entry, cached in ``<cache_root>/<dataset>_<size>``), its info
    (``test_accuracy``, ...), and the train and test images ``(N, C, S, S)`` it was fitted and checked on."""
    if dataset not in CLASSIFIER_RECIPES:
        raise ValueError(f"no classifier recipe for {dataset=}; known: {sorted(CLASSIFIER_RECIPES)}")
    train = load_image_dataset(dataset, "train", image_size)
    test = load_image_dataset(dataset, "test", image_size)
    classifier, info = load_or_train_classifier(Path(cache_root) / f"{dataset}_{image_size}",
                                                (train.images, train.labels), (test.images, test.labels),
                                                **CLASSIFIER_RECIPES[dataset])
    return classifier, info, train.images, test.images


def generate_balanced(
    model: ImageDiffusionModel,
    num_samples: int,
    *,
    sampler: str | None = None,
    steps: int = 50,
    guidance_scale: float = 2.0,
    batch_size: int = 125,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Tensor, Tensor, float]:
    """``num_samples`` images ``(N, C, S, S)`` cycling through the classes, their labels ``(N,)``, seconds taken."""
    if model.config.num_classes is None:
        raise ValueError("generate_balanced needs a class-conditional model")
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"{num_samples=} and {batch_size=} must be >= 1")
    sampler = sampler or samplers_for(model.config.objective)[0]  # named in the progress bar
    labels = torch.arange(num_samples) % model.config.num_classes
    generator = torch.Generator(device=model.device).manual_seed(seed)
    images = []
    start = time.perf_counter()
    for chunk in tqdm(labels.split(batch_size), desc=f"{sampler} {steps}", unit="batch", disable=not progress):
        images.append(model.generate(chunk.to(model.device), sampler=sampler, steps=steps,
                                     guidance_scale=guidance_scale, generator=generator).cpu())
    return torch.cat(images), labels, time.perf_counter() - start


def real_floor(classifier: nn.Module, train_images: Tensor, test_images: Tensor, num_samples: int,
               seed: int = 0) -> ImageQuality:
    """Quality of ``num_samples`` random real training images ``(N, C, S, S)`` against the test set: the floor."""
    if num_samples > train_images.shape[0]:
        raise ValueError(f"{num_samples=} exceeds the {train_images.shape[0]} training images")
    pick = torch.randperm(train_images.shape[0], generator=torch.Generator().manual_seed(seed))[:num_samples]
    return evaluate_images(classifier, train_images[pick], test_images)


def quality_row(
    model: ImageDiffusionModel,
    classifier: nn.Module,
    test_images: Tensor,
    num_samples: int,
    *,
    sampler: str,
    steps: int,
    guidance_scale: float,
    batch_size: int = 125,
    seed: int = 0,
) -> dict[str, Any]:
    """Sample ``num_samples`` balanced images and score them: :class:`ImageQuality` fields + the setting + speed."""
    images, labels, seconds = generate_balanced(model, num_samples, sampler=sampler, steps=steps,
                                                guidance_scale=guidance_scale, batch_size=batch_size, seed=seed)
    quality = evaluate_images(classifier, images, test_images, labels)
    return {"sampler": sampler, "steps": steps, "guidance_scale": guidance_scale,
            "seconds_per_image": seconds / num_samples, **dataclasses.asdict(quality)}


def sampler_table(
    model: ImageDiffusionModel,
    classifier: nn.Module,
    test_images: Tensor,
    num_samples: int,
    settings: Sequence[tuple[str, int]] = SAMPLER_SETTINGS,
    guidance_scale: float = 2.0,
    batch_size: int = 125,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One :func:`quality_row` per (sampler, steps), all from the same seed."""
    return [quality_row(model, classifier, test_images, num_samples, sampler=sampler, steps=steps,
                        guidance_scale=guidance_scale, batch_size=batch_size, seed=seed)
            for sampler, steps in settings]


def format_quality_table(rows: Sequence[dict[str, Any]], floor: ImageQuality | None = None) -> str:
    """Markdown table of sampler rows (and the real-vs-real floor as the last row)."""
    lines = ["| sampler | steps | s / image | FID | KID x1e3 | precision | recall | class acc |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = "" if r["class_accuracy"] is None else f"{100 * r['class_accuracy']:.1f}%"
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['seconds_per_image']:.4f} | {r['fid']:.2f} | "
                     f"{1e3 * r['kid_mean']:.2f} ± {1e3 * r['kid_std']:.2f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {acc} |")
    if floor is not None:
        lines.append(f"| real train vs test (floor) | | | {floor.fid:.2f} | {1e3 * floor.kid_mean:.2f} ± "
                     f"{1e3 * floor.kid_std:.2f} | {floor.precision:.3f} | {floor.recall:.3f} | |")
    return "\n".join(lines) + "\n"


def plot_sampler_table(rows: Sequence[dict[str, Any]], path: str | Path, floor: ImageQuality | None = None) -> Path:
    """FID and class accuracy against seconds per image (log scale), one labelled point per sampler row."""
    path = Path(path)
    fig, (ax_fid, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in rows:
        label = f"{r['sampler']} {r['steps']}"
        for ax, key in ((ax_fid, "fid"), (ax_acc, "class_accuracy")):
            if r[key] is not None:
                ax.scatter(r["seconds_per_image"], r[key])
                ax.annotate(label, (r["seconds_per_image"], r[key]), textcoords="offset points", xytext=(4, 4),
                            fontsize=8)
    if floor is not None:
        ax_fid.axhline(floor.fid, color="gray", linestyle="--", label="real train vs test")
        ax_fid.axhline(3 * floor.fid, color="gray", linestyle=":", label="3x floor")
        ax_fid.legend(fontsize=8)
    for ax, title in ((ax_fid, "local FID (lower is better)"), (ax_acc, "classifier accuracy on samples")):
        ax.set_xscale("log")
        ax.set_xlabel("seconds per image")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(rows: Sequence[dict[str, Any]], floor: ImageQuality | None, out_dir: str | Path,
                 stem: str = "sampler_table") -> list[Path]:
    """`<stem>.json`, `<stem>.md` and `<stem>.png` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"rows": list(rows), "floor": None if floor is None else dataclasses.asdict(floor)}
    (out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(format_quality_table(rows, floor))
    return [out_dir / f"{stem}.json", out_dir / f"{stem}.md", plot_sampler_table(rows, out_dir / f"{stem}.png", floor)]
