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
              "spec": PolicySpec.to_dict(), "limits": ServerLimits as a dict}
             The client refuses to go on if `protocol_version` differs from its own. This exchange stays
             the same in every protocol version, so a mismatch is always reported, never misread.
    predict  {"type": "predict", "id", "seed": int | null, "prefix_guidance": number | null, "candidates": int}
             + arrays `obs/<key>` (To, *shape), optional `prefix` (P, Da) and `prefix_weights` (P,)
         ->  {"type": "chunk", "id", "inference_s": float} + array `action` (T, Da) float32
             `inference_s` is the server's time inside `predictor.predict`.
    on any problem (malformed message, unknown type, request failing `PolicySpec.check_request` or the
    server's limits, a request that waited past the deadline, an exception inside `predict`, a
    non-finite chunk):
         ->  {"type": "error", "id": int | null, "error": "<ExceptionType>: message"}
             and the server goes on serving.

Requests are checked against the predictor's spec (missing, extra or wrong-shaped keys) and the
server's `ServerLimits` before inference, so nothing malformed reaches the network. A message over
`max_message_bytes` gets an error reply; a single frame over twice that is refused by libzmq itself
(MAXMSGSIZE), which drops that connection without a reply: the client times out and reconnects.

Scheduling. A socket thread only receives, checks and answers; the thread that called `serve` runs
the policy. Waiting requests are served round-robin across clients (`FairQueue`, at most
`limits.per_client` waiting per client), and a request that has waited longer than
`limits.deadline_s` is answered with a `DeadlineExceeded` error at once instead of being computed
for a client that has moved on. With the most expensive allowed request (`max_candidates`,
guidance) cheaper than the deadline, no client can hold another's small request past it.

Security. Any address other than loopback (`127.0.0.1`, `localhost`, `::1`, `ipc://`, `inproc://`)
needs CURVE keys (`ServerKeys`: encryption, and an allow-list of client public keys), or
`insecure=True` said explicitly.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import ipaddress
import itertools
import logging
import math
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import zmq

from diffusion_policy.deploy.codec import CodecError, decode, encode, unpack_request
from diffusion_policy.deploy.fair_queue import FairQueue, Waiting
from diffusion_policy.deploy.keys import ServerKeys
from diffusion_policy.deploy.predictor import MAX_CANDIDATES, ChunkPredictor, ChunkRequest

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20
POLL_INTERVAL_MS = 50  # how quickly a serving loop notices its stop event
# The socket thread takes the interpreter lock back from the policy's thread within 0.5 ms, not 5 ms.
_SWITCH_INTERVAL_S = 5e-4
_PIPE_ENDPOINTS = itertools.count()


class DeadlineExceeded(RuntimeError):
    """A request waited longer than the server's deadline for the policy."""


@dataclass(frozen=True)
class ServerLimits:
    """What one request may cost. max_candidates: the largest `candidates` accepted (at most
    MAX_CANDIDATES). allow_guidance: whether `prefix_guidance` (a backward pass per step) is accepted.
    deadline_s: a request that has waited this long for the policy gets a `DeadlineExceeded` error.
    per_client: requests one client may have waiting; more are refused until one is served."""

    max_candidates: int = 4
    allow_guidance: bool = True
    deadline_s: float = 2.0
    per_client: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.max_candidates <= MAX_CANDIDATES:
            raise ValueError(f"max_candidates={self.max_candidates} must be in [1, {MAX_CANDIDATES}]")
        if not (math.isfinite(self.deadline_s) and self.deadline_s > 0):
            raise ValueError(f"deadline_s={self.deadline_s} must be a finite number > 0")
        if self.per_client < 1:
            raise ValueError(f"per_client={self.per_client} must be >= 1")

    def check(self, request: ChunkRequest) -> None:
        """Raise ValueError naming the value if `request` costs more than these limits allow."""
        if request.candidates > self.max_candidates:
            raise ValueError(f"candidates={request.candidates} exceeds this server's max_candidates="
                             f"{self.max_candidates}")
        if request.prefix_guidance is not None and not self.allow_guidance:
            raise ValueError(f"prefix_guidance={request.prefix_guidance} refused: this server has "
                             "allow_guidance=False")


def package_version() -> str:
    try:
        return importlib.metadata.version("diffusion-policy")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def describe(exc: BaseException) -> str:
    """"<ExceptionType>: message", without the quotes str(KeyError) adds around its message."""
    message = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
    return f"{type(exc).__name__}: {message}"


def is_loopback(address: str) -> bool:
    """True for endpoints only this machine can reach: ipc://, inproc://, tcp:// on a loopback host."""
    transport, _, rest = address.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name: reachable from outside
        return False


