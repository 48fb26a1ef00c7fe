"""A saved model directory: `config.json` (kind, format version, typed config), safetensors files, a manifest.

Policies and the image baselines are saved this way. `config.json` is

    {"kind": str, "format_version": 1, "config": {...}}

and nothing else: `read_artifact` refuses other top-level keys, another format version, an unknown
kind, or a config of the wrong shape or types, naming the file and the value, after checking every
file against `MANIFEST.sha256` (core/checkpoint.py).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from diffusion_policy.config_utils import from_dict, to_dict
from diffusion_policy.core.checkpoint import (
    CheckpointError,
    atomic_directory,
    load_json,
    save_json,
    save_tensors,
    verify_manifest,
)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
TOP_LEVEL_KEYS = ("config", "format_version", "kind")
T = TypeVar("T")


def save_artifact(path: str | Path, kind: str, config: Any, tensors: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Write directory `path` atomically: `config.json` for dataclass `config`, and one
    `<name>.safetensors` per entry of `tensors`, with a manifest."""
    with atomic_directory(path, manifest=True) as tmp:
        for name, state in tensors.items():
            save_tensors(state, tmp / f"{name}.safetensors")
        save_json({"kind": kind, "format_version": FORMAT_VERSION, "config": to_dict(config)}, tmp / CONFIG_FILE)


def read_artifact(path: str | Path, kinds: Collection[str]) -> tuple[str, dict[str, Any]]:
    """Check directory `path` (manifest, then `config.json`'s schema) -> (kind, config as a plain dict)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no saved model directory at {path}")
    verify_manifest(path)
    file = path / CONFIG_FILE
    meta = load_json(file)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file} holds a JSON {type(meta).__name__}; expected an object with keys "
                              f"{list(TOP_LEVEL_KEYS)}")
    if sorted(meta) != sorted(TOP_LEVEL_KEYS):
        raise CheckpointError(f"{file} has top-level keys {sorted(meta)}; expected exactly {list(TOP_LEVEL_KEYS)}")
    version = meta["format_version"]
    if type(version) is not int or version != FORMAT_VERSION:
        raise CheckpointError(f"{file} has format_version={version!r}; this version of the package reads "
                              f"format_version={FORMAT_VERSION} (a newer package may read it)")
    if meta["kind"] not in kinds:
        raise CheckpointError(f"{file} holds kind={meta['kind']!r}; expected one of {sorted(kinds)}")
    if not isinstance(meta["config"], dict):
        raise CheckpointError(f"{file} field 'config' is a {type(meta['config']).__name__}; expected an object")
    return meta["kind"], meta["config"]


def config_from(cls: type[T], data: Mapping[str, Any], path: str | Path) -> T:
    """`from_dict(cls, data)` with any error naming the `config.json` of directory `path`."""
    try:
        return from_dict(cls, data)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{Path(path) / CONFIG_FILE}: {exc}") from exc
