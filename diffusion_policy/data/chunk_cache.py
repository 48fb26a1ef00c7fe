"""Reading windows of a dataset larger than memory: whole decoded chunks behind an LRU cache.

A training window touches a few consecutive steps, which lie in one stored chunk (rarely two). Zarr
decodes the whole chunk for any read, so reading the chunk once and keeping it decoded serves every
later window inside it from memory; the cache holds at most ``capacity_bytes`` of decoded chunks.
:func:`available_memory` tells how much memory this process may still use, which decides whether a
dataset is copied into memory or read this way.
"""

from __future__ import annotations

import os
import resource
from collections import OrderedDict
from pathlib import Path

import numpy as np

from diffusion_policy.data.storage import CheckedArray


class ChunkCachedArray:
    """Steps ``lo:hi`` of an on-disk array ``(N, ...)``, read chunk by chunk through an LRU cache."""

    def __init__(self, array: CheckedArray, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"{capacity_bytes=} must be >= 0")
        self._array, self.capacity_bytes = array, int(capacity_bytes)
        self.shape, self.dtype, self.ndim = array.shape, np.dtype(array.dtype), array.ndim
        self.chunk_steps = array.chunk_steps
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, steps: slice) -> np.ndarray:
        """Steps ``lo:hi`` (a contiguous slice) -> ``(hi - lo, ...)`` numpy array."""
        if not isinstance(steps, slice) or steps.step not in (None, 1):
            raise TypeError(f"{self._array.name}: chunk-cached reads take contiguous step slices, got {steps!r}")
        lo, hi, _ = steps.indices(self.shape[0])
        if hi <= lo:
            return np.empty((0, *self.shape[1:]), self.dtype)
        first, last = lo // self.chunk_steps, (hi - 1) // self.chunk_steps
        parts = [self._chunk(c) for c in range(first, last + 1)]
        values = parts[0] if len(parts) == 1 else np.concatenate(parts)
        offset = first * self.chunk_steps
        return values[lo - offset : hi - offset]

    def __getstate__(self) -> dict:
        # A DataLoader worker starts with an empty cache of its own rather than a copy of this one.
        return {**self.__dict__, "_cache": OrderedDict(), "_cached_bytes": 0}

    def _chunk(self, index: int) -> np.ndarray:
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            self.hits += 1
            return cached
        self.misses += 1
        start = index * self.chunk_steps
        values = self._array[start : min(start + self.chunk_steps, self.shape[0])]
        if values.nbytes <= self.capacity_bytes:
            self._cache[index] = values
            self._cached_bytes += values.nbytes
            while self._cached_bytes > self.capacity_bytes:
                _, evicted = self._cache.popitem(last=False)
                self._cached_bytes -= evicted.nbytes
        return values


def available_memory() -> int:
    """Bytes this process may still allocate: the least of the system's available memory, the
    cgroup's limit less its usage (v2 or v1), and the address-space limit (``ulimit -v``) less the
    current virtual size."""
    candidates = []
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    candidates += _cgroup_room()
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit != resource.RLIM_INFINITY:
        status = Path(f"/proc/{os.getpid()}/status")
        vm = 0
        if status.exists():
            vm = next((int(line.split()[1]) * 1024 for line in status.read_text().splitlines()
                       if line.startswith("VmSize:")), 0)
        candidates.append(max(0, limit - vm))
    return min(candidates) if candidates else 1 << 62


def _cgroup_room() -> list[int]:
    """Limit minus usage of this process's memory cgroup, when it has a limit (cgroup v2, else v1)."""
    cgroup = Path("/proc/self/cgroup")
    if not cgroup.exists():
        return []
    for line in cgroup.read_text().splitlines():
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # v2 unified
            base = Path("/sys/fs/cgroup") / rel.lstrip("/")
            limit_file, usage_file = base / "memory.max", base / "memory.current"
        elif "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory") / rel.lstrip("/")
            limit_file, usage_file = base / "memory.limit_in_bytes", base / "memory.usage_in_bytes"
        else:
            continue
        try:
            limit, usage = limit_file.read_text().strip(), int(usage_file.read_text())
        except (OSError, ValueError):
            continue
        if limit != "max" and int(limit) < 1 << 60:
            return [max(0, int(limit) - usage)]
    return []
