"""A fault-injection relay between a robot client and server (tests and benchmarks).

Clients connect to the relay's ``front`` endpoint as if it were the server; the relay forwards requests
to ``back`` (the server), replies back, and re-publishes observations from the server's PUB endpoint on
its own. Rules (:meth:`FaultRelay.add`) act on the next ``count`` matching messages of one direction:

* ``drop``: not forwarded; ``delay``: forwarded after ``delay_s``; ``duplicate``: forwarded twice;
* ``reorder``: held back and forwarded after the next message of the same direction;
* ``corrupt``: bytes flipped in the middle of the payload; ``freeze`` (observations): nothing forwarded.

Directions: ``up`` (client -> server requests), ``down`` (replies), ``obs`` (observations). One client at a
time. The relay runs in a daemon thread; its own sockets never leave it.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from dataclasses import dataclass

import zmq

from diffplan.envs.robot import protocol as P
from diffplan.envs.robot.server import obs_endpoint_for

__all__ = ["FaultRelay"]

ACTIONS = ("drop", "delay", "duplicate", "reorder", "corrupt", "freeze")


@dataclass
class _Rule:
    action: str
    direction: str
    type: str | None
    count: int  # -1: forever
    delay_s: float


def _msg_type(raw: bytes) -> str | None:
    try:
        return P.decode(raw).type
    except P.ProtocolError:
        return None


class FaultRelay:
    def __init__(self, front: str, back: str, context: zmq.Context | None = None) -> None:
        self.front, self.back = front, back
        self.ctx = context or zmq.Context.instance()
        self.rules: list[_Rule] = []
        self.applied: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fault-relay")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"relay could not bind {front}")

    def add(self, action: str, *, direction: str = "up", type: str | None = None, count: int = 1,
            delay_s: float = 0.0) -> None:
        if action not in ACTIONS or direction not in ("up", "down", "obs"):
            raise ValueError(f"unknown relay fault {action!r}/{direction!r}; actions {ACTIONS}")
        with self._lock:
            self.rules.append(_Rule(action, direction, type, count, delay_s))

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def _match(self, direction: str, raw: bytes) -> _Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.direction == direction and rule.count != 0 and (rule.type is None or rule.type == _msg_type(raw)):
                    if rule.count > 0:
                        rule.count -= 1
                    self.applied.append((rule.action, direction, rule.type))
                    return rule
        return None

    def _run(self) -> None:
        router, dealer = self.ctx.socket(zmq.ROUTER), self.ctx.socket(zmq.DEALER)
        sub, pub = self.ctx.socket(zmq.SUB), self.ctx.socket(zmq.PUB)
        for s in (router, dealer, sub, pub):
            s.setsockopt(zmq.LINGER, 0)
        router.bind(self.front)
        pub.bind(obs_endpoint_for(self.front))
        dealer.connect(self.back)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(obs_endpoint_for(self.back))
        poller = zmq.Poller()
        for s in (router, dealer, sub):
            poller.register(s, zmq.POLLIN)
        ident = b""
        pending: list[tuple[float, int, str, bytes]] = []  # (due, order, direction, payload)
        held: dict[str, bytes | None] = {"up": None, "down": None, "obs": None}
        order = itertools.count()

        def send(direction: str, raw: bytes) -> None:
            if direction == "up":
                dealer.send(raw)
            elif direction == "down":
                router.send_multipart([ident, raw])
            else:
                pub.send(raw)

        def forward(direction: str, raw: bytes) -> None:
            rule = self._match(direction, raw)
            action = rule.action if rule else None
            if action in ("drop", "freeze"):
                return
            if action == "delay":
                heapq.heappush(pending, (time.monotonic() + rule.delay_s, next(order), direction, raw))
                return
            if action == "reorder":
                held[direction] = raw
                return
            if action == "corrupt":
                mid = len(raw) // 2
                raw = raw[:mid] + bytes(b ^ 0xFF for b in raw[mid : mid + 8]) + raw[mid + 8 :]
            send(direction, raw)
            if action == "duplicate":
                send(direction, raw)
            if held[direction] is not None:
                send(direction, held[direction])
                held[direction] = None

        self._ready.set()
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(1))
                while pending and pending[0][0] <= time.monotonic():
                    _, _, direction, raw = heapq.heappop(pending)
                    send(direction, raw)
                for sock, direction in ((router, "up"), (dealer, "down"), (sub, "obs")):
                    if sock not in events:
                        continue
                    while True:
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if direction == "up":
                            ident = frames[0]
                        forward(direction, frames[-1])
        finally:
            for s in (router, dealer, sub, pub):
                s.close(0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
