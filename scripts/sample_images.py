r"""Sample and score a trained image model (see scripts/train_image.py).

Examples:
    # a grid, one row per class (DDIM 50 steps, guidance 2: the best measured DDIM, docs/image_generation.md)
    python scripts/sample_images.py --model runs/image/ours_2026-01-01_12-00-00
    # quality of 2000 samples against the Fashion-MNIST test set, with the real-vs-real floor
    python scripts/sample_images.py --model <run> --evaluate 2000
    # the same at several guidance scales
    python scripts/sample_images.py --model <run> --evaluate 1000 --guidance 1 1.5 2 3
    # the sampler table: DDPM 1000/100, DDIM 50/20/10, DPM-Solver++ 20/10 (quality vs steps vs seconds)
    python scripts/sample_images.py --model <run> --table 200

Outputs go to --out (default `<run>/samples/`): `grid_<sampler><steps>_g<scale>.png`, `quality.{json,md,png}`
and `sampler_table.{json,md,png}`. The quality numbers are measured in the feature space of a small
classifier trained here (cached in --classifier-dir): they are not comparable with Inception-FID.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from diffusion_policy.core.flow import FLOW_SAMPLERS
from diffusion_policy.core.schedulers import SCHEDULER_NAMES
from diffusion_policy.core.targets import samplers_for
from diffusion_policy.core.trainer import resolve_device
from diffusion_policy.image_gen.evaluate import (
    FLOW_SAMPLER_SETTINGS,
    SAMPLER_SETTINGS,
    format_quality_table,
    local_classifier,
    quality_row,
    real_floor,
    sampler_table,
    write_report,
)
from diffusion_policy.image_gen.grid import save_grid
from diffusion_policy.image_gen.model import ImageDiffusionModel
from diffusion_policy.image_gen.train import MODEL_DIR


def _setting(text: str) -> tuple[str, int]:
    sampler, _, steps = text.partition(":")
    if sampler not in SCHEDULER_NAMES + FLOW_SAMPLERS or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not SAMPLER:STEPS with SAMPLER in "
                                         f"{SCHEDULER_NAMES + FLOW_SAMPLERS}")
    return sampler, int(steps)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; see `--help`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="model directory or training run directory")
    parser.add_argument("--out", type=Path, help="output directory (default: <run>/samples)")
    parser.add_argument("--sampler", choices=SCHEDULER_NAMES + FLOW_SAMPLERS, default=None,
                        help="default: ddim for a DDPM model, euler for a flow-matching one")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, nargs="+", default=[2.0], help="classifier-free guidance scale(s)")
    parser.add_argument("--per-class", type=int, default=10, help="grid columns (samples per class); 0: no grid")
    parser.add_argument("--evaluate", type=int, default=0, metavar="N", help="score N samples per guidance scale")
    parser.add_argument("--table", type=int, default=0, metavar="N", help="sampler table with N samples per row")
    parser.add_argument("--settings", type=_setting, nargs="+", default=None, metavar="SAMPLER:STEPS",
                        help="the table's rows (default: " + " ".join(f"{s}:{n}" for s, n in SAMPLER_SETTINGS)
                        + "; for a flow-matching model " + " ".join(f"{s}:{n}" for s, n in FLOW_SAMPLER_SETTINGS) + ")")
    parser.add_argument("--dataset", default="fashion_mnist", help="real images to score against")
    parser.add_argument("--classifier-dir", type=Path, default=Path("data/classifiers"))
    parser.add_argument("--batch-size", type=int, default=125, help="images per sampling batch (x2 with guidance)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("per_class", "evaluate", "table"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model_dir = args.model / MODEL_DIR if (args.model / MODEL_DIR).is_dir() else args.model
    out = args.out or (model_dir.parent / "samples")
    model = ImageDiffusionModel.load(model_dir, resolve_device(args.device))
    flow = model.config.objective == "flow"
    args.sampler = args.sampler or samplers_for(model.config.objective)[0]
    args.settings = args.settings or list(FLOW_SAMPLER_SETTINGS if flow else SAMPLER_SETTINGS)
    size = model.config.image_size
    if args.per_class and model.config.num_classes is not None:
        labels = torch.arange(model.config.num_classes, device=model.device).repeat_interleave(args.per_class)
        for scale in args.guidance:
            images = model.generate(labels, sampler=args.sampler, steps=args.steps, guidance_scale=scale,
                                    generator=torch.Generator(model.device).manual_seed(args.seed))
            path = save_grid(images, out / f"grid_{args.sampler}{args.steps}_g{scale:g}.png", nrow=args.per_class)
            print(f"grid written to {path}")
    if not (args.evaluate or args.table):
        return
    classifier, info, train, test = local_classifier(args.dataset, size, args.classifier_dir)
    print(f"classifier test accuracy {100 * info['test_accuracy']:.2f}% ({args.classifier_dir})")
    if args.evaluate:
        rows = [quality_row(model, classifier, test, args.evaluate, sampler=args.sampler, steps=args.steps,
                            guidance_scale=scale, batch_size=args.batch_size, seed=args.seed)
                for scale in args.guidance]
        floor = real_floor(classifier, train, test, args.evaluate, seed=args.seed)
        write_report(rows, floor, out, stem="quality")
        print(format_quality_table(rows, floor))
    if args.table:
        rows = sampler_table(model, classifier, test, args.table, args.settings, guidance_scale=args.guidance[0],
                             batch_size=args.batch_size, seed=args.seed)
        floor = real_floor(classifier, train, test, args.table, seed=args.seed)
        paths = write_report(rows, floor, out)
        print(format_quality_table(rows, floor))
        print("written: " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
