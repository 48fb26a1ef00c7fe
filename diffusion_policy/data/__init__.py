"""Data layer: Zarr replay buffer, window sampler, normalizer and the training dataset."""

from diffusion_policy.data.dataset import SequenceDataset
from diffusion_policy.data.normalizer import Normalizer
from diffusion_policy.data.replay_buffer import ReplayBuffer
from diffusion_policy.data.sampler import SequenceSampler, split_episodes

__all__ = ["Normalizer", "ReplayBuffer", "SequenceDataset", "SequenceSampler", "split_episodes"]
