"""The image convention of datasets, environments and policies.

An observation key is an *image* when its per-step shape has three dimensions, channel last:
`(H, W, C)` with `C` in `IMAGE_CHANNELS`, stored and observed as uint8 in [0, 255] (one camera per
key). Everything else is low-dimensional. Policies turn images into float `(C, H, W)` in [0, 1]
themselves; images never go through the min/max normaliser.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IMAGE_CHANNELS = (1, 3)


def is_image_shape(shape: Sequence[int]) -> bool:
    """Whether a per-step shape is an image's `(H, W, C)` (three dimensions)."""
    return len(shape) == 3


def image_shape_problem(key: str, shape: Sequence[int]) -> str | None:
    """Why per-step `shape` is not a valid `(H, W, C)` image for `key`, or None when it is."""
    shape = tuple(int(d) for d in shape)
    if len(shape) != 3:
        return f"image {key!r} has per-step shape {shape}; expected (H, W, C) with C in {IMAGE_CHANNELS}"
    if shape[-1] in IMAGE_CHANNELS:
        return None
    if shape[0] in IMAGE_CHANNELS:
        return (f"image {key!r} has per-step shape {shape}, which looks channel-first (C, H, W); "
                f"images are channel-last (H, W, C): transpose with np.moveaxis(x, -3, -1)")
    return f"image {key!r} has per-step shape {shape}; its last dimension must be C in {IMAGE_CHANNELS}"


def check_image_array(key: str, array: np.ndarray, leading: int) -> None:
    """Raise unless `array` is uint8 `(*lead, H, W, C)` with `leading` leading (batch/time) dims."""
    shape = tuple(array.shape)
    if array.ndim != leading + 3:
        raise ValueError(f"image {key!r} has shape {shape}; expected {leading} leading dims then (H, W, C)")
    problem = image_shape_problem(key, shape[leading:])
    if problem is not None:
        raise ValueError(f"{problem} (full shape {shape})")
    if array.dtype != np.uint8:
        raise TypeError(f"image {key!r} of shape {shape} has dtype {array.dtype}; images are uint8 in [0, 255] "
                        "(convert float images in [0, 1] with (x * 255).round().astype(np.uint8))")
