"""A shuffling sampler whose position can be saved and restored, for exact training resume."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableRandomSampler(Sampler[int]):
    """Yields a permutation of `range(n)` that depends only on `(seed, epoch)`.

    `set_epoch(epoch, start)` selects the epoch's permutation and skips its first `start` items, so
    a resumed run sees exactly the samples the uninterrupted run would have seen.
    """

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError(f"cannot sample from an empty dataset ({n=})")
        self.n = n
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.n:
            raise ValueError(f"{start=} must be within [0, {self.n}]")
        self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator)
        return iter(order[self.start :].tolist())

    def __len__(self) -> int:
        return self.n - self.start
