"""The robot server: next to the hardware, it owns the tick loop, the schedule, safety, watchdog and state.

**The tick counter is the only clock.** Tick k: pop the scheduled action for k, rate-limit it, pass it
through the last safety guard and command the backend (or hold), read the state, publish ``OBS{tick=k}``.
Observations carry their tick and chunks are addressed by tick, so no clock is ever compared across hosts.
Between ticks the server polls its command socket, so a request is answered within microseconds, not at
the next tick.

State machine::

    HOLD(startup) --RESET--> IDLE --CHUNK--> RUNNING <--> STARVED (schedule ran out: hold)
    any --fault (bad chunk, watchdog, clipping, protocol violation, HOLD request)--> HOLD (latched)
    any --ESTOP--> ESTOP (latched);  ESTOP --CLEAR_FAULT--> HOLD --CLEAR_FAULT or RESET--> IDLE

A server always starts in HOLD: after a crash and restart the robot stays held until a client resets it.
The watchdog latches HOLD when the session sends nothing (chunk or heartbeat) for ``watchdog_ticks`` ticks
while RUNNING or STARVED.

Sockets: ROUTER for requests (every reply echoes the request's ``seq`` as ``body.re``), PUB for
observations (clients SUB with ``CONFLATE`` to see only the latest). Default observation endpoint: the
command port + 1 (``tcp``) or the command name + ``-obs`` (``inproc``/``ipc``), see :func:`obs_endpoint_for`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import zmq

from diffplan.envs.robot import protocol as P
from diffplan.envs.robot.backends import RobotBackend, make_backend
from diffplan.envs.robot.protocol import Envelope, ProtocolError, SeqGuard, VersionError
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


class RobotServer:
    """Serves one backend on ``endpoint`` (requests) and its observation endpoint (PUB).

    Run :meth:`serve_forever` in the thread that owns the sockets (the main thread for ``diffplan serve``, a
    test thread with a :class:`ManualClock` for deterministic tests); :meth:`stop` ends it from elsewhere.
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
    ) -> None:
        self.backend = backend
        self.spec = backend.spec()
        self.spec.validate()
        self.endpoint = endpoint
        self.obs_endpoint = obs_endpoint or obs_endpoint_for(endpoint)
        self.clock = clock or RealTimeClock(self.spec.control_hz)
        self.watchdog_ticks = watchdog_ticks
        self.blend_ticks = blend_ticks
        self.ctx = context or zmq.Context.instance()
        self.safety = SafetyLayer(self.spec)
        self.scheduler = ActionScheduler(self.spec.action_dim)
        self.seq = SeqGuard()
        self.session = ""
        self.out_seq = 0
        self.tick = 0
        self.state = HOLD
        self.faults: list[str] = ["STARTUP: server (re)started; send RESET to start an episode"]
        self.episode_over = False
        self.ep_return = 0.0
        self.ep_starved = 0
        self.last_heard = 0
        self.last_target = np.array(self.spec.hold_action, dtype=np.float64)
        # Telemetry: every target that reached the backend, and counters.
        self.telemetry: deque[tuple[int, np.ndarray]] = deque(maxlen=telemetry_len)
        self.counters = {"starved_ticks": 0, "clipped_actions": 0, "rate_limited_ticks": 0, "unsafe_blocked": 0,
                         "refused_chunks": 0, "accepted_chunks": 0}
        self._stop = threading.Event()
        self._tick_cv = threading.Condition()
        self.ready = threading.Event()

    # -------------------------------------------------------------------------------------------- state
    def _latch(self, state: str, reason: str) -> None:
        if self.state == ESTOP and state != ESTOP:
            return
        if self.state != state:
            log.warning("robot server: %s -> %s (%s)", self.state, state, reason)
        self.state = state
        self.faults.append(reason)
        self.scheduler.clear()

    # ------------------------------------------------------------------------------------------ messages
    def _reply(self, type_: str, req: Envelope | None, **body: Any) -> bytes:
        self.out_seq += 1
        body.update(re=req.seq if req else -1, tick=self.tick, state=self.state, sched_end=self.scheduler.end_tick)
        return P.encode(type_, body, session=self.session, seq=self.out_seq)

    def _error(self, req: Envelope | None, code: str, message: str) -> bytes:
        return self._reply(P.ERROR, req, code=code, message=message)

    def handle(self, raw: bytes) -> bytes:
        """One request -> its reply (both bytes). Every refusal is a reply with ``ERROR{code, message}``."""
        try:
            req = P.decode(raw)
        except VersionError as exc:
            self._latch(HOLD, f"{exc.code}: {exc.message}")
            return self._error(None, exc.code, exc.message)
        except ProtocolError as exc:
            self._latch(HOLD, f"{exc.code}: {exc.message}")
            return self._error(None, exc.code, exc.message)
        if req.type == P.HELLO:
            try:
                return self._hello(req)
            except ProtocolError as exc:
                return self._error(req, exc.code, exc.message)
        if req.session != self.session or not self.session:
            return self._error(req, P.E_SESSION, f"unknown session {req.session!r} (server restarted? send HELLO)")
        try:
            self.seq.check(req)
        except ProtocolError as exc:
            return self._error(req, exc.code, exc.message)
        self.last_heard = self.tick
        handler = self._HANDLERS.get(req.type)
        if handler is None:
            return self._error(req, P.E_SCHEMA, f"unknown message type {req.type!r}")
        try:
            return handler(self, req)
        except ProtocolError as exc:
            return self._error(req, exc.code, exc.message)

    def _hello(self, req: Envelope) -> bytes:
        expect = req.body.get("expect")
        if isinstance(expect, dict):  # the server checks the client's units and bounds too
            try:
                check_spec(self.spec, gym.spaces.Box(np.asarray(expect["action_low"]), np.asarray(expect["action_high"]))
                           if "action_low" in expect else None, action_units=expect.get("action_units"))
            except (SpecMismatch, KeyError, ValueError) as exc:
                raise ProtocolError(P.E_SPEC, f"client expects another robot: {exc}") from None
        if self.state in (RUNNING, STARVED):
            self._latch(HOLD, "SESSION: a new client took over while running")
        self.session = P.new_session_id()
        self.seq.reset(self.session)
        self.seq.last = req.seq
        self.last_heard = self.tick
        return self._reply(P.HELLO_OK, req, session=self.session, spec=self.spec.to_wire(), faults=self.faults[-5:])

    def _reset(self, req: Envelope) -> bytes:
        if self.state == ESTOP:
            raise ProtocolError(P.E_FAULTED, "robot is e-stopped; send CLEAR_FAULT first")
        seed = req.body.get("seed")
        self.backend.reset(seed if isinstance(seed, int) else None)
        self.scheduler.clear()
        self.safety.reset()
        self.faults, self.episode_over, self.ep_return, self.ep_starved = [], False, 0.0, 0
        self.last_target = np.array(self.spec.hold_action, dtype=np.float64)
        self.state = IDLE
        s = self.backend.read_state()
        return self._reply(P.RESET_OK, req, obs=s.obs)

    def _chunk(self, req: Envelope) -> bytes:
        if self.state in (HOLD, ESTOP):
            raise ProtocolError(P.E_FAULTED, f"robot is in {self.state} ({self.faults[-1] if self.faults else ''}); "
                                "send RESET or CLEAR_FAULT")
        if self.episode_over:
            raise ProtocolError(P.E_EPISODE_OVER, "episode is over; send RESET")
        body = req.body
        base = body.get("base_tick", -1)
        if not isinstance(base, int):
            raise ProtocolError(P.E_SCHEMA, "base_tick must be an int (-1: as soon as possible)")
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
        blend = body.get("blend", self.blend_ticks)
        first, last = self.scheduler.submit(
            actions, self.tick + 1 if base < 0 else base, self.tick, int(blend) if isinstance(blend, int) else 0
        )
        self.counters["accepted_chunks"] += 1
        if self.state == IDLE:
            self.state = RUNNING
        return self._reply(P.CHUNK_OK, req, first=first, last=last, clipped=report.clipped)

    def _heartbeat(self, req: Envelope) -> bytes:
        return self._reply(P.HEARTBEAT_OK, req, faults=self.faults[-5:])

    def _hold(self, req: Envelope) -> bytes:
        self._latch(HOLD, f"HOLD requested by the client: {req.body.get('reason', '')}")
        return self._reply(P.HOLD_OK, req)

    def _estop(self, req: Envelope) -> bytes:
        self.backend.estop()
        self._latch(ESTOP, f"ESTOP: {req.body.get('reason', 'requested by the client')}")
        return self._reply(P.ESTOP_OK, req)

    def _clear_fault(self, req: Envelope) -> bytes:
        if self.state == ESTOP:
            self.state = HOLD
            self.faults.append("ESTOP cleared: robot held")
        elif self.state == HOLD:
            self.state, self.faults = IDLE, []
            self.scheduler.clear()
            self.safety.reset()
        return self._reply(P.CLEAR_FAULT_OK, req)

    def _telemetry(self, req: Envelope) -> bytes:
        ticks = np.array([t for t, _ in self.telemetry], dtype=np.int64)
        targets = np.array([a for _, a in self.telemetry], dtype=np.float64).reshape(-1, self.spec.action_dim)
        late = np.array(self.clock.lateness_s, dtype=np.float64)
        return self._reply(
            P.TELEMETRY_OK, req, ticks=ticks, targets=targets, tick_lateness_s=late,
            overruns=self.clock.overruns, faults=self.faults, **self.counters,
        )

    _HANDLERS: ClassVar[dict[str, Callable[[RobotServer, Envelope], bytes]]] = {
        P.RESET: _reset, P.CHUNK: _chunk, P.HEARTBEAT: _heartbeat, P.HOLD: _hold, P.ESTOP: _estop,
        P.CLEAR_FAULT: _clear_fault, P.TELEMETRY: _telemetry,
    }

    # ---------------------------------------------------------------------------------------------- tick
    def step_tick(self) -> bytes:
        """Execute one tick and return the OBS message it publishes."""
        self.tick += 1
        k = self.tick
        if self.state in (IDLE, RUNNING, STARVED) and not self.episode_over:
            action = self.scheduler.pop(k)
            if action is None:
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
                    self.backend.estop()
                    self._latch(ESTOP, f"INTERNAL: unsafe target {target} blocked before the backend")
        elif self.state == HOLD:
            self._hold_backend()
        state = self.backend.read_state()
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
            "faults": self.faults[-3:], "sched_end": self.scheduler.end_tick,
            "starved_ticks": self.ep_starved,
        }, session=self.session, seq=self.out_seq)

    def _hold_backend(self) -> None:
        self.backend.hold()
        self.last_target = np.array(self.spec.hold_action, dtype=np.float64)

    # ---------------------------------------------------------------------------------------------- loop
    def serve_forever(self) -> None:
        router = self.ctx.socket(zmq.ROUTER)
        pub = self.ctx.socket(zmq.PUB)
        for s in (router, pub):
            s.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, 4)
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
                            ident, *frames = router.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        raw = frames[-1] if frames else b""
                        router.send_multipart([ident, self.handle(raw)])
                if self.clock.due():
                    pub.send(self.step_tick())
                    with self._tick_cv:
                        self._tick_cv.notify_all()
        finally:
            router.close(0)
            pub.close(0)
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
          safety: SafetyConfig | None = None, seed: int = 0) -> None:
    """Serve ``env`` on ``tcp://host:port`` (observations on ``port + 1``) until interrupted."""
    backend = make_backend(env, hz, safety, seed=seed)
    server = RobotServer(backend, f"tcp://{host}:{port}", watchdog_ticks=watchdog_ticks)
    print(f"serving {env} at tcp://{host}:{port} (observations on {port + 1}), {hz:g} Hz, "
          f"units {server.spec.action_units}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        backend.close()