class PolicyServer:
    """Answers hello / predict requests for `predictor` on `address` (port 0 or `*` picks a free port).

    `address` after construction is the bound endpoint, e.g. "tcp://127.0.0.1:40123". Serve with
    `serve_forever()` (until Ctrl-C), `serve(max_requests)`, or `start_in_thread()` ... `stop()`;
    `close()` (or leaving a `with` block) releases the socket. A non-loopback `address` needs `keys`
    (CURVE) or `insecure=True`.
    """

    def __init__(
        self,
        predictor: ChunkPredictor,
        address: str = "tcp://127.0.0.1:5555",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        limits: ServerLimits | None = None,
        keys: ServerKeys | None = None,
        insecure: bool = False,
    ) -> None:
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes={max_message_bytes} must be positive")
        if keys is None and not is_loopback(address):
            if not insecure:
                raise ValueError(f"binding {address!r} without CURVE keys would let any peer on the network query "
                                 "and occupy this policy: pass CURVE keys (scripts/policy_keys.py makes them; "
                                 "serve_policy.py --server-key --allowed-clients), bind a loopback address, or "
                                 "say insecure=True (serve_policy.py --insecure)")
            logger.warning("serving on %s WITHOUT authentication or encryption (insecure=True)", address)
        self.predictor = predictor
        self.max_message_bytes = max_message_bytes
        self.limits = limits if limits is not None else ServerLimits()
        self.package_version = package_version()
        self.secure = keys is not None
        self._context = zmq.Context()  # its own: a CURVE authenticator belongs to one context
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        # Non-mandatory routing silently drops replies to clients that have gone away instead of raising.
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 0)
        # Slack above the limit so a modestly oversized message still gets a readable error reply.
        self._socket.setsockopt(zmq.MAXMSGSIZE, 2 * max_message_bytes)
        self._authenticator = keys.secure(self._socket, self._context) if keys is not None else None
        try:
            self._socket.bind(address)
        except zmq.ZMQError as exc:
            self._release()
            raise OSError(f"cannot bind policy server to {address!r}: {exc}") from exc
        self.address: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        # A pipe between the socket thread and the policy's: "work queued" one way, replies the other.
        self._pipe_endpoint = f"inproc://policy-server-pipe-{next(_PIPE_ENDPOINTS)}"
        self._pipe = self._context.socket(zmq.PAIR)
        self._pipe.bind(self._pipe_endpoint)
        self._worker_pipe = self._context.socket(zmq.PAIR)  # used by the thread that serves
        self._worker_pipe.connect(self._pipe_endpoint)
        self._queue = FairQueue(self.limits.per_client)
        self._serving = threading.Lock()  # zmq sockets are not thread-safe: one serving loop at a time
        self._thread: threading.Thread | None = None
        self._stop_event: threading.Event | None = None

    def serve(self, max_requests: int | None = None, stop_event: threading.Event | None = None) -> int:
        """Answer messages until `max_requests` replies are sent or `stop_event` is set; return how many.

        The policy runs in the calling thread and the sockets in a helper thread: torch keeps one
        OpenMP thread pool per thread that runs it, and with a second pool alive (the one of the thread
        that loaded the policy) libgomp throttles its spin-waiting, which made a demo-sized chunk
        3.3x slower in a helper thread on a 2-core CPU (27 ms -> 90 ms). Requests still waiting when
        it returns stay queued for the next `serve`.
        """
        if not self._serving.acquire(blocking=False):
            raise RuntimeError(f"policy server {self.address} is already serving in another thread")
        done, answered = threading.Event(), [0]
        old_interval = sys.getswitchinterval()
        sys.setswitchinterval(_SWITCH_INTERVAL_S)
        io = threading.Thread(target=self._io_loop, args=(max_requests, stop_event, done, answered),
                              name=f"sockets({self.address})", daemon=True)
        io.start()
        try:
            self._infer(done)
            return answered[0]
        finally:
            done.set()
            io.join()
            sys.setswitchinterval(old_interval)
            self._serving.release()

    def _io_loop(self, max_requests: int | None, stop_event: threading.Event | None, done: threading.Event,
                 answered: list[int]) -> None:
        """Receive, check, queue and answer until `max_requests` replies, `stop_event` or `done`; then set `done`."""
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._pipe, zmq.POLLIN)
        try:
            while (max_requests is None or answered[0] < max_requests) and not done.is_set():
                if stop_event is not None and stop_event.is_set():
                    break
                events = dict(poller.poll(POLL_INTERVAL_MS))
                if self._pipe in events:
                    answered[0] += self._forward_replies()
                if self._socket in events:
                    answered[0] += self._receive(self._socket.recv_multipart(copy=False))
                answered[0] += self._expire()
        finally:
            done.set()

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (KeyboardInterrupt)."""
        logger.info("policy server listening on %s (protocol %d, %s)", self.address, PROTOCOL_VERSION,
                    "CURVE" if self.secure else "no encryption")
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
        self._worker_pipe.close(linger=0)
        self._pipe.close(linger=0)
        self._release()

    def _release(self) -> None:
        self._socket.close(linger=0)
        if self._authenticator is not None:
            self._authenticator.stop()
        self._context.term()

    def __enter__(self) -> PolicyServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- socket thread ---------------------------------------------------------------------------
    def _receive(self, frames: list[zmq.Frame]) -> int:
        """Answer a hello or a bad message at once (1), or queue a valid predict request (0)."""
        # ROUTER prepends the identity frame; REQ and PolicyClient add an empty delimiter after it.
        n_envelope = 2 if len(frames) > 1 and len(frames[1]) == 0 else 1
        envelope, body = [frame.bytes for frame in frames[:n_envelope]], frames[n_envelope:]
        request_id, stage = None, "decode"
        try:
            header, arrays = decode(body, self.max_message_bytes)
            request_id = header.get("id")
            if type(request_id) is not int:
                request_id = None
                raise CodecError(f"header field 'id' is {header.get('id')!r}; expected an integer")
            kind = header.get("type")
            if kind == "hello":
                self._send(envelope, {"type": "hello", "id": request_id, **self._hello()})
                return 1
            if kind != "predict":
                raise CodecError(f"header field 'type' is {kind!r}; expected 'hello' or 'predict'")
            request = unpack_request(header, arrays)
            stage = "validate"
            self.predictor.spec.check_request(request, allow_extra_keys=False)
            self.limits.check(request)
            if not self._queue.put(Waiting(envelope[0], time.monotonic(), (envelope, request_id, request))):
                raise RuntimeError(f"this client already has per_client={self.limits.per_client} requests "
                                   "waiting; send the next one after a reply")
            with contextlib.suppress(zmq.Again):  # a full pipe already holds wake-ups enough
                self._pipe.send(b"", flags=zmq.NOBLOCK)  # wake the policy's thread
            return 0
        except Exception as exc:
            logger.error("request id=%s failed in %s: %s", request_id, stage, describe(exc))
            self._send(envelope, {"type": "error", "id": request_id, "error": describe(exc)})
            return 1

    def _forward_replies(self) -> int:
        sent = 0
        while True:
            try:
                frames = self._pipe.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return sent
            self._socket.send_multipart(frames, copy=False)
            sent += 1

    def _expire(self) -> int:
        now = time.monotonic()
        expired = self._queue.expire(now - self.limits.deadline_s)
        for item in expired:
            envelope, request_id, _ = item.payload
            error = DeadlineExceeded(f"request waited {now - item.arrived:.2f} s for the policy, past this "
                                     f"server's deadline_s={self.limits.deadline_s} (it is busy with other requests)")
            self._send(envelope, {"type": "error", "id": request_id, "error": describe(error)})
        return len(expired)

    def _send(self, envelope: list[bytes], reply: dict[str, Any]) -> None:
        self._socket.send_multipart([*envelope, *encode(reply, {})], copy=False)

    def _hello(self) -> dict[str, Any]:
        return {"protocol_version": PROTOCOL_VERSION, "package_version": self.package_version,
                "spec": self.predictor.spec.to_dict(), "limits": asdict(self.limits)}

    # --- inference (the thread that called serve) ---------------------------------------------------
    def _infer(self, stop: threading.Event) -> None:
        """Run queued requests through the predictor, one at a time, until `stop`; replies go to the socket thread."""
        pipe = self._worker_pipe
        while not stop.is_set():
            if not pipe.poll(POLL_INTERVAL_MS):
                continue
            with contextlib.suppress(zmq.Again):  # one wake-up per queued request; the queue says what to do
                while True:
                    pipe.recv(flags=zmq.NOBLOCK)
            while (item := self._queue.get()) is not None:
                envelope, request_id, request = item.payload
                try:
                    reply, arrays = self._predict(request)
                except Exception as exc:
                    logger.error("request id=%s failed in predict: %s", request_id, describe(exc), exc_info=True)
                    reply, arrays = {"type": "error", "error": describe(exc)}, {}
                pipe.send_multipart([*envelope, *encode({**reply, "id": request_id}, arrays)], copy=False)

    def _predict(self, request: ChunkRequest) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        start = time.perf_counter()
        chunk = self.predictor.predict(request)
        inference_s = time.perf_counter() - start
        spec = self.predictor.spec
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.shape != (spec.horizon, spec.action_dim):
            raise ValueError(f"predictor returned a chunk of shape {chunk.shape}; expected (T, Da) = "
                             f"{(spec.horizon, spec.action_dim)}")
        if not np.isfinite(chunk).all():
            raise ValueError("predictor returned a non-finite chunk; not sent")
        return {"type": "chunk", "inference_s": inference_s}, {"action": chunk}
