"""Observation mapping: where each policy key comes from in a dataset, and in an environment.

A task config names, for every policy observation key and for the action, a *source*: a dataset
key, optionally a ``slice: [start, stop]`` of its last axis and a ``reshape`` of the per-step result::

    obs_keys:
      agent_pos: {key: state, slice: [0, 2]}     # (N, 5) -> (N, 2)
      keypoints: {key: keypoint, reshape: [18]}  # (N, 9, 2) -> (N, 18)
      pixels: {key: img}                         # float32 0..255 (N, 96, 96, 3) -> uint8
    action_key: action

A plain list of keys (``obs_keys: [agent_pos, keypoints]``) maps each key to itself. Float images
(per-step ``(H, W, C)``, see :mod:`diffusion_policy.data.images`) are accepted: their range (0..1 or
0..255) is detected from the data and stated in a log line, or set with ``image_range: 1`` or ``255``;
they become uint8 as the image convention says. The resolved mapping is saved with the policy
(``config.json``), so an evaluator or a robot controller turns its observation into the policy's keys
with :meth:`ObsMapping.observation` without the training config.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from diffusion_policy.data.images import is_image_shape

logger = logging.getLogger(__name__)

IMAGE_RANGES = (1.0, 255.0)
_DETECT_BLOCKS = 16  # evenly spaced blocks of steps read to detect a float image's range


@dataclass(frozen=True)
class Source:
    """One policy key's origin: dataset ``key``, then ``slice`` ``[start, stop)`` of the last axis, then
    ``reshape`` of the per-step result. ``shape`` is the key's per-step shape in the dataset (set by
    :meth:`ObsMapping.resolve`); ``image_range`` is 1 or 255 for a float image (0..1 or 0..255)."""

    key: str
    slice: tuple[int, int] | None = None
    reshape: tuple[int, ...] | None = None
    shape: tuple[int, ...] | None = None
    image_range: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"source key={self.key!r} must be a non-empty string")
        if self.slice is not None:
            sl = tuple(int(v) for v in self.slice)
            if len(sl) != 2 or not 0 <= sl[0] < sl[1]:
                raise ValueError(f"slice={list(self.slice)} of key {self.key!r} must be [start, stop] with "
                                 "0 <= start < stop")
            object.__setattr__(self, "slice", sl)
        for name in ("reshape", "shape"):
            value = getattr(self, name)
            if value is not None:
                dims = tuple(int(d) for d in value)
                if not dims or min(dims) < 1:
                    raise ValueError(f"{name}={list(value)} of key {self.key!r} must be positive dimensions")
                object.__setattr__(self, name, dims)
        if self.image_range is not None and float(self.image_range) not in IMAGE_RANGES:
            raise ValueError(f"image_range={self.image_range!r} of key {self.key!r} must be one of {IMAGE_RANGES}")

    def sliced_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Per-step shape after the slice (before the reshape)."""
        shape = tuple(int(d) for d in shape)
        if self.slice is None:
            return shape
        if not shape:
            raise ValueError(f"key {self.key!r} has scalar steps; it cannot be sliced with {list(self.slice)}")
        if self.slice[1] > shape[-1]:
            raise ValueError(f"slice={list(self.slice)} of key {self.key!r} lies outside its last axis of width "
                             f"{shape[-1]} (per-step shape {shape})")
        return (*shape[:-1], self.slice[1] - self.slice[0])

    def out_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The policy's per-step shape for a dataset per-step ``shape``."""
        sliced = self.sliced_shape(shape)
        if self.reshape is None:
            return sliced
        if math.prod(self.reshape) != math.prod(sliced):
            raise ValueError(f"reshape={list(self.reshape)} of key {self.key!r} does not fit its per-step shape "
                             f"{sliced} ({math.prod(sliced)} values)")
        return self.reshape

    def apply(self, x: np.ndarray, where: str = "") -> np.ndarray:
        """Dataset values ``(*lead, *shape)`` -> policy values ``(*lead, *out_shape)``; float images -> uint8."""
        assert self.shape is not None, "apply() needs a resolved source"
        lead = x.shape[: x.ndim - len(self.shape)]
        if tuple(x.shape[len(lead):]) != self.shape:
            raise ValueError(f"{where or self.key!r}: per-step shape {tuple(x.shape[len(lead):])}, expected "
                             f"{self.shape} of dataset key {self.key!r}")
        if self.slice is not None:
            x = x[..., self.slice[0] : self.slice[1]]
        if self.reshape is not None:
            x = x.reshape(*lead, *self.reshape)
        if self.image_range is not None and x.dtype.kind == "f":
            x = float_image_to_uint8(x, self.image_range, where or self.key)
        return x


