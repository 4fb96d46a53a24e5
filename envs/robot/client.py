"""Client side of the bridge: :class:`RobotClient` (requests with deadlines, latest observation) and
:class:`RobotEnv`, a ``gymnasium.Env`` over it.

Every request is answered within ``timeout_s`` or :class:`RobotTimeout` is raised (the DEALER socket is then
rebuilt, as in ZeroMQ's "lazy pirate" pattern, so a late reply can never be taken for the next one).
Observations arrive on a conflating SUB socket: only the newest is kept. An observation is refused as stale
(:class:`StaleObservation`) when the server's tick, known from every reply, is more than
``max_obs_lag_ticks`` ahead of it, or when none arrives within the deadline: the client never plans on
cached data.

Authentication: pass ``keys`` (:class:`~diffplan.envs.robot.auth.ClientKeys`, from a ``diffplan robot keys``
directory) to talk to a server started with ``--keys``; both sockets are then CURVE clients that also verify
the server's key. A server that refuses the key never answers: the request times out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import zmq

from diffplan.envs.robot import protocol as P
from diffplan.envs.robot.auth import ClientKeys
from diffplan.envs.robot.protocol import Envelope
from diffplan.envs.robot.safety import RobotSpec, SafetyError, SafetyLayer, check_spec
from diffplan.envs.robot.server import ESTOP, HOLD, obs_endpoint_for

__all__ = ["Observation", "RobotClient", "RobotEnv", "RobotError", "RobotTimeout", "StaleObservation"]


class RobotError(RuntimeError):
    """The server refused a request (``code`` is the protocol error code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"robot server refused: {code}: {message}")
        self.code, self.message = code, message


class RobotTimeout(RobotError):
    def __init__(self, message: str) -> None:
        super().__init__("TIMEOUT", message)


class StaleObservation(RobotError):
    def __init__(self, message: str) -> None:
        super().__init__("STALE_OBS", message)


@dataclass
class Observation:
    """One published observation; ``received`` is the client's monotonic receipt time (s)."""

    tick: int
    obs: np.ndarray
    ep_return: float
    terminated: bool
    truncated: bool
    state: str
    faults: list[str]
    sched_end: int
    starved_ticks: int
    received: float = field(default_factory=time.monotonic)


