"""A shuffling batch sampler whose position can be saved and restored, for exact training resume,
and which gives each rank of a distributed run its disjoint share of every global batch."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    """Micro-batches of one rank, cut from global batches of a permutation that depends only on `(seed, epoch)`.

    Global batch `k` of an epoch is `order[k * G : (k + 1) * G]` with `G = batch_size`, whatever the
    world size; it is split into `world_size * grad_accum` micro-batches of `G / (world_size * grad_accum)`
    windows, and accumulation step `a` of rank `r` takes part `a * world_size + r`. So every process
    count and accumulation sees the same global batches. The last incomplete global batch is dropped
    (a single process with fewer than `G` windows gets them all as one batch). `set_epoch(epoch, start)`
    selects the epoch's permutation and skips its first `start` global batches, so a resumed run sees
    exactly what the uninterrupted run would have seen.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, grad_accum: int = 1):
        if n < 1:
            raise ValueError(f"cannot sample from an empty dataset ({n=})")
        parts = world_size * grad_accum
        if batch_size < 1 or batch_size % parts:
            raise ValueError(f"batch_size={batch_size} (the global batch) must be a positive multiple of "
                             f"world size {world_size} x grad_accum {grad_accum} = {parts}")
        if parts > 1 and n < batch_size:
            raise ValueError(f"{n} training windows cannot fill one global batch of {batch_size} split across "
                             f"world size {world_size} x grad_accum {grad_accum}; lower the batch size or the "
                             f"number of processes")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, world size {world_size})")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.micro_batch = batch_size // parts
        self.batches_per_epoch = max(1, n // batch_size)  # global batches
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch `epoch`'s permutation, skipping its first `start` global batches."""
        if not 0 <= start <= self.batches_per_epoch:
            raise ValueError(f"{start=} must be within [0, {self.batches_per_epoch}] global batches")
        self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator)
        if self.n < self.batch_size:  # a single process: all windows as one short batch
            yield from [order.tolist()] if self.start == 0 else []
            return
        m = self.micro_batch
        for k in range(self.start, self.batches_per_epoch):
            batch = order[k * self.batch_size : (k + 1) * self.batch_size]
            for a in range(self.grad_accum):
                part = a * self.world_size + self.rank
                yield batch[part * m : (part + 1) * m].tolist()

    def __len__(self) -> int:
        """Micro-batches left in this epoch for this rank."""
        return (self.batches_per_epoch - self.start) * self.grad_accum