def float_image_to_uint8(x: np.ndarray, image_range: float, where: str) -> np.ndarray:
    """Float image values in ``[0, image_range]`` -> uint8 ``round(x * 255 / image_range)``; raise outside."""
    low, high = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0.0 or high > image_range:
        raise ValueError(f"image {where}: float values span [{low:g}, {high:g}], outside its range "
                         f"[0, {image_range:g}]")
    scaled = x * (255.0 / image_range) if image_range != 255.0 else x
    return np.rint(scaled).astype(np.uint8)


def detect_image_range(key: str, array: Any, where: str) -> float:
    """1.0 or 255.0 for a float image array ``(N, H, W, C)``, from blocks of steps spread over it.

    Raises ValueError naming the key and the range seen when the values fit neither 0..1 nor 0..255.
    """
    n = int(array.shape[0])
    block = max(1, min(n, 256))
    starts = np.unique(np.linspace(0, max(n - block, 0), num=min(_DETECT_BLOCKS, n)).astype(int))
    low, high = math.inf, -math.inf
    for start in starts:
        values = np.asarray(array[int(start) : int(start) + block])
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    for image_range in IMAGE_RANGES:
        if 0.0 <= low and high <= image_range:
            return image_range
    raise ValueError(f"{where}: float image {key!r} spans [{low:g}, {high:g}], which fits neither 0..1 nor 0..255; "
                     "set image_range in its source, or rescale it")


def _parse_source(name: str, spec: str | Mapping[str, Any]) -> Source:
    if isinstance(spec, str):
        return Source(spec)
    if not isinstance(spec, Mapping):
        raise TypeError(f"source of {name!r} must be a dataset key or a mapping {{key, slice, reshape, "
                        f"image_range}}, got {type(spec).__name__}: {spec!r}")
    allowed = {"key", "slice", "reshape", "shape", "image_range"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"source of {name!r} has unknown option(s) {unknown}; valid: {sorted(allowed)}")
    if "key" not in spec:
        raise ValueError(f"source of {name!r} needs a dataset key ('key'); got {dict(spec)}")
    return Source(**{k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in spec.items()})


