"""Fixed-length windows over episodes, with edge-frame padding, and train/val episode splits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from diffusion_policy.data.replay_buffer import ArrayLike


def split_episodes(
    n_episodes: int, val_ratio: float, seed: int, max_train_episodes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split whole episodes into boolean masks ``(train (n_episodes,), val (n_episodes,))``.

    ``round(n_episodes * val_ratio)`` episodes go to validation, but at least one when ``val_ratio > 0``
    and ``n_episodes > 1``, and never all of them. ``max_train_episodes`` then keeps a random subset of
    the training episodes. Deterministic given ``seed``; the two masks are disjoint.
    """
    if n_episodes < 0:
        raise ValueError(f"{n_episodes=} must be >= 0")
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"{val_ratio=} must be in [0, 1)")
    if max_train_episodes is not None and max_train_episodes < 1:
        raise ValueError(f"{max_train_episodes=} must be >= 1 or None")
    rng = np.random.default_rng(seed)
    val = np.zeros(n_episodes, dtype=bool)
    if val_ratio > 0 and n_episodes > 1:
        n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
        val[rng.choice(n_episodes, size=n_val, replace=False)] = True
    train = ~val
    if max_train_episodes is not None and train.sum() > max_train_episodes:
        keep = rng.choice(np.flatnonzero(train), size=max_train_episodes, replace=False)
        train = np.zeros(n_episodes, dtype=bool)
        train[keep] = True
    return train, val


def split_from_masks(
    n_episodes: int, masks: Mapping[str, Sequence[int]], seed: int, max_train_episodes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks ``(train (n_episodes,), val (n_episodes,))`` from a store's ``train`` / ``valid`` episode
    lists (e.g. robomimic's filter keys); ``max_train_episodes`` keeps a seeded random subset of train."""
    def mask(name: str) -> np.ndarray:
        indices = np.asarray(masks[name], dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= n_episodes):
            raise ValueError(f"mask {name!r} names episode {int(indices.max())} of only {n_episodes} episodes")
        out = np.zeros(n_episodes, dtype=bool)
        out[indices] = True
        return out

    train, val = mask("train"), mask("valid")
    if (train & val).any():
        raise ValueError(f"masks 'train' and 'valid' share episodes {np.flatnonzero(train & val)[:5].tolist()}")
    if max_train_episodes is not None and train.sum() > max_train_episodes:
        keep = np.random.default_rng(seed).choice(np.flatnonzero(train), size=max_train_episodes, replace=False)
        train = np.zeros(n_episodes, dtype=bool)
        train[keep] = True
    return train, val


class SequenceSampler:
    """All windows of ``horizon`` steps over the selected episodes.

    For an episode of length ``L`` starting at global step ``s``, window start offsets run from
    ``-pad_before`` to ``L - horizon + pad_after`` inclusive; indices falling outside the episode are
    clipped to its first/last step, i.e. padding repeats the edge frames.
    """

    def __init__(
        self,
        episode_ends: np.ndarray,
        horizon: int,
        pad_before: int = 0,
        pad_after: int = 0,
        episode_mask: np.ndarray | None = None,
    ) -> None:
        """``episode_ends`` ``(n_episodes,)`` cumulative ends; ``episode_mask`` ``(n_episodes,)`` bool."""
        ends = np.asarray(episode_ends)
        if ends.ndim != 1 or (len(ends) and ends.dtype.kind not in "iu"):
            raise ValueError(f"episode_ends must be a 1-D integer array, got shape {ends.shape} {ends.dtype}")
        ends = ends.astype(np.int64)
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        if np.any(ends <= starts):
            bad = int(np.flatnonzero(ends <= starts)[0])
            raise ValueError(f"episode_ends must be strictly increasing and > 0, "
                             f"got episode_ends[{bad}]={ends[bad]}")
        if horizon < 1:
            raise ValueError(f"{horizon=} must be >= 1")
        for name, pad in (("pad_before", pad_before), ("pad_after", pad_after)):
            if not 0 <= pad < horizon:
                raise ValueError(f"{name}={pad} must be in [0, {horizon=})")
        mask = np.ones(len(ends), bool) if episode_mask is None else np.asarray(episode_mask)
        if mask.dtype != bool or mask.shape != ends.shape:
            raise ValueError(f"episode_mask must be bool {ends.shape}, got {mask.dtype} {mask.shape}")
        self.horizon = horizon
        counts = np.where(mask, np.maximum(0, ends - starts - horizon + pad_before + pad_after + 1), 0)
        episode = np.repeat(np.arange(len(ends)), counts)
        first_window = np.cumsum(counts) - counts  # index of each episode's first window
        offset = np.arange(counts.sum(), dtype=np.int64) - first_window[episode] - pad_before
        self._window_start = starts[episode] + offset  # may precede the episode start (padding)
        self._episode_first = starts[episode]
        self._episode_last = ends[episode] - 1
        self._arange = np.arange(horizon, dtype=np.int64)

    def __len__(self) -> int:
        """Number of windows."""
        return len(self._window_start)

    def indices(self, i: int) -> np.ndarray:
        """``(horizon,)`` int64 global step indices of window ``i``, clipped to its episode's steps."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"window index {i} out of range for {n} windows")
        idx = self._arange + self._window_start[i]
        np.maximum(idx, self._episode_first[i], out=idx)  # in place: np.clip costs several times more here
        return np.minimum(idx, self._episode_last[i], out=idx)

    def batch_indices(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """``(len(ids), horizon)`` int64 global step indices of windows ``ids``, each clipped to its episode."""
        ids = np.asarray(ids, dtype=np.int64)
        n = len(self)
        if ids.ndim != 1 or (len(ids) and (ids.min() < -n or ids.max() >= n)):
            bad = ids.reshape(-1)[(ids.reshape(-1) < -n) | (ids.reshape(-1) >= n)]
            raise IndexError(f"window indices {bad[:5].tolist()} out of range for {n} windows (need a 1-D list)")
        idx = self._window_start[ids, None] + self._arange
        np.maximum(idx, self._episode_first[ids, None], out=idx)
        return np.minimum(idx, self._episode_last[ids, None], out=idx)

    def sample(
        self, arrays: Mapping[str, ArrayLike], i: int, first_k: Mapping[str, int] | None = None
    ) -> dict[str, np.ndarray]:
        """Window ``i`` of every array: ``{key: (horizon, ...)}``, or ``(first_k[key], ...)`` frames.

        Each array is read once over the contiguous range the window touches, then indexed in memory,
        so numpy and Zarr arrays both work.
        """
        first_k = first_k or {}
        for key, k in first_k.items():
            if key not in arrays:
                raise KeyError(f"first_k key {key!r} not among arrays {sorted(arrays)}")
            if not 1 <= k <= self.horizon:
                raise ValueError(f"first_k[{key!r}]={k} must be in [1, {self.horizon}]")
        idx = self.indices(i)
        lo = int(idx[0])
        local = idx - lo
        out = {}
        for key, arr in arrays.items():
            k = first_k.get(key, self.horizon)
            hi = lo + int(local[k - 1]) + 1  # indices are non-decreasing
            out[key] = np.asarray(arr[lo:hi])[local[:k]]
        return out
