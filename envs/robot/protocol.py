"""Wire protocol of the robot bridge: a versioned msgpack envelope, numpy arrays with a dtype whitelist.

Every message is ONE msgpack map (single ZeroMQ frame, so SUB sockets can conflate it)::

    {"proto": "diffplan-robot", "v": [major, minor], "type": str, "session": str, "seq": int,
     "t_send_ns": int, "body": {...}}

* ``proto`` and the **major** version must match or the message is refused (:class:`VersionError`); a
  higher minor version only adds fields, which the receiver ignores.
* ``seq`` increases by one per message a sender sends in a session; receivers refuse a ``seq`` they have
  already seen (duplicate or stale) and one more than :data:`SEQ_WINDOW` ahead of the last accepted (so a
  forged ``seq=2**62`` cannot lock the real client out), see :class:`SeqGuard`.
* ``session`` of a request is the secret token the server handed out in ``HELLO_OK``; messages the server
  sends (replies, observations) carry only its public digest (:func:`public_session`), so a subscriber of
  the observation stream never learns what would let it send chunks.
* ``t_send_ns`` is the sender's monotonic clock, for latency statistics only: no decision compares clocks
  across hosts (the server's tick counter is the only clock, see :mod:`diffplan.envs.robot.server`).

Arrays travel as ``{"__nd__": dtype, "shape": [...], "data": bytes}``; only the dtypes in
:data:`ALLOWED_DTYPES` are accepted, decoding never executes anything (no pickle, no ext types), and
sizes are bounded: :func:`request_limit` derives the largest legitimate request from the robot's spec (the
server sets it as ZeroMQ's ``MAXMSGSIZE``, so a larger message is dropped before it is buffered).

Why msgpack with our own array map rather than ``msgpack-numpy``: that package falls back to pickle for
object arrays; here an unknown dtype is an error.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    import msgpack
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the robot bridge needs the 'robot' extra: pip install 'diffplan[robot]'") from exc

PROTOCOL = "diffplan-robot"
VERSION: tuple[int, int] = (1, 0)
"""(major, minor). Bump major on any incompatible change; minor only adds optional fields."""

ALLOWED_DTYPES = frozenset({"float32", "float64", "int32", "int64", "uint8", "bool"})
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Largest message :func:`decode` accepts by default (replies such as TELEMETRY; requests are bounded tighter)."""
MAX_ARRAY_ELEMENTS = 4 * 1024 * 1024
SEQ_WINDOW = 1024
"""How far ahead of the last accepted ``seq`` a request may be (requests lost in between are allowed for)."""
REQUEST_OVERHEAD_BYTES = 64 * 1024
"""Room for the envelope and the small fields (reason strings, expected spec) on top of a full chunk."""

# Message types.
HELLO, HELLO_OK = "HELLO", "HELLO_OK"
RESET, RESET_OK = "RESET", "RESET_OK"
CHUNK, CHUNK_OK = "CHUNK", "CHUNK_OK"
HEARTBEAT, HEARTBEAT_OK = "HEARTBEAT", "HEARTBEAT_OK"
HOLD, HOLD_OK = "HOLD", "HOLD_OK"
ESTOP, ESTOP_OK = "ESTOP", "ESTOP_OK"
CLEAR_FAULT, CLEAR_FAULT_OK = "CLEAR_FAULT", "CLEAR_FAULT_OK"
TELEMETRY, TELEMETRY_OK = "TELEMETRY", "TELEMETRY_OK"
OBS = "OBS"
ERROR = "ERROR"

# Error codes carried by ERROR{code, message}.
E_VERSION = "VERSION"
E_SCHEMA = "SCHEMA"
E_NONFINITE = "NONFINITE"
E_SHAPE = "SHAPE"
E_LATE = "LATE"
E_STALE_SEQ = "STALE_SEQ"
E_SESSION = "SESSION"
E_FAULTED = "FAULTED"
E_EPISODE_OVER = "EPISODE_OVER"
E_SPEC = "SPEC"
E_INTERNAL = "INTERNAL"
E_BACKEND = "BACKEND"

__all__ = [
    "ALLOWED_DTYPES",
    "PROTOCOL",
    "VERSION",
    "Envelope",
    "ProtocolError",
    "SeqGuard",
    "VersionError",
    "decode",
    "encode",
    "new_session_id",
    "public_session",
    "request_limit",
]


