"""The policy server as a hostile peer or a greedy client finds it: CURVE keys and an allow-list,
no bare non-loopback bind, per-request limits, a deadline, fair turns, strict keys, checked outputs."""

from __future__ import annotations

import re
import socket
import threading
import time

import numpy as np
import pytest
import zmq

from diffusion_policy.deploy.client import PolicyClient, RemotePolicyError
from diffusion_policy.deploy.codec import decode, encode, pack_request
from diffusion_policy.deploy.keys import ClientKeys, ServerKeys, generate_keypair
from diffusion_policy.deploy.predictor import ChunkRequest, LocalPredictor
from diffusion_policy.deploy.server import PolicyServer, ServerLimits, is_loopback
from scripts import policy_keys
from tests.test_deploy_server import ANY_PORT, FakePredictor, observation
from tests.test_policy import normalizer, small_config


@pytest.fixture
def keys(tmp_path):
    """A server pair, an allowed client 'robot' and a stranger whose key the server does not hold."""
    generate_keypair(tmp_path / "server", "server")
    generate_keypair(tmp_path / "robot", "robot")
    generate_keypair(tmp_path / "stranger", "stranger")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "robot.key").write_bytes((tmp_path / "robot" / "robot.key").read_bytes())
    server = ServerKeys(tmp_path / "server" / "server.key_secret", allowed)
    robot = ClientKeys(tmp_path / "robot" / "robot.key_secret", tmp_path / "server" / "server.key")
    stranger = ClientKeys(tmp_path / "stranger" / "stranger.key_secret", tmp_path / "server" / "server.key")
    return server, robot, stranger


@pytest.mark.parametrize(("address", "local"), [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.3.4.5:1", True), ("tcp://localhost:0", True),
    ("tcp://[::1]:5555", True), ("ipc:///tmp/policy", True), ("inproc://x", True),
    ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://192.168.1.7:5555", False),
    ("tcp://eth0:5555", False), ("tcp://gpu-box:5555", False),
])
def test_loopback_addresses(address, local):
    assert is_loopback(address) is local


def test_non_loopback_bind_without_keys_is_refused():
    with pytest.raises(ValueError, match=r"binding 'tcp://0\.0\.0\.0:0' without CURVE keys .* insecure=True"):
        PolicyServer(FakePredictor(), "tcp://0.0.0.0:0")


def test_insecure_must_be_said_and_is_logged(caplog):
    with PolicyServer(FakePredictor(), "tcp://0.0.0.0:0", insecure=True) as server:
        assert not server.secure
    assert "WITHOUT authentication or encryption" in caplog.text


def test_curve_allowed_client_is_served_over_any_address(keys):
    server_keys, robot, _ = keys
    with PolicyServer(FakePredictor(), "tcp://0.0.0.0:0", keys=server_keys).start_in_thread() as server:
        port = server.address.rsplit(":", 1)[1]
        with PolicyClient(f"tcp://127.0.0.1:{port}", timeout_s=3.0, keys=robot) as client:
            chunk = client.predict(ChunkRequest(observation()))
            np.testing.assert_array_equal(chunk, FakePredictor().predict(ChunkRequest(observation())))
            assert client.server_info["limits"]["max_candidates"] == 4


def test_curve_refuses_unknown_keys_and_plain_clients(keys):
    server_keys, _, stranger = keys
    with PolicyServer(FakePredictor(), ANY_PORT, keys=server_keys).start_in_thread() as server:
        with pytest.raises(TimeoutError, match="does it hold this client's public key"):
            PolicyClient(server.address, timeout_s=0.5, keys=stranger)
        with pytest.raises(TimeoutError, match="A server with CURVE keys answers only clients with keys"):
            PolicyClient(server.address, timeout_s=0.5)


