"""Atomic checkpoint I/O: safetensors weights, JSON configs, whole directories renamed into place.

Everything here writes to a temporary name first and renames it into place, so a crash never
leaves a half-written file or checkpoint directory where a complete one is expected.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to `target`; on success it replaces `target` by rename.

    On an exception the temporary directory is removed and `target` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _atomic_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp")


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Write a flat `name -> tensor` mapping to a safetensors file atomically (tensors moved to CPU)."""
    path = Path(path)
    tmp = _atomic_file(path)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file written by `save_tensors`; FileNotFoundError names a missing path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    return load_file(str(path), device=str(device))


def save_json(obj: Any, path: str | Path) -> None:
    """Write `obj` as indented JSON atomically."""
    path = Path(path)
    tmp = _atomic_file(path)
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def load_json(path: str | Path) -> Any:
    """Read a JSON file; FileNotFoundError names a missing path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no JSON file at {path}")
    return json.loads(path.read_text())


def save_torch(obj: Any, path: str | Path) -> None:
    """torch.save atomically. Only tensors, numbers, strings and containers: loadable with weights_only."""
    path = Path(path)
    tmp = _atomic_file(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_torch(path: str | Path) -> Any:
    """torch.load with `weights_only=True` (no arbitrary code from a checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training state at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)
