"""Training samples ``{"obs": {key: (To, ...)}, "action": (T, Da)}`` drawn from a replay buffer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from diffusion_policy.data.images import check_image_array, is_image_shape
from diffusion_policy.data.normalizer import Normalizer
from diffusion_policy.data.replay_buffer import ReplayBuffer
from diffusion_policy.data.sampler import SequenceSampler, split_episodes

ACTION_KEY = "action"  # the normalizer key of the action, whatever the buffer calls it


class SequenceDataset(Dataset):
    """Windows of ``horizon`` steps over the training (or validation) episodes of a buffer.

    Item ``i`` is ``{"obs": {key: (To, ...)}, "action": float32 (T, Da)}`` with ``To = n_obs_steps``
    and ``T = horizon``: a low-dim key is float32 ``(To, D)``, an image key (per-step ``(H, W, C)``,
    see :mod:`diffusion_policy.data.images`) stays uint8 ``(To, H, W, C)`` so the loader moves a
    quarter of the bytes; the policy scales it to [0, 1]. Windows are padded by repeating edge frames:
    ``pad_before = To - 1`` and ``pad_after = Ta - 1``. Values are returned unnormalised.
    """

    def __init__(
        self,
        buffer: ReplayBuffer,
        obs_keys: Sequence[str],
        action_key: str = "action",
        *,
        horizon: int,
        n_obs_steps: int,
        n_action_steps: int,
        val_ratio: float = 0.0,
        seed: int = 42,
        max_train_episodes: int | None = None,
        in_memory: bool = True,
        _episode_mask: np.ndarray | None = None,
    ) -> None:
        """``in_memory`` copies the used keys of a Zarr-backed buffer to numpy (Zarr window reads are slow).

        ``_episode_mask`` ``(n_episodes,)`` bool overrides which episodes are sampled (validation).
        """
        if n_obs_steps < 1 or horizon < n_obs_steps:
            raise ValueError(f"need 1 <= {n_obs_steps=} <= {horizon=}")
        if not 1 <= n_action_steps <= horizon:
            raise ValueError(f"need 1 <= {n_action_steps=} <= {horizon=}")
        obs_keys = list(obs_keys)
        if ACTION_KEY in obs_keys:
            raise ValueError(f"obs key {ACTION_KEY!r} is reserved for the action in the normalizer")
        keys = [*obs_keys, action_key]
        for key in keys:
            if key not in buffer:
                raise KeyError(f"key {key!r} not in replay buffer; available keys: {buffer.keys()}")
        if len(buffer[action_key].shape) != 2:
            raise ValueError(f"action {action_key!r} must be (N, Da), got shape {buffer[action_key].shape}")
        self.image_keys = [key for key in obs_keys if is_image_shape(buffer[key].shape[1:])]
        for key in self.image_keys:
            check_image_array(key, buffer[key], leading=1)
        on_disk = not all(isinstance(buffer[key], np.ndarray) for key in keys)
        self._buffer = buffer.copy_to_memory(keys) if in_memory and on_disk else buffer
        _check_finite(self._buffer, keys)

        self._params = dict(obs_keys=obs_keys, action_key=action_key, horizon=horizon,
                            n_obs_steps=n_obs_steps, n_action_steps=n_action_steps, val_ratio=val_ratio,
                            seed=seed, max_train_episodes=max_train_episodes)
        train_mask, val_mask = split_episodes(buffer.n_episodes, val_ratio, seed, max_train_episodes)
        self._train_mask, self._val_mask = train_mask, val_mask
        self.train_episodes, self.val_episodes = np.flatnonzero(train_mask), np.flatnonzero(val_mask)
        self.sampler = SequenceSampler(
            buffer.episode_ends, horizon, pad_before=n_obs_steps - 1, pad_after=n_action_steps - 1,
            episode_mask=train_mask if _episode_mask is None else _episode_mask,
        )
        self.obs_keys, self.action_key, self.n_obs_steps = obs_keys, action_key, n_obs_steps
        self.obs_shapes = {key: tuple(self._buffer[key].shape[1:]) for key in obs_keys}
        self.action_dim = int(self._buffer[action_key].shape[1])
        self._arrays = {key: self._buffer[key] for key in keys}  # a snapshot: later appends stay unseen
        self._episode_lengths = self._buffer.episode_lengths
        self._first_k = {key: n_obs_steps for key in obs_keys}

    def __len__(self) -> int:
        """Number of windows."""
        return len(self.sampler)

    def __getitem__(self, i: int) -> dict:
        """``{"obs": {key: Tensor (To, ...)}, "action": float32 Tensor (T, Da)}``; images uint8 ``(To, H, W, C)``."""
        window = self.sampler.sample(self._arrays, i, self._first_k)
        action = torch.from_numpy(window.pop(self.action_key).astype(np.float32, copy=False))
        obs = {key: torch.from_numpy(x if key in self.image_keys else x.astype(np.float32, copy=False))
               for key, x in window.items()}
        return {"obs": obs, "action": action}

    def get_validation_dataset(self) -> SequenceDataset:
        """The same windows over the validation episodes (empty when ``val_ratio == 0``)."""
        return SequenceDataset(self._buffer, in_memory=False, _episode_mask=self._val_mask, **self._params)

    def fit_normalizer(self, mode: str | Mapping[str, str] = "limits") -> Normalizer:
        """A :class:`Normalizer` fitted on the training episodes' steps of the low-dim obs keys and ``"action"``.

        Image keys are left out: the policy scales uint8 images to [0, 1] itself.
        """
        steps = np.repeat(self._train_mask, self._episode_lengths)
        data = {key: self._arrays[key][: len(steps)][steps] for key in self.obs_keys if key not in self.image_keys}
        data[ACTION_KEY] = self._arrays[self.action_key][: len(steps)][steps]
        return Normalizer.fit(data, mode=mode)


def _check_finite(buffer: ReplayBuffer, keys: Sequence[str]) -> None:
    """Raise if a floating array of ``keys`` holds NaN or inf, naming the key and first bad step."""
    for key in keys:
        arr = buffer[key]
        if arr.dtype.kind != "f":
            continue
        values = arr[:]
        bad = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
        if len(bad):
            raise ValueError(f"buffer[{key!r}] is not finite at step {int(bad[0])}")