def test_curve_traffic_is_encrypted(keys):
    """The bytes on the wire never contain the observation in clear (checked with a recognisable pattern)."""
    server_keys, robot, _ = keys
    marker = np.frombuffer(b"SECRET-OBSERVATION-PATTERN-1234!" * 4, dtype=np.float32).reshape(2, 16)
    seen = bytearray()

    class Tap:
        """A TCP relay between client and server that keeps a copy of every byte."""

        def __init__(self, upstream_port: int) -> None:
            self.listener = socket.create_server(("127.0.0.1", 0))
            self.port = self.listener.getsockname()[1]
            self.upstream = upstream_port
            threading.Thread(target=self.accept, daemon=True).start()

        def accept(self) -> None:
            down, _ = self.listener.accept()
            up = socket.create_connection(("127.0.0.1", self.upstream))
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

        def pump(self, a, b) -> None:
            while data := a.recv(65536):
                seen.extend(data)
                b.sendall(data)

    spec_obs = {"agent_pos": (16,)}
    predictor = FakePredictor()
    predictor.spec = type(predictor.spec)(spec_obs, action_dim=2, n_obs_steps=2, horizon=16, n_action_steps=8)
    predictor.predict = lambda request: np.zeros((16, 2), np.float32)
    with PolicyServer(predictor, ANY_PORT, keys=server_keys).start_in_thread() as server:
        tap = Tap(int(server.address.rsplit(":", 1)[1]))
        with PolicyClient(f"tcp://127.0.0.1:{tap.port}", timeout_s=3.0, keys=robot) as client:
            client.predict(ChunkRequest({"agent_pos": marker}))
    assert len(seen) > marker.nbytes
    assert b"SECRET-OBSERVATION" not in seen and b"agent_pos" not in seen


def test_key_files_errors_name_the_file(tmp_path):
    generate_keypair(tmp_path, "a")
    with pytest.raises(FileExistsError, match=r"a\.key exists"):
        generate_keypair(tmp_path, "a")
    with pytest.raises(ValueError, match=r"a\.key holds no secret key"):
        ClientKeys(tmp_path / "a.key", tmp_path / "a.key")
    (tmp_path / "junk.key_secret").write_text("not a certificate")
    with pytest.raises(ValueError, match=r"junk\.key_secret is not a CURVE key file"):
        ClientKeys(tmp_path / "junk.key_secret", tmp_path / "a.key")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no '\\*.key' file: no client could connect"):
        ServerKeys(tmp_path / "a.key_secret", empty)
    assert oct((tmp_path / "a.key_secret").stat().st_mode & 0o777) == "0o600"


def test_keygen_script_writes_a_pair(tmp_path, capsys):
    public, secret = policy_keys.main(["--dir", str(tmp_path), "robot9"])
    assert public.name == "robot9.key" and secret.name == "robot9.key_secret"
    assert "copy to the other side" in capsys.readouterr().out


@pytest.mark.parametrize(("limits", "request_kwargs", "message"), [
    (ServerLimits(max_candidates=2), dict(candidates=3), "candidates=3 exceeds this server's max_candidates=2"),
    (ServerLimits(allow_guidance=False), dict(prefix_guidance=5.0),
     r"prefix_guidance=5\.0 refused: this server has allow_guidance=False"),
])
def test_expensive_requests_beyond_the_limits_are_refused(limits, request_kwargs, message):
    fake = FakePredictor()
    prefix = dict(prefix=np.zeros((4, 2), np.float32), prefix_weights=np.ones(4, np.float32))
    with PolicyServer(fake, ANY_PORT, limits=limits).start_in_thread() as server:
        with PolicyClient(server.address, timeout_s=2.0) as client:
            with pytest.raises(RemotePolicyError, match=message):
                client.predict(ChunkRequest(observation(), **prefix, **request_kwargs))
    assert fake.calls == 0


def test_limits_errors_name_the_value():
    with pytest.raises(ValueError, match=r"max_candidates=65 must be in \[1, 64\]"):
        ServerLimits(max_candidates=65)
    with pytest.raises(ValueError, match="deadline_s=0 must be"):
        ServerLimits(deadline_s=0)


def send_raw(sock: zmq.Socket, request_id: int, obs: dict) -> None:
    header, arrays = pack_request(ChunkRequest(obs))
    sock.send_multipart([b"", *encode({"type": "predict", "id": request_id, **header}, arrays)])


