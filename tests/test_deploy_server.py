"""PolicyServer / PolicyClient over loopback ZeroMQ: handshake, answers, rejections, and surviving bad clients."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time

import numpy as np
import pytest
import torch
import zmq

import diffusion_policy.deploy.server as server_module
from diffusion_policy.deploy.client import HandshakeError, PolicyClient, RemotePolicyError
from diffusion_policy.deploy.codec import decode, encode, pack_request
from diffusion_policy.deploy.predictor import ChunkRequest, LocalPredictor, PolicySpec
from diffusion_policy.deploy.server import PROTOCOL_VERSION, PolicyServer

SPEC = PolicySpec({"agent_pos": (2,), "image": (3, 96, 96)}, action_dim=2, n_obs_steps=2, horizon=16,
                  n_action_steps=8)
ANY_PORT = "tcp://127.0.0.1:0"


class FakePredictor:
    """Answers a chunk computed from the observation, optionally after a delay or by raising."""

    def __init__(self) -> None:
        self.spec = SPEC
        self.calls = 0
        self.delay_s = 0.0
        self.fail = False

    def predict(self, request: ChunkRequest) -> np.ndarray:
        self.calls += 1
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("policy exploded")
        offset = request.obs["agent_pos"].sum() + request.obs["image"].mean() + (request.seed or 0)
        if request.prefix is not None:
            offset += (request.prefix.sum(1) * request.prefix_weights).sum()
        return np.arange(32, dtype=np.float32).reshape(16, 2) + np.float32(offset)

    def close(self) -> None:
        """Nothing to release."""


def observation(value: float = 1.0) -> dict[str, np.ndarray]:
    image = np.arange(2 * 3 * 96 * 96).reshape(2, 3, 96, 96).astype(np.uint8)
    return {"agent_pos": np.full((2, 2), value, np.float32), "image": image}


def raw_call(address: str, frames: list, timeout_ms: int = 2000) -> dict | None:
    """Send frames from a fresh DEALER (after the delimiter); the reply header, or None without one."""
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(address)
        socket.send_multipart([b"", *frames])
        if not socket.poll(timeout_ms):
            return None
        return decode(socket.recv_multipart()[1:], 1 << 20)[0]
    finally:
        socket.close()


@pytest.fixture
def fake() -> FakePredictor:
    return FakePredictor()


@pytest.fixture
def server(fake):
    with PolicyServer(fake, ANY_PORT).start_in_thread() as server:
        yield server


@pytest.fixture
def client(server):
    with PolicyClient(server.address, timeout_s=2.0) as client:
        yield client


def test_handshake_gives_spec_and_versions(server, client):
    assert server.address.startswith("tcp://127.0.0.1:") and not server.address.endswith(":0")
    assert client.spec == SPEC
    assert client.server_info["protocol_version"] == PROTOCOL_VERSION
    assert isinstance(client.server_info["package_version"], str)


def test_wildcard_port_and_req_socket(fake):
    with PolicyServer(fake, "tcp://127.0.0.1:*").start_in_thread() as server:
        socket = zmq.Context.instance().socket(zmq.REQ)  # REQ adds the delimiter itself
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(server.address)
        socket.send_multipart(encode({"type": "hello", "id": 9}, {}))
        assert socket.poll(2000)
        header, _ = decode(socket.recv_multipart(), 1 << 20)
        socket.close()
    assert header["id"] == 9 and header["spec"] == SPEC.to_dict()


def test_bind_failure_names_address(server, fake):
    with pytest.raises(OSError, match=server.address):
        PolicyServer(fake, server.address)


def test_predict_round_trip_equals_local_answer(fake, client):
    request = ChunkRequest(observation(0.5), prefix=np.ones((3, 2), np.float32),
                           prefix_weights=np.array([1.0, 0.5, 0.0], np.float32), seed=4)
    chunk = client.predict(request)
    assert chunk.dtype == np.float32 and chunk.shape == (16, 2) and chunk.flags.writeable
    np.testing.assert_array_equal(chunk, FakePredictor().predict(request))
    assert 0 <= client.last_inference_s <= client.last_round_trip_s


def test_two_clients_share_one_server(server, client):
    with PolicyClient(server.address, timeout_s=2.0) as other:
        for value in (1.0, 2.0):
            a, b = client.predict(ChunkRequest(observation(value))), other.predict(ChunkRequest(observation(-value)))
            assert a[0, 0] - b[0, 0] == pytest.approx(8 * value)


def test_protocol_version_mismatch_names_both(server, monkeypatch):
    monkeypatch.setattr(server_module, "PROTOCOL_VERSION", PROTOCOL_VERSION + 98)
    with pytest.raises(HandshakeError, match=f"protocol_version={PROTOCOL_VERSION + 98}.*speaks {PROTOCOL_VERSION}"):
        PolicyClient(server.address, timeout_s=2.0)


def test_expected_spec_mismatch_names_fields(server):
    expected = dataclasses.replace(SPEC, obs_shapes={"agent_pos": (2,)}, horizon=24)
    with pytest.raises(HandshakeError, match=r"obs_shapes: expected .*; horizon: expected 24, server has 16"):
        PolicyClient(server.address, timeout_s=2.0, expected_spec=expected)
    with PolicyClient(server.address, timeout_s=2.0, expected_spec=SPEC) as client:
        assert client.spec == SPEC


BAD_OBSERVATIONS = [
    ({"agent_pos": np.zeros((2, 2), np.float32)}, KeyError, "'image' is missing"),
    ({**observation(), "agent_pos": np.zeros((2, 3), np.float32)}, ValueError, "'agent_pos' has shape (2, 3)"),
    ({**observation(), "image": np.zeros((1, 3, 96, 96), np.uint8)}, ValueError, "'image' has shape (1, 3, 96, 96)"),
]


@pytest.mark.parametrize("obs, error, message", BAD_OBSERVATIONS)
def test_bad_observation_rejected_before_inference(fake, server, client, obs, error, message):
    with pytest.raises(error, match=re.escape(message)):  # the client's own check: no round trip
        client.predict(ChunkRequest(obs))
    header, arrays = pack_request(ChunkRequest(obs))  # a client that skips the check meets the server's
    reply = raw_call(server.address, encode({"type": "predict", "id": 1, **header}, arrays))
    assert reply["type"] == "error" and reply["id"] == 1
    assert reply["error"].startswith(f"{error.__name__}: ") and message in reply["error"]
    assert fake.calls == 0


@pytest.mark.parametrize("frames, match", [
    ([b"garbage", b"more garbage"], "CodecError: header frame is not UTF-8 JSON"),
    ([b"{bad json"], "not UTF-8 JSON"),
    ([json.dumps([1, 2]).encode()], "must be a JSON object"),
    ([], "no frames"),
    (encode({"type": "predict", "id": 2}, {}) + [b"stray"], "has 2 frames"),
    (encode({"type": "dance", "id": 3}, {}), "'type' is 'dance'"),
    (encode({"type": "hello", "id": "x"}, {}), "'id' is 'x'"),
    (encode({"type": "predict", "id": 4, "seed": 1.5}, {}), "'seed' is 1.5"),
])
def test_malformed_message_gets_error_reply_and_server_keeps_serving(server, client, frames, match):
    reply = raw_call(server.address, frames)
    assert reply["type"] == "error" and match in reply["error"]
    assert client.predict(ChunkRequest(observation())).shape == (16, 2)


def test_oversized_messages(fake):
    with PolicyServer(fake, ANY_PORT, max_message_bytes=100_000).start_in_thread() as server:
        big = {"blob": np.zeros(150_000, np.uint8)}
        reply = raw_call(server.address, encode({"type": "hello", "id": 1}, big))
        assert reply["type"] == "error" and "the limit is max_bytes=100000" in reply["error"]
        # Past MAXMSGSIZE libzmq drops the connection unread: no reply, but the server lives on.
        huge = {"blob": np.zeros(300_000, np.uint8)}
        assert raw_call(server.address, encode({"type": "hello", "id": 2}, huge), timeout_ms=300) is None
        with PolicyClient(server.address, timeout_s=2.0) as client:
            assert client.predict(ChunkRequest(observation())).shape == (16, 2)
            image = np.zeros((2, 3, 96, 96), np.float16)  # 111 kB: the error reply cannot carry the request id
            with pytest.raises(RemotePolicyError, match="the limit is max_bytes=100000"):
                client.predict(ChunkRequest(observation() | {"image": image}))


def test_client_vanishing_mid_request_does_not_crash_server(fake, server):
    fake.delay_s = 0.2
    header, arrays = pack_request(ChunkRequest(observation()))
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(server.address)
    socket.send_multipart([b"", *encode({"type": "predict", "id": 0, **header}, arrays)])
    time.sleep(0.05)  # let the request reach the server, then leave before the reply
    socket.close()
    fake.delay_s = 0.0
    with PolicyClient(server.address, timeout_s=2.0) as client:
        np.testing.assert_array_equal(client.predict(ChunkRequest(observation(3.0))),
                                      FakePredictor().predict(ChunkRequest(observation(3.0))))
    assert fake.calls == 2


def test_exception_inside_predict_becomes_remote_error(fake, client):
    fake.fail = True
    with pytest.raises(RemotePolicyError, match="RuntimeError: policy exploded"):
        client.predict(ChunkRequest(observation()))
    fake.fail = False
    assert client.predict(ChunkRequest(observation())).shape == (16, 2)


def test_timeout_then_stale_reply_is_dropped(fake, server):
    with PolicyClient(server.address, timeout_s=0.2) as client:
        fake.delay_s = 0.4
        with pytest.raises(TimeoutError, match=rf"{server.address} within timeout_s=0.2"):
            client.predict(ChunkRequest(observation(1.0)))
        fake.delay_s = 0.0
        client.timeout_s = 2.0
        fresh = ChunkRequest(observation(7.0))
        np.testing.assert_array_equal(client.predict(fresh), FakePredictor().predict(fresh))


def test_no_server_times_out():
    with pytest.raises(TimeoutError, match="tcp://127.0.0.1:1 within timeout_s=0.1"):
        PolicyClient("tcp://127.0.0.1:1", timeout_s=0.1)


def test_serve_counts_requests_and_refuses_a_second_loop(fake):
    with PolicyServer(fake, ANY_PORT) as server:
        counts = []
        thread = threading.Thread(target=lambda: counts.append(server.serve(max_requests=2)))
        thread.start()
        with PolicyClient(server.address, timeout_s=2.0) as client:
            with pytest.raises(RuntimeError, match="already serving"):
                server.serve(max_requests=1)
            client.predict(ChunkRequest(observation()))
        thread.join(timeout=2.0)
    assert counts == [2]


def test_real_policy_behind_server_matches_local():
    from diffusion_policy.config_utils import from_dict
    from diffusion_policy.data.normalizer import Normalizer
    from diffusion_policy.policy import DiffusionPolicy, DiffusionPolicyConfig

    config = from_dict(DiffusionPolicyConfig, dict(
        obs_shapes={"pos": (2,)}, action_dim=2, horizon=8, n_obs_steps=2, n_action_steps=4,
        network={"down_dims": (16, 32), "kernel_size": 3, "n_groups": 4, "step_embed_dim": 16}))
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    policy = DiffusionPolicy(config, Normalizer.fit({"pos": rng.normal(size=(20, 2)),
                                                     "action": rng.normal(size=(20, 2))}))
    local = LocalPredictor(policy)
    request = ChunkRequest({"pos": rng.normal(size=(2, 2)).astype(np.float32)}, seed=3)
    try:
        expected = local.predict(request)
    except TypeError as exc:
        if "prefix" not in str(exc):
            raise
        pytest.skip(f"BasePolicy.predict_action does not take the prefix arguments yet: {exc}")
    with PolicyServer(local, ANY_PORT).start_in_thread() as server:
        with PolicyClient(server.address, timeout_s=5.0, expected_spec=local.spec) as client:
            np.testing.assert_array_equal(client.predict(request), expected)


def test_server_refuses_to_send_a_non_finite_chunk(fake, client, monkeypatch):
    monkeypatch.setattr(fake, "predict", lambda request: np.full((16, 2), np.nan, np.float32))
    with pytest.raises(RemotePolicyError, match="ValueError: predictor returned a non-finite chunk; not sent"):
        client.predict(ChunkRequest(observation()))


def test_client_refuses_a_non_finite_chunk(client, monkeypatch):
    """A server that sends NaN anyway (another implementation, or a damaged one) is refused by the client."""
    nan_chunk = ({"type": "chunk", "inference_s": 0.0}, {"action": np.full((16, 2), np.nan, np.float32)})
    monkeypatch.setattr(PolicyServer, "_predict", lambda self, request: nan_chunk)
    with pytest.raises(RemotePolicyError, match="non-finite action chunk"):
        client.predict(ChunkRequest(observation()))
