"""Latency-aware receding-horizon control over the bridge (``diffplan deploy``), for any chunk planner.

**Chunk-planning protocol** (:class:`ChunkPlanner`): an agent's policy that can plan action chunks has

    plan_chunk(obs, committed (k, A)) -> (H, A)

``obs`` is one env observation at tick t; ``committed`` are the actions already scheduled for ticks
t+1 .. t+k (they will run while this plan is being computed); the result holds actions for ticks
t+1 .. t+H whose first k rows equal ``committed``. Diffusion planners satisfy the last condition by
inpainting the prefix (:meth:`diffplan.agents.diffuser.DiffuserPolicy.plan_chunk`); any other planner can
simply copy it in.

**Runner** (:class:`LatencyAwareRunner`): the planner runs in its own thread beside the control loop. The
control loop never waits on the planner: every tick it reads the newest observation, submits a finished
plan if there is one, keeps the watchdog fed, and when the schedule will run out within
``d = ceil(p95 planning latency / dt) + margin`` ticks it hands the planner the newest observation and the
committed prefix of the next ``d`` ticks. So plans are made ahead by the measured p95 latency; a plan that
still lands after its prefix ran out is a *miss* (the server holds: starved ticks).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from diffplan.agent import ChunkPlanner, LatencyBudgeted  # the contract's protocols
from diffplan.envs.robot import protocol as P
from diffplan.envs.robot.client import RobotEnv, RobotError, RobotTimeout
from diffplan.envs.robot.scheduler import ActionScheduler

__all__ = ["ChunkPlanner", "DelayedPlanner", "EpisodeReport", "LatencyAwareRunner", "run_in_process"]


class DelayedPlanner:
    """Wraps a planner and makes every plan take at least ``latency_s`` (benchmarks and tests of slow planners)."""

    def __init__(self, planner: ChunkPlanner, latency_s: float) -> None:
        self.planner, self.latency_s = planner, latency_s

    def plan_chunk(self, obs: Any, committed: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.planner.plan_chunk(obs, committed)
        time.sleep(max(0.0, self.latency_s - (time.perf_counter() - t0)))
        return out


def _percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


@dataclass
class EpisodeReport:
    """One episode over the bridge. Latencies in ms."""

    seed: int | None
    ret: float
    ticks: int
    plans: int
    misses: int
    """Plans that landed after their committed prefix had run out (the robot held meanwhile)."""
    starved_ticks: int
    """Ticks the server held because the schedule was empty (from the server)."""
    plan_ms_p50: float
    plan_ms_p95: float
    plan_ms_max: float
    step_ms_p50: float
    step_ms_p99: float
    """Control-loop time per tick: observation receipt -> this tick's requests answered."""
    lead_ticks: int
    """Final planning lead d (ticks planned ahead)."""
    fault: str = ""
    plan_ms: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("plan_ms")
        return d


class _PlannerThread:
    """Runs plan_chunk calls one at a time off the control thread."""

    def __init__(self, planner: ChunkPlanner) -> None:
        self.planner = planner
        self.requests: queue.Queue[tuple[int, Any, np.ndarray] | None] = queue.Queue()
        self.results: queue.Queue[tuple[int, np.ndarray | BaseException, float]] = queue.Queue()
        self.busy = False
        self.thread = threading.Thread(target=self._run, daemon=True, name="planner")
        self.thread.start()

    def _run(self) -> None:
        while (item := self.requests.get()) is not None:
            tick, obs, committed = item
            t0 = time.perf_counter()
            try:
                out: np.ndarray | BaseException = np.asarray(self.planner.plan_chunk(obs, committed))
            except BaseException as exc:  # noqa: BLE001 - handed to the control thread, which re-raises it
                out = exc
            self.results.put((tick, out, (time.perf_counter() - t0) * 1000.0))

    def submit(self, tick: int, obs: Any, committed: np.ndarray) -> None:
        self.busy = True
        self.requests.put((tick, obs, committed))

    def poll(self) -> tuple[int, np.ndarray | BaseException, float] | None:
        try:
            result = self.results.get_nowait()
        except queue.Empty:
            return None
        self.busy = False
        return result

    def close(self) -> None:
        self.requests.put(None)


