"""Image-generation baselines on the shared core: data, guidance, model, training, save/load."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from diffusion_policy.config_utils import from_dict
from diffusion_policy.core.sampling import classifier_free_guidance
from diffusion_policy.image_gen.data import (
    FASHION_MNIST_PACKAGE,
    load_digits,
    load_fashion_mnist,
    load_image_dataset,
    read_idx,
    to_model_range,
)
from diffusion_policy.image_gen.evaluate import local_classifier, quality_row
from diffusion_policy.image_gen.grid import image_grid, save_grid
from diffusion_policy.image_gen.model import ImageDiffusionModel, ImageModelConfig
from diffusion_policy.image_gen.train import SUMMARY_FILE, train_image_model

TINY_UNET = {"channels": [16, 32], "layers_per_block": 1, "attention_levels": [1], "embed_dim": 32}
TINY_DIFFUSERS = {"block_out_channels": [16, 32], "layers_per_block": 1, "attention_levels": [1]}


def tiny_config(**overrides) -> ImageModelConfig:
    base = dict(image_size=8, unet=TINY_UNET, diffusers_unet=TINY_DIFFUSERS)
    return from_dict(ImageModelConfig, base | overrides)


def write_idx(path, array: np.ndarray, code: int = 0x08) -> None:
    header = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


# --- data -------------------------------------------------------------------------------------------
def test_idx_round_trip_and_truncation(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), images)
    raw = gzip.decompress((tmp_path / "x.gz").read_bytes())
    (tmp_path / "cut.gz").write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(ValueError, match="needs 24"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "junk.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04rest"))
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "junk.gz")


def test_missing_fashion_mnist_names_the_debian_package(tmp_path):
    with pytest.raises(FileNotFoundError, match=FASHION_MNIST_PACKAGE):
        load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(ValueError, match="split='val'"):
        load_fashion_mnist("val")


def test_fashion_mnist_from_debian_package():
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    assert train_x.shape == (60_000, 28, 28) and test_x.shape == (10_000, 28, 28)
    assert train_x.dtype == np.uint8 and set(np.unique(train_y)) == set(range(10))
    assert np.bincount(test_y).tolist() == [1000] * 10  # the test split is balanced


def test_model_range_pads_with_black_and_centres():
    images = np.full((2, 28, 28), 255, dtype=np.uint8)
    x = to_model_range(images, 32)
    assert x.shape == (2, 1, 32, 32) and x.dtype == torch.float32
    assert x[:, :, 2:30, 2:30].eq(1.0).all() and x[:, :, :2].eq(-1.0).all() and x[:, :, :, 30:].eq(-1.0).all()
    with pytest.raises(ValueError, match="image_size=16"):
        to_model_range(images, 16)
    digits_x, digits_y = load_digits("train")
    assert digits_x.shape == (1500, 8, 8) and digits_x.max() == 255 and digits_y.shape == (1500,)
    dataset = load_image_dataset("digits", "test", 8)
    assert len(dataset) == 297 and dataset[0]["image"].shape == (1, 8, 8)
    with pytest.raises(ValueError, match="cifar"):
        load_image_dataset("cifar", "train", 32)


# --- classifier-free guidance in the shared sampling loop ----------------------------------------
def test_classifier_free_guidance_combines_branches_in_one_call():
    calls = []

    def denoiser(x, t, cond):
        calls.append(x.shape[0])
        return x * 0 + cond.float()[:, None]  # output = the condition value

    x, t = torch.zeros(3, 2), torch.tensor(5)
    cond, null = torch.tensor([1, 2, 3]), torch.tensor([10, 10, 10])
    out = classifier_free_guidance(denoiser, cond, null, 3.0)(x, t)
    assert calls == [6]  # both branches batched together
    torch.testing.assert_close(out, (10 + 3.0 * (cond - 10)).float()[:, None].expand(3, 2))
    calls.clear()
    torch.testing.assert_close(classifier_free_guidance(denoiser, cond, null, 1.0)(x, t), cond.float()[:, None] + x)
    torch.testing.assert_close(classifier_free_guidance(denoiser, cond, null, 0.0)(x, t), null.float()[:, None] + x)
    assert calls == [3, 3]  # scales 1 and 0 need one branch only
    with pytest.raises(ValueError, match="guidance_scale=-1"):
        classifier_free_guidance(denoiser, cond, null, -1.0)


# --- the model ----------------------------------------------------------------------------------
@pytest.mark.parametrize("network", ["ours", "diffusers"])
def test_model_generates_reproducibly_and_round_trips(tmp_path, network):
    torch.manual_seed(0)
    model = ImageDiffusionModel(tiny_config(network=network)).eval()
    batch = {"image": torch.rand(4, 1, 8, 8) * 2 - 1, "label": torch.tensor([0, 1, 2, 3])}
    assert model.compute_loss(batch).ndim == 0
    labels = torch.tensor([0, 5, 10])  # 10 = no class
    a = model.generate(labels, steps=3, generator=torch.Generator().manual_seed(1))
    b = model.generate(labels, steps=3, generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 1, 8, 8) and a.abs().max() <= 1.0
    torch.testing.assert_close(a, b)
    model.save(tmp_path / "m")
    loaded = ImageDiffusionModel.load(tmp_path / "m")
    for sampler in ("ddpm", "ddim", "dpmsolver++"):
        torch.testing.assert_close(
            loaded.generate(labels, sampler=sampler, steps=3, generator=torch.Generator().manual_seed(2)),
            model.generate(labels, sampler=sampler, steps=3, generator=torch.Generator().manual_seed(2)))
    assert json.loads((tmp_path / "m" / "config.json").read_text())["config"]["network"] == network


def test_model_rejects_bad_input():
    with pytest.raises(ValueError, match="image size 9x9"):
        ImageDiffusionModel(tiny_config(image_size=9))
    with pytest.raises(ValueError, match="network='unet3'"):
        tiny_config(network="unet3")
    model = ImageDiffusionModel(tiny_config())
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\]"):
        model.generate(torch.tensor([11]), steps=2)
    with pytest.raises(ValueError, match="sampler='euler'"):
        model.generate(torch.tensor([1]), sampler="euler", steps=2)
    with pytest.raises(ValueError, match="needs labels"):
        model.compute_loss({"image": torch.zeros(2, 1, 8, 8)})


def test_label_dropout_feeds_the_null_label():
    model = ImageDiffusionModel(tiny_config(label_dropout=0.5))
    seen = []
    model.network.register_forward_hook(lambda mod, args, out: seen.append(args[2].clone()))
    torch.manual_seed(0)
    model.compute_loss({"image": torch.zeros(400, 1, 8, 8), "label": torch.zeros(400, dtype=torch.long)})
    dropped = (seen[0] == 10).float().mean().item()
    assert 0.4 < dropped < 0.6 and set(seen[0].tolist()) == {0, 10}


# --- training through the shared trainer --------------------------------------------------------
def test_train_on_digits_learns_and_writes_a_model(tmp_path):
    trainer = dict(max_steps=60, batch_size=32, lr=2e-3, warmup_steps=5, val_every=30, log_every=10,
                   checkpoint_every=30, progress=False, seed=0)
    model_dir = train_image_model({"name": "digits", "train_limit": 256, "val_limit": 64},
                                  {"image_size": 8, "unet": TINY_UNET}, trainer, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.6 * losses[0]  # the denoising loss falls from ~1 (predicting noise from noise)
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["steps"] == 60 and summary["network"] == "ours" and summary["parameters"] > 0
    model = ImageDiffusionModel.load(model_dir)
    assert model.generate(torch.arange(10), steps=5).shape == (10, 1, 8, 8)
    with pytest.raises(ValueError, match="in_channels=3"):
        train_image_model({"name": "digits", "train_limit": 8}, {"image_size": 8, "in_channels": 3,
                                                                 "unet": TINY_UNET}, trainer, tmp_path / "bad")


# --- grids ----------------------------------------------------------------------------------------
def test_grid_layout(tmp_path):
    images = torch.stack([torch.full((1, 4, 4), v) for v in (-1.0, 1.0, 0.0)])
    grid = image_grid(images, nrow=2, scale=2, pad=1)
    assert grid.shape == (2 * 9 + 1, 2 * 9 + 1, 1) and grid.dtype == np.uint8
    assert grid[1, 1, 0] == 0 and grid[1, 10, 0] == 255 and grid[10, 1, 0] == 128  # -1 black, 1 white, 0 grey
    assert grid[0, 0, 0] == 255 and grid[12, 12, 0] == 255  # padding and the empty cell stay white
    path = save_grid(images, tmp_path / "g.png", nrow=3)
    assert path.is_file() and path.stat().st_size > 0


# --- end to end: learn the digits, then guidance makes samples of the asked-for class -------------
@pytest.fixture
def one_thread():
    """Small convolutions: one thread beats two on this 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_digits_model_generates_recognisable_classes(tmp_path, one_thread):
    trainer = dict(max_steps=600, batch_size=64, lr=3e-3, warmup_steps=20, val_every=600, log_every=100,
                   checkpoint_every=600, progress=False, seed=0)
    model_dir = train_image_model({"name": "digits", "val_limit": 64},
                                  {"image_size": 8, "unet": TINY_UNET}, trainer, tmp_path / "run")
    classifier, info, _, test = local_classifier("digits", 8, tmp_path / "classifiers")
    assert info["test_accuracy"] > 0.9
    model = ImageDiffusionModel.load(model_dir)
    common = dict(sampler="ddim", steps=20, batch_size=100, seed=0)
    guided = quality_row(model, classifier, test, 100, guidance_scale=2.0, **common)
    unguided = quality_row(model, classifier, test, 100, guidance_scale=0.0, **common)
    assert guided["class_accuracy"] > 0.7  # chance is 0.1
    assert unguided["class_accuracy"] < guided["class_accuracy"] - 0.3  # s = 0 ignores the label