class RobotClient:
    """Requests over DEALER with a deadline each; the latest observation over SUB/CONFLATE."""

    def __init__(self, endpoint: str, *, obs_endpoint: str | None = None, timeout_s: float = 1.0,
                 max_obs_lag_ticks: int = 3, context: zmq.Context | None = None,
                 keys: ClientKeys | None = None) -> None:
        self.endpoint = endpoint
        self.keys = keys
        self.obs_endpoint = obs_endpoint or obs_endpoint_for(endpoint)
        self.timeout_s = timeout_s
        self.max_obs_lag_ticks = max_obs_lag_ticks
        self.ctx = context or zmq.Context.instance()
        self.session = ""
        self.seq = 0
        self.server_tick = 0
        self.spec: RobotSpec | None = None
        self.latest: Observation | None = None
        self._last_obs_seq = -1
        self.dealer = self._dealer()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.apply(self.sub)
        self.sub.setsockopt(zmq.CONFLATE, 1)  # keep only the newest observation
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(self.obs_endpoint)

    def _dealer(self) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        if self.keys is not None:
            self.keys.apply(s)
        s.connect(self.endpoint)
        return s

    def close(self) -> None:
        self.dealer.close(0)
        self.sub.close(0)

    # ------------------------------------------------------------------------------------------ requests
    def request(self, type_: str, body: dict[str, Any] | None = None, timeout_s: float | None = None) -> Envelope:
        """Send one request and return its reply; :class:`RobotError` for ERROR, :class:`RobotTimeout` late."""
        self.seq += 1
        seq = self.seq
        self.dealer.send(P.encode(type_, body, session=self.session, seq=seq))
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.dealer.poll(left * 1000.0):
                self.dealer.close(0)
                self.dealer = self._dealer()
                auth = "" if self.keys is not None else ", or it requires CURVE keys"
                raise RobotTimeout(f"no reply to {type_} from {self.endpoint} within "
                                   f"{self.timeout_s if timeout_s is None else timeout_s:.3g} s (server down{auth}?)")
            reply = P.decode(self.dealer.recv())
            re = reply.body.get("re")
            if re != seq and not (re == -1 and reply.type == P.ERROR):  # -1: the server could not read a request
                continue  # a late reply to an earlier request
            tick = reply.body.get("tick")
            if isinstance(tick, int):
                self.server_tick = max(self.server_tick, tick)
            if reply.type == P.ERROR:
                raise RobotError(str(reply.body.get("code")), str(reply.body.get("message")))
            return reply

    def connect(self, expect: dict[str, Any] | None = None) -> RobotSpec:
        """HELLO: open a session and get the robot's spec. ``expect`` (action_low, action_high, action_units)
        lets the server check units and bounds too; a mismatch is refused with code SPEC."""
        self.session = ""
        reply = self.request(P.HELLO, {"expect": expect} if expect else None)
        self.session = str(reply.body["session"])
        self.spec = RobotSpec.from_wire(reply.body["spec"])
        self._last_obs_seq = -1
        self.latest = None
        return self.spec

    def submit_chunk(self, actions: np.ndarray, base_tick: int = -1, blend: int | None = None,
                     timeout_s: float | None = None) -> Envelope:
        """Schedule (H, A) actions from ``base_tick`` (-1: the next tick); the reply has ``first``/``last``."""
        body: dict[str, Any] = {"actions": np.ascontiguousarray(actions), "base_tick": int(base_tick)}
        if blend is not None:
            body["blend"] = int(blend)
        return self.request(P.CHUNK, body, timeout_s)

    def heartbeat(self) -> Envelope:
        return self.request(P.HEARTBEAT)

    def telemetry(self) -> dict[str, Any]:
        return self.request(P.TELEMETRY).body

    # ------------------------------------------------------------------------------------- observations
    def poll_obs(self) -> Observation | None:
        """The newest observation received so far (never blocks); None if there is none yet."""
        while True:
            try:
                raw = self.sub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return self.latest
            self._accept(raw)

    def _accept(self, raw: bytes) -> None:
        msg = P.decode(raw)
        if msg.type != P.OBS or msg.session != P.public_session(self.session):
            return  # another session's stream (e.g. before our HELLO)
        b = msg.body
        if msg.seq <= self._last_obs_seq or (self.latest is not None and b["tick"] <= self.latest.tick):
            return  # duplicate or reordered: never go back in time
        self._last_obs_seq = msg.seq
        self.latest = Observation(int(b["tick"]), np.asarray(b["obs"]), float(b["ep_return"]), bool(b["terminated"]),
                                  bool(b["truncated"]), str(b["state"]), list(b["faults"]), int(b["sched_end"]),
                                  int(b["starved_ticks"]))
        self.server_tick = max(self.server_tick, self.latest.tick)

    def wait_obs(self, min_tick: int, timeout_s: float | None = None) -> Observation:
        """Block until an observation of tick >= ``min_tick``; :class:`StaleObservation` past the deadline."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        while True:
            obs = self.poll_obs()
            if obs is not None and obs.tick >= min_tick:
                self.check_fresh(obs)
                return obs
            left = deadline - time.monotonic()
            if left <= 0:
                have = "none" if obs is None else f"tick {obs.tick}"
                raise StaleObservation(f"no observation of tick >= {min_tick} within {timeout:.3g} s "
                                       f"(latest: {have}, server at tick {self.server_tick}): publisher frozen?")
            if self.sub.poll(left * 1000.0):
                self._accept(self.sub.recv())

    def check_fresh(self, obs: Observation) -> None:
        lag = self.server_tick - obs.tick
        if lag > self.max_obs_lag_ticks:
            raise StaleObservation(f"observation of tick {obs.tick} is {lag} ticks behind the server "
                                   f"(limit {self.max_obs_lag_ticks}): publisher frozen or link congested")


class RobotEnv(gym.Env):
    """A robot served by ``diffplan serve`` as a gymnasium env.

    * ``step(action)``: one action, executed at the next tick; returns after its observation arrives.
    * ``step_chunk(actions (H, A), base_tick=-1)``: schedule a chunk at ``base_tick`` (-1: next tick);
      returns after the observation of its first executed tick.

    ``robot_spec``: the served robot's :class:`RobotSpec`. ``info``: ``clipped`` (actions clipped by the server),
    ``faults``; ``last_live`` (and ``info`` with ``live_info``): ``tick``, ``obs_age_s`` (since receipt),
    ``obs_lag_ticks``, ``state``, ``starved_ticks``. A fault (server HOLD/ESTOP, a refused chunk) ends the
    episode: ``terminated=True`` with the reason in ``info["fault"]``. Lost contact raises
    :class:`RobotTimeout` / :class:`StaleObservation` within the deadline.

    ``action_space``/``observation_space``/``action_units``: what the policy was built for; checked against
    the server's spec at connection (:class:`~diffplan.envs.robot.safety.SpecMismatch`).

    The fields that depend on when an observation was taken (tick, obs_age_s, obs_lag_ticks, state,
    starved_ticks) are always in ``last_live`` and, with ``live_info=True``, in ``info`` as well. The default
    (False) keeps ``info`` a function of the seed and the actions, as gymnasium's ``check_env`` requires:
    timing never repeats exactly.

    ``keys``: CURVE client keys for a server started with ``--keys``.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, endpoint: str, *, obs_endpoint: str | None = None, timeout_s: float = 1.0,
                 max_obs_lag_ticks: int = 3, action_space: gym.spaces.Box | None = None,
                 observation_space: gym.Space | None = None, action_units: list[str] | None = None,
                 live_info: bool = False, keys: ClientKeys | None = None) -> None:
        self.live_info = live_info
        self.last_live: dict[str, Any] = {}
        self.client = RobotClient(endpoint, obs_endpoint=obs_endpoint, timeout_s=timeout_s,
                                  max_obs_lag_ticks=max_obs_lag_ticks, keys=keys)
        expect: dict[str, Any] = {}
        if action_space is not None:
            expect.update(action_low=np.asarray(action_space.low, np.float64),
                          action_high=np.asarray(action_space.high, np.float64))
        if action_units is not None:
            expect["action_units"] = list(action_units)
        try:
            spec = self.client.connect(expect)
            check_spec(spec, action_space, observation_space, action_units)
        except Exception:
            self.client.close()
            raise
        self.robot_spec = spec
        self.safety = SafetyLayer(spec)  # mirrors the server's checks
        self.observation_space = spec.observation_space
        self.action_space = gym.spaces.Box(spec.action_low.astype(np.float32), spec.action_high.astype(np.float32))
        self._return = 0.0

    def _unflatten(self, flat: np.ndarray) -> Any:
        return gym.spaces.unflatten(self.observation_space, flat)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        reply = self.client.request(P.RESET, {"seed": seed} if seed is not None else {})
        self._return = 0.0
        self.safety.reset()
        self.last_live = {"tick": int(reply.body["tick"]), "state": str(reply.body["state"])}
        return self._unflatten(np.asarray(reply.body["obs"])), dict(self.last_live) if self.live_info else {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        return self.step_chunk(np.asarray(action)[None])

    def step_chunk(self, actions: Any, base_tick: int = -1) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        actions = np.asarray(actions)
        if actions.dtype.kind == "f":
            actions = actions.astype(np.float64)
        try:
            _, report = self.safety.check(actions)  # the client's mirror refuses before sending
        except SafetyError as exc:
            return self._fault(f"client safety: {exc}", hold=True)
        if report.abort:
            return self._fault("client safety: CLIPPING: excessive clipping, episode aborted", hold=True)
        try:
            reply = self.client.submit_chunk(actions, base_tick)
        except RobotError as exc:
            if isinstance(exc, RobotTimeout):
                raise
            return self._fault(str(exc))
        obs = self.client.wait_obs(int(reply.body["first"]))
        return self._transition(obs, int(reply.body.get("clipped", 0)))

    def _transition(self, o: Observation, clipped: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        reward = o.ep_return - self._return
        self._return = o.ep_return
        self.last_live = {"tick": o.tick, "obs_age_s": time.monotonic() - o.received,
                          "obs_lag_ticks": self.client.server_tick - o.tick, "state": o.state,
                          "starved_ticks": o.starved_ticks}
        info: dict[str, Any] = {"clipped": clipped, "faults": o.faults}
        if self.live_info:
            info.update(self.last_live)
        terminated = o.terminated
        if o.state in (HOLD, ESTOP):
            terminated = True
            info["fault"] = o.faults[-1] if o.faults else o.state
        return self._unflatten(o.obs), float(reward), bool(terminated), bool(o.truncated), info

    def _fault(self, reason: str, hold: bool = False) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if hold:
            self.client.request(P.HOLD, {"reason": reason})
        o = self.client.poll_obs()
        obs = self._unflatten(o.obs) if o is not None else self.observation_space.sample() * 0
        self.last_live = {"tick": self.client.server_tick, "state": HOLD}
        info: dict[str, Any] = {"fault": reason, **(self.last_live if self.live_info else {})}
        return obs, 0.0, True, False, info

    def close(self) -> None:
        self.client.close()
