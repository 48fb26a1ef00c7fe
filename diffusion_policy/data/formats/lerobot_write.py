"""Export a store of ours as a LeRobotDataset v3.0, so it can be shared on the Hugging Face hub.

What is written (the v3.0 layout, see :mod:`~diffusion_policy.data.formats.lerobot_read`):

- ``data/chunk-000/file-YYY.parquet``: every numeric key as a column (numbers exact, their dtype;
  a per-step shape other than ``(n,)`` is flattened, its shape kept in the feature's ``names``),
  plus ``timestamp`` (``frame / fps``), ``frame_index``, ``episode_index``, ``index`` and ``task_index``.
  A new file starts past ~100 MB of rows.
- ``videos/<feature>/chunk-000/file-YYY.mp4``: each camera key, episodes one after another in one
  stream at ``fps`` (AV1 through SVT-AV1, as LeRobot writes it, unless another codec is asked for),
  ``from_timestamp`` / ``to_timestamp`` per episode; a new file past ~200 MB of raw frames.
- ``meta/info.json``, ``meta/episodes/chunk-000/file-000.parquet`` (one row per episode),
  ``meta/tasks.parquet`` (task strings as the pandas index, as LeRobot reads them) and
  ``meta/stats.json`` (min, max, mean, std, count and the 1/10/50/90/99 % quantiles per feature;
  images per channel in [0, 1]).

Names: ``action`` stays ``action``, an image key ``k`` becomes ``observation.images.k``, ``reward``
and ``done`` become ``next.reward`` / ``next.done``, every other key ``k`` becomes ``observation.k``;
reading it back (:func:`~diffusion_policy.data.formats.lerobot_read.store_key`) gives the same keys.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from diffusion_policy.core.checkpoint import atomic_directory
from diffusion_policy.data.formats.video import DEFAULT_CODEC, VideoWriter, frame_batches
from diffusion_policy.data.images import is_image_shape
from diffusion_policy.data.replay_buffer import ReplayBuffer

DATA_FILE_MB, VIDEO_FILE_MB, CHUNKS_SIZE = 100, 200, 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)


def lerobot_name(key: str, image: bool) -> str:
    """The LeRobot feature name of a store key (see the module docstring)."""
    if key == "action":
        return key
    if key in ("reward", "done"):
        return f"next.{key}"
    return f"observation.images.{key}" if image else f"observation.{key}"


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError("writing LeRobot datasets needs pyarrow: pip install -e '.[formats]'") from err
    return pa, pq


def export_lerobot(buffer: ReplayBuffer, out: str | Path, *, fps: int, tasks: list[str] | None = None,
                   robot_type: str = "unknown", codec: str = DEFAULT_CODEC, overwrite: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Write ``buffer`` as a LeRobotDataset v3.0 directory at ``out``, atomically; returns its ``info.json``.

    ``tasks`` gives each episode's task string (default: the store's ``episode_tasks`` attribute, else "").
    """
    pa, pq = _pyarrow()
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    if buffer.n_episodes == 0:
        raise ValueError(f"{buffer.path}: no episodes to export")
    tasks = tasks if tasks is not None else [(t or [""])[0] for t in buffer.attrs.get("source", {}).get(
        "episode_tasks", [[""]] * buffer.n_episodes)]
    if len(tasks) != buffer.n_episodes:
        raise ValueError(f"{len(tasks)} task strings for {buffer.n_episodes} episodes")
    task_list = list(dict.fromkeys(tasks))
    cameras = [k for k in buffer.keys() if is_image_shape(buffer[k].shape[1:])]
    numeric = [k for k in buffer.keys() if k not in cameras]
    names = {k: lerobot_name(k, k in cameras) for k in buffer.keys()}
    features = _features(buffer, numeric, cameras, names, fps)
    with atomic_directory(out) as tmp:
        rows = _write_data(buffer, numeric, names, tasks, task_list, fps, tmp, pa, pq, progress)
        videos = {k: _write_video(buffer, k, names[k], fps, codec, tmp, progress) for k in cameras}
        episodes = []
        for e in range(buffer.n_episodes):
            row = {"episode_index": e, "tasks": [tasks[e]], "length": int(buffer.episode_lengths[e]), **rows[e],
                   "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
            for key, spans in videos.items():
                chunk, file, start, stop = spans["episodes"][e]
                row.update({f"videos/{names[key]}/chunk_index": chunk, f"videos/{names[key]}/file_index": file,
                            f"videos/{names[key]}/from_timestamp": start, f"videos/{names[key]}/to_timestamp": stop})
            episodes.append(row)
        (tmp / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(episodes), tmp / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
        _write_tasks(task_list, tmp / "meta" / "tasks.parquet", pa, pq)
        for key, spans in videos.items():
            features[names[key]]["info"].update(spans["info"])
        info = {"codebase_version": "v3.0", "robot_type": robot_type, "total_episodes": buffer.n_episodes,
                "total_frames": buffer.n_steps, "total_tasks": len(task_list), "chunks_size": CHUNKS_SIZE,
                "data_files_size_in_mb": DATA_FILE_MB, "video_files_size_in_mb": VIDEO_FILE_MB, "fps": int(fps),
                "splits": {"train": f"0:{buffer.n_episodes}"}, "data_path": DATA_PATH,
                "video_path": VIDEO_PATH if cameras else None, "features": features}
        (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=4))
        samples = {key: spans.pop("sample") for key, spans in videos.items()}
        (tmp / "meta" / "stats.json").write_text(json.dumps(_stats(buffer, names, samples), indent=4))
    return info


def _features(buffer: ReplayBuffer, numeric: list[str], cameras: list[str], names: dict[str, str],
              fps: int) -> dict[str, Any]:
    features: dict[str, Any] = {}
    for key in numeric:
        shape = tuple(int(d) for d in buffer[key].shape[1:])
        features[names[key]] = {"dtype": str(np.dtype(buffer[key].dtype)), "shape": [math.prod(shape)],
                                "names": {"shape": list(shape)} if len(shape) != 1 else None}
    for key in cameras:
        h, w, c = (int(d) for d in buffer[key].shape[1:])
        features[names[key]] = {"dtype": "video", "shape": [h, w, c], "names": ["height", "width", "channels"],
                                "info": {"video.height": h, "video.width": w, "video.fps": int(fps),
                                         "video.channels": c, "video.is_depth_map": False, "has_audio": False}}
    for name, dtype in (("timestamp", "float32"), *((n, "int64") for n in ("frame_index", "episode_index", "index",
                                                                          "task_index"))):
        features[name] = {"dtype": dtype, "shape": [1], "names": None}
    return features


def _write_data(buffer: ReplayBuffer, numeric: list[str], names: dict[str, str], tasks: list[str],
                task_list: list[str], fps: int, root: Path, pa: Any, pq: Any, progress: bool) -> list[dict[str, int]]:
    """Episodes' rows into parquet files of ~DATA_FILE_MB; each episode's file and index range."""
    located, batch, batch_bytes, file_index, start = [], [], 0, 0, 0

    def flush() -> None:
        nonlocal batch, batch_bytes, file_index
        path = root / DATA_PATH.format(chunk_index=0, file_index=file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(batch), path)
        batch, batch_bytes, file_index = [], 0, file_index + 1

    for e in tqdm(range(buffer.n_episodes), desc="parquet", unit="episode", disable=not progress):
        episode = buffer.get_episode(e, numeric)
        length = int(buffer.episode_lengths[e])
        columns = {names[k]: _column(v.reshape(length, -1), pa) for k, v in episode.items()}
        frames = np.arange(length)
        columns.update(timestamp=pa.array((frames / fps).astype(np.float32)),
                       frame_index=pa.array(frames.astype(np.int64)), episode_index=pa.array(np.full(length, e)),
                       index=pa.array(np.arange(start, start + length, dtype=np.int64)),
                       task_index=pa.array(np.full(length, task_list.index(tasks[e]), dtype=np.int64)))
        table = pa.table(columns)
        if batch and batch_bytes + table.nbytes > DATA_FILE_MB * 1e6:
            flush()
        batch.append(table)
        batch_bytes += table.nbytes
        located.append({"data/chunk_index": 0, "data/file_index": file_index, "dataset_from_index": start,
                        "dataset_to_index": start + length})
        start += length
    flush()
    return located


def _column(values: np.ndarray, pa: Any) -> Any:
    """``(L, n)`` values -> a column of their own type: plain for n = 1, else fixed-size lists (LeRobot's
    layouts for shape (1,) and (n,) features)."""
    if values.shape[1] == 1:
        return pa.array(values[:, 0])
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _write_video(buffer: ReplayBuffer, key: str, name: str, fps: int, codec: str, root: Path,
                 progress: bool) -> dict[str, Any]:
    """One camera's episodes into mp4 files of ~VIDEO_FILE_MB of raw frames; where each episode lies, and
    the frames at the ``stat_steps`` of ``_stats`` (kept as they pass, so no frame is read twice)."""
    h, w, _ = (int(d) for d in buffer[key].shape[1:])
    frame_bytes, spans, writer, file_index = h * w * 3, [], None, -1
    wanted, sample = set(stat_steps(buffer.n_steps).tolist()), []

    def kept(frames: Iterator[np.ndarray], step: int) -> Iterator[np.ndarray]:
        for i, frame in enumerate(frames, start=step):
            if i in wanted:
                sample.append(frame)
            yield frame

    for e in tqdm(range(buffer.n_episodes), desc=f"video {key}", unit="episode", disable=not progress):
        sl = buffer.episode_slice(e)
        if writer is None or writer.frames and (writer.frames + sl.stop - sl.start) * frame_bytes > VIDEO_FILE_MB * 1e6:
            if writer is not None:
                writer.close()
            file_index += 1
            writer = VideoWriter(root / VIDEO_PATH.format(video_key=name, chunk_index=0, file_index=file_index), fps,
                                 h, w, codec)
        start, stop = writer.add_episode(kept(frame_batches(buffer[key], sl.start, sl.stop), sl.start))
        spans.append((0, file_index, start, stop))
    writer.close()
    return {"episodes": spans, "info": {"video.codec": writer.codec_name, "video.pix_fmt": "yuv420p"},
            "sample": np.stack(sample)}


def _write_tasks(task_list: list[str], path: Path, pa: Any, pq: Any) -> None:
    """``meta/tasks.parquet``: column ``task_index``, the task strings as the pandas index (LeRobot reads
    ``tasks.iloc[i].name``)."""
    pandas_meta = {"index_columns": ["__index_level_0__"],
                   "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                                       "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
                   "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                                "numpy_type": "int64", "metadata": None},
                               {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
                                "numpy_type": "object", "metadata": None}],
                   "attributes": {}, "creator": {"library": "pyarrow", "version": pa.__version__}}
    table = pa.table({"task_index": pa.array(np.arange(len(task_list), dtype=np.int64)),
                      "__index_level_0__": pa.array(task_list, pa.string())})
    pq.write_table(table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), path)


def stat_steps(n_steps: int) -> np.ndarray:
    """The (up to 4096) evenly spaced steps whose camera frames the image statistics are taken from."""
    return np.unique(np.linspace(0, n_steps - 1, min(n_steps, 4096)).astype(int))


def _stats(buffer: ReplayBuffer, names: dict[str, str], samples: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per feature: min, max, mean, std, count and quantiles over all steps (a camera: per channel in
    [0, 1], from its frames at ``stat_steps``, given in ``samples``)."""
    stats = {}
    for key, name in names.items():
        if key in samples:
            values = samples[key].reshape(-1, 3) / 255.0
        else:
            values = np.asarray(buffer[key][:]).reshape(buffer.n_steps, -1).astype(np.float64)
        entry = {"min": values.min(0), "max": values.max(0), "mean": values.mean(0), "std": values.std(0)}
        entry.update({f"q{round(q * 100):02d}": np.quantile(values, q, axis=0) for q in QUANTILES})
        shape = (-1, 1, 1) if key in samples else (-1,)
        stats[name] = {k: np.asarray(v).reshape(shape).tolist() for k, v in entry.items()}
        stats[name]["count"] = [int(len(samples[key]) if key in samples else len(values))]
    return stats
