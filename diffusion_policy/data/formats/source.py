"""What every reader of an outside format gives: episodes of time-major arrays plus metadata."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

Episode = dict[str, np.ndarray]  # {key: (L, ...)}, every key of one episode the same length L


class EpisodeSource(Protocol):
    """An opened outside dataset: ``len(source)`` episodes, read one at a time in order."""

    info: SourceInfo

    def __len__(self) -> int: ...

    def episodes(self) -> Iterator[Episode]:
        """Each episode ``{key: (L, ...)}`` in order; raises ValueError naming file, episode, key and frame."""
        ...

    def close(self) -> None: ...


@dataclass
class SourceInfo:
    """Where a dataset came from and what of it is kept as store attributes.

    ``masks`` maps a split name to episode indices (``train`` / ``valid`` split training); ``fps`` is the
    control rate when the format records one; ``extra`` holds format metadata (e.g. robomimic ``env_args``);
    ``names`` names the episodes as the format does (e.g. ``data/demo_9``), for error messages.
    """

    format: str
    path: str
    fps: float | None = None
    masks: dict[str, list[int]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)

    def attrs(self) -> dict[str, Any]:
        """The store attributes: ``source`` (format, path, extra), ``fps`` and ``masks`` where known."""
        out: dict[str, Any] = {"source": {"format": self.format, "path": self.path, **self.extra}}
        if self.fps is not None:
            out["fps"] = self.fps
        if self.masks:
            out["masks"] = self.masks
        return out
