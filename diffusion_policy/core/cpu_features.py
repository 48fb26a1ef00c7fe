"""What this CPU computes natively, for choosing the dtype of the fast inference path.

bf16 pays on a CPU only with native bf16 arithmetic (AVX512-BF16 or AMX): there oneDNN's bf16 GEMMs
run 2-4x faster than fp32. Without it (AVX2-only CPUs, e.g. many AMD EPYCs) every bf16 operation is
emulated, and a bf16 chunk of the 65.8M U-Net was measured 4x slower than plain float32 PyTorch.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic: oneDNN supports bf16 here and, on x86, ATen runs its
    AVX512 kernels on a CPU whose ``/proc/cpuinfo`` flags (where it exists) name ``avx512_bf16`` or
    ``amx_bf16``. ``ATEN_CPU_CAPABILITY=avx2`` therefore turns it off, as on an AVX2-only CPU."""
    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
    except (AttributeError, RuntimeError):
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True  # oneDNN's check is the bf16 instruction set itself there (e.g. Arm BF16)
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return True
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return any(flag in line.split(":", 1)[1].split() for flag in _NATIVE_BF16_FLAGS)
    return True


def fast_dtype(device: torch.device) -> torch.dtype:
    """The weight dtype of the fast inference snapshot on ``device``: bf16 on CUDA and on CPUs with native
    bf16, float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" or native_bf16() else torch.float32


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string; for benchmark records."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"
