"""Policies: map observation histories `(B, To, ...)` to action chunks `(B, T, Da)`."""

from __future__ import annotations

from pathlib import Path

import torch

from diffusion_policy.core.artifact import read_artifact
from diffusion_policy.policy.base import BasePolicy
from diffusion_policy.policy.config import DiffusionPolicyConfig, PolicyConfig, RegressionPolicyConfig
from diffusion_policy.policy.diffusion_policy import DiffusionPolicy
from diffusion_policy.policy.regression_policy import RegressionPolicy

POLICY_CLASSES: dict[str, type[BasePolicy]] = {cls.kind: cls for cls in (DiffusionPolicy, RegressionPolicy)}


def load_policy(path: str | Path, device: str | torch.device = "cpu") -> BasePolicy:
    """Load any saved policy directory (a checkpoint's `policy/` or a training run's export)."""
    kind, stored = read_artifact(path, POLICY_CLASSES)
    return POLICY_CLASSES[kind].from_artifact(path, stored, device)


__all__ = [
    "BasePolicy",
    "DiffusionPolicy",
    "DiffusionPolicyConfig",
    "PolicyConfig",
    "POLICY_CLASSES",
    "RegressionPolicy",
    "RegressionPolicyConfig",
    "load_policy",
]
