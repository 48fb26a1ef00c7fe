"""Sample grids as PNG files, for a person to look at."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from torch import Tensor


def image_grid(images: Tensor, nrow: int, scale: int = 2, pad: int = 2) -> np.ndarray:
    """Images ``(N, C, H, W)`` in [-1, 1] -> one uint8 ``(rows * (H*scale + pad) + pad, ..., C)`` picture.

    Row-major: image ``i`` sits in row ``i // nrow``, column ``i % nrow``; each pixel is repeated
    ``scale`` times per axis (nearest neighbour), cells are separated by ``pad`` white pixels.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    if nrow < 1 or scale < 1 or pad < 0:
        raise ValueError(f"need nrow >= 1, scale >= 1, pad >= 0; got {nrow=}, {scale=}, {pad=}")
    n, c, h, w = images.shape
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pixels = pixels.numpy().transpose(0, 2, 3, 1).repeat(scale, axis=1).repeat(scale, axis=2)
    rows, cell_h, cell_w = -(-n // nrow), h * scale + pad, w * scale + pad
    grid = np.full((rows * cell_h + pad, nrow * cell_w + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        top, left = pad + (i // nrow) * cell_h, pad + (i % nrow) * cell_w
        grid[top : top + h * scale, left : left + w * scale] = pixels[i]
    return grid


def save_grid(images: Tensor, path: str | Path, nrow: int, scale: int = 2) -> Path:
    """Write :func:`image_grid` of ``images`` ``(N, C, H, W)`` in [-1, 1] to a PNG at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = image_grid(images, nrow, scale)
    iio.imwrite(path, grid[..., 0] if grid.shape[-1] == 1 else grid)
    return path