@dataclass
class ObsMapping:
    """Policy observation keys and the action, each from a :class:`Source`.

    ``obs`` maps policy key -> source; ``action`` is the action's source.
    """

    obs: dict[str, Source]
    action: Source = field(default_factory=lambda: Source("action"))

    def __post_init__(self) -> None:
        if not self.obs:
            raise ValueError("the observation mapping names no observation key")
        for name in self.obs:
            if not isinstance(name, str) or not name or "." in name or "/" in name:
                raise ValueError(f"policy observation key {name!r} must be a non-empty name without '.' or '/'")
        if "action" in self.obs:
            raise ValueError("policy observation key 'action' is reserved for the action")

    @classmethod
    def parse(cls, obs_keys: Sequence[str] | Mapping[str, Any], action_key: str | Mapping[str, Any] = "action"
              ) -> ObsMapping:
        """From a task config: ``obs_keys`` a list of keys (each its own source) or ``{policy key: source}``,
        a source being a dataset key or ``{key, slice, reshape, image_range}``; ``action_key`` likewise."""
        if isinstance(obs_keys, str):
            raise TypeError(f"obs_keys={obs_keys!r} must be a list of keys or a mapping, not a string")
        if isinstance(obs_keys, Mapping):
            obs = {str(name): _parse_source(str(name), spec) for name, spec in obs_keys.items()}
        else:
            names = [str(k) for k in obs_keys]
            if len(set(names)) != len(names):
                raise ValueError(f"obs_keys {names} name a key twice")
            obs = {name: Source(name) for name in names}
        return cls(obs, _parse_source("action", action_key))

    @property
    def is_identity(self) -> bool:
        """True when every key is its own dataset key, unsliced, unreshaped and not a float image."""
        return all(s.key == name and s.slice is None and s.reshape is None and s.image_range is None
                   for name, s in [*self.obs.items(), ("action", self.action)])

    def resolve(self, arrays: Mapping[str, Any], where: str) -> ObsMapping:
        """Check every source against dataset ``arrays`` ``{key: (N, ...)}`` (``where`` names the file) and
        return the mapping with each source's ``shape`` and float images' ``image_range`` filled in."""
        def resolved(name: str, source: Source) -> Source:
            if source.key not in arrays:
                raise KeyError(f"{where}: policy key {name!r} reads dataset key {source.key!r}, which does not "
                               f"exist; available keys: {sorted(arrays)}")
            array = arrays[source.key]
            shape = tuple(int(d) for d in array.shape[1:])
            if source.shape is not None and source.shape != shape:
                raise ValueError(f"{where}: dataset key {source.key!r} has per-step shape {shape}, the mapping "
                                 f"expects {source.shape}")
            out = source.out_shape(shape)
            image_range = source.image_range
            if name != "action" and is_image_shape(out) and np.dtype(array.dtype).kind == "f":
                if image_range is None:
                    image_range = detect_image_range(source.key, array, where)
                    logger.info("%s: float image %r holds values in 0..%g (detected; set image_range to "
                                "override); read as uint8 round(x * %g)", where, source.key, image_range,
                                255.0 / image_range)
            elif image_range is not None:
                raise ValueError(f"{where}: image_range={image_range:g} given for {name!r}, which is not a float "
                                 f"image (dataset key {source.key!r}: {array.dtype} {shape})")
            return replace(source, shape=shape, image_range=image_range)

        return ObsMapping({name: resolved(name, s) for name, s in self.obs.items()},
                          resolved("action", self.action))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-step policy shapes ``{policy key: shape}`` of a resolved mapping."""
        return {name: s.out_shape(self._resolved(name, s).shape) for name, s in self.obs.items()}

    def observation(self, frame: Mapping[str, Any], where: str = "observation", batch_dims: int = 0
                    ) -> dict[str, np.ndarray]:
        """An environment / robot observation ``{key: (*lead, *shape)}`` with ``batch_dims`` leading axes
        -> ``{policy key: (*lead, *policy shape)}``.

        A policy key present in ``frame`` is taken as it is (reshaped when it holds the same number of
        values per step, a float image made uint8); otherwise its source key is mapped as in training.
        """
        out: dict[str, np.ndarray] = {}
        for name, source in self.obs.items():
            shape = source.out_shape(self._resolved(name, source).shape)
            if name in frame:
                value = np.asarray(frame[name])
                lead = value.shape[:batch_dims]
                if value.ndim < batch_dims or math.prod(value.shape[batch_dims:]) != math.prod(shape):
                    raise ValueError(f"{where}[{name!r}] has shape {value.shape}; the policy takes {shape} per step"
                                     + (f" after {batch_dims} batch axes" if batch_dims else ""))
                value = value.reshape(*lead, *shape)
                if is_image_shape(shape) and value.dtype.kind == "f":
                    value = float_image_to_uint8(value, source.image_range or 255.0, f"{where}[{name!r}]")
                out[name] = value
            elif source.key in frame:
                out[name] = source.apply(np.asarray(frame[source.key]), f"{where}[{source.key!r}]")
            else:
                raise KeyError(f"{where} has neither policy key {name!r} nor its source {source.key!r}; "
                               f"it has {sorted(frame)}")
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"obs": {name: source}, "action": source}`` (sources as dicts without None fields)."""
        def plain(s: Source) -> dict[str, Any]:
            return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(s).items() if v is not None}
        return {"obs": {name: plain(s) for name, s in self.obs.items()}, "action": plain(self.action)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ObsMapping:
        """The inverse of :meth:`to_dict`."""
        if not isinstance(data, Mapping) or set(data) != {"obs", "action"}:
            raise ValueError(f"observation mapping must be {{'obs': ..., 'action': ...}}, got {data!r}")
        return cls.parse(data["obs"], data["action"])

    @classmethod
    def of_policy(cls, obs_shapes: Mapping[str, Sequence[int]], action_dim: int,
                  saved: Mapping[str, Any] | None) -> ObsMapping:
        """A policy's mapping: the ``saved`` one (``to_dict()`` form), or each key from itself."""
        if saved is not None:
            return cls.from_dict(saved)
        return cls({key: Source(key, shape=tuple(shape)) for key, shape in obs_shapes.items()},
                   Source("action", shape=(int(action_dim),)))

    @staticmethod
    def _resolved(name: str, source: Source) -> Source:
        if source.shape is None:
            raise ValueError(f"the mapping of {name!r} is not resolved against a dataset (no per-step shape)")
        return source
