"""Serve a ChunkPredictor over ZeroMQ: the policy runs on a GPU machine, the control loop next to the robot.

Transport. The server binds a ROUTER socket; clients connect DEALER sockets (`PolicyClient`; a REQ
socket works too). A message on the wire is

    [empty delimiter frame, header frame, array frames ...]

with the header and array frames as in deploy/codec.py. The ROUTER prepends the client's identity; the
server sends its reply back with the same routing envelope, so any number of clients can share it and
a client that has vanished simply never receives its reply.

Every request header carries `"type"` and `"id"` (an integer chosen by the client, echoed in the reply
so the client can discard stale replies).

    hello    {"type": "hello", "id"}
         ->  {"type": "hello", "id", "protocol_version": int, "package_version": str,
              "spec": PolicySpec.to_dict()}
             The client refuses to go on if `protocol_version` differs from its own. This exchange stays
             the same in every protocol version, so a mismatch is always reported, never misread.
    predict  {"type": "predict", "id", "seed": int | null, "prefix_guidance": number | null, "candidates": int}
             + arrays `obs/<key>` (To, *shape), optional `prefix` (P, Da) and `prefix_weights` (P,)
         ->  {"type": "chunk", "id", "inference_s": float} + array `action` (T, Da) float32
             `inference_s` is the server's time inside `predictor.predict`.
    on any problem (malformed message, unknown type, request failing `PolicySpec.check_request`, an
    exception inside `predict`):
         ->  {"type": "error", "id": int | null, "error": "<ExceptionType>: message"}
             and the server goes on serving.

Requests are checked against the predictor's spec before inference, so a missing key or a wrong shape
never reaches the network. A message over `max_message_bytes` gets an error reply; a single frame over
twice that is refused by libzmq itself (MAXMSGSIZE), which drops that connection without a reply: the
client times out and reconnects. Requests are served one at a time, in arrival order.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
import time
from typing import Any

import numpy as np
import zmq

from diffusion_policy.deploy.codec import CodecError, decode, encode, unpack_request
from diffusion_policy.deploy.predictor import ChunkPredictor, ChunkRequest

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20
POLL_INTERVAL_MS = 50  # how quickly a serving loop notices its stop event


def package_version() -> str:
    try:
        return importlib.metadata.version("diffusion-policy")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def describe(exc: BaseException) -> str:
    """"<ExceptionType>: message", without the quotes str(KeyError) adds around its message."""
    message = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
    return f"{type(exc).__name__}: {message}"


class PolicyServer:
    """Answers hello / predict requests for `predictor` on `address` (port 0 or `*` picks a free port).

    `address` after construction is the bound endpoint, e.g. "tcp://127.0.0.1:40123". Serve with
    `serve_forever()` (until Ctrl-C), `serve(max_requests)`, or `start_in_thread()` ... `stop()`;
    `close()` (or leaving a `with` block) releases the socket.
    """

    def __init__(
        self,
        predictor: ChunkPredictor,
        address: str = "tcp://127.0.0.1:5555",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes={max_message_bytes} must be positive")
        self.predictor = predictor
        self.max_message_bytes = max_message_bytes
        self.package_version = package_version()
        self._socket = zmq.Context.instance().socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        # Non-mandatory routing silently drops replies to clients that have gone away instead of raising.
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 0)
        # Slack above the limit so a modestly oversized message still gets a readable error reply.
        self._socket.setsockopt(zmq.MAXMSGSIZE, 2 * max_message_bytes)
        try:
            self._socket.bind(address)
        except zmq.ZMQError as exc:
            self._socket.close()
            raise OSError(f"cannot bind policy server to {address!r}: {exc}") from exc
        self.address: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._serving = threading.Lock()  # zmq sockets are not thread-safe: one serving loop at a time
        self._thread: threading.Thread | None = None
        self._stop_event: threading.Event | None = None

    def serve(self, max_requests: int | None = None, stop_event: threading.Event | None = None) -> int:
        """Answer messages until `max_requests` are answered or `stop_event` is set; return how many."""
        if not self._serving.acquire(blocking=False):
            raise RuntimeError(f"policy server {self.address} is already serving in another thread")
        try:
            handled = 0
            while max_requests is None or handled < max_requests:
                if stop_event is not None and stop_event.is_set():
                    break
                if self._socket.poll(POLL_INTERVAL_MS):
                    self._handle(self._socket.recv_multipart(copy=False))
                    handled += 1
            return handled
        finally:
            self._serving.release()

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (KeyboardInterrupt)."""
        logger.info("policy server listening on %s (protocol %d)", self.address, PROTOCOL_VERSION)
        self.serve()

    def start_in_thread(self) -> PolicyServer:
        """Serve in a daemon thread until `stop()` or `close()`; returns self."""
        if self._thread is not None:
            raise RuntimeError(f"policy server {self.address} already has a serving thread")
        self._stop_event = threading.Event()
        self._thread = threading.Thread(target=self.serve, kwargs={"stop_event": self._stop_event},
                                        name=f"PolicyServer({self.address})", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the background thread's serving loop (after the request in hand) and wait for it."""
        if self._thread is None:
            return
        self._stop_event.set()
        self._thread.join()
        self._thread = self._stop_event = None

    def close(self) -> None:
        self.stop()
        self._socket.close(linger=0)

    def __enter__(self) -> PolicyServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _handle(self, frames: list[zmq.Frame]) -> None:
        """Answer one message; every failure becomes an error reply, so the loop never dies of a request."""
        # ROUTER prepends the identity frame; REQ and PolicyClient add an empty delimiter after it.
        n_envelope = 2 if len(frames) > 1 and len(frames[1]) == 0 else 1
        envelope, body = frames[:n_envelope], frames[n_envelope:]
        request_id, stage = None, "decode"
        try:
            header, arrays = decode(body, self.max_message_bytes)
            request_id = header.get("id")
            if type(request_id) is not int:
                request_id = None
                raise CodecError(f"header field 'id' is {header.get('id')!r}; expected an integer")
            kind = header.get("type")
            if kind == "hello":
                reply, reply_arrays = self._hello(), {}
            elif kind == "predict":
                request = unpack_request(header, arrays)
                stage = "validate"
                self.predictor.spec.check_request(request)
                stage = "predict"
                reply, reply_arrays = self._predict(request)
            else:
                raise CodecError(f"header field 'type' is {kind!r}; expected 'hello' or 'predict'")
        except Exception as exc:
            logger.error("request id=%s failed in %s: %s", request_id, stage, describe(exc),
                         exc_info=stage == "predict")
            reply, reply_arrays = {"type": "error", "error": describe(exc)}, {}
        self._socket.send_multipart([*envelope, *encode({**reply, "id": request_id}, reply_arrays)], copy=False)

    def _hello(self) -> dict[str, Any]:
        return {"type": "hello", "protocol_version": PROTOCOL_VERSION, "package_version": self.package_version,
                "spec": self.predictor.spec.to_dict()}

    def _predict(self, request: ChunkRequest) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        start = time.perf_counter()
        chunk = self.predictor.predict(request)
        inference_s = time.perf_counter() - start
        spec = self.predictor.spec
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.shape != (spec.horizon, spec.action_dim):
            raise ValueError(f"predictor returned a chunk of shape {chunk.shape}; expected (T, Da) = "
                             f"{(spec.horizon, spec.action_dim)}")
        return {"type": "chunk", "inference_s": inference_s}, {"action": chunk}
