"""Image crops for the vision encoder: a random window per sample in training, the centre at evaluation.

Diffusion Policy (Chi et al. 2023) trains on random 84x84 crops of 96x96 camera frames and evaluates
on the centre crop, a cheap augmentation against small shifts of the camera.
"""

from __future__ import annotations

import torch
from torch import Tensor


def crop_problem(image_hw: tuple[int, int], crop_shape: tuple[int, int]) -> str | None:
    """Why `crop_shape` `(h, w)` cannot be cut from images of size `image_hw` `(H, W)`, or None."""
    h, w = crop_shape
    if h < 1 or w < 1:
        return f"crop_shape={tuple(crop_shape)} must be positive"
    if h > image_hw[0] or w > image_hw[1]:
        return f"crop_shape={tuple(crop_shape)} is larger than the image (H, W)={tuple(image_hw)}"
    return None


def _check(images: Tensor, crop_shape: tuple[int, int]) -> None:
    if images.ndim != 4:
        raise ValueError(f"images have shape {tuple(images.shape)}; expected (N, C, H, W)")
    problem = crop_problem(tuple(images.shape[-2:]), crop_shape)
    if problem is not None:
        raise ValueError(problem)


def random_crop(
    images: Tensor, crop_shape: tuple[int, int], generator: torch.Generator | None = None
) -> Tensor:
    """An independent, uniformly drawn `(h, w)` window of each image: `(N, C, H, W) -> (N, C, h, w)`.

    The offsets come from `generator` (torch's global RNG when None), drawn on the images' device.
    """
    _check(images, crop_shape)
    n, (height, width), (h, w) = images.shape[0], images.shape[-2:], crop_shape
    top = torch.randint(0, height - h + 1, (n,), generator=generator, device=images.device)
    left = torch.randint(0, width - w + 1, (n,), generator=generator, device=images.device)
    # unfold makes a view (N, C, H-h+1, W-w+1, h, w) of every window; indexing picks one per sample
    # and copies only that window, with no Python loop over the batch.
    windows = images.unfold(2, h, 1).unfold(3, w, 1)
    return windows[torch.arange(n, device=images.device), :, top, left]


def center_crop(images: Tensor, crop_shape: tuple[int, int]) -> Tensor:
    """The central `(h, w)` window of each image (offsets rounded down): `(N, C, H, W) -> (N, C, h, w)`."""
    _check(images, crop_shape)
    (height, width), (h, w) = images.shape[-2:], crop_shape
    top, left = (height - h) // 2, (width - w) // 2
    return images[:, :, top : top + h, left : left + w]
