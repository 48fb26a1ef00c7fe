"""Compact multipart encoding of a JSON header plus numpy arrays; what the policy server and client send.

Wire format (one ZeroMQ multipart message; the routing envelope, if any, comes before it):

    frame 0        UTF-8 JSON object: the header
    frame 1 .. n   the raw bytes of array i, in the order of the header's array table

The header holds the message's own fields (see deploy/server.py for the message types) plus

    "arrays": [{"name": str, "dtype": str, "shape": [int, ...]}, ...]

one entry per following frame. `dtype` is one of `REAL_DTYPES` (no bool, object, string or structured
types); the bytes are C-order and little-endian, exactly `prod(shape) * itemsize` of them; at most
`MAX_NDIM` dimensions. Decoding wraps the frames with `np.frombuffer`: nothing is ever unpickled or
evaluated, so a hostile peer can at worst be refused with a `CodecError`.

A `ChunkRequest` travels as arrays `obs/<key>` `(To, *shape)`, optional `prefix` `(P, Da)` and
`prefix_weights` `(P,)`, and the header fields `seed` (int or null), `prefix_guidance` (number or
null) and `candidates` (int).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from diffusion_policy.deploy.predictor import REAL_DTYPES, ChunkRequest

if TYPE_CHECKING:
    import zmq

MAX_NDIM = 8
OBS_PREFIX = "obs/"
# dtype -> wire name and back, precomputed: `ndarray.dtype.name` costs microseconds on every call.
WIRE_NAMES = {np.dtype(name).newbyteorder("<"): name for name in REAL_DTYPES}
WIRE_DTYPES = {name: dtype for dtype, name in WIRE_NAMES.items()}
REQUEST_ARRAYS = ("prefix", "prefix_weights")


class CodecError(ValueError):
    """A message that does not follow the wire format; the message names the field or array and its value."""


def encode(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> list[bytes | memoryview]:
    """Header dict + `{name: array}` -> frames `[json, bytes of array 0, ...]`.

    C-contiguous little-endian arrays are sent without copying: the frames are views of their memory,
    so do not modify the arrays until the frames are sent.
    """
    if "arrays" in header:
        raise CodecError("header field 'arrays' is reserved for the array table")
    table, buffers = [], []
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray):
            raise CodecError(f"array {name!r} is a {type(value).__name__}; expected a numpy array")
        wire_dtype = value.dtype.newbyteorder("<")
        if wire_dtype not in WIRE_NAMES:
            raise CodecError(f"array {name!r} has dtype {value.dtype.str!r}; allowed: {REAL_DTYPES}")
        if value.ndim > MAX_NDIM:
            raise CodecError(f"array {name!r} has {value.ndim} dimensions; at most {MAX_NDIM} allowed")
        # np.asarray keeps 0-d arrays 0-d (np.ascontiguousarray would make them 1-d).
        wire = np.asarray(value, dtype=wire_dtype, order="C")
        table.append({"name": name, "dtype": WIRE_NAMES[wire_dtype], "shape": list(value.shape)})
        # A flat uint8 view gives a 1-D buffer even for 0-d and empty arrays, which memoryview.cast refuses.
        buffers.append(memoryview(wire.reshape(-1).view(np.uint8)))
    try:
        head = json.dumps({**header, "arrays": table}, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise CodecError(f"header is not JSON-serialisable: {exc}") from exc
    return [head, *buffers]


def decode(
    frames: Sequence[bytes | memoryview | zmq.Frame], max_bytes: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Frames -> (header without the table, `{name: array}`); raise CodecError on anything malformed.

    The arrays are read-only views of the frames (no copy); copy one before writing to it.
    """
    views = [memoryview(frame) for frame in frames]
    total = sum(view.nbytes for view in views)
    if total > max_bytes:
        raise CodecError(f"message is {total} bytes; the limit is max_bytes={max_bytes}")
    if not views:
        raise CodecError("message has no frames; expected a JSON header frame")
    header = _parse_header(views[0])
    table = _parse_table(header.pop("arrays", None))
    if len(views) != 1 + len(table):
        raise CodecError(f"message has {len(views)} frames; the array table names {len(table)} arrays, "
                         f"so expected {1 + len(table)}")
    arrays = {}
    for (name, dtype, shape), view in zip(table, views[1:]):
        expected = math.prod(shape) * dtype.itemsize
        if view.nbytes != expected:
            raise CodecError(f"array {name!r} has {view.nbytes} bytes; dtype {WIRE_NAMES[dtype]} and shape {shape} "
                             f"need {expected}")
        array = np.frombuffer(view.cast("B"), dtype=dtype).reshape(shape)
        # Tiny zmq messages live inside the message struct and may be misaligned for wide dtypes.
        array = array if array.flags.aligned else array.copy()
        array.flags.writeable = False  # the same on every path, whatever the frames' own buffers allow
        arrays[name] = array
    return header, arrays


