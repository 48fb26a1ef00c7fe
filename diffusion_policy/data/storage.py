"""How replay-buffer arrays lie on disk (chunks, codecs) and how damage to them is caught.

Zarr fails quietly in two ways this module closes: a chunk file that is missing reads as the fill
value (a black image, zeros), and a damaged chunk fails with a codec error that names neither the
array nor the steps. Every chunk is therefore stored, even one equal to the fill value, so a missing
file means damage (:func:`check_chunks_stored`), and reads go through :class:`CheckedArray`, whose
errors name the array and the step range of the chunk that cannot be decoded.
"""

from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path
from typing import Any, NoReturn

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.sync import sync

# Chunks hold ~1 MiB of whole steps, images too (37 frames of 96x96x3). On Push-T frames, 37-frame
# chunks wrote 2.6x and read whole arrays (what copy_to_memory does) 5.8x faster than 4-frame chunks,
# while a random 2-frame window read straight from Zarr was only ~10% slower (Zarr's per-read overhead
# dominates the decode). zstd compressed 137x against lz4's 39x at about the same speed.
# Numbers: benchmarks/images.json, from scripts/benchmark_images.py.
_CHUNK_BYTES = 1 << 20
# Zarr skips writing chunks equal to the fill value by default; storing all of them is what lets a
# missing file be told apart from a chunk of zeros; the array attribute `every_chunk_stored` says so.
ARRAY_CONFIG = {"write_empty_chunks": True}


class CorruptChunkError(ValueError):
    """A chunk of a stored array is missing or cannot be decoded; the message names array and steps."""


class StoreMetadataError(ValueError):
    """A store's metadata (zarr.json, .zarray, .zgroup, .zattrs) is damaged; the message names the file."""


METADATA_FILES = ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")


def find_damaged_metadata(path: Path) -> str | None:
    """"<file>: <JSON error>" for the first metadata file under directory store `path` that is not a JSON
    object, or None if all are (a zip store is not searched)."""
    if not path.is_dir():
        return None
    for file in sorted(f for f in path.rglob("*") if f.name in METADATA_FILES):
        try:
            parsed = json.loads(file.read_bytes())
        except (UnicodeDecodeError, ValueError) as exc:
            return f"{file}: not valid JSON ({exc})"
        if not isinstance(parsed, dict):
            return f"{file}: a JSON {type(parsed).__name__}, not an object"
    return None


def chunks_for(step_shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunk shape for an array with per-step shape `step_shape`: ~1 MiB of whole steps, split along time only."""
    step_bytes = max(1, itemsize * int(np.prod(step_shape, dtype=np.int64)))
    return (max(1, _CHUNK_BYTES // step_bytes), *step_shape)


def create_options(zarr_format: int, chunks: tuple[int, ...]) -> dict[str, Any]:
    """`create_array` keyword arguments: `chunks`, Blosc/zstd with byte shuffle, every chunk stored.

    Format 3 adds a CRC32C after compression: it catches a truncated or altered chunk even where
    Blosc stored the bytes uncompressed and would decode a cut file without complaint. Format 2 has
    no place for it after the compressor, so format 2 stores rely on Blosc's own checks.
    """
    common = {"chunks": chunks, "config": ARRAY_CONFIG, "attributes": {"every_chunk_stored": True}}
    if zarr_format == 2:
        return {**common, "compressors": numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)}
    # "." keeps chunk files in one directory rather than one per chunk: listing 6250 chunks
    # (check_chunks_stored) took 0.23 s instead of 0.85 s.
    return {**common, "compressors": [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), Crc32cCodec()],
            "chunk_key_encoding": {"name": "default", "separator": "."}}


class CheckedArray:
    """Read-only view of the first `n` steps of a Zarr array whose decode errors name key and steps.

    Indexing takes an int or a slice along time (then anything along the other axes) and returns an
    `np.ndarray`; a step range beyond `n` (the tail of an interrupted append) stays hidden.
    """

    def __init__(self, array: zarr.Array, name: str, n: int) -> None:
        self._array, self.name, self._n = array, name, n
        self.shape = (n, *array.shape[1:])
        self.dtype = array.dtype
        self.ndim = array.ndim

    def __len__(self) -> int:
        return self._n

    @property
    def chunk_steps(self) -> int:
        """Steps per stored chunk (per shard when sharded): the unit a read decodes."""
        return int((self._array.shards or self._array.chunks)[0])

    def __getitem__(self, key: Any) -> np.ndarray:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(first, slice):
            first = slice(*first.indices(self._n))
            steps = range(first.start, first.stop, first.step)
        elif isinstance(first, (int, np.integer)):
            if not -self._n <= first < self._n:
                raise IndexError(f"index {first} out of range for {self._n} steps")
            first = int(first) % self._n
            steps = range(first, first + 1)
        else:
            raise TypeError(f"only int or slice indexing along time is supported, got {type(first).__name__}")
        try:
            return self._array[(first, *rest)]
        except Exception as error:
            if not steps:
                raise
            self._raise_for_bad_chunk(min(steps[0], steps[-1]), max(steps[0], steps[-1]) + 1, error)

    def _raise_for_bad_chunk(self, lo: int, hi: int, error: Exception) -> NoReturn:
        """Decode steps `[lo, hi)` chunk by chunk to name the first bad one; re-raise `error` if none is."""
        length = self._array.chunks[0]
        for chunk in range(lo // length, (hi - 1) // length + 1):
            start, stop = chunk * length, min((chunk + 1) * length, self._array.shape[0])
            try:
                self._array[start:stop]
            except Exception as chunk_error:
                raise CorruptChunkError(f"{self.name}: steps {start}-{stop - 1} (chunk {chunk}) cannot be decoded: "
                                        f"{type(chunk_error).__name__}: {chunk_error}") from chunk_error
        raise error


def check_chunks_stored(name: str, array: zarr.Array, n_steps: int) -> None:
    """Raise `CorruptChunkError` naming the steps whose chunk (or shard) file is missing from the store.

    Only a warning for an array without the `every_chunk_stored` attribute (written by other code):
    its writer may have skipped chunks equal to the fill value, which then read correctly.

    One listing of the array's files: 0.02 s for 27k Push-T frames in 730 chunks
    (benchmarks/images.json, `open_check`).
    """
    if n_steps == 0:
        return
    grid = array.shards or array.chunks
    counts = [-(-n_steps // grid[0]), *(-(-size // step) for size, step in zip(array.shape[1:], grid[1:]))]
    stored = _stored_keys(array)
    missing = [coords for coords in itertools.product(*map(range, counts))
               if array.metadata.encode_chunk_key(coords) not in stored]
    if missing:
        chunk = missing[0][0]
        start, stop = chunk * grid[0], min((chunk + 1) * grid[0], n_steps)
        message = (f"{name}: steps {start}-{stop - 1} (chunk {chunk}) have no chunk file "
                   f"({len(missing)} of {int(np.prod(counts))} chunks missing, first {missing[0]}); "
                   f"Zarr would read them as the fill value {array.fill_value}")
        if array.attrs.get("every_chunk_stored"):
            raise CorruptChunkError(message)
        warnings.warn(f"{message}, which is right only if its writer skipped chunks equal to the fill value",
                      stacklevel=3)


def _stored_keys(array: zarr.Array) -> set[str]:
    """Store keys under `array`, relative to it (chunk keys such as `c.3.0.0.0` or `3.0.0.0`)."""
    prefix = f"{array.store_path.path}/"

    async def collect() -> set[str]:
        return {key[len(prefix):] async for key in array.store_path.store.list_prefix(prefix)}

    return sync(collect())
