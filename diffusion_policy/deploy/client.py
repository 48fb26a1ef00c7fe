"""PolicyClient: a ChunkPredictor whose policy runs behind a PolicyServer (wire protocol: deploy/server.py).

The client uses a DEALER socket rather than REQ: a REQ socket that missed a reply is stuck forever,
whereas a DEALER can time out, send the next request and drop the late reply by its id.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import zmq

from diffusion_policy.deploy.codec import decode, encode, pack_request
from diffusion_policy.deploy.keys import ClientKeys
from diffusion_policy.deploy.predictor import ChunkRequest, PolicySpec
from diffusion_policy.deploy.server import PROTOCOL_VERSION

logger = logging.getLogger(__name__)

MAX_REPLY_BYTES = 16 * 2**20  # replies are a chunk or a spec: far smaller; anything bigger is not our server


class RemotePolicyError(RuntimeError):
    """The server answered with an error (bad request, or an exception inside the remote policy)."""


class HandshakeError(RuntimeError):
    """The server speaks another protocol version or serves a policy with another spec than expected."""


class PolicyClient:
    """Connects to a PolicyServer at `address` and checks versions (and `expected_spec`, if given).

    `keys` (CURVE: this client's secret file and the server's public file) are needed for a server
    that has them; the link is then encrypted and only a server holding the matching secret answers.
    Use from one thread at a time. `spec` and `server_info` (the hello reply) come from the handshake;
    after each `predict`, `last_inference_s` is the server's time inside the policy and
    `last_round_trip_s` the wall time of the whole call.
    """

    def __init__(self, address: str, timeout_s: float = 5.0, expected_spec: PolicySpec | None = None,
                 keys: ClientKeys | None = None) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s} must be positive")
        self.address = address
        self.timeout_s = timeout_s
        self.keys = keys
        self.last_inference_s = float("nan")
        self.last_round_trip_s = float("nan")
        self._next_id = 0
        self._socket = zmq.Context.instance().socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            if keys is not None:
                keys.secure(self._socket)
            self._socket.connect(address)
            self.server_info: dict[str, Any] = self._call({"type": "hello"}, {})[0]
            self.spec = self._check_handshake(expected_spec)
        except BaseException:
            self.close()
            raise

    def predict(self, request: ChunkRequest) -> np.ndarray:
        """request (obs `{key: (To, *shape)}`) -> raw action chunk `(T, Da)` float32, computed remotely.

        The request is checked locally first, so a bad observation fails without a round trip; only
        the spec's observation keys are sent.
        """
        start = time.perf_counter()
        self.spec.check_request(request)
        request = dataclasses.replace(request, obs={key: request.obs[key] for key in self.spec.obs_shapes})
        header, arrays = pack_request(request)
        reply, out = self._call({"type": "predict", **header}, arrays)
        chunk, expected = out.get("action"), (self.spec.horizon, self.spec.action_dim)
        if reply.get("type") != "chunk" or chunk is None or chunk.shape != expected or chunk.dtype != np.float32:
            got = {name: (a.dtype.name, a.shape) for name, a in out.items()}
            raise RemotePolicyError(f"policy server {self.address} replied type={reply.get('type')!r} with "
                                    f"arrays {got}; expected type 'chunk' with 'action' float32 {expected}")
        if not np.isfinite(chunk).all():
            raise RemotePolicyError(f"policy server {self.address} sent a non-finite action chunk; refusing to use it")
        self.last_inference_s = float(reply.get("inference_s", float("nan")))
        self.last_round_trip_s = time.perf_counter() - start
        return chunk.copy()  # writable and independent of the receive buffer

    def close(self) -> None:
        self._socket.close(linger=0)

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_handshake(self, expected: PolicySpec | None) -> PolicySpec:
        version = self.server_info.get("protocol_version")
        if version != PROTOCOL_VERSION:
            package = self.server_info.get("package_version")
            raise HandshakeError(f"policy server {self.address} speaks protocol_version={version!r}; this client "
                                 f"speaks {PROTOCOL_VERSION} (server package {package})")
        spec = PolicySpec.from_dict(self.server_info["spec"])
        if expected is not None and spec != expected:
            theirs, ours = spec.to_dict(), expected.to_dict()
            diffs = [f"{k}: expected {ours[k]!r}, server has {theirs[k]!r}" for k in ours if ours[k] != theirs[k]]
            raise HandshakeError(f"policy server {self.address} serves another spec: {'; '.join(diffs)}")
        return spec

    def _call(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
        """Send one request and wait for the reply with its id; replies to earlier, timed-out requests are dropped."""
        request_id, self._next_id = self._next_id, self._next_id + 1
        try:
            self._socket.send_multipart([b"", *encode({**header, "id": request_id}, arrays)], copy=False,
                                        flags=zmq.NOBLOCK)
        except zmq.Again:
            raise self._timeout_error() from None  # the outgoing queue is full: the server is not reading
        deadline = time.monotonic() + self.timeout_s
        while True:
            remaining_ms = (deadline - time.monotonic()) * 1000
            if remaining_ms <= 0 or not self._socket.poll(remaining_ms):
                raise self._timeout_error()
            frames = self._socket.recv_multipart(copy=False)
            reply, out = decode(frames[1:] if frames and len(frames[0]) == 0 else frames, MAX_REPLY_BYTES)
            # An error without an id answers a message the server could not read: only ours is in flight.
            unreadable = reply.get("id") is None and reply.get("type") == "error"
            if reply.get("id") != request_id and not unreadable:
                logger.debug("dropping stale reply id=%s while waiting for id=%s", reply.get("id"), request_id)
                continue
            if reply.get("type") == "error":
                raise RemotePolicyError(f"policy server {self.address}: {reply.get('error')}")
            return reply, out

    def _timeout_error(self) -> TimeoutError:
        hint = ("is it running, does it hold this client's public key in its allowed clients, and is "
                f"{self.keys.server_public} its public key?" if self.keys is not None else
                "is it running? A server with CURVE keys answers only clients with keys")
        return TimeoutError(f"no reply from policy server {self.address} within timeout_s={self.timeout_s} ({hint})")
