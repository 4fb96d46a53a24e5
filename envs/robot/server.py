"""The robot server: next to the hardware, it owns the tick loop, the schedule, safety, watchdog and state.

**The tick counter is the only clock.** Tick k: pop the scheduled action for k, rate-limit it, pass it
through the last safety guard and command the backend (or hold), read the state, publish ``OBS{tick=k}``.
Observations carry their tick and chunks are addressed by tick, so no clock is ever compared across hosts.
Between ticks the server polls its command socket, so a request is answered within microseconds, not at
the next tick.

State machine::

    HOLD(startup) --RESET--> IDLE --CHUNK--> RUNNING <--> STARVED (schedule ran out: hold)
    (the tick after a RESET always holds: the rate limiter ramps from the hold the robot really applies)
    any --fault (bad chunk, watchdog, clipping, protocol violation, handler or backend failure)--> HOLD (latched)
    HOLD --CLEAR_FAULT (only after a RESET since startup / e-stop) or RESET--> IDLE
    any --ESTOP--> ESTOP (latched) --operator, on the server's machine (SIGUSR1)--> HOLD --RESET--> IDLE

A server always starts in HOLD and does not move before a RESET: after a crash and restart the robot stays
held until a client resets it (a CLEAR_FAULT is not enough). No message can clear an e-stop: only the
operator, on the server's machine (:meth:`RobotServer.operator_clear`, bound to SIGUSR1 by :func:`serve`).
The watchdog latches HOLD when the session sends nothing (chunk or heartbeat) for ``watchdog_ticks`` ticks
while RUNNING or STARVED.

**Every byte from the network is hostile.** A request that cannot be decoded, or whose handler fails for any
reason, gets an ``ERROR`` reply and a recorded fault (a bounded ring, :attr:`RobotServer.fault_log`) and never
stops the loop; an unexpected failure also latches HOLD. Requests larger than the largest legitimate chunk
(:func:`~diffplan.envs.robot.protocol.request_limit`) are dropped by ZeroMQ (``MAXMSGSIZE``) before they are
buffered; chunks may be addressed at most ``max_lead_ticks`` ahead. A backend failure during a tick holds the
robot and is reported (never a silent RUNNING).

**Authentication** (:mod:`.auth`): with ``auth`` the sockets are CURVE servers that admit only the listed client
keys; a TCP endpoint that is not loopback refuses to start without it. The session token goes only to the
client that said HELLO (and, with CURVE, is bound to its key); everything the server sends carries only its
public digest.

Sockets: ROUTER for requests (every reply echoes the request's ``seq`` as ``body.re``), PUB for
observations (clients SUB with ``CONFLATE`` to see only the latest). Default observation endpoint: the
command port + 1 (``tcp``) or the command name + ``-obs`` (``inproc``/``ipc``), see :func:`obs_endpoint_for`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, NoReturn

import gymnasium as gym
import numpy as np
import zmq

from diffplan.config import ConfigError
from diffplan.envs.robot import protocol as P
from diffplan.envs.robot.auth import AuthError, ServerKeys, is_loopback
from diffplan.envs.robot.backends import RobotBackend, RobotState, make_backend
from diffplan.envs.robot.protocol import Envelope, ProtocolError, SeqGuard
from diffplan.envs.robot.safety import SafetyConfig, SafetyError, SafetyLayer, SpecMismatch, check_spec
from diffplan.envs.robot.scheduler import ActionScheduler

log = logging.getLogger("diffplan.robot")

IDLE, RUNNING, STARVED, HOLD, ESTOP = "IDLE", "RUNNING", "STARVED", "HOLD", "ESTOP"
E_CLIPPING = "CLIPPING"

__all__ = ["ESTOP", "HOLD", "IDLE", "RUNNING", "STARVED", "ManualClock", "RealTimeClock", "RobotServer",
           "free_port_pair", "obs_endpoint_for"]


def obs_endpoint_for(endpoint: str) -> str:
    """The observation (PUB) endpoint paired with a command endpoint."""
    if endpoint.startswith("tcp://"):
        host, port = endpoint[len("tcp://"):].rsplit(":", 1)
        return f"tcp://{host}:{int(port) + 1}"
    return endpoint + "-obs"


def free_port_pair() -> int:
    """A port p with p and p+1 free on 127.0.0.1 (commands and observations)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                with socket.socket() as b:
                    b.bind(("127.0.0.1", port + 1))
                    return port
            except OSError:
                continue
    raise RuntimeError("no free port pair")


