"""CURVE keys for the policy server: who may query a robot's policy, over an encrypted link.

ZeroMQ's CURVE mechanism (CurveZMQ: Curve25519 key exchange, every message encrypted and
authenticated) with pyzmq's certificate files. Each side has a key pair written by
`generate_keypair`: `<name>.key` (public, safe to copy) and `<name>.key_secret` (secret, mode 0600).

- The server holds its own secret file and a directory of the public keys of the clients it allows
  (`ServerKeys`); a client whose public key is not there is refused during the handshake.
- A client holds its own secret file and the server's public file (`ClientKeys`); it talks only to
  the server holding the matching secret key.

    python scripts/policy_keys.py --dir keys server        # keys/server.key, keys/server.key_secret
    python scripts/policy_keys.py --dir keys robot1        # keys/robot1.key, keys/robot1.key_secret
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"


def generate_keypair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write `directory/<name>.key` and `directory/<name>.key_secret` (mode 0600); refuse to overwrite."""
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support; install pyzmq's own wheel")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"key name {name!r} must be a plain file name")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}{PUBLIC_SUFFIX}", directory / f"{name}{SECRET_SUFFIX}"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} exists; remove it first to replace the key pair")
    public_file, secret_file = zmq.auth.create_certificates(str(directory), name)
    os.chmod(secret_file, 0o600)
    return Path(public_file), Path(secret_file)


def read_public(path: str | Path) -> bytes:
    """The Z85 public key of a `.key` (or `.key_secret`) file; errors name the file."""
    return _load(path)[0]


def read_pair(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys of a `.key_secret` file; errors name the file."""
    public, secret = _load(path)
    if secret is None:
        raise ValueError(f"{path} holds no secret key; pass the '{SECRET_SUFFIX}' file")
    return public, secret


def _load(path: str | Path) -> tuple[bytes, bytes | None]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no CURVE key file at {path}")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError, KeyError) as exc:
        raise ValueError(f"{path} is not a CURVE key file written by scripts/policy_keys.py: {exc}") from exc
    if public is None:
        raise ValueError(f"{path} holds no public key")
    return public, secret


@dataclass(frozen=True)
class ServerKeys:
    """secret_file: the server's `.key_secret`. allowed_clients: a directory of the allowed clients' `.key` files."""

    secret_file: Path
    allowed_clients: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "secret_file", Path(self.secret_file))
        object.__setattr__(self, "allowed_clients", Path(self.allowed_clients))
        if not self.allowed_clients.is_dir():
            raise FileNotFoundError(f"allowed_clients={self.allowed_clients} is not a directory of client .key files")
        if not any(self.allowed_clients.glob(f"*{PUBLIC_SUFFIX}")):
            raise ValueError(f"allowed_clients={self.allowed_clients} holds no '*{PUBLIC_SUFFIX}' file: "
                             "no client could connect")
        read_pair(self.secret_file)

    def secure(self, socket: zmq.Socket, context: zmq.Context) -> ThreadAuthenticator:
        """Make `socket` (before bind) a CURVE server; returns the started authenticator of `context`
        that admits only the allowed clients (stop it when the socket closes)."""
        public, secret = read_pair(self.secret_file)
        authenticator = ThreadAuthenticator(context)
        authenticator.start()
        authenticator.configure_curve(domain="*", location=str(self.allowed_clients))
        socket.curve_secretkey, socket.curve_publickey, socket.curve_server = secret, public, True
        return authenticator


@dataclass(frozen=True)
class ClientKeys:
    """secret_file: this client's `.key_secret`. server_public: the server's `.key` file."""

    secret_file: Path
    server_public: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "secret_file", Path(self.secret_file))
        object.__setattr__(self, "server_public", Path(self.server_public))
        read_pair(self.secret_file)
        read_public(self.server_public)

    def secure(self, socket: zmq.Socket) -> None:
        """Make `socket` (before connect) a CURVE client of the server whose public key we hold."""
        public, secret = read_pair(self.secret_file)
        socket.curve_secretkey, socket.curve_publickey = secret, public
        socket.curve_serverkey = read_public(self.server_public)
