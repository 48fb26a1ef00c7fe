"""A dataset key seen through its :class:`~diffusion_policy.data.obs_mapping.Source`: read lazily or copied.

``MappedArray(array, source)[lo:hi]`` reads steps ``lo:hi`` of a numpy or Zarr array ``(N, *shape)`` and
returns them as the policy sees them ``(hi - lo, *out_shape)`` (sliced, reshaped, float images as
uint8). :func:`materialize` copies a whole mapped key into memory block by block, so a float32 image
key never exists in memory at four times its uint8 size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffusion_policy.data.obs_mapping import Source

_BLOCK_BYTES = 64 << 20  # source bytes read per block by `materialize`


class MappedArray:
    """Steps of ``array`` ``(N, *source.shape)`` mapped by ``source``; ``where`` names the file and key in errors."""

    def __init__(self, array: Any, source: Source, where: str) -> None:
        if source.shape is None:
            raise ValueError(f"{where}: the source of a mapped array must be resolved (its per-step shape known)")
        self._array, self.source, self.where = array, source, where
        self.shape = (int(array.shape[0]), *source.out_shape(source.shape))
        self.dtype = np.dtype(np.uint8) if source.image_range is not None else np.dtype(array.dtype)
        self.ndim = len(self.shape)
        self.source_step_bytes = int(np.prod(source.shape)) * np.dtype(array.dtype).itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, steps: slice) -> np.ndarray:
        """Steps ``lo:hi`` (a slice with step 1) -> ``(hi - lo, *out_shape)``."""
        if not isinstance(steps, slice) or steps.step not in (None, 1):
            raise TypeError(f"{self.where}: a mapped array is read by contiguous step slices, got {steps!r}")
        lo = steps.start or 0
        return self.source.apply(np.asarray(self._array[steps]), f"{self.where} steps {lo}..")


def materialize(mapped: MappedArray, n_steps: int) -> np.ndarray:
    """The first ``n_steps`` steps of ``mapped`` as one numpy array, read in blocks of about 64 MiB."""
    out = np.empty((n_steps, *mapped.shape[1:]), mapped.dtype)
    block = max(1, _BLOCK_BYTES // max(1, mapped.source_step_bytes))
    for lo in range(0, n_steps, block):
        hi = min(n_steps, lo + block)
        out[lo:hi] = mapped[lo:hi]
    return out