class RealTimeClock:
    """Tick k is due at ``t0 + k / hz`` (monotonic). When the loop falls more than a period behind, the
    missed periods are dropped (re-anchored) rather than run back to back: a burst of catch-up commands is
    worse for a robot than one long period. ``lateness_s`` records how late each tick started (jitter)."""

    def __init__(self, hz: float) -> None:
        self.dt = 1.0 / hz
        self.t0: float | None = None
        self.k = 0
        self.overruns = 0
        self.lateness_s: deque[float] = deque(maxlen=100_000)

    def seconds_to_next(self) -> float:
        if self.t0 is None:
            self.t0 = time.perf_counter()
        return self.t0 + (self.k + 1) * self.dt - time.perf_counter()

    def due(self) -> bool:
        wait = self.seconds_to_next()
        if wait > 0:
            return False
        late = -wait
        self.lateness_s.append(late)
        self.k += 1
        if late > self.dt:
            self.overruns += 1
            self.t0 = time.perf_counter() - self.k * self.dt  # re-anchor
        return True


class ManualClock:
    """Ticks only when told to (:meth:`advance`): deterministic tests with real sockets and no sleeps."""

    def __init__(self) -> None:
        self._pending = 0
        self._lock = threading.Lock()
        self.lateness_s: deque[float] = deque()
        self.overruns = 0

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self._pending += n

    def seconds_to_next(self) -> float:
        return 0.0 if self._pending else 0.005

    def due(self) -> bool:
        with self._lock:
            if self._pending:
                self._pending -= 1
                return True
            return False


FAULT_RING = 256
"""Recorded faults kept (oldest dropped): memory stays bounded whatever a client sends."""
ACTIVE_FAULTS = 16
"""Faults since the last RESET / CLEAR_FAULT, shown in observations and replies."""
REASON_CHARS = 300
"""A recorded fault's reason is cut to this many characters (reasons quote client data)."""


def _endpoint_host(endpoint: str) -> str | None:
    """The host of a ``tcp://host:port`` endpoint (None for inproc/ipc: not reachable over a network)."""
    if not endpoint.startswith("tcp://"):
        return None
    return endpoint[len("tcp://"):].rsplit(":", 1)[0]


