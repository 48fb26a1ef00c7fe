"""Training samples ``{"obs": {key: (To, ...)}, "action": (T, Da)}`` drawn from a replay buffer."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from diffusion_policy.data.chunk_cache import ChunkCachedArray, available_memory
from diffusion_policy.data.images import check_image_array, is_image_shape
from diffusion_policy.data.mapped_array import MappedArray, materialize
from diffusion_policy.data.normalizer import Normalizer
from diffusion_policy.data.obs_mapping import ObsMapping, Source
from diffusion_policy.data.replay_buffer import ReplayBuffer
from diffusion_policy.data.sampler import SequenceSampler, split_episodes, split_from_masks

logger = logging.getLogger(__name__)

ACTION_KEY = "action"  # the normalizer key of the action, whatever the buffer calls it


class SequenceDataset(Dataset):
    """Windows of ``horizon`` steps over the training (or validation) episodes of a buffer.

    Item ``i`` is ``{"obs": {key: (To, ...)}, "action": float32 (T, Da)}`` with ``To = n_obs_steps``
    and ``T = horizon``: a low-dim key is float32 ``(To, *shape)``, an image key (per-step ``(H, W, C)``,
    see :mod:`diffusion_policy.data.images`) stays uint8 ``(To, H, W, C)`` so the loader moves a
    quarter of the bytes; the policy scales it to [0, 1]. Windows are padded by repeating edge frames:
    ``pad_before = To - 1`` and ``pad_after = Ta - 1``. Values are returned unnormalised.

    ``obs_keys`` lists the buffer keys the policy observes, or maps each policy key to its source in
    the buffer, and ``action_key`` names (or maps) the action: see :mod:`diffusion_policy.data.obs_mapping`.
    The resolved mapping is ``self.mapping``. A store whose ``masks`` attribute has ``train`` and
    ``valid`` episode lists is split by them instead of ``val_ratio``.
    """

    def __init__(
        self,
        buffer: ReplayBuffer,
        obs_keys: Sequence[str] | Mapping[str, Any],
        action_key: str | Mapping[str, Any] = "action",
        *,
        horizon: int,
        n_obs_steps: int,
        n_action_steps: int,
        val_ratio: float = 0.0,
        seed: int = 42,
        max_train_episodes: int | None = None,
        in_memory: bool | None = None,
        cache_bytes: int | None = None,
    ) -> None:
        """``in_memory=True`` copies the mapped keys of a Zarr-backed buffer into memory (fast windows);
        ``False`` keeps image keys on disk, read whole chunks at a time through an LRU cache of
        ``cache_bytes`` (default a quarter of the memory budget, at most 1 GiB) per process; ``None``
        (default) copies when the copy takes at most half of the memory this process may still use
        (:func:`~diffusion_policy.data.chunk_cache.available_memory`), and says which it chose in a log line."""
        if n_obs_steps < 1 or horizon < n_obs_steps:
            raise ValueError(f"need 1 <= {n_obs_steps=} <= {horizon=}")
        if not 1 <= n_action_steps <= horizon:
            raise ValueError(f"need 1 <= {n_action_steps=} <= {horizon=}")
        where = str(buffer.path) if buffer.path is not None else "replay buffer"
        self.mapping = ObsMapping.parse(obs_keys, action_key).resolve(
            {key: buffer[key] for key in buffer.keys()}, where)
        action_shape = self.mapping.action.out_shape(self.mapping.action.shape)
        if len(action_shape) != 1:
            raise ValueError(f"{where}: the action (dataset key {self.mapping.action.key!r}) must be (N, Da) per "
                             f"step after mapping, got per-step shape {action_shape}")
        sources = {**self.mapping.obs, ACTION_KEY: self.mapping.action}
        self.action_dim = int(action_shape[0])
        self.obs_keys = list(self.mapping.obs)
        self.obs_shapes = self.mapping.shapes()
        self.image_keys = [key for key in self.obs_keys if is_image_shape(self.obs_shapes[key])]
        arrays = self._load(buffer, sources, in_memory, cache_bytes, where)
        for key in self.image_keys:
            check_image_array(key, arrays[key], leading=1)
        _check_finite({key: arrays[key] for key in arrays if key not in self.image_keys}, where)
        self.in_memory = not any(isinstance(a, (ChunkCachedArray, MappedArray)) for a in arrays.values())
        train_mask, val_mask = _split(buffer, val_ratio, seed, max_train_episodes, where)
        self.train_episodes, self.val_episodes = np.flatnonzero(train_mask), np.flatnonzero(val_mask)
        self._train_mask, self._val_mask = train_mask, val_mask
        self._episode_ends = buffer.episode_ends
        self._pads = dict(pad_before=n_obs_steps - 1, pad_after=n_action_steps - 1)
        self.sampler = SequenceSampler(self._episode_ends, horizon, episode_mask=train_mask, **self._pads)
        self.n_obs_steps = n_obs_steps
        self._arrays = arrays
        self._episode_lengths = buffer.episode_lengths
        self._first_k = {key: n_obs_steps for key in self.obs_keys}

    def _load(self, buffer: ReplayBuffer, sources: Mapping[str, Source], in_memory: bool | None,
              cache_bytes: int | None, where: str) -> dict[str, Any]:
        """``{policy key or "action": (N, ...) array}``: numpy copies, or chunk-cached on-disk cameras."""
        on_disk = not all(isinstance(buffer[s.key], np.ndarray) for s in sources.values())
        budget = available_memory() // 2
        if on_disk and in_memory is None:
            shapes = {**self.obs_shapes, ACTION_KEY: (self.action_dim,)}
            need = sum(buffer.n_steps * int(np.prod(shapes[name])) *
                       (1 if s.image_range else np.dtype(buffer[s.key].dtype).itemsize) for name, s in sources.items())
            in_memory = need <= budget
            logger.info("%s: the used keys take %.2f GB decoded, %s half the %.2f GB this process may still use: %s",
                        where, need / 1e9, "within" if in_memory else "over", 2 * budget / 1e9,
                        "copied into memory" if in_memory else "image keys read from disk through a chunk cache "
                        "(decoding bound: give the loader workers, e.g. training.num_workers=2)")
        self.cache_bytes = min(budget // 2, 1 << 30) if cache_bytes is None else cache_bytes
        arrays: dict[str, Any] = {}
        for name, source in sources.items():
            array, label = buffer[source.key], f"{where}/data/{source.key}"
            if on_disk and in_memory is False and name in self.image_keys:
                array = ChunkCachedArray(array, self.cache_bytes // max(1, len(self.image_keys)))
                arrays[name] = array if _is_plain(source) else MappedArray(array, source, label)
            elif on_disk or not _is_plain(source):
                arrays[name] = materialize(MappedArray(array, source, label), buffer.n_steps)
            else:
                arrays[name] = array  # a snapshot: later appends stay unseen
        return arrays

    def __len__(self) -> int:
        """Number of windows."""
        return len(self.sampler)

    def __getitem__(self, i: int) -> dict:
        """``{"obs": {key: Tensor (To, ...)}, "action": float32 Tensor (T, Da)}``; images uint8 ``(To, H, W, C)``."""
        window = self.sampler.sample(self._arrays, i, self._first_k)
        action = torch.from_numpy(window.pop(ACTION_KEY).astype(np.float32, copy=False))
        obs = {key: torch.from_numpy(x if key in self.image_keys else x.astype(np.float32, copy=False))
               for key, x in window.items()}
        return {"obs": obs, "action": action}

    def __getitems__(self, ids: Sequence[int]) -> dict:
        """A whole batch ``{"obs": {key: (B, To, ...)}, "action": (B, T, Da)}`` for windows ``ids``.

        In-memory arrays are gathered with one indexed read per key; on-disk cameras go window by window
        through their chunk cache. Equal to stacking ``self[i]`` for ``i in ids``. The DataLoader calls
        this for a batch; its ``collate_fn`` must pass the dict through (the trainer's does).
        """
        if not self.in_memory:
            return default_collate([self[i] for i in ids])
        steps = self.sampler.batch_indices(ids)
        out = {}
        for key, array in self._arrays.items():
            x = array[steps[:, : self._first_k.get(key, steps.shape[1])]]
            out[key] = torch.from_numpy(x if key in self.image_keys else x.astype(np.float32, copy=False))
        action = out.pop(ACTION_KEY)
        return {"obs": out, "action": action}

    def get_validation_dataset(self) -> SequenceDataset:
        """The same windows over the validation episodes (empty when ``val_ratio == 0``); shares the arrays."""
        val = copy.copy(self)
        val.sampler = SequenceSampler(self._episode_ends, self.sampler.horizon, episode_mask=self._val_mask,
                                      **self._pads)
        return val

    def fit_normalizer(self, mode: str | Mapping[str, str] = "limits") -> Normalizer:
        """A :class:`Normalizer` fitted on the training episodes' steps of the low-dim obs keys and ``"action"``.

        Image keys are left out: the policy scales uint8 images to [0, 1] itself.
        """
        steps = np.repeat(self._train_mask, self._episode_lengths)
        keys = [key for key in self.obs_keys if key not in self.image_keys] + [ACTION_KEY]
        return Normalizer.fit({key: np.asarray(self._arrays[key][0 : len(steps)])[steps] for key in keys}, mode=mode)


def _split(buffer: ReplayBuffer, val_ratio: float, seed: int, max_train_episodes: int | None,
           where: str) -> tuple[np.ndarray, np.ndarray]:
    """Train / validation episode masks: the store's ``train`` / ``valid`` masks (robomimic's filter keys)
    when it has them, else a seeded split by ``val_ratio``."""
    masks = buffer.attrs.get("masks") or {}
    if "train" in masks and "valid" in masks:
        logger.info("%s: training on its 'train' mask (%d episodes), validating on 'valid' (%d); val_ratio "
                    "is not used", where, len(masks["train"]), len(masks["valid"]))
        return split_from_masks(buffer.n_episodes, masks, seed, max_train_episodes)
    return split_episodes(buffer.n_episodes, val_ratio, seed, max_train_episodes)


def _is_plain(source: Source) -> bool:
    """Whether ``source`` hands its dataset key over unchanged (no slice, reshape or image conversion)."""
    return source.slice is None and source.reshape is None and source.image_range is None


def _check_finite(arrays: Mapping[str, Any], where: str, block: int = 1 << 16) -> None:
    """Raise if a floating array holds NaN or inf, naming the key and first bad step."""
    for key, arr in arrays.items():
        if np.dtype(arr.dtype).kind != "f":
            continue
        for lo in range(0, int(arr.shape[0]), block):
            values = np.asarray(arr[lo : lo + block])
            bad = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
            if len(bad):
                raise ValueError(f"{where}: {key!r} is not finite at step {lo + int(bad[0])}")
