"""Camera streams in mp4 files, through PyAV: frames at given timestamps in, frames out.

Decoding is frame-exact by timestamp: the frame whose presentation time lies within ``tolerance_s``
of each asked time (LeRobot's own loader uses 1e-4 s), which needs a constant frame rate without
gaps. AV1 (LeRobot's default, SVT-AV1), H.264 and HEVC all decode through FFmpeg inside PyAV.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_CODEC = "libsvtav1"  # LeRobot's default; its stream codec is "av1"
# Codec options as LeRobot writes them: a key frame every 2 frames, constant quality 30.
CODEC_OPTIONS = {"libsvtav1": {"crf": "30", "preset": "10"}, "libx264": {"crf": "18"}, "libx265": {"crf": "18"}}


def _av() -> Any:
    try:
        import av
    except ImportError as err:
        raise ImportError("videos need PyAV: pip install -e '.[formats]'") from err
    return av


def decode_at(path: Path, times: np.ndarray, where: str, tolerance_s: float = 1e-4) -> np.ndarray:
    """Frames ``(L, H, W, 3)`` uint8 RGB of ``path`` at increasing presentation ``times`` ``(L,)`` in seconds.

    Raises ValueError naming ``where``, the file, the frame and its time when no frame lies within
    ``tolerance_s`` of an asked time (a video with fewer frames than its table rows, or a gap).
    """
    av = _av()
    if not path.exists():
        raise FileNotFoundError(f"{where}: video file {path} does not exist")
    out: list[np.ndarray] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = max(0.0, float(times[0]) - tolerance_s)
        container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
        last = None
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base)
            last = t
            while len(out) < len(times) and t > times[len(out)] + tolerance_s:
                _missing(where, path, len(out), float(times[len(out)]), t)
            if len(out) < len(times) and abs(t - times[len(out)]) <= tolerance_s:
                out.append(frame.to_ndarray(format="rgb24"))
                if len(out) == len(times):
                    break
    if len(out) < len(times):
        raise ValueError(f"{where}: video {path} has fewer frames than the table's rows: none at {times[len(out)]:.4f} "
                         f"s (frame {len(out)} of {len(times)}); its last frame is at "
                         f"{'none' if last is None else f'{last:.4f} s'}")
    return np.stack(out)


def _missing(where: str, path: Path, index: int, wanted: float, seen: float) -> None:
    raise ValueError(f"{where}: video {path} has no frame at {wanted:.4f} s (frame {index}): the next one is at "
                     f"{seen:.4f} s (a gap, or a frame rate other than the table's)")


class VideoWriter:
    """One mp4 stream of RGB frames at ``fps``; episodes appended one after another, each starting on a
    key frame where the encoder allows it. ``close()`` finishes the file."""

    def __init__(self, path: Path, fps: int, height: int, width: int, codec: str = DEFAULT_CODEC) -> None:
        av = _av()
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a page of info lines per stream otherwise
        if codec not in av.codecs_available:
            usable = sorted(c for c in (*CODEC_OPTIONS, "mpeg4") if c in av.codecs_available)
            raise ValueError(f"video codec {codec!r} is not in this PyAV build; try one of {usable}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps, self.frames = path, int(fps), 0
        self._container = av.open(str(path), "w")
        self._stream = self._container.add_stream(codec, rate=self.fps, options=CODEC_OPTIONS.get(codec, {}))
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self._stream.gop_size = 2
        self.codec_name = self._stream.codec_context.codec.canonical_name  # av1, h264, hevc (as LeRobot records)

    def add_episode(self, frames: Iterable[np.ndarray]) -> tuple[float, float]:
        """Append ``(H, W, 3)`` uint8 frames; returns the episode's ``(from, to)`` time in the file in seconds."""
        av = _av()
        first = self.frames
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = self.frames, Fraction(1, self.fps)
            if i == 0:
                frame.pict_type = av.video.frame.PictureType.I
            self._container.mux(self._stream.encode(frame))
            self.frames += 1
        return first / self.fps, self.frames / self.fps

    def close(self) -> None:
        self._container.mux(self._stream.encode(None))
        self._container.close()


def frame_batches(array: Any, lo: int, hi: int, block: int = 256) -> Iterator[np.ndarray]:
    """Frames ``lo..hi-1`` of an ``(N, H, W, 3)`` array, read ``block`` at a time."""
    for start in range(lo, hi, block):
        yield from np.asarray(array[start : min(hi, start + block)])
