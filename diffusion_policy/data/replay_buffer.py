"""Episode storage over Zarr in the original Diffusion Policy layout.

Layout of a store (Zarr format 2 or 3)::

    root/data/<key>          (N_total, ...)  all episodes concatenated along time
    root/meta/episode_ends   (n_episodes,)   int64 cumulative ends, e.g. [50, 120, 200]

Appending writes the data arrays first and ``meta/episode_ends`` last, so a crash mid-append leaves
an incomplete episode that is invisible on reopening (and overwritten by the next append). Image keys
(per-step ``(H, W, C)``, :mod:`diffusion_policy.data.images`) must be uint8 channel-last. Chunking,
codecs and the checks that turn a missing or damaged chunk into an error live in
:mod:`diffusion_policy.data.storage`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr

from diffusion_policy.data.images import check_image_array, is_image_shape
from diffusion_policy.data.storage import (
    ARRAY_CONFIG,
    CheckedArray,
    StoreMetadataError,
    check_chunks_stored,
    chunks_for,
    create_options,
    find_damaged_metadata,
)

ArrayLike = Any  # np.ndarray or CheckedArray: shape, dtype, ndim, arr[lo:hi] -> np.ndarray

_ALLOWED_KINDS = "biuf"  # bool, signed/unsigned int, float


def _validated_ends(raw: np.ndarray, where: str) -> np.ndarray:
    """Check ``meta/episode_ends`` (n_episodes,); drop one trailing 0 left by an interrupted append (with a
    warning), and raise on any other end that does not increase."""
    if raw.ndim != 1 or raw.dtype.kind not in "iu":
        raise ValueError(f"{where}: meta/episode_ends must be 1-D integer, got {raw.shape} {raw.dtype}")
    ends = raw.astype(np.int64)
    lengths = np.diff(ends, prepend=0)
    if len(ends) and lengths[-1] <= 0 and ends[-1] != 0:  # an interrupted append leaves exactly 0 there
        raise ValueError(f"{where}: meta/episode_ends[{len(ends) - 1}]={ends[-1]} is not after the previous end "
                         f"{ends[-2] if len(ends) > 1 else 0}; an interrupted append leaves 0 there, not this")
    if len(ends) and lengths[-1] <= 0:
        warnings.warn(
            f"{where}: dropping trailing episode_ends[{len(ends) - 1}]={ends[-1]} (not after "
            f"{ends[-2] if len(ends) > 1 else 0}); an append was interrupted",
            stacklevel=3,
        )
        ends, lengths = ends[:-1], lengths[:-1]
    bad = np.flatnonzero(lengths <= 0)
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"{where}: episode_ends[{i}]={ends[i]} is not greater than the previous end "
                         f"{ends[i - 1] if i else 0} (empty or negative-length episode {i})")
    return ends


class ReplayBuffer:
    """Episodes of time-major arrays, on disk (Zarr) or in memory (numpy).

    ``buffer[key]`` is the ``(n_steps, ...)`` array of one key over all episodes; episode ``i`` spans
    ``buffer.episode_slice(i)``. Build with :meth:`create`, :meth:`open` or :meth:`in_memory`.
    """

    def __init__(self, root: zarr.Group | None, data: dict[str, Any], ends: np.ndarray,
                 path: Path | None, read_only: bool) -> None:
        """Internal: use :meth:`create`, :meth:`open`, :meth:`in_memory` or :meth:`copy_to_memory`."""
        self._root = root  # None for a numpy-backed buffer
        self._data = data  # numpy buffers may hold spare capacity beyond n_steps
        self._set_ends(ends)
        self.path = path
        self._read_only = read_only
        self._attrs: dict[str, Any] = {}  # a numpy-backed buffer's attributes

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, path: str | Path, *, zarr_format: int = 3, overwrite: bool = False) -> ReplayBuffer:
        """Create an empty on-disk store at ``path``; refuses an existing path unless ``overwrite``."""
        path = Path(path)
        if zarr_format not in (2, 3):
            raise ValueError(f"{zarr_format=} must be 2 or 3")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
        root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
        root.require_group("data")
        root.require_group("meta").create_array(
            "episode_ends", shape=(0,), dtype="int64", **create_options(zarr_format, (4096,))
        )
        return cls(root, {}, np.zeros(0, np.int64), path, read_only=False)

    @classmethod
    def open(cls, path: str | Path, mode: Literal["r", "a"] = "r") -> ReplayBuffer:
        """Open a Zarr v2 or v3 store (or a read-only ``.zip`` of one) for reading (``"r"``) or appending."""
        path = Path(path)
        if mode not in ("r", "a"):
            raise ValueError(f"{mode=} must be 'r' or 'a'")
        if not path.exists():
            raise FileNotFoundError(f"no replay buffer at {path}")
        if path.suffix == ".zip" and mode != "r":
            raise ValueError(f"{path} is a zip store, which opens read-only; got {mode=}")
        try:
            store = zarr.storage.ZipStore(path, mode="r") if path.suffix == ".zip" else str(path)
            root = zarr.open_group(store, mode="r" if mode == "r" else "r+")
            members = sorted(root.keys())
            has_layout = "data" in root and "meta/episode_ends" in root
            data = {key: arr.with_config(ARRAY_CONFIG) for key, arr in root["data"].arrays()} if has_layout else {}
            ends_array = root["meta/episode_ends"] if has_layout else None
        except Exception as exc:  # zarr raises JSON, KeyError, TypeError ... naming no file
            damaged = find_damaged_metadata(path)
            raise StoreMetadataError(f"{path}: cannot open the store: "
                                     f"{damaged or f'{type(exc).__name__}: {exc}'}") from exc
        if not has_layout:
            raise ValueError(f"{path} lacks data/ or meta/episode_ends; members: {members}")
        ends = _validated_ends(CheckedArray(ends_array, f"{path}/meta/episode_ends", ends_array.shape[0])[:],
                               str(path))
        n_steps = int(ends[-1]) if len(ends) else 0
        for key, arr in data.items():
            if arr.shape[0] < n_steps:
                raise ValueError(f"{path}: data/{key} has {arr.shape[0]} steps < episode_ends[-1]={n_steps}")
            check_chunks_stored(f"{path}/data/{key}", arr, n_steps)
        if n_steps and not data:
            raise ValueError(f"{path}: episode_ends reaches {n_steps} steps but data/ has no arrays")
        return cls(root, data, ends, path, read_only=mode == "r")

    @classmethod
    def in_memory(cls) -> ReplayBuffer:
        """An empty, writable, numpy-backed buffer (nothing on disk)."""
        return cls(None, {}, np.zeros(0, np.int64), None, read_only=False)

    def copy_to_memory(self, keys: Sequence[str] | None = None) -> ReplayBuffer:
        """A writable numpy-backed copy of ``keys`` (default all); gathers from it are fast."""
        keys = self._checked_keys(keys)
        data = {key: self._fresh(key, slice(None)) for key in keys}
        return ReplayBuffer(None, data, self._episode_ends.copy(), None, read_only=False)

    # ------------------------------------------------------------------ properties
    @property
    def n_episodes(self) -> int:
        """Number of complete episodes."""
        return len(self._episode_ends)

    @property
    def n_steps(self) -> int:
        """Total steps over all complete episodes."""
        return int(self._episode_ends[-1]) if len(self._episode_ends) else 0

    @property
    def episode_ends(self) -> np.ndarray:
        """Read-only ``(n_episodes,)`` int64 cumulative episode ends."""
        return self._episode_ends

    @property
    def episode_lengths(self) -> np.ndarray:
        """``(n_episodes,)`` int64 steps per episode."""
        return np.diff(self._episode_ends, prepend=0)

    @property
    def read_only(self) -> bool:
        """True when the buffer was opened with mode ``"r"`` (appending raises)."""
        return self._read_only

    @property
    def attrs(self) -> dict[str, Any]:
        """A copy of the store's root attributes (JSON): e.g. ``source`` (where a converted store came
        from), ``fps``, and ``masks`` (``{name: [episode indices]}``; ``train`` / ``valid`` split training)."""
        return dict(self._root.attrs) if self._root is not None else dict(self._attrs)

    def update_attrs(self, values: Mapping[str, Any]) -> None:
        """Merge JSON-serialisable ``values`` into the root attributes."""
        if self._read_only:
            raise PermissionError(f"replay buffer at {self.path} is read-only; open it with mode='a'")
        if self._root is not None:
            self._root.attrs.update(dict(values))
        else:
            self._attrs.update(dict(values))

    def keys(self) -> list[str]:
        """Data keys, sorted."""
        return sorted(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __getitem__(self, key: str) -> ArrayLike:
        """The ``(n_steps, ...)`` array of ``key``; ``arr[lo:hi]`` returns an ``np.ndarray``."""
        if key not in self._data:
            raise KeyError(f"no key {key!r} in replay buffer; available keys: {self.keys()}")
        arr, n = self._data[key], self.n_steps
        if self._root is None:
            return arr[:n]
        return CheckedArray(arr, f"{self.path}/data/{key}", n)

    def __repr__(self) -> str:
        where = self.path if self.path is not None else "memory"
        return (f"ReplayBuffer({where}, n_episodes={self.n_episodes}, n_steps={self.n_steps}, "
                f"keys={self.keys()})")

    # ------------------------------------------------------------------ episodes
    def episode_slice(self, index: int) -> slice:
        """Global step slice of episode ``index`` (negative counts from the end)."""
        n = self.n_episodes
        if not -n <= index < n:
            raise IndexError(f"episode index {index} out of range for {n} episodes")
        index %= n
        start = int(self._episode_ends[index - 1]) if index else 0
        return slice(start, int(self._episode_ends[index]))

    def get_episode(self, index: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Arrays ``(L, ...)`` of episode ``index`` for ``keys`` (default all), as fresh numpy arrays."""
        sl = self.episode_slice(index)
        return {key: self._fresh(key, sl) for key in self._checked_keys(keys)}

    def add_episode(self, episode: Mapping[str, np.ndarray]) -> None:
        """Append one episode: ``{key: (L, ...)}`` with the same ``L >= 1`` for every key.

        Data is written before ``meta/episode_ends``, so the episode becomes visible only when complete.
        """
        if self._read_only:
            raise PermissionError(f"replay buffer at {self.path} is read-only; open it with mode='a'")
        length = self._validate_episode(episode)
        start, end = self.n_steps, self.n_steps + length
        if self.n_episodes == 0:
            self._create_arrays(episode)
        for key, value in episode.items():
            self._write(key, start, end, value)
        self._append_end(end)

    # ------------------------------------------------------------------ internals
    def _set_ends(self, ends: np.ndarray) -> None:
        ends = np.asarray(ends, dtype=np.int64)
        ends.flags.writeable = False
        self._episode_ends = ends

    def _fresh(self, key: str, steps: slice) -> np.ndarray:
        """``self[key][steps]`` as an array no buffer shares (Zarr reads already are; numpy views are not)."""
        values = self[key][steps]
        return values if self._root is not None else values.copy()

    def _checked_keys(self, keys: Sequence[str] | None) -> list[str]:
        if keys is None:
            return self.keys()
        missing = [k for k in keys if k not in self._data]
        if missing:
            raise KeyError(f"keys {missing} not in replay buffer; available keys: {self.keys()}")
        return list(keys)

    def _validate_episode(self, episode: Mapping[str, np.ndarray]) -> int:
        """Check an episode against itself and the existing arrays; return its length ``L``."""
        if not episode:
            raise ValueError("episode is empty: expected a dict of (L, ...) arrays")
        length = None
        for key, value in episode.items():
            if not isinstance(key, str) or not key or "/" in key:
                raise ValueError(f"episode key {key!r} must be a non-empty str without '/'")
            if not isinstance(value, np.ndarray) or value.ndim < 1:
                raise TypeError(f"episode[{key!r}] must be an np.ndarray with >= 1 dims, got "
                                f"{type(value).__name__} of shape {getattr(value, 'shape', None)}")
            if value.dtype.kind not in _ALLOWED_KINDS:
                raise TypeError(f"episode[{key!r}] has dtype {value.dtype}; only bool/int/uint/float")
            if is_image_shape(value.shape[1:]):
                check_image_array(key, value, leading=1)
            if value.shape[0] < 1:
                raise ValueError(f"episode[{key!r}] has length {value.shape[0]}; episodes need >= 1 step")
            if length is None:
                length = value.shape[0]
            elif value.shape[0] != length:
                raise ValueError(f"episode[{key!r}] has length {value.shape[0]}, other keys have {length}")
            if value.dtype.kind == "f":
                bad = np.flatnonzero(~np.isfinite(value.reshape(length, -1)).all(axis=1))
                if len(bad):
                    raise ValueError(f"episode[{key!r}] is not finite at time index {int(bad[0])}")
        if self.n_episodes:
            self._check_schema(episode)
        return int(length)

    def _check_schema(self, episode: Mapping[str, np.ndarray]) -> None:
        if set(episode) != set(self._data):
            raise ValueError(f"episode keys {sorted(episode)} differ from the buffer's keys {self.keys()}")
        for key, value in episode.items():
            arr = self._data[key]
            if value.shape[1:] != arr.shape[1:]:
                raise ValueError(f"episode[{key!r}] per-step shape: expected {arr.shape[1:]}, "
                                 f"got {value.shape[1:]}")
            if value.dtype != arr.dtype:
                raise ValueError(f"episode[{key!r}] dtype: expected {arr.dtype}, got {value.dtype}")

    def _create_arrays(self, episode: Mapping[str, np.ndarray]) -> None:
        """First episode fixes the schema; arrays left by an interrupted first append are replaced."""
        if self._root is None:
            self._data = {key: np.empty((0, *v.shape[1:]), v.dtype) for key, v in episode.items()}
            return
        group = self._root["data"]
        fmt = self._root.metadata.zarr_format
        for key in list(self._data):
            del group[key]
        self._data = {
            key: group.create_array(key, shape=(0, *v.shape[1:]), dtype=v.dtype,
                                    **create_options(fmt, chunks_for(v.shape[1:], v.dtype.itemsize)))
            for key, v in episode.items()
        }

    def _write(self, key: str, start: int, end: int, value: np.ndarray) -> None:
        arr = self._data[key]
        if self._root is not None:
            arr.resize((end, *arr.shape[1:]))  # also drops any tail left by an interrupted append
            arr[start:end] = value
            return
        if arr.shape[0] < end:  # geometric growth keeps repeated appends amortised O(L)
            grown = np.empty((max(end, 2 * arr.shape[0]), *arr.shape[1:]), arr.dtype)
            grown[:start] = arr[:start]
            self._data[key] = arr = grown
        arr[start:end] = value

    def _append_end(self, end: int) -> None:
        n = self.n_episodes
        if self._root is not None:
            ends = self._root["meta/episode_ends"]
            ends.resize((n + 1,))
            ends[n] = end
        self._set_ends(np.append(self._episode_ends, end))
