"""mp4 writing for evaluation videos (H.264 through the ffmpeg binary that imageio-ffmpeg ships).

Frames are streamed to disk as they arrive, so a long episode never holds all of its frames in
memory, and the file only appears under its final name once it is complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v2 as imageio
import numpy as np


class VideoWriter:
    """Append `(H, W, 3)` uint8 frames; `close()` finishes the mp4 and renames it to `path`.

    Every frame must have the first frame's shape. H.264 with yuv420p needs even sides, so an odd
    height or width is padded by one replicated edge row / column (no resampling).
    """

    def __init__(self, path: str | Path, fps: float):
        if fps <= 0:
            raise ValueError(f"{fps=} must be positive")
        self.path = Path(path)
        if self.path.suffix != ".mp4":
            raise ValueError(f"video path {self.path} must end in .mp4")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp.mp4")
        self._fps = fps
        self._writer = None
        self._shape: tuple[int, ...] | None = None
        self.n_frames = 0

    def append(self, frame: np.ndarray) -> None:
        """Add one `(H, W, 3)` uint8 frame."""
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"a video frame must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
        if self._shape is None:
            self._shape = frame.shape
            # macro_block_size=2: imageio would otherwise rescale sides that are not multiples of 16.
            self._writer = imageio.get_writer(self._tmp, format="FFMPEG", fps=self._fps, codec="libx264",
                                              macro_block_size=2)
        elif frame.shape != self._shape:
            raise ValueError(f"frame {self.n_frames} has shape {frame.shape}; the video's frames are {self._shape}")
        pad = ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0))
        self._writer.append_data(np.pad(frame, pad, mode="edge") if any(p[1] for p in pad) else frame)
        self.n_frames += 1

    def close(self) -> Path:
        """Finish the file and move it to `path`; returns `path`."""
        if self._writer is None:
            state = "is already closed" if self.n_frames else "has no frames; an empty video cannot be written"
            raise ValueError(f"video {self.path} {state}")
        self._writer.close()
        self._writer = None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the unfinished file (after an error); a no-op once closed."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._tmp.unlink(missing_ok=True)
