"""Write an outside dataset as our Zarr store, atomically, with a progress bar and a summary."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from diffusion_policy.core.checkpoint import atomic_directory
from diffusion_policy.data.formats.source import EpisodeSource
from diffusion_policy.data.replay_buffer import ReplayBuffer


@dataclass
class ConversionSummary:
    """What a conversion wrote: counts, per-key ``(per-step shape, dtype)``, fps and speed."""

    path: str
    episodes: int
    steps: int
    keys: dict[str, tuple[tuple[int, ...], str]]
    fps: float | None
    seconds: float

    @property
    def frames_per_s(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("inf")

    def table(self) -> str:
        """A plain-text summary for the terminal."""
        lines = [f"{self.path}: {self.episodes} episodes, {self.steps} steps"
                 + (f", {self.fps:g} fps" if self.fps else "")
                 + f"; {self.seconds:.1f} s ({self.frames_per_s:,.0f} frames/s)"]
        width = max(len(k) for k in self.keys)
        lines += [f"  {key:<{width}}  {str(shape):<16} {dtype}" for key, (shape, dtype) in sorted(self.keys.items())]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "episodes": self.episodes, "steps": self.steps, "fps": self.fps,
                "seconds": self.seconds, "frames_per_s": self.frames_per_s,
                "keys": {k: {"shape": list(s), "dtype": d} for k, (s, d) in self.keys.items()}}


def convert(source: EpisodeSource, out: str | Path, *, overwrite: bool = False, progress: bool = True
            ) -> ConversionSummary:
    """Write every episode of ``source`` to a new store at ``out`` (Zarr v3, our chunking and codecs).

    The store is built in a temporary directory beside ``out`` and renamed into place at the end: a
    failed or interrupted conversion leaves nothing at ``out``, and an existing ``out`` is replaced
    only with ``overwrite``. Bad data raises ValueError naming the file, episode, key and frame.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    start = time.perf_counter()
    with atomic_directory(out) as tmp:
        buffer = ReplayBuffer.create(tmp, overwrite=True)
        bar = tqdm(source.episodes(), total=len(source), desc=f"{source.info.format} -> {out.name}", unit="episode",
                   disable=not progress)
        for index, episode in enumerate(bar):
            try:
                buffer.add_episode(episode)
            except (TypeError, ValueError) as err:
                name = f" ({source.info.names[index]})" if index < len(source.info.names) else ""
                raise ValueError(f"{source.info.path}: episode {index}{name}: {err}") from err
            bar.set_postfix(steps=buffer.n_steps, refresh=False)
        if buffer.n_episodes == 0:
            raise ValueError(f"{source.info.path} holds no episodes; nothing to write")
        buffer.update_attrs(source.info.attrs())
        keys = {key: (tuple(int(d) for d in buffer[key].shape[1:]), str(np.dtype(buffer[key].dtype)))
                for key in buffer.keys()}
        summary = ConversionSummary(str(out), buffer.n_episodes, buffer.n_steps, keys, source.info.fps,
                                    time.perf_counter() - start)
    return summary
