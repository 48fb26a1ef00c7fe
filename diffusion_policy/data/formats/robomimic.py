"""robomimic HDF5 datasets (Mandlekar et al. 2021), the Diffusion Policy paper's main benchmark data.

Layout read (robomimic's documented dataset structure)::

    data                  attrs: total, env_args (JSON string)
    data/demo_<k>/        attrs: num_samples
        actions           (T, Da)
        obs/<key>         (T, ...)   images `*_image` uint8 (T, H, W, 3)
        rewards, dones    (T,)
        next_obs/...      ignored
    mask/<filter>         demo names (bytes), e.g. train / valid

Episodes come in demo order (demo_9 before demo_10). Each episode's keys: every ``obs/<key>`` under
its own name, ``action``, ``reward`` and ``done``. ``env_args`` is kept as metadata (``source.env_args``)
and every mask as the episode indices of its demos (``train`` / ``valid`` split training).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from diffusion_policy.data.formats.source import Episode, SourceInfo

_DEMO = re.compile(r"demo_(\d+)")
_RENAMED = {"actions": "action", "rewards": "reward", "dones": "done"}


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as err:
        raise ImportError("reading robomimic HDF5 needs h5py: pip install -e '.[formats]'") from err
    return h5py


class RobomimicSource:
    """A robomimic HDF5 file opened for reading (see the module docstring for what is read)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no robomimic file at {self.path}")
        self._file = _h5py().File(self.path, "r")
        if "data" not in self._file:
            raise ValueError(f"{self.path} has no 'data' group; top-level members: {sorted(self._file)}")
        data = self._file["data"]
        names = [name for name in data if _DEMO.fullmatch(name)]
        if not names:
            raise ValueError(f"{self.path}: data/ holds no demo_<k> groups; members: {sorted(data)[:10]}")
        self.demos = sorted(names, key=lambda name: int(_DEMO.fullmatch(name).group(1)))
        env_args = data.attrs.get("env_args")
        extra = {"env_args": json.loads(env_args)} if env_args is not None else {}
        self.info = SourceInfo("robomimic", str(self.path), masks=self._masks(), extra=extra,
                               names=[f"data/{name}" for name in self.demos])

    def __len__(self) -> int:
        return len(self.demos)

    def _masks(self) -> dict[str, list[int]]:
        if "mask" not in self._file:
            return {}
        index = {name: i for i, name in enumerate(self.demos)}
        masks = {}
        for name, dataset in self._file["mask"].items():
            demos = [d.decode() if isinstance(d, bytes) else str(d) for d in dataset[:]]
            unknown = [d for d in demos if d not in index]
            if unknown:
                raise ValueError(f"{self.path}: mask/{name} names demo {unknown[0]!r}, which does not exist "
                                 f"({len(unknown)} unknown; the file has {self.demos[0]} .. {self.demos[-1]})")
            masks[name] = sorted(index[d] for d in demos)
        return masks

    def episodes(self) -> Iterator[Episode]:
        data = self._file["data"]
        for name in self.demos:
            where = f"{self.path}: data/{name}"
            group = data[name]
            if "actions" not in group:
                raise ValueError(f"{where} has no 'actions'; it has {sorted(group)}")
            episode = {_RENAMED[key]: np.asarray(group[key]) for key in _RENAMED if key in group}
            for key, dataset in (group["obs"].items() if "obs" in group else []):
                if key in episode:
                    raise ValueError(f"{where}: observation key {key!r} clashes with {sorted(_RENAMED.values())}")
                episode[key] = np.asarray(dataset)
            yield episode

    def close(self) -> None:
        self._file.close()