def _parse_header(frame: memoryview) -> dict[str, Any]:
    try:
        header = json.loads(frame.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CodecError(f"header frame is not UTF-8 JSON ({exc}); starts with {frame[:40].tobytes()!r}") from exc
    if not isinstance(header, dict):
        raise CodecError(f"header must be a JSON object, got {type(header).__name__}: {str(header)[:80]}")
    return header


def _parse_table(table: Any) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """The header's "arrays" list -> [(name, little-endian dtype, shape)], every entry checked."""
    if not isinstance(table, list):
        raise CodecError(f"header field 'arrays' must be a list of {{name, dtype, shape}}, got {table!r:.80}")
    out, seen = [], set()
    for i, entry in enumerate(table):
        if not isinstance(entry, dict) or set(entry) != {"name", "dtype", "shape"}:
            raise CodecError(f"array table entry {i} must be {{name, dtype, shape}}, got {entry!r:.80}")
        name, dtype, shape = entry["name"], entry["dtype"], entry["shape"]
        if not isinstance(name, str) or name in seen:
            raise CodecError(f"array table entry {i} has name {name!r}; names must be unique strings")
        seen.add(name)
        if not isinstance(dtype, str) or dtype not in WIRE_DTYPES:
            raise CodecError(f"array {name!r} has dtype {dtype!r}; allowed: {REAL_DTYPES}")
        valid_dims = isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
        if not valid_dims or len(shape) > MAX_NDIM:
            raise CodecError(f"array {name!r} has shape {shape!r}; expected a list of at most {MAX_NDIM} "
                             f"non-negative integers")
        out.append((name, WIRE_DTYPES[dtype], tuple(shape)))
    return out


def pack_request(request: ChunkRequest) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """ChunkRequest -> (header fields `seed`, `prefix_guidance`, `candidates`; arrays `obs/<key>`, `prefix`,
    `prefix_weights`)."""
    seed = request.seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise CodecError(f"seed={request.seed!r} must be an integer or None")
    arrays = {OBS_PREFIX + key: value for key, value in request.obs.items()}
    for name in REQUEST_ARRAYS:
        if getattr(request, name) is not None:
            arrays[name] = getattr(request, name)
    guidance = request.prefix_guidance
    if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float, np.floating))):
        raise CodecError(f"prefix_guidance={guidance!r} must be a number or None")
    candidates = request.candidates
    if isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)):
        raise CodecError(f"candidates={candidates!r} must be an integer")
    return {"seed": None if seed is None else int(seed),
            "prefix_guidance": None if guidance is None else float(guidance), "candidates": int(candidates)}, arrays


def unpack_request(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> ChunkRequest:
    """The inverse of `pack_request`; shapes are left to `PolicySpec.check_request`."""
    seed = header.get("seed")
    if seed is not None and type(seed) is not int:
        raise CodecError(f"header field 'seed' is {seed!r}; expected an integer or null")
    guidance = header.get("prefix_guidance")
    if guidance is not None and type(guidance) not in (int, float):
        raise CodecError(f"header field 'prefix_guidance' is {guidance!r}; expected a number or null")
    candidates = header.get("candidates", 1)
    if type(candidates) is not int:
        raise CodecError(f"header field 'candidates' is {candidates!r}; expected an integer")
    obs = {}
    for name, value in arrays.items():
        if name.startswith(OBS_PREFIX):
            obs[name[len(OBS_PREFIX):]] = value
        elif name not in REQUEST_ARRAYS:
            raise CodecError(f"request array {name!r} is neither 'obs/<key>' nor one of {REQUEST_ARRAYS}")
    return ChunkRequest(obs, arrays.get("prefix"), arrays.get("prefix_weights"), seed, guidance, candidates)
