"""The `Robot` protocol the controller loop drives, and the specs a robot declares.

A robot gives observations `{key: array}` and takes actions `(Da,)`. Real robots implement this
protocol in a few lines over their SDK; `MujocoSimRobot` implements it over a simulated task whose
physics runs in wall-clock time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype of one array; for actions also the bounds `low`/`high` `(Da,)`, or None."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    low: np.ndarray | None = None
    high: np.ndarray | None = None


class Robot(Protocol):
    """What the controller loop needs of a robot. Calls come from the loop's thread only."""

    observation_spec: Mapping[str, ArraySpec]
    action_spec: ArraySpec

    def connect(self) -> None:
        """Open the connection; the robot holds still until the first `send_action`."""
        ...

    def get_observation(self) -> dict[str, np.ndarray]:
        """The newest observation `{key: (*shape)}`, as fresh as the hardware gives it."""
        ...

    def send_action(self, action: np.ndarray) -> None:
        """Command `action` `(Da,)`; it holds until the next command."""
        ...

    def close(self) -> None:
        """Release the hardware; the robot holds its last command (or its rest state)."""
        ...