def dealer(address: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return sock


def test_a_slow_request_cannot_hold_another_client_past_the_deadline():
    """Client A's request takes 1.5 s; client B's, queued behind it, is answered with DeadlineExceeded
    as soon as it has waited deadline_s, not when A's finishes."""
    fake = FakePredictor()
    fake.delay_s = 1.5
    with PolicyServer(fake, ANY_PORT, limits=ServerLimits(deadline_s=0.4)).start_in_thread() as server:
        slow = dealer(server.address)
        send_raw(slow, 0, observation())
        time.sleep(0.1)  # A is inside predict
        start = time.monotonic()
        b = dealer(server.address)
        send_raw(b, 0, observation())
        assert b.poll(1200)
        waited = time.monotonic() - start
        reply = decode(b.recv_multipart()[1:], 1 << 20)[0]
        assert reply["type"] == "error"
        assert re.match(r"DeadlineExceeded: request waited 0\.\d\d s for the policy, past this server's "
                        r"deadline_s=0\.4 ", reply["error"]), reply["error"]
        assert 0.35 < waited < 1.0  # answered at the deadline, long before A's request ends at 1.5 s
        assert slow.poll(3000)  # A still gets its chunk
        assert decode(slow.recv_multipart()[1:], 1 << 20)[0]["type"] == "chunk"
        slow.close()
        b.close()
    assert fake.calls == 1  # B's request never ran


def test_clients_take_turns_and_cannot_queue_without_bound():
    """A pipelines 3 requests (per_client=2: the third is refused at once); B's one request runs right
    after A's first, not after all of A's."""
    order: list[str] = []
    fake = FakePredictor()

    started = threading.Event()

    def predict(request):
        order.append("A" if request.obs["agent_pos"][0, 0] == 1 else "B")
        started.set()
        time.sleep(0.2)
        return np.zeros((16, 2), np.float32)

    fake.predict = predict
    with PolicyServer(fake, ANY_PORT, limits=ServerLimits(per_client=2)).start_in_thread() as server:
        a, b = dealer(server.address), dealer(server.address)
        send_raw(a, 0, observation(1.0))
        assert started.wait(5.0)  # A's first request is being computed
        for i in range(1, 4):  # two wait, the third is over the limit
            send_raw(a, i, observation(1.0))
        time.sleep(0.05)  # B's request arrives after A's
        send_raw(b, 0, observation(2.0))
        replies = []
        while len(replies) < 4:
            assert a.poll(3000)
            replies.append(decode(a.recv_multipart()[1:], 1 << 20)[0])
        refused = [r for r in replies if r["type"] == "error"]
        assert len(refused) == 1 and refused[0]["id"] == 3 and "per_client=2" in refused[0]["error"]
        assert b.poll(3000)
        a.close()
        b.close()
    assert order == ["A", "A", "B", "A"]


def test_extra_observation_keys_are_refused_on_the_wire():
    fake = FakePredictor()
    with PolicyServer(fake, ANY_PORT).start_in_thread() as server:
        sock = dealer(server.address)
        send_raw(sock, 0, observation() | {"payload": np.zeros((2, 1000), np.float32)})
        assert sock.poll(2000)
        reply = decode(sock.recv_multipart()[1:], 1 << 20)[0]
        sock.close()
    assert reply["error"] == ("KeyError: observation keys ['payload'] are not the policy's; it takes "
                              "['agent_pos', 'image']")
    assert fake.calls == 0


def test_huge_observation_gives_an_error_naming_ranges_not_nan_actions():
    import torch

    from diffusion_policy.policy import DiffusionPolicy
    torch.manual_seed(0)
    local = LocalPredictor(DiffusionPolicy(small_config(), normalizer()))
    obs = {"pos": np.full((2, 2), 1e30, np.float32), "vel": np.zeros((2, 3), np.float32)}
    with PolicyServer(local, ANY_PORT).start_in_thread() as server:
        with PolicyClient(server.address, timeout_s=10.0) as client:
            with pytest.raises(RemotePolicyError, match=r"non-finite.*pos in \["):
                client.predict(ChunkRequest(obs))


def test_serve_script_refuses_a_bare_network_bind(tmp_path):
    import torch

    from diffusion_policy.policy import DiffusionPolicy
    from scripts import serve_policy
    torch.manual_seed(0)
    DiffusionPolicy(small_config(), normalizer()).save(tmp_path / "policy")
    with pytest.raises(SystemExit, match=r"serve_policy\.py: binding 'tcp://0\.0\.0\.0:0' without CURVE keys .* "
                                         r"serve_policy\.py --server-key --allowed-clients"):
        serve_policy.main(["--policy", str(tmp_path / "policy"), "--address", "tcp://0.0.0.0:0"])
    with pytest.raises(SystemExit):  # half a key pair is a usage error
        serve_policy.main(["--policy", str(tmp_path / "policy"), "--server-key", "x.key_secret"])
