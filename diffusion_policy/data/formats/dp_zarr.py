"""Stores in the original Diffusion Policy replay layout (Zarr v2 or v3, a directory or a ``.zarr.zip``).

They open directly (``ReplayBuffer.open``) and train through an observation mapping with no
conversion. Converting one writes our store: float images (per-step ``(H, W, C)``, values in 0..1 or
0..255, detected per key) as uint8, every other key and ``meta/episode_ends`` with their values
unchanged, rechunked and compressed for fast reading.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from diffusion_policy.data.formats.source import Episode, SourceInfo
from diffusion_policy.data.images import is_image_shape
from diffusion_policy.data.obs_mapping import detect_image_range, float_image_to_uint8
from diffusion_policy.data.replay_buffer import ReplayBuffer

logger = logging.getLogger(__name__)


class DPZarrSource:
    """An original-layout store opened read-only; float image keys are read as uint8."""

    def __init__(self, path: str | Path) -> None:
        self.buffer = ReplayBuffer.open(path, mode="r")
        self.path = Path(path)
        self.image_ranges = {}
        for key in self.buffer.keys():
            array = self.buffer[key]
            if is_image_shape(array.shape[1:]) and array.dtype.kind == "f":
                self.image_ranges[key] = detect_image_range(key, array, str(self.path))
                logger.info("%s: float image %r holds values in 0..%g; written as uint8", self.path, key,
                            self.image_ranges[key])
        self.info = SourceInfo("zarr", str(self.path), extra={"attrs": self.buffer.attrs} if self.buffer.attrs else {})

    def __len__(self) -> int:
        return self.buffer.n_episodes

    def episodes(self) -> Iterator[Episode]:
        for i in range(self.buffer.n_episodes):
            episode = self.buffer.get_episode(i)
            for key, image_range in self.image_ranges.items():
                episode[key] = float_image_to_uint8(episode[key], image_range, f"{self.path}: episode {i} {key!r}")
            yield episode

    def close(self) -> None:
        """Nothing to release (Zarr reads hold no handle)."""
