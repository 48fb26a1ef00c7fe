"""Wire codec of the policy server: array round trips, every malformed message refused by name, requests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffusion_policy.deploy.codec import CodecError, decode, encode, pack_request, unpack_request
from diffusion_policy.deploy.predictor import ChunkRequest

MAX = 1 << 20


def frames_of(header: dict, arrays: dict) -> list[bytes]:
    """Encode and copy to bytes, as a receiver would see the frames."""
    return [bytes(frame) for frame in encode(header, arrays)]


def raw(header: object, *buffers: bytes) -> list[bytes]:
    return [json.dumps(header).encode(), *buffers]


def test_round_trip_dtypes_and_shapes():
    rng = np.random.default_rng(0)
    arrays = {
        "chw": rng.integers(0, 256, (3, 96, 96), dtype=np.uint8),
        "hwc": rng.integers(0, 256, (96, 96, 3), dtype=np.uint8),
        "f16": rng.normal(size=(4, 5)).astype(np.float16),
        "f32": rng.normal(size=(2, 18)).astype(np.float32),
        "f64": rng.normal(size=(7,)),
        "i8": np.array([-128, 0, 127], dtype=np.int8),
        "i16": np.array([[-3, 4]], dtype=np.int16),
        "i32": np.arange(6, dtype=np.int32).reshape(2, 3),
        "i64": np.array([2**40, -(2**40)], dtype=np.int64),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    header, out = decode(frames_of({"type": "x", "id": 3}, arrays), MAX)
    assert header == {"type": "x", "id": 3}
    assert list(out) == list(arrays)
    for name, value in arrays.items():
        assert out[name].dtype == value.dtype and out[name].shape == value.shape, name
        np.testing.assert_array_equal(out[name], value)


def test_non_contiguous_and_big_endian_inputs_are_converted():
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    arrays = {"strided": base[:, ::2], "transposed": base.T, "big_endian": base.astype(">i4")}
    _, out = decode(frames_of({}, arrays), MAX)
    for name, value in arrays.items():
        np.testing.assert_array_equal(out[name], value)
    assert out["big_endian"].dtype == np.int32


def test_contiguous_arrays_are_not_copied_and_decoded_arrays_are_read_only():
    image = np.zeros((3, 96, 96), dtype=np.uint8)
    frames = encode({}, {"image": image})
    image[0, 0, 0] = 7  # the frame is a view of the array's memory
    assert bytes(frames[1])[0] == 7
    _, out = decode(frames, MAX)
    assert not out["image"].flags.writeable


@pytest.mark.parametrize("value, match", [
    (np.array(["abc"]), r"'bad' has dtype '<U3'"),
    (np.array([object()]), r"'bad' has dtype '\|O'"),
    (np.array([True]), r"'bad' has dtype '\|b1'"),
    (np.zeros(2, dtype=np.complex64), r"'bad' has dtype '<c8'"),
    ([1.0, 2.0], r"'bad' is a list"),
    (np.zeros((1,) * 9), r"'bad' has 9 dimensions"),
])
def test_encode_refuses_unsupported_arrays(value, match):
    with pytest.raises(CodecError, match=match):
        encode({}, {"bad": value})


def test_encode_refuses_reserved_field_and_unserialisable_header():
    with pytest.raises(CodecError, match="'arrays' is reserved"):
        encode({"arrays": []}, {})
    with pytest.raises(CodecError, match="not JSON-serialisable"):
        encode({"when": object()}, {})


def table(name="a", dtype="float32", shape=(2,)) -> dict:
    return {"arrays": [{"name": name, "dtype": dtype, "shape": list(shape)}]}


@pytest.mark.parametrize("frames, match", [
    ([], "no frames"),
    ([b"\xff\xfe garbage"], "not UTF-8 JSON"),
    ([b"{not json"], "not UTF-8 JSON"),
    (raw([1, 2]), "must be a JSON object, got list"),
    (raw("hello"), "must be a JSON object, got str"),
    (raw({"type": "hello"}), "'arrays' must be a list"),
    (raw({"arrays": {"a": 1}}), "'arrays' must be a list"),
    (raw({"arrays": [["a", "float32", [2]]]}), "entry 0 must be"),
    (raw({"arrays": [{"name": "a", "dtype": "float32"}]}), "entry 0 must be"),
    (raw({"arrays": [{"name": 5, "dtype": "float32", "shape": [1]}]}), "name 5"),
    (raw(table(dtype="object"), b"12345678"), "'a' has dtype 'object'"),
    (raw(table(dtype="<U3"), b"12345678"), "'a' has dtype '<U3'"),
    (raw(table(dtype="bool"), b"12"), "'a' has dtype 'bool'"),
    (raw(table(dtype=["float32"]), b"12345678"), r"'a' has dtype \['float32'\]"),
    (raw(table(shape=(-1,)), b""), r"'a' has shape \[-1\]"),
    (raw({"arrays": [{"name": "a", "dtype": "uint8", "shape": [1.5]}]}, b"1"), r"'a' has shape \[1.5\]"),
    (raw(table(shape=(1,) * 9), b"1234"), "'a' has shape"),
    (raw(table()), "has 1 frames.*names 1 arrays"),
    (raw(table(), b"12345678", b"extra"), "has 3 frames"),
    (raw(table(), b"1234"), "'a' has 4 bytes; dtype float32 and shape \\(2,\\) need 8"),
    (raw(table(shape=(2**40, 2**40)), b"1234"), "'a' has 4 bytes"),
    (raw({"arrays": [table("a")["arrays"][0], table("a")["arrays"][0]]}, b"12345678", b"12345678"), "unique"),
    (raw(table(dtype="uint8", shape=(MAX,)), bytes(MAX)), f"the limit is max_bytes={MAX}"),
])
def test_decode_refuses_malformed_messages(frames, match):
    with pytest.raises(CodecError, match=match):
        decode(frames, MAX)


def test_request_round_trip():
    rng = np.random.default_rng(1)
    request = ChunkRequest(
        obs={"agent_pos": rng.normal(size=(2, 2)).astype(np.float32),
             "image": rng.integers(0, 256, (2, 3, 96, 96), dtype=np.uint8)},
        prefix=rng.normal(size=(5, 2)).astype(np.float32),
        prefix_weights=np.linspace(1, 0, 5, dtype=np.float32),
        seed=np.int64(42),
        prefix_guidance=np.float32(5.0),
        candidates=np.int64(4),
    )
    header, arrays = pack_request(request)
    assert sorted(arrays) == ["obs/agent_pos", "obs/image", "prefix", "prefix_weights"]
    decoded_header, decoded = decode(frames_of({"type": "predict", **header}, arrays), MAX)
    back = unpack_request(decoded_header, decoded)
    assert back.seed == 42 and type(back.seed) is int
    assert back.prefix_guidance == 5.0 and type(back.prefix_guidance) is float
    assert back.candidates == 4 and type(back.candidates) is int
    assert sorted(back.obs) == ["agent_pos", "image"]
    for key in request.obs:
        np.testing.assert_array_equal(back.obs[key], request.obs[key])
    np.testing.assert_array_equal(back.prefix, request.prefix)
    np.testing.assert_array_equal(back.prefix_weights, request.prefix_weights)


def test_request_without_prefix_or_seed():
    header, arrays = pack_request(ChunkRequest({"x": np.zeros((2, 1), np.float32)}))
    back = unpack_request(*decode(frames_of(header, arrays), MAX))
    assert back.prefix is None and back.prefix_weights is None and back.seed is None
    assert back.prefix_guidance is None and back.candidates == 1


@pytest.mark.parametrize("seed", [1.5, "7", True])
def test_pack_refuses_non_integer_seed(seed):
    with pytest.raises(CodecError, match=f"seed={seed!r}"):
        pack_request(ChunkRequest({"x": np.zeros((2, 1))}, seed=seed))


def test_unpack_refuses_unknown_arrays_and_bad_seed():
    with pytest.raises(CodecError, match="'noise'"):
        unpack_request({}, {"noise": np.zeros(3)})
    with pytest.raises(CodecError, match="'seed' is '3'"):
        unpack_request({"seed": "3"}, {})
    with pytest.raises(CodecError, match="'prefix_guidance' is '5'"):
        unpack_request({"prefix_guidance": "5"}, {})
    with pytest.raises(CodecError, match="'candidates' is 2.0"):
        unpack_request({"candidates": 2.0}, {})
    with pytest.raises(CodecError, match="candidates='4'"):
        pack_request(ChunkRequest({"x": np.zeros((2, 1))}, candidates="4"))
    with pytest.raises(CodecError, match="prefix_guidance=True"):
        pack_request(ChunkRequest({"x": np.zeros((2, 1))}, prefix_guidance=True))