class ProtocolError(ValueError):
    """A message that cannot be accepted; ``code`` is one of the ``E_*`` error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class VersionError(ProtocolError):
    """Protocol name or major version mismatch."""

    def __init__(self, message: str) -> None:
        super().__init__(E_VERSION, message)


@dataclass
class Envelope:
    """A decoded message. ``body`` holds numpy arrays where arrays were sent."""

    type: str
    session: str
    seq: int
    body: dict[str, Any]
    t_send_ns: int = 0
    version: tuple[int, int] = VERSION


def new_session_id() -> str:
    """A secret session token (128 random bits, hex)."""
    return os.urandom(16).hex()


def public_session(token: str) -> str:
    """The public name of a session: a digest of its token, safe to publish (it cannot be turned back into the
    token, which is what requests must carry). "" for no session."""
    return hashlib.blake2b(token.encode(), digest_size=8).hexdigest() if token else ""


def request_limit(action_dim: int, max_chunk: int) -> int:
    """Largest legitimate request, in bytes, for a robot of ``action_dim`` actions and chunks of at most
    ``max_chunk`` rows: a full float64 chunk plus :data:`REQUEST_OVERHEAD_BYTES`."""
    return max_chunk * action_dim * 8 + REQUEST_OVERHEAD_BYTES


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        dtype = obj.dtype.name
        if dtype not in ALLOWED_DTYPES:
            raise ProtocolError(E_SCHEMA, f"array dtype {dtype} is not allowed on the wire ({sorted(ALLOWED_DTYPES)})")
        return {"__nd__": dtype, "shape": list(obj.shape), "data": np.ascontiguousarray(obj).tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise ProtocolError(E_SCHEMA, f"cannot send a {type(obj).__name__} (only maps, lists, scalars, arrays)")


def _unpack_hook(obj: dict[Any, Any]) -> Any:
    if "__nd__" not in obj:
        return obj
    dtype, shape, data = obj.get("__nd__"), obj.get("shape"), obj.get("data")
    if dtype not in ALLOWED_DTYPES:
        raise ProtocolError(E_SCHEMA, f"array dtype {dtype!r} is not allowed ({sorted(ALLOWED_DTYPES)})")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ProtocolError(E_SCHEMA, f"bad array shape {shape!r}")
    if not isinstance(data, bytes):
        raise ProtocolError(E_SCHEMA, "array data is not bytes")
    count = int(np.prod(shape)) if shape else 1
    if count > MAX_ARRAY_ELEMENTS:
        raise ProtocolError(E_SCHEMA, f"array of {count} elements exceeds the limit {MAX_ARRAY_ELEMENTS}")
    dt = np.dtype(dtype)
    if len(data) != count * dt.itemsize:
        raise ProtocolError(E_SCHEMA, f"array bytes ({len(data)}) do not match {dtype}{tuple(shape)}")
    return np.frombuffer(data, dtype=dt).reshape(shape).copy()


def encode(
    type_: str, body: dict[str, Any] | None = None, *, session: str = "", seq: int = 0,
    version: tuple[int, int] = VERSION,
) -> bytes:
    """One message as bytes (raises :class:`ProtocolError` for anything not representable)."""
    msg = {
        "proto": PROTOCOL, "v": list(version), "type": type_, "session": session, "seq": int(seq),
        "t_send_ns": time.monotonic_ns(), "body": body or {},
    }
    return msgpack.packb(msg, default=_pack_default, use_bin_type=True)


def decode(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Envelope:
    """Bytes -> :class:`Envelope`, or :class:`ProtocolError` (:class:`VersionError` for a version mismatch)."""
    if len(data) > max_bytes:
        raise ProtocolError(E_SCHEMA, f"message of {len(data)} bytes exceeds {max_bytes}")
    try:
        msg = msgpack.unpackb(
            data, object_hook=_unpack_hook, raw=False, strict_map_key=True
        )
    except ProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - msgpack raises many unrelated types for malformed input
        raise ProtocolError(E_SCHEMA, f"undecodable message ({type(exc).__name__}: {exc})") from None
    if not isinstance(msg, dict):
        raise ProtocolError(E_SCHEMA, "message is not a map")
    if msg.get("proto") != PROTOCOL:
        raise VersionError(f"unknown protocol {msg.get('proto')!r}, expected {PROTOCOL!r}")
    version = msg.get("v")
    if not (isinstance(version, list) and len(version) == 2 and all(isinstance(v, int) for v in version)):
        raise ProtocolError(E_SCHEMA, f"bad version field {version!r}")
    if version[0] != VERSION[0]:
        raise VersionError(
            f"protocol major version {version[0]} (v{version[0]}.{version[1]}) is not supported; this side speaks "
            f"v{VERSION[0]}.{VERSION[1]}: upgrade the older side"
        )
    type_, session, seq, body = msg.get("type"), msg.get("session"), msg.get("seq"), msg.get("body")
    if not isinstance(type_, str) or not isinstance(session, str) or not isinstance(seq, int):
        raise ProtocolError(E_SCHEMA, "type/session/seq missing or of the wrong type")
    if not isinstance(body, dict):
        raise ProtocolError(E_SCHEMA, "body is not a map")
    t_send = msg.get("t_send_ns", 0)
    return Envelope(type_, session, seq, body, int(t_send) if isinstance(t_send, int) else 0, (version[0], version[1]))


class SeqGuard:
    """Refuses duplicate or stale sequence numbers within a session (a new session starts over), and any more
    than ``window`` ahead of the last accepted one: the guard only moves forward on a request it accepts, so
    one forged far-ahead number cannot make every later genuine request look stale."""

    def __init__(self, window: int = SEQ_WINDOW) -> None:
        self.session: str | None = None
        self.last = -1
        self.window = window

    def reset(self, session: str | None, last: int = -1) -> None:
        self.session, self.last = session, last

    def check(self, env: Envelope) -> None:
        if env.seq <= self.last:
            raise ProtocolError(E_STALE_SEQ, f"sequence number {env.seq} already seen (last {self.last})")
        if env.seq > self.last + self.window:
            raise ProtocolError(E_STALE_SEQ, f"sequence number {env.seq} is more than {self.window} ahead of the "
                                f"last accepted ({self.last}): refused")
        self.last = env.seq