class RobotServer:
    """Serves one backend on ``endpoint`` (requests) and its observation endpoint (PUB).

    Run :meth:`serve_forever` in the thread that owns the sockets (the main thread for ``diffplan serve``, a
    test thread with a :class:`ManualClock` for deterministic tests); :meth:`stop` ends it from elsewhere.

    Args:
        auth: CURVE keys (:class:`~diffplan.envs.robot.auth.ServerKeys`); required for a TCP endpoint that is
            not loopback (:class:`~diffplan.envs.robot.auth.AuthError` otherwise). With auth and no
            ``context``, the server makes its own context (a context has one authenticator).
        max_lead_ticks: how far ahead of the current tick a chunk may start (default: the longest chunk).
    """

    def __init__(
        self,
        backend: RobotBackend,
        endpoint: str,
        *,
        obs_endpoint: str | None = None,
        clock: RealTimeClock | ManualClock | None = None,
        watchdog_ticks: int = 5,
        blend_ticks: int = 4,
        context: zmq.Context | None = None,
        telemetry_len: int = 100_000,
        auth: ServerKeys | None = None,
        max_lead_ticks: int | None = None,
    ) -> None:
        host = _endpoint_host(endpoint)
        if auth is None and host is not None and not is_loopback(host):
            raise AuthError(f"refusing to serve {endpoint} without authentication: anyone who reaches the port could "
                            "drive the robot. Make keys (diffplan robot keys KEYDIR) and pass them (--keys KEYDIR), "
                            "or bind to loopback (127.0.0.1)")
        self.backend = backend
        self.spec = backend.spec()
        self.spec.validate()
        self.endpoint = endpoint
        self.obs_endpoint = obs_endpoint or obs_endpoint_for(endpoint)
        self.clock = clock or RealTimeClock(self.spec.control_hz)
        self.watchdog_ticks = watchdog_ticks
        self.blend_ticks = blend_ticks
        self.auth = auth
        self.ctx = context or (zmq.Context() if auth is not None else zmq.Context.instance())
        self._own_ctx = context is None and auth is not None
        self.max_lead_ticks = self.spec.safety.max_chunk if max_lead_ticks is None else max_lead_ticks
        self.request_limit = P.request_limit(self.spec.action_dim, self.spec.safety.max_chunk)
        self.safety = SafetyLayer(self.spec)
        self.scheduler = ActionScheduler(self.spec.action_dim)
        self.seq = SeqGuard()
        self.session = ""  # the secret token; only its digest (self.public_session) is ever sent
        self.session_peer = ""  # the CURVE key that opened the session ("" without auth)
        self.out_seq = 0
        self.tick = 0
        self.state = HOLD
        self.armed = False  # a RESET happened since startup / the last e-stop: only then may the robot move
        self.faults: deque[str] = deque(maxlen=ACTIVE_FAULTS)
        self.fault_log: deque[tuple[int, str]] = deque(maxlen=FAULT_RING)
        self._record("STARTUP: server (re)started; send RESET to start an episode")
        self.episode_over = False
        self.ep_return = 0.0
        self.ep_starved = 0
        self.last_heard = 0
        # The command the backend is applying now (hold_action while held): the rate limiter's reference.
        self.last_target = np.array(self.spec.hold_action, dtype=np.float64)
        self.first_command_tick = 0  # no chunk row runs before this tick (see _reset)
        self._last_state = backend.read_state()
        # Telemetry: every target that reached the backend, and counters.
        self.telemetry: deque[tuple[int, np.ndarray]] = deque(maxlen=telemetry_len)
        self.counters = {"starved_ticks": 0, "clipped_actions": 0, "rate_limited_ticks": 0, "unsafe_blocked": 0,
                         "refused_chunks": 0, "accepted_chunks": 0, "refused_requests": 0, "internal_errors": 0,
                         "backend_errors": 0}
        self._stop = threading.Event()
        self._operator_clear = threading.Event()
        self._tick_cv = threading.Condition()
        self.ready = threading.Event()

    @property
    def public_session(self) -> str:
        return P.public_session(self.session)

    # -------------------------------------------------------------------------------------------- state
    def _record(self, reason: str, active: bool = True) -> None:
        """Record a fault in :attr:`fault_log` and, if ``active``, in the faults shown until the next RESET."""
        reason = reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 3] + "..."
        if active:
            self.faults.append(reason)
        self.fault_log.append((self.tick, reason))

    def _latch(self, state: str, reason: str) -> None:
        if self.state == ESTOP and state != ESTOP:
            self._record(reason)
            return
        if self.state != state:
            log.warning("robot server: %s -> %s (%s)", self.state, state, reason[:REASON_CHARS])
        self.state = state
        self._record(reason)
        self.scheduler.clear()

    def _recent_faults(self, n: int) -> list[str]:
        return list(self.faults)[-n:]

    def operator_clear(self) -> None:
        """Clear a latched e-stop (operator action on the server's machine; safe to call from a signal handler
        or another thread: the tick loop applies it). The robot goes to HOLD and needs a RESET to move."""
        self._operator_clear.set()

    def _apply_operator_clear(self) -> None:
        self._operator_clear.clear()
        if self.state == ESTOP:
            self.state = HOLD
            self.armed = False
            self._record("ESTOP cleared by the operator: robot held; send RESET")
            log.warning("robot server: e-stop cleared by the operator")

    # ------------------------------------------------------------------------------------------ messages
    def _reply(self, type_: str, req: Envelope | None, **body: Any) -> bytes:
        self.out_seq += 1
        body.update(re=req.seq if req else -1, tick=self.tick, state=self.state, sched_end=self.scheduler.end_tick)
        return P.encode(type_, body, session=self.public_session, seq=self.out_seq)

    def _error(self, req: Envelope | None, code: str, message: str) -> bytes:
        """An ERROR reply; every refusal is also recorded in :attr:`fault_log` (not in the active faults: a
        refused request alone does not stop the robot)."""
        self.counters["refused_requests"] += 1
        what = req.type[:40] if req is not None else "undecodable request"
        self._record(f"REFUSED {what}: {code}: {message}", active=False)
        return self._reply(P.ERROR, req, code=code, message=message[:1000])

    def handle(self, raw: bytes, peer: str = "") -> bytes:
        """One request -> its reply (both bytes). Every refusal is a reply with ``ERROR{code, message}``; no
        request, however malformed, raises out of here. ``peer``: the sender's CURVE public key (z85)."""
        req: Envelope | None = None
        try:
            try:
                req = P.decode(raw, self.request_limit)
            except ProtocolError as exc:
                self._latch(HOLD, f"{exc.code}: {exc.message}")
                return self._error(None, exc.code, exc.message)
            return self._dispatch(req, peer)
        except ProtocolError as exc:
            return self._error(req, exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 - any handler failure: hold the robot, record it, keep serving
            self.counters["internal_errors"] += 1
            what = req.type if req is not None else "request"
            msg = f"{what} failed: {type(exc).__name__}: {exc}"
            log.warning("robot server: %s", msg)
            self._latch(HOLD, f"{P.E_INTERNAL}: {msg}")
            return self._error(req, P.E_INTERNAL, f"{msg} (robot held)")

    def _dispatch(self, req: Envelope, peer: str) -> bytes:
        if req.type == P.HELLO:
            return self._hello(req, peer)
        if not self.session or req.session != self.session or peer != self.session_peer:
            raise ProtocolError(P.E_SESSION, "unknown session (server restarted, or another client took over? "
                                "send HELLO)")
        self.seq.check(req)
        self.last_heard = self.tick
        handler = self._HANDLERS.get(req.type)
        if handler is None:
            raise ProtocolError(P.E_SCHEMA, f"unknown message type {req.type[:40]!r}")
        return handler(self, req)

    def _refuse(self, message: str) -> NoReturn:
        """A malformed RESET or CHUNK from the session's client: hold the robot (as for a NaN chunk), then refuse."""
        self.counters["refused_chunks"] += 1
        self._latch(HOLD, f"{P.E_SCHEMA}: {message}")
        raise ProtocolError(P.E_SCHEMA, message)

    def _check_expect(self, expect: Any) -> None:
        """HELLO's ``expect`` (action_low, action_high, action_units): the server checks the client's robot too."""
        if not isinstance(expect, dict):
            raise ProtocolError(P.E_SCHEMA, "HELLO expect must be a map")
        units = expect.get("action_units")
        if units is not None and not (isinstance(units, list) and all(isinstance(u, str) for u in units)):
            raise ProtocolError(P.E_SCHEMA, "HELLO expect.action_units must be a list of strings")
        space = None
        if "action_low" in expect or "action_high" in expect:
            try:
                low = np.asarray(expect["action_low"], dtype=np.float64)
                high = np.asarray(expect["action_high"], dtype=np.float64)
                space = gym.spaces.Box(low, high, dtype=np.float64)
            except (KeyError, TypeError, ValueError) as exc:
                raise ProtocolError(P.E_SCHEMA, f"HELLO expect: bad action bounds ({exc})") from None
        try:
            check_spec(self.spec, space, action_units=units)
        except SpecMismatch as exc:
            raise ProtocolError(P.E_SPEC, f"client expects another robot: {exc}") from None

    def _hello(self, req: Envelope, peer: str) -> bytes:
        if "expect" in req.body and req.body["expect"] is not None:
            self._check_expect(req.body["expect"])
        if self.state in (RUNNING, STARVED):
            self._latch(HOLD, "SESSION: a new client took over while running")
        self.session = P.new_session_id()
        self.session_peer = peer
        self.seq.reset(self.session, req.seq)
        self.last_heard = self.tick
        return self._reply(P.HELLO_OK, req, session=self.session, spec=self.spec.to_wire(),
                           faults=self._recent_faults(5), auth="curve" if self.auth is not None else "none")

    def _reset(self, req: Envelope) -> bytes:
        if self.state == ESTOP:
            raise ProtocolError(P.E_FAULTED, "robot is e-stopped: the e-stop is latched until the operator clears it "
                                "on the robot's machine (see diffplan serve's startup line)")
        seed = req.body.get("seed")
        if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**63):
            self._refuse(f"RESET seed must be an integer in [0, 2**63), got {str(seed)[:40]}")
        self.scheduler.clear()
        self.state = HOLD  # until the backend is reset: a failing reset leaves the robot held
        self.backend.reset(seed)
        self.safety.reset()
        self.faults.clear()
        self.episode_over, self.ep_return, self.ep_starved = False, 0.0, 0
        # The first tick after a RESET holds, whenever the next chunk arrives: the rate limiter then ramps from
        # the hold action the robot is really applying, never from a command of the previous episode that a
        # reset (sim) or homing (hardware) has replaced; and a reset followed by the same actions repeats.
        self.first_command_tick = self.tick + 2
        self.state = IDLE
        self.armed = True
        s = self.backend.read_state()
        self._last_state = s
        return self._reply(P.RESET_OK, req, obs=s.obs)

    def _chunk(self, req: Envelope) -> bytes:
        if self.state in (HOLD, ESTOP):
            raise ProtocolError(P.E_FAULTED, f"robot is in {self.state} ({self.faults[-1] if self.faults else ''}); "
                                "send RESET" + (" or CLEAR_FAULT" if self.state == HOLD and self.armed else ""))
        if self.episode_over:
            raise ProtocolError(P.E_EPISODE_OVER, "episode is over; send RESET")
        body = req.body
        base = body.get("base_tick", -1)
        if not isinstance(base, int) or isinstance(base, bool):
            self._refuse("base_tick must be an int (-1: as soon as possible)")
        if base > self.tick + self.max_lead_ticks:
            self._refuse(f"base_tick {base} is more than {self.max_lead_ticks} ticks ahead of the current tick "
                         f"{self.tick}")
        blend = body.get("blend", self.blend_ticks)
        if not isinstance(blend, int) or isinstance(blend, bool) or not 0 <= blend <= self.spec.safety.max_chunk:
            self._refuse(f"blend must be an int in [0, {self.spec.safety.max_chunk}]")
        try:
            actions, report = self.safety.check(body.get("actions"))
        except SafetyError as exc:
            self.counters["refused_chunks"] += 1
            self._latch(HOLD, f"{exc.code}: {exc.message}")
            raise
        self.counters["clipped_actions"] += report.clipped
        if report.abort:
            self.counters["refused_chunks"] += 1
            msg = f"excessive clipping: more than {self.spec.safety.clip_abort_fraction:.0%} of recent actions " \
                  "far outside the bounds; episode aborted"
            self._latch(HOLD, f"{E_CLIPPING}: {msg}")
            raise ProtocolError(E_CLIPPING, msg)
        now = max(self.tick, self.first_command_tick - 1)  # rows for ticks up to `now` cannot run
        first, last = self.scheduler.submit(actions, now + 1 if base < 0 else base, now, blend)
        self.counters["accepted_chunks"] += 1
        if self.state == IDLE:
            self.state = RUNNING
        return self._reply(P.CHUNK_OK, req, first=first, last=last, clipped=report.clipped)

    def _heartbeat(self, req: Envelope) -> bytes:
        return self._reply(P.HEARTBEAT_OK, req, faults=self._recent_faults(5))

    def _hold(self, req: Envelope) -> bytes:
        self._latch(HOLD, f"HOLD requested by the client: {str(req.body.get('reason', ''))[:200]}")
        return self._reply(P.HOLD_OK, req)

    def _estop(self, req: Envelope) -> bytes:
        self._latch(ESTOP, f"ESTOP: {str(req.body.get('reason', 'requested by the client'))[:200]}")
        self.armed = False
        try:
            self.backend.estop()
        except Exception as exc:  # noqa: BLE001 - still latched; the operator must know the backend failed
            self.counters["backend_errors"] += 1
            self._record(f"{P.E_BACKEND}: estop() failed: {type(exc).__name__}: {exc}")
        return self._reply(P.ESTOP_OK, req)

    def _clear_fault(self, req: Envelope) -> bytes:
        if self.state == ESTOP:
            raise ProtocolError(P.E_FAULTED, "the e-stop is latched: only the operator can clear it, on the robot's "
                                "machine (see diffplan serve's startup line)")
        if self.state == HOLD:
            if not self.armed:
                raise ProtocolError(P.E_FAULTED, "the robot has not been reset since the server started or the "
                                    "e-stop was cleared: send RESET")
            self.state = IDLE
            self.faults.clear()
            self.scheduler.clear()
            self.safety.reset()
        return self._reply(P.CLEAR_FAULT_OK, req)

    def _telemetry(self, req: Envelope) -> bytes:
        ticks = np.array([t for t, _ in self.telemetry], dtype=np.int64)
        targets = np.array([a for _, a in self.telemetry], dtype=np.float64).reshape(-1, self.spec.action_dim)
        late = np.array(self.clock.lateness_s, dtype=np.float64)
        return self._reply(
            P.TELEMETRY_OK, req, ticks=ticks, targets=targets, tick_lateness_s=late,
            overruns=self.clock.overruns, faults=list(self.faults),
            fault_log=[[t, r] for t, r in self.fault_log], **self.counters,
        )

    _HANDLERS: ClassVar[dict[str, Callable[[RobotServer, Envelope], bytes]]] = {
        P.RESET: _reset, P.CHUNK: _chunk, P.HEARTBEAT: _heartbeat, P.HOLD: _hold, P.ESTOP: _estop,
        P.CLEAR_FAULT: _clear_fault, P.TELEMETRY: _telemetry,
    }

    # ---------------------------------------------------------------------------------------------- tick
    def _backend_failed(self, exc: Exception, during: str) -> None:
        """A backend call raised: hold the robot (escalate to ESTOP if even holding fails) and report it."""
        self.counters["backend_errors"] += 1
        self._latch(HOLD, f"{P.E_BACKEND}: {during} failed: {type(exc).__name__}: {exc}")
        try:
            self.backend.hold()
        except Exception as exc2:  # noqa: BLE001
            self.counters["backend_errors"] += 1
            self._latch(ESTOP, f"{P.E_BACKEND}: hold() failed too: {type(exc2).__name__}: {exc2}")
            self.armed = False
            try:
                self.backend.estop()
            except Exception:  # nothing more the server can do; the fault is recorded
                log.exception("robot server: backend estop() failed")
        self.last_target = np.array(self.spec.hold_action, dtype=np.float64)

    def _control(self, k: int) -> None:
        """Command (or hold) the backend for tick ``k``."""
        if self.state in (IDLE, RUNNING, STARVED) and not self.episode_over:
            action = self.scheduler.pop(k)
            if k < self.first_command_tick:  # the hold tick after a RESET: planned, not starved
                self._hold_backend()
            elif action is None:
                self._hold_backend()
                if self.state == RUNNING:
                    self.state = STARVED
                if self.state == STARVED:
                    self.counters["starved_ticks"] += 1
                    self.ep_starved += 1
            else:
                target, limited = self.safety.rate_limit(action, self.last_target)
                self.counters["rate_limited_ticks"] += int(limited)
                if self.safety.is_safe(target, self.last_target):
                    self.backend.command(target)
                    self.last_target = target
                    self.telemetry.append((k, target))
                    self.state = RUNNING
                else:  # cannot happen after rate_limit; if it ever does, the robot must not move
                    self.counters["unsafe_blocked"] += 1
                    self._latch(ESTOP, f"INTERNAL: unsafe target {target} blocked before the backend")
                    self.armed = False
                    self.backend.estop()
        elif self.state == HOLD:
            self._hold_backend()

    def step_tick(self) -> bytes:
        """Execute one tick and return the OBS message it publishes. A backend failure holds the robot and is
        reported in the observation; it never ends the loop."""
        if self._operator_clear.is_set():
            self._apply_operator_clear()
        self.tick += 1
        k = self.tick
        try:
            self._control(k)
        except Exception as exc:  # noqa: BLE001 - BackendError or a driver bug: hold, report, keep serving
            self._backend_failed(exc, "command" if self.state in (RUNNING, STARVED, IDLE) else "hold")
        try:
            state = self.backend.read_state()
            self._last_state = state
        except Exception as exc:  # noqa: BLE001
            self._backend_failed(exc, "read_state")
            state = RobotState(self._last_state.obs)  # the last known state, nothing earned
        self.ep_return += state.reward
        if (state.terminated or state.truncated) and not self.episode_over:
            self.episode_over = True
            self.scheduler.clear()
            if self.state in (RUNNING, STARVED):
                self.state = IDLE
        if self.state in (RUNNING, STARVED) and k - self.last_heard > self.watchdog_ticks:
            self._latch(HOLD, f"WATCHDOG: no chunk or heartbeat for {k - self.last_heard} ticks")
        self.out_seq += 1
        return P.encode(P.OBS, {
            "tick": k, "obs": state.obs, "reward": state.reward, "ep_return": self.ep_return,
            "terminated": state.terminated, "truncated": state.truncated, "state": self.state,
            "faults": self._recent_faults(3), "sched_end": self.scheduler.end_tick,
            "starved_ticks": self.ep_starved,
        }, session=self.public_session, seq=self.out_seq)

    def _hold_backend(self) -> None:
        self.last_target = np.array(self.spec.hold_action, dtype=np.float64)
        self.backend.hold()

    # ---------------------------------------------------------------------------------------------- loop
    def serve_forever(self) -> None:
        authenticator = self.auth.authenticator(self.ctx) if self.auth is not None else None
        router = self.ctx.socket(zmq.ROUTER)
        pub = self.ctx.socket(zmq.PUB)
        for s in (router, pub):
            s.setsockopt(zmq.LINGER, 0)
            if self.auth is not None:
                self.auth.apply(s)
        pub.setsockopt(zmq.SNDHWM, 4)
        # A larger request is dropped (and its connection closed) by ZeroMQ before it is buffered, and at most
        # RCVHWM requests wait between ticks: what a client can make the server hold is bounded.
        router.setsockopt(zmq.MAXMSGSIZE, self.request_limit)
        router.setsockopt(zmq.RCVHWM, 64)
        try:
            router.bind(self.endpoint)
            pub.bind(self.obs_endpoint)
            poller = zmq.Poller()
            poller.register(router, zmq.POLLIN)
            self.ready.set()
            while not self._stop.is_set():
                timeout_ms = max(0.0, self.clock.seconds_to_next()) * 1000.0
                if poller.poll(timeout_ms):
                    while True:  # drain every pending request before the next tick
                        try:
                            frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        peer = ""
                        if self.auth is not None:
                            try:
                                peer = frames[-1].get("User-Id")
                            except zmq.ZMQError:
                                peer = ""
                        raw = frames[-1].bytes if len(frames) > 1 else b""
                        router.send_multipart([frames[0], self.handle(raw, peer)])
                if self.clock.due():
                    pub.send(self.step_tick())
                    with self._tick_cv:
                        self._tick_cv.notify_all()
        finally:
            router.close(0)
            pub.close(0)
            if authenticator is not None:
                authenticator.stop()
            if self._own_ctx:
                self.ctx.term()
            self.ready.clear()

    def stop(self) -> None:
        self._stop.set()

    def wait_tick(self, tick: int, timeout: float = 5.0) -> None:
        """Block until ``tick`` has been executed (tests with a :class:`ManualClock`)."""
        with self._tick_cv:
            if not self._tick_cv.wait_for(lambda: self.tick >= tick, timeout):
                raise TimeoutError(f"server did not reach tick {tick} (at {self.tick})")

    def start_thread(self) -> threading.Thread:
        """Serve in a daemon thread; returns once the sockets are bound."""
        thread = threading.Thread(target=self.serve_forever, daemon=True, name="robot-server")
        thread.start()
        if not self.ready.wait(10):
            raise RuntimeError(f"robot server did not bind {self.endpoint}")
        return thread


