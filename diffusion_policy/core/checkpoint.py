"""Atomic checkpoint I/O: safetensors weights, JSON configs, whole directories renamed into place.

Everything here writes to a temporary name first, fsyncs it and renames it into place (then fsyncs
the parent directory), so neither a crash nor a power loss leaves a half-written file or checkpoint
directory where a complete one is expected. A directory written with `manifest=True` also holds
`MANIFEST.sha256` (the `sha256sum` format: `sha256sum -c MANIFEST.sha256` checks it by hand), which
`verify_manifest` checks before anything is loaded from it, so damage after writing is caught
and named instead of loading silently. Every load error names the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

MANIFEST = "MANIFEST.sha256"


class CheckpointError(ValueError):
    """A checkpoint or policy file that is damaged or not what it claims; the message names the file."""


@contextlib.contextmanager
def atomic_directory(target: str | Path, manifest: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to `target`; on success it replaces `target` by rename.

    Before the rename every file is fsynced (and, with `manifest`, hashed into `MANIFEST.sha256`);
    after it the parent directory is fsynced. On an exception the temporary directory is removed
    and `target` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if manifest:
            write_manifest(tmp)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    _fsync(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_manifest(directory: Path) -> None:
    """Write `directory/MANIFEST.sha256`: one `<sha256>  <relative path>` line per file below it."""
    lines = [f"{_sha256(path)}  {path.relative_to(directory).as_posix()}\n" for path in _files(directory)]
    (directory / MANIFEST).write_text("".join(lines))


def verify_manifest(directory: str | Path) -> None:
    """Raise CheckpointError naming the first file that is missing or whose sha256 differs from the manifest.

    A directory without a manifest (written before manifests existed) is accepted with a warning.
    """
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        logger.warning("%s has no %s: its files' integrity cannot be checked", directory, MANIFEST)
        return
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise CheckpointError(f"{manifest} line {number} is {line!r:.100}; expected '<sha256>  <path>'")
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: {manifest} lists it")
        actual = _sha256(path)
        if actual != digest:
            raise CheckpointError(f"{path} is damaged: its sha256 is {actual}, {manifest} recorded {digest}")


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.rglob("*"), reverse=True):  # children before the directories holding them
        _fsync(path)
    _fsync(directory)


def _replace(tmp: Path, path: Path) -> None:
    """Rename a fully written temporary file into place, durably."""
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


def _atomic_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp")


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Write a flat `name -> tensor` mapping to a safetensors file atomically (tensors moved to CPU)."""
    path = Path(path)
    tmp = _atomic_file(path)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))
    _replace(tmp, path)


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file written by `save_tensors`; FileNotFoundError names a missing path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc


def save_text(text: str, path: str | Path) -> None:
    """Write `text` to `path` atomically."""
    path = Path(path)
    tmp = _atomic_file(path)
    tmp.write_text(text)
    _replace(tmp, path)


def save_json(obj: Any, path: str | Path) -> None:
    """Write `obj` as indented JSON atomically."""
    save_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def load_json(path: str | Path) -> Any:
    """Read a JSON file; FileNotFoundError names a missing path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no JSON file at {path}")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


def save_torch(obj: Any, path: str | Path) -> None:
    """torch.save atomically. Only tensors, numbers, strings and containers: loadable with weights_only."""
    path = Path(path)
    tmp = _atomic_file(path)
    torch.save(obj, tmp)
    _replace(tmp, path)


def load_torch(path: str | Path) -> Any:
    """torch.load with `weights_only=True` (no arbitrary code from a checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training state at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError ... for damaged files
        raise CheckpointError(f"{path} is not a readable training state: {type(exc).__name__}: {exc}") from exc