class LatencyAwareRunner:
    """Drives a :class:`RobotEnv` with a :class:`ChunkPlanner` (see the module docstring).

    Args:
        env: a connected RobotEnv.
        planner: anything with ``plan_chunk``.
        execute_ticks: new actions per plan sent beyond the committed prefix (the replanning period); at least
            the planning lead, so the planner keeps up.
        margin_ticks: extra lead on top of the p95 planning latency.
        latency_window: plans whose latency sets the p95.
        heartbeat_every: ticks between heartbeats while no chunk is sent.
        chunk_timeout_ticks: deadline of a chunk request; a lost chunk is a miss, not the end of the episode.
        latency_budget_ms: if given, set on the planner (:class:`~diffplan.agent.LatencyBudgeted`), which then
            picks its solver steps so a plan fits it; a budget of a few control periods keeps the planning
            lead, and so the stale committed prefix, short. None: the planner's own setting.
    """

    def __init__(self, env: RobotEnv, planner: ChunkPlanner, *, execute_ticks: int = 8, margin_ticks: int = 1,
                 latency_window: int = 50, heartbeat_every: int = 2, chunk_timeout_ticks: int = 5,
                 latency_budget_ms: float | None = None) -> None:
        if not isinstance(planner, ChunkPlanner):
            raise TypeError(f"{type(planner).__name__} does not implement plan_chunk(obs, committed) -> (H, A)")
        if latency_budget_ms is not None:
            if not isinstance(planner, LatencyBudgeted):
                raise TypeError(f"{type(planner).__name__} has no latency budget (set_latency_budget)")
            planner.set_latency_budget(latency_budget_ms)
        self.env, self.planner = env, planner
        self.execute_ticks, self.margin_ticks = execute_ticks, margin_ticks
        self.latency_window, self.heartbeat_every = latency_window, heartbeat_every
        self.dt = env.robot_spec.dt
        self.chunk_timeout_s = chunk_timeout_ticks * self.dt

    def lead(self, plan_ms: list[float]) -> int:
        """Ticks to plan ahead: ceil(p95 of recent planning latency / dt) + margin."""
        p95 = _percentile(plan_ms[-self.latency_window:], 95) / 1000.0
        return math.ceil(p95 / self.dt) + self.margin_ticks

    def run_episode(self, seed: int | None = None, max_ticks: int | None = None) -> EpisodeReport:
        env, client = self.env, self.env.client
        A = env.robot_spec.action_dim
        obs, _ = env.reset(seed=seed)
        mirror = ActionScheduler(A)  # our copy of what is scheduled: where the committed prefix comes from
        worker = _PlannerThread(self.planner)
        plan_ms: list[float] = []
        step_ms: list[float] = []
        misses = plans = prefix = 0
        fault = ""
        tick = start_tick = int(env.last_live["tick"])
        lead = self.margin_ticks
        last_sent = tick
        o = None
        try:
            # The first plan is made with nothing scheduled; the robot stays IDLE (held) meanwhile.
            worker.submit(tick, obs, np.zeros((0, A)))
            result: tuple[int, np.ndarray | BaseException, float] | None = worker.results.get()
            worker.busy = False
            while True:
                if result is not None:
                    ptick, chunk, ms = result
                    if isinstance(chunk, BaseException):
                        raise chunk
                    plan_ms.append(ms)
                    plans += 1
                    # A plan must add at least as many actions as ticks the next plan takes, or the schedule
                    # shrinks with every plan until the robot starves.
                    chunk = np.asarray(chunk, np.float64)[: prefix + max(self.execute_ticks, lead)]
                    try:
                        # The first plan starts whenever it lands (the robot was held, nothing is committed);
                        # later ones are addressed to the ticks after their observation.
                        reply = client.submit_chunk(chunk, ptick + 1 if plans > 1 else -1, timeout_s=self.chunk_timeout_s)
                        now = int(reply.body["tick"])
                        misses += int(plans > 1 and now > ptick + prefix)  # the prefix ran out first
                        mirror.submit(chunk, ptick + 1 if plans > 1 else now + 1, now)
                    except RobotTimeout:
                        # Chunk or reply lost: the robot holds when its schedule runs out and the next plan
                        # takes over; a dead server shows up at the next observation wait.
                        misses += 1
                    except RobotError as exc:
                        if exc.code != P.E_LATE:
                            raise
                        misses += 1
                    last_sent = client.server_tick
                    lead = self.lead(plan_ms)
                elif client.server_tick - last_sent >= self.heartbeat_every:
                    client.heartbeat()  # the planner is busy: keep the watchdog fed
                    last_sent = client.server_tick
                if o is not None:
                    step_ms.append((time.monotonic() - o.received) * 1000.0)
                o = client.wait_obs(tick + 1)
                tick = o.tick
                mirror.pop(tick)
                if o.terminated or o.truncated or o.state in ("HOLD", "ESTOP"):
                    if o.state in ("HOLD", "ESTOP"):
                        fault = o.faults[-1] if o.faults else o.state
                    break
                if max_ticks is not None and tick - start_tick >= max_ticks:
                    break
                result = worker.poll()
                if result is None and not worker.busy and o.sched_end - tick <= lead:
                    committed, valid = mirror.window(tick + 1, tick + 1 + lead)
                    prefix = len(valid) if valid.all() else int(np.argmin(valid))
                    worker.submit(tick, env._unflatten(o.obs), committed[:prefix])
        except RobotError as exc:
            fault = str(exc)
        finally:
            worker.close()
        return EpisodeReport(
            seed=seed, ret=float(o.ep_return) if o is not None else 0.0, ticks=tick - start_tick, plans=plans,
            misses=misses, starved_ticks=int(o.starved_ticks) if o is not None else 0,
            plan_ms_p50=_percentile(plan_ms, 50), plan_ms_p95=_percentile(plan_ms, 95),
            plan_ms_max=max(plan_ms) if plan_ms else float("nan"),
            step_ms_p50=_percentile(step_ms, 50), step_ms_p99=_percentile(step_ms, 99),
            lead_ticks=lead, fault=fault, plan_ms=plan_ms,
        )


