"""Authentication of the robot bridge with ZeroMQ's CURVE security (``diffplan robot keys``, ``--keys``).

Nothing cryptographic is ours: key pairs come from ``zmq.curve_keypair``, key files are pyzmq's certificate
format (``zmq.auth.create_certificates`` / ``load_certificate``), and the server's ZAP handler is
``zmq.auth.thread.ThreadAuthenticator``, which accepts exactly the client public keys in one directory. With
CURVE every message is encrypted and authenticated per connection; a client whose key is not listed never
completes the handshake, so it can neither send a request nor read the observation stream.

A key directory (``diffplan robot keys KEYDIR --client NAME ...``)::

    KEYDIR/server.key              the server's public key: every client needs it
    KEYDIR/server.key_secret       the server's secret key (0600): stays on the robot's machine
    KEYDIR/clients/NAME.key        an allowed client's public key: the server accepts exactly these
    KEYDIR/clients/NAME.key_secret that client's secret key (0600): give it (with server.key) to that client

Files are written atomically (a private temporary directory, then ``os.replace``), so a secret key is never
readable by others, not even while it is being written.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

__all__ = ["AuthError", "ClientKeys", "ServerKeys", "generate_keys", "is_loopback"]

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class AuthError(ValueError):
    """Missing, unreadable or unsafe key files (reported as one line by the CLI)."""


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise AuthError(f"key file {path} does not exist (make keys with: diffplan robot keys {path.parent})")
    if secret and os.stat(path).st_mode & 0o077:
        raise AuthError(f"secret key {path} is readable by other users: chmod 600 {path}")
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise AuthError(f"{path} is not a ZeroMQ CURVE certificate ({exc})") from None
    if secret and secret_key is None:
        raise AuthError(f"{path} holds no secret key")
    return public, secret_key


@dataclass(frozen=True)
class ServerKeys:
    """The server's key pair and the directory of allowed client public keys (``clients/*.key``)."""

    public: bytes
    secret: bytes
    allowed_dir: Path
    allowed: int
    """Number of allowed client keys found."""

    @classmethod
    def load(cls, keydir: str | os.PathLike) -> ServerKeys:
        keydir = Path(keydir)
        public, secret = _load(keydir / "server.key_secret", secret=True)
        clients = keydir / "clients"
        allowed = sorted(clients.glob("*.key")) if clients.is_dir() else []
        if not allowed:
            raise AuthError(f"no allowed client keys in {clients} (add one: diffplan robot keys {keydir} --client NAME)")
        for path in allowed:
            _load(path, secret=False)  # every listed key must parse: the authenticator would skip it silently
        assert secret is not None
        return cls(public, secret, clients, len(allowed))

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server (before bind)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def authenticator(self, ctx: zmq.Context) -> zmq.auth.thread.ThreadAuthenticator:
        """A started ZAP handler on ``ctx`` that admits exactly the keys in :attr:`allowed_dir`."""
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=str(self.allowed_dir))
        return auth


@dataclass(frozen=True)
class ClientKeys:
    """A client's key pair and the server's public key (so the client also knows it talks to the real server)."""

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def load(cls, keydir: str | os.PathLike, name: str = "client") -> ClientKeys:
        keydir = Path(keydir)
        server_public, _ = _load(keydir / "server.key", secret=False)
        public, secret = _load(keydir / "clients" / f"{name}.key_secret", secret=True)
        assert secret is not None
        return cls(public, secret, server_public)

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client of the server (before connect)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server_public


def _write_pair(directory: Path, name: str) -> list[Path]:
    """``name.key`` + ``name.key_secret`` (0600) in ``directory``, each appearing atomically and never
    group/world-readable: pyzmq writes them inside a 0700 temporary directory on the same filesystem."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".keys-", dir=directory))  # mode 0700
    try:
        public, secret = (Path(p) for p in zmq.auth.create_certificates(tmp, name))
        os.chmod(secret, 0o600)
        os.chmod(public, 0o644)
        out = []
        for src in (secret, public):
            with open(src, "rb") as f:
                os.fsync(f.fileno())
            dst = directory / src.name
            os.replace(src, dst)
            out.append(dst)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def generate_keys(keydir: str | os.PathLike, clients: list[str] | tuple[str, ...] = ("client",)) -> list[Path]:
    """Create the server key pair (kept if it exists, so clients can be added later) and one key pair per
    client name; returns the files written. A client name that already has keys is refused (:class:`AuthError`)."""
    keydir = Path(keydir)
    for name in clients:
        if not _NAME.match(name) or name == "server":
            raise AuthError(f"bad client name {name!r} (letters, digits, '_', '-', '.'; not 'server')")
        if (keydir / "clients" / f"{name}.key").exists():
            raise AuthError(f"client {name!r} already has keys in {keydir / 'clients'} (remove them to replace)")
    if keydir.exists() and not keydir.is_dir():
        raise AuthError(f"{keydir} is not a directory")
    written = []
    if not (keydir / "server.key_secret").exists():
        written += _write_pair(keydir, "server")
    for name in clients:
        written += _write_pair(keydir / "clients", name)
    return written
