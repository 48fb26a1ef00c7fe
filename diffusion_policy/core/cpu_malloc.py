"""glibc allocator settings for CPU training: serve large tensors from the heap and keep freed memory.

PyTorch's CPU tensors come straight from ``malloc``. glibc serves every block above a threshold
(dynamic, at most 32 MiB) with a fresh ``mmap`` and hands it back to the kernel on ``free``, and it
trims the heap's free top back to the kernel too. A training step then page-faults and zero-fills its
weight casts, gradients and activations again at every step: ~100 ms of the 65.8M U-Net's bf16 step
on the 2-core CPU (`docs/performance.md`). Pinning the mmap threshold at its 32 MiB maximum (every
tensor of that network is smaller) and raising the trim threshold keeps that memory in the process
between steps; the resident size stays at its peak instead of falling and rising every step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses more (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int


def keep_freed_memory() -> bool:
    """Apply the settings above to this process; True if applied, False where libc is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
