"""Small real image datasets for the image-generation baselines, read from local files only.

- Fashion-MNIST (Xiao et al. 2017): 60k train / 10k test grayscale 28 x 28 images of 10 clothing
  classes, from Debian's ``dataset-fashion-mnist`` package (IDX files under
  ``/usr/share/datasets/fashion-mnist``; ``FASHION_MNIST_DIR`` points elsewhere).
- scikit-learn's digits: 1797 grayscale 8 x 8 images of 10 digits, shipped inside scikit-learn; the
  smoke set for tests.

Images reach the model as float32 ``(N, 1, S, S)`` in [-1, 1], zero-padded (black, -1) to ``S``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

DATASETS = ("fashion_mnist", "digits")
SPLITS = ("train", "test")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FASHION_FILES = {"train": "train", "test": "t10k"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
DIGITS_TRAIN = 1500  # the first 1500 digits train, the remaining 297 test


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format, optionally gzipped) into an array of its stored shape."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (header {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    body = raw[4 + 4 * ndim :]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(body) != expected:
        raise ValueError(f"{path} holds {len(body)} data bytes; its header {shape} needs {expected}")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def fashion_mnist_dir() -> Path:
    """Where the Fashion-MNIST IDX files are: ``$FASHION_MNIST_DIR`` or Debian's location."""
    return Path(os.environ.get("FASHION_MNIST_DIR", FASHION_MNIST_DIR))


def load_fashion_mnist(split: str, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` -> images uint8 ``(N, 28, 28)`` and labels int64 ``(N,)``.

    Raises FileNotFoundError naming the Debian package when the files are not installed.
    """
    if split not in SPLITS:
        raise ValueError(f"{split=} is not one of {SPLITS}")
    root = Path(root) if root is not None else fashion_mnist_dir()
    stem = _FASHION_FILES[split]
    paths = [root / f"{stem}-images-idx3-ubyte.gz", root / f"{stem}-labels-idx1-ubyte.gz"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files {missing} not found; install Debian's {FASHION_MNIST_PACKAGE} package "
            f"(sudo apt-get install {FASHION_MNIST_PACKAGE}) or set FASHION_MNIST_DIR")
    images, labels = read_idx(paths[0]), read_idx(paths[1]).astype(np.int64)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(f"{root}: images {images.shape} and labels {labels.shape} do not pair up")
    return images, labels


def load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8 x 8 digits ``split`` -> images uint8 ``(N, 8, 8)`` (0-16 scaled to 0-255), labels ``(N,)``."""
    if split not in SPLITS:
        raise ValueError(f"{split=} is not one of {SPLITS}")
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as err:
        raise ImportError("the digits smoke set needs scikit-learn: pip install scikit-learn") from err
    bunch = sklearn_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    part = slice(0, DIGITS_TRAIN) if split == "train" else slice(DIGITS_TRAIN, None)
    return images[part], labels[part]


def to_model_range(images: np.ndarray, image_size: int) -> Tensor:
    """uint8 ``(N, H, W)`` -> float32 ``(N, 1, image_size, image_size)`` in [-1, 1], centred, padded with -1."""
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    n, h, w = images.shape
    if image_size < max(h, w):
        raise ValueError(f"{image_size=} is smaller than the images ({h}x{w})")
    out = torch.full((n, 1, image_size, image_size), -1.0)
    top, left = (image_size - h) // 2, (image_size - w) // 2
    out[:, 0, top : top + h, left : left + w] = torch.from_numpy(images).float() / 127.5 - 1.0
    return out


class ImageDataset(Dataset):
    """Item ``i`` is ``{"image": float32 (1, S, S) in [-1, 1], "label": int64 ()}``."""

    def __init__(self, images: Tensor, labels: Tensor, num_classes: int) -> None:
        if images.ndim != 4 or labels.shape != images.shape[:1]:
            raise ValueError(f"images {tuple(images.shape)} must be (N, C, H, W) with labels (N,), "
                             f"got labels {tuple(labels.shape)}")
        self.images, self.labels, self.num_classes = images, labels, num_classes

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": self.images[index], "label": self.labels[index]}


def load_image_dataset(name: str, split: str, image_size: int, limit: int | None = None) -> ImageDataset:
    """Dataset ``name`` (one of :data:`DATASETS`) as model-ready tensors, optionally its first ``limit`` items."""
    if name == "fashion_mnist":
        images, labels = load_fashion_mnist(split)
    elif name == "digits":
        images, labels = load_digits(split)
    else:
        raise ValueError(f"unknown image dataset {name=}; valid: {DATASETS}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return ImageDataset(to_model_range(images, image_size), torch.from_numpy(labels), num_classes=10)