def serve(env: str, port: int, hz: float, host: str = "127.0.0.1", watchdog_ticks: int = 5,
          safety: SafetyConfig | None = None, seed: int = 0, keys: str | None = None) -> None:
    """Serve ``env`` on ``tcp://host:port`` (observations on ``port + 1``) until interrupted.

    ``keys``: a key directory (``diffplan robot keys``): CURVE authentication, required unless ``host`` is
    loopback. SIGUSR1 to this process is the operator's e-stop clear. Raises
    :class:`~diffplan.envs.robot.auth.AuthError` for missing keys and :class:`~diffplan.config.ConfigError` for
    an env that cannot be served, before anything is bound.
    """
    auth = ServerKeys.load(keys) if keys is not None else None
    try:
        backend = make_backend(env, hz, safety, seed=seed)
    except (ValueError, TypeError) as exc:  # unknown task, not a MuJoCo env, not a Box action space, bad rate
        raise ConfigError(f"cannot serve --env {env!r}: {exc}") from None
    try:
        server = RobotServer(backend, f"tcp://{host}:{port}", watchdog_ticks=watchdog_ticks, auth=auth)
    except Exception:
        backend.close()
        raise
    usr1 = getattr(signal, "SIGUSR1", None)  # POSIX only
    if usr1 is not None:
        signal.signal(usr1, lambda *_: server.operator_clear())
    mode = (f"CURVE, {auth.allowed} allowed client key(s)" if auth is not None
            else "NONE (loopback only: any local process can drive the robot)")
    print(f"serving {env} at tcp://{host}:{port} (observations on {port + 1}), {hz:g} Hz, "
          f"units {server.spec.action_units}; authentication: {mode}; "
          f"clear an e-stop: kill -USR1 {os.getpid()}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        backend.close()
