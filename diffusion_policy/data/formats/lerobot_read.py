"""LeRobotDataset v2.1 and v3.0 (Hugging Face LeRobot: parquet tables + mp4 videos), read as episodes.

Layouts (``meta/info.json`` names the version in ``codebase_version`` and the file templates):

- **v3.0**: ``data/chunk-XXX/file-YYY.parquet`` and ``videos/<key>/chunk-XXX/file-YYY.mp4`` each hold
  many episodes; ``meta/episodes/chunk-XXX/file-YYY.parquet`` (one row per episode, in order) locates
  an episode's rows (``dataset_from_index`` .. ``dataset_to_index``) and, per video key, its file and
  ``from_timestamp`` in it; ``meta/tasks.parquet`` holds the task strings.
- **v2.1** (and v2.0): one parquet and one mp4 per episode at the templated paths;
  ``meta/episodes.jsonl`` and ``meta/tasks.jsonl``.

A row's video frame is the one at ``from_timestamp + timestamp`` (v3.0) or ``timestamp`` (v2.x),
decoded frame-exact (:func:`~diffusion_policy.data.formats.video.decode_at`). ``dtype: image``
features are decoded from their stored bytes. Keys: dots are not Zarr-friendly, so a feature name
loses its ``observation.images.``, ``observation.`` or ``next.`` prefix and its other dots become
``_`` (``observation.state`` -> ``state``, ``observation.images.top`` -> ``top``, ``action`` ->
``action``, ``next.reward`` -> ``reward``); :func:`store_key` is the rule. ``fps``, the per-episode task
strings and the renaming are kept as store attributes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from diffusion_policy.data.formats.source import Episode, SourceInfo
from diffusion_policy.data.formats.video import decode_at

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
_PREFIXES = ("observation.images.", "observation.", "next.")


def store_key(feature: str) -> str:
    """The store key of a LeRobot feature name (see the module docstring)."""
    for prefix in _PREFIXES:
        if feature.startswith(prefix) and len(feature) > len(prefix):
            feature = feature[len(prefix):]
            break
    return feature.replace(".", "_").replace("/", "_")


def _pyarrow() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError("reading LeRobot datasets needs pyarrow: pip install -e '.[formats]'") from err
    return pq


class LeRobotSource:
    """A local LeRobotDataset directory opened for reading (see the module docstring)."""

    def __init__(self, root: str | Path, tolerance_s: float = 1e-4) -> None:
        self.root, self.tolerance_s = Path(root), tolerance_s
        info_path = self.root / "meta" / "info.json"
        if not info_path.exists():
            raise FileNotFoundError(f"{self.root} is not a LeRobotDataset: no meta/info.json")
        self.meta = json.loads(info_path.read_text())
        version = str(self.meta.get("codebase_version"))
        if version not in SUPPORTED_VERSIONS:
            raise ValueError(f"{info_path}: codebase_version {version!r} is not supported; this reader knows "
                             f"{list(SUPPORTED_VERSIONS)}")
        self.v3 = version.startswith("v3")
        self.fps = self.meta["fps"]
        features = self.meta["features"]
        self.video_keys = [k for k, f in features.items() if f.get("dtype") == "video"]
        self.image_keys = [k for k, f in features.items() if f.get("dtype") == "image"]
        self.numeric_keys = [k for k, f in features.items() if k not in BOOKKEEPING
                             and f.get("dtype") not in ("video", "image", "string")]
        self.keys = {k: store_key(k) for k in [*self.numeric_keys, *self.image_keys, *self.video_keys]}
        clashes = sorted({v for v in self.keys.values() if list(self.keys.values()).count(v) > 1})
        if clashes:
            raise ValueError(f"{info_path}: features {sorted(k for k, v in self.keys.items() if v in clashes)} "
                             f"would share the store key(s) {clashes}")
        tasks = self._tasks()
        self.episodes_meta = self._episodes()
        self.info = SourceInfo(
            "lerobot", str(self.root), fps=float(self.fps),
            extra={"codebase_version": version, "robot_type": self.meta.get("robot_type"), "keys": self.keys,
                   "tasks": tasks, "episode_tasks": [list(e.get("tasks") or []) for e in self.episodes_meta]},
            names=[f"episode_index {e['episode_index']}" for e in self.episodes_meta])
        self._table: tuple[Path, Any] | None = None

    def __len__(self) -> int:
        return len(self.episodes_meta)

    # ------------------------------------------------------------------ metadata
    def _tasks(self) -> list[str]:
        if self.v3:
            table = _pyarrow().read_table(self.root / "meta" / "tasks.parquet")
            names = table.column_names
            column = "task" if "task" in names else "__index_level_0__" if "__index_level_0__" in names else None
            if column is None:
                raise ValueError(f"{self.root}/meta/tasks.parquet has no task strings; columns {names}")
            order = np.argsort(table.column("task_index").to_numpy())
            return [str(table.column(column)[int(i)]) for i in order]
        rows = _jsonl(self.root / "meta" / "tasks.jsonl")
        return [r["task"] for r in sorted(rows, key=lambda r: r["task_index"])]

    def _episodes(self) -> list[dict[str, Any]]:
        if not self.v3:
            rows = sorted(_jsonl(self.root / "meta" / "episodes.jsonl"), key=lambda r: r["episode_index"])
            size = int(self.meta.get("chunks_size", 1000))
            for row in rows:
                chunk = row["episode_index"] // size
                row["data_file"] = self.root / self.meta["data_path"].format(
                    episode_chunk=chunk, episode_index=row["episode_index"])
                row["videos"] = {key: (self.root / self.meta["video_path"].format(
                    episode_chunk=chunk, video_key=key, episode_index=row["episode_index"]), 0.0)
                    for key in self.video_keys}
            return rows
        files = sorted((self.root / "meta" / "episodes").glob("*/*.parquet"))
        if not files:
            raise FileNotFoundError(f"{self.root}: no meta/episodes/*/*.parquet")
        rows = [row for f in files for row in _pyarrow().read_table(f).to_pylist()]
        for position, row in enumerate(rows):
            if row["episode_index"] != position:
                raise ValueError(f"{self.root}/meta/episodes: row {position} holds episode_index "
                                 f"{row['episode_index']}; rows must be episodes 0, 1, 2, ... in order")
            row["data_file"] = self.root / self.meta["data_path"].format(
                chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
            row["videos"] = {key: (self.root / self.meta["video_path"].format(
                video_key=key, chunk_index=row[f"videos/{key}/chunk_index"],
                file_index=row[f"videos/{key}/file_index"]), float(row[f"videos/{key}/from_timestamp"]))
                for key in self.video_keys}
        return rows

    # ------------------------------------------------------------------ episodes
    def episodes(self) -> Iterator[Episode]:
        for meta in self.episodes_meta:
            yield self._episode(meta)

    def _episode(self, meta: dict[str, Any]) -> Episode:
        ep = meta["episode_index"]
        table = self._rows(meta)
        where = f"{meta['data_file']}: episode {ep}"
        length = table.num_rows
        if "length" in meta and meta["length"] != length:
            raise ValueError(f"{where}: the table has {length} rows, the episode metadata says {meta['length']}")
        times = table.column("timestamp").to_numpy().astype(np.float64)
        steps = np.diff(times)
        if (steps <= 0).any():
            frame = int(np.flatnonzero(steps <= 0)[0]) + 1
            raise ValueError(f"{where}: timestamps are not increasing at frame {frame} "
                             f"({times[frame - 1]:.4f} s then {times[frame]:.4f} s)")
        episode = {self.keys[k]: _column(table, k, self.meta["features"][k], where) for k in self.numeric_keys}
        for key in self.image_keys:
            episode[self.keys[key]] = np.stack([_image(cell, f"{where}: {key!r} frame {i}")
                                                for i, cell in enumerate(table.column(key).to_pylist())])
        for key in self.video_keys:
            path, offset = meta["videos"][key]
            episode[self.keys[key]] = decode_at(path, offset + times, f"{where}: {key!r}", self.tolerance_s)
        return episode

    def _rows(self, meta: dict[str, Any]) -> Any:
        """The episode's rows of its data file (the file is read once for all of its episodes)."""
        path = meta["data_file"]
        if not path.exists():
            raise FileNotFoundError(f"episode {meta['episode_index']}: data file {path} does not exist")
        if self._table is None or self._table[0] != path:
            self._table = (path, _pyarrow().read_table(path))
        table = self._table[1]
        if not self.v3:
            return table
        index = table.column("index").to_numpy()
        lo, hi = np.searchsorted(index, [meta["dataset_from_index"], meta["dataset_to_index"]])
        return table.slice(int(lo), int(hi - lo))

    def close(self) -> None:
        self._table = None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _column(table: Any, name: str, feature: dict[str, Any], where: str) -> np.ndarray:
    """A numeric feature's column -> ``(L, *shape)`` numpy array of its dtype."""
    if name not in table.column_names:
        raise ValueError(f"{where}: feature {name!r} of meta/info.json has no column; columns {table.column_names}")
    column = table.column(name).combine_chunks()
    shape = tuple(int(d) for d in feature.get("shape") or (1,))
    values = column.flatten().to_numpy(zero_copy_only=False) if hasattr(column, "flatten") else \
        column.to_numpy(zero_copy_only=False)
    per_step = int(np.prod(shape))
    if values.size != table.num_rows * per_step:
        raise ValueError(f"{where}: feature {name!r} holds {values.size} values for {table.num_rows} rows; its "
                         f"shape {list(shape)} needs {per_step} per row")
    names = feature.get("names")
    if isinstance(names, dict) and isinstance(names.get("shape"), list):  # a shape this package flattened
        shape = tuple(int(d) for d in names["shape"])
    return values.reshape(table.num_rows, *shape).astype(feature.get("dtype", values.dtype), copy=False)


def _image(cell: Any, where: str) -> np.ndarray:
    """An ``image`` feature's stored cell (``{"bytes": png/jpeg, "path": ...}``) -> ``(H, W, 3)`` uint8."""
    import imageio.v3 as iio

    data = cell.get("bytes") if isinstance(cell, dict) else None
    if not data:
        raise ValueError(f"{where}: image cell holds no bytes ({type(cell).__name__})")
    image = iio.imread(io.BytesIO(data))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8, copy=False)