def run_in_process(env: Any, planner: ChunkPlanner, *, execute_ticks: int = 8, seed: int | None = None,
                   lead_ticks: int = 0) -> float:
    """The same planner in the plain simulator, the reference for the bridged return; returns the episode return.

    ``lead_ticks=0``: synchronous (the simulator waits for every plan: no latency). ``lead_ticks=d``: replays
    the runner's schedule without a network or a clock: each plan is made when ``d`` actions are left, with
    those ``d`` as its committed prefix, and they run while it is "computed" (the cost of latency itself).
    """
    A = env.action_space.shape[0]
    obs, _ = env.reset(seed=seed)
    ret = 0.0
    new = max(execute_ticks, lead_ticks)
    queue = np.asarray(planner.plan_chunk(obs, np.zeros((0, A))))[:new]
    while True:
        run, committed = queue[: max(len(queue) - lead_ticks, 0)], queue[max(len(queue) - lead_ticks, 0) :]
        for stage in ("free", "committed"):
            for a in run:
                obs, r, terminated, truncated, _ = env.step(a.astype(env.action_space.dtype))
                ret += float(r)
                if terminated or truncated:
                    return ret
            if stage == "free":
                chunk = np.asarray(planner.plan_chunk(obs, committed))  # made while `committed` runs
                run = committed
        queue = chunk[len(committed) : len(committed) + new]
