"""Per-key affine normalisation ``y = x * scale + offset`` fitted per feature (last dimension)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

MODES = ("limits", "gaussian")
_STAT_NAMES = ("scale", "offset", "min", "max", "mean", "std")
_WIDE_ROW = 4096  # values per row of the reshaped view the statistics are reduced over
_BLOCK_ROWS = 256  # wide rows per float64 temporary (~8 MiB) when summing squared deviations


class _KeyStats(nn.Module):
    """Buffers ``(D,)`` of one key: the affine map and the input statistics it came from."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        for name in _STAT_NAMES:
            self.register_buffer(name, torch.zeros(dim))


def _column_reduce(flat: np.ndarray, ufunc: np.ufunc, center: np.ndarray | None = None) -> np.ndarray:
    """Reduce ``flat (N, D)`` over rows to ``(D,)`` with ``ufunc``, or sum ``(x - center)**2`` if given.

    Rows are viewed as ``(N / m, m * D)`` so numpy's inner loops run over ~4096 values, not D (for an
    ``(N, 3)`` image array, tens of times faster than ``x.min(axis=0)``); partial results are folded.
    """
    n, d = flat.shape
    m = max(1, _WIDE_ROW // d)
    k = n // m * m
    parts = [(flat[:k].reshape(-1, m * d), m), (flat[k:], 1)]
    partials = [_reduce_rows(rows, ufunc, center, reps).reshape(-1, d) for rows, reps in parts if len(rows)]
    return ufunc.reduce(np.concatenate(partials), axis=0).astype(np.float64)


def _reduce_rows(rows: np.ndarray, ufunc: np.ufunc, center: np.ndarray | None, reps: int) -> np.ndarray:
    """``(R, W) -> (W,)``; with ``center (W / reps,)`` the sum of squared deviations, in float64 blocks."""
    if center is None:
        return ufunc.reduce(rows, axis=0, dtype=np.float64 if ufunc is np.add else None)
    wide_center = np.tile(center, reps)
    total = np.zeros(rows.shape[1])
    for i in range(0, len(rows), _BLOCK_ROWS):
        dev = np.subtract(rows[i : i + _BLOCK_ROWS], wide_center, dtype=np.float64)
        total += np.square(dev, out=dev).sum(axis=0)
    return total


def _fit_stats(x: np.ndarray, mode: str, range_eps: float) -> dict[str, np.ndarray]:
    """Statistics ``(D,)`` of ``x (..., D)``, reduced over every axis but the last, in float64."""
    flat = x.reshape(-1, x.shape[-1])
    lo, hi = _column_reduce(flat, np.minimum), _column_reduce(flat, np.maximum)
    mean = _column_reduce(flat, np.add) / len(flat)
    std = np.sqrt(_column_reduce(flat, np.add, center=mean) / len(flat))  # two passes: no cancellation
    if mode == "limits":
        span = hi - lo
        # a (near-)constant feature is only shifted: scaling it up would amplify noise
        scale = np.where(span < range_eps, 1.0, 2.0 / np.maximum(span, range_eps))
        offset = np.where(span < range_eps, -(lo + hi) / 2, -1.0 - scale * lo)
    else:
        scale = 1.0 / np.maximum(std, range_eps)
        offset = -mean * scale
    return {"scale": scale, "offset": offset, "min": lo, "max": hi, "mean": mean, "std": std}


class Normalizer(nn.Module):
    """Maps each key's features to a normalised range; inverse with :meth:`unnormalize`.

    Modes: ``limits`` maps each feature's [min, max] to [-1, 1] (a feature with range below
    ``range_eps`` is only shifted so its value maps to 0); ``gaussian`` maps to zero mean, unit std
    (std floored at ``range_eps``). The ``state_dict`` is a flat ``str -> Tensor`` mapping named
    ``params.<key>.<stat>``, so it can be saved with safetensors and restored by :meth:`from_state_dict`.
    """

    def __init__(self, dims: Mapping[str, int] | None = None) -> None:
        """Unfitted buffers for ``{key: D}``; use :meth:`fit` or :meth:`from_state_dict` instead."""
        super().__init__()
        self.params = nn.ModuleDict()
        for key, dim in sorted((dims or {}).items()):  # sorted: independent of state_dict/file order
            if not isinstance(key, str) or not key or "." in key:
                raise ValueError(f"normalizer key {key!r} must be a non-empty str without '.'")
            if hasattr(self.params, key):
                raise ValueError(f"normalizer key {key!r} is reserved (an attribute of nn.ModuleDict)")
            self.params[key] = _KeyStats(dim)

    @classmethod
    def fit(
        cls,
        data: Mapping[str, np.ndarray | torch.Tensor],
        mode: str | Mapping[str, str] = "limits",
        range_eps: float = 1e-4,
    ) -> Normalizer:
        """Fit on ``{key: (..., D)}``; ``mode`` is one mode or ``{key: mode}`` (missing keys: ``limits``)."""
        modes = {key: mode for key in data} if isinstance(mode, str) else {key: "limits" for key in data}
        if not isinstance(mode, str):
            unknown = set(mode) - set(data)
            if unknown:
                raise KeyError(f"modes given for keys {sorted(unknown)} not in data keys {sorted(data)}")
            modes.update(mode)
        arrays = {}
        for key, value in data.items():
            x = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            if modes[key] not in MODES:
                raise ValueError(f"mode {modes[key]!r} for key {key!r} must be one of {MODES}")
            if x.ndim < 1 or x.size == 0:
                raise ValueError(f"data[{key!r}] must be non-empty with >= 1 dims, got shape {x.shape}")
            if not np.isfinite(x).all():
                raise ValueError(f"data[{key!r}] contains NaN or inf")
            arrays[key] = x
        norm = cls({key: x.shape[-1] for key, x in arrays.items()})
        for key, x in arrays.items():
            stats = norm.params[key]
            for name, value in _fit_stats(x, modes[key], range_eps).items():
                getattr(stats, name).copy_(torch.from_numpy(value))
        return norm

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> Normalizer:
        """Rebuild a normalizer from its ``state_dict()`` (e.g. loaded from safetensors)."""
        dims: dict[str, int] = {}
        for name, tensor in state.items():
            parts = name.split(".")
            if len(parts) != 3 or parts[0] != "params" or parts[2] not in _STAT_NAMES:
                raise ValueError(f"unexpected normalizer state entry {name!r}; expected params.<key>.<stat>")
            dims[parts[1]] = int(tensor.shape[-1])
        norm = cls(dims)
        norm.load_state_dict(dict(state))  # strict: every key needs all of its stats
        return norm

    @property
    def keys(self) -> list[str]:
        """Keys this normalizer knows, sorted."""
        return list(self.params.keys())

    def _stats(self, key: str, x: torch.Tensor) -> _KeyStats:
        if key not in self.params:
            raise KeyError(f"normalizer has no key {key!r}; known keys: {self.keys}")
        stats = self.params[key]
        if x.ndim < 1 or x.shape[-1] != stats.scale.shape[0]:
            raise ValueError(f"{key!r}: last dim of input {tuple(x.shape)} must be {stats.scale.shape[0]}")
        return stats

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """``(..., D) -> (..., D)`` normalised."""
        stats = self._stats(key, x)
        return x * stats.scale + stats.offset

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """``(..., D) -> (..., D)``, the inverse of :meth:`normalize`."""
        stats = self._stats(key, x)
        return (x - stats.offset) / stats.scale

    def normalize_dict(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalise every entry whose key this normalizer knows; other entries pass through unchanged."""
        return {key: self.normalize(key, x) if key in self.params else x for key, x in batch.items()}
