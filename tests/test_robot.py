"""The real-robot bridge without hardware: protocol, safety, scheduler (no clock, no sleeps), the server over
inproc:// with a manual clock, RobotEnv under gymnasium's env checker, and end to end with a MuJoCo server
subprocess on 127.0.0.1 behind a fault-injection relay."""

from __future__ import annotations

import itertools
import os
import pickle
import signal
import subprocess
import sys
import time

import gymnasium as gym
import msgpack
import numpy as np
import pytest
import zmq

from diffplan.deploy.runner import ChunkPlanner, DelayedPlanner, LatencyAwareRunner
from diffplan.envs.robot import protocol as P
from diffplan.envs.robot.backends import BackendError, MockBackend, MujocoBackend
from diffplan.envs.robot.client import RobotClient, RobotEnv, RobotError, RobotTimeout, StaleObservation
from diffplan.envs.robot.relay import FaultRelay
from diffplan.envs.robot.safety import (
    RobotSpec,
    SafetyConfig,
    SafetyError,
    SafetyLayer,
    SpecMismatch,
    check_spec,
)
from diffplan.envs.robot.scheduler import ActionScheduler
from diffplan.envs.robot.server import (
    HOLD,
    IDLE,
    RUNNING,
    STARVED,
    ManualClock,
    RealTimeClock,
    RobotServer,
    free_port_pair,
    obs_endpoint_for,
)

_names = itertools.count()


# ------------------------------------------------------------------------------------------------ protocol
def test_protocol_round_trip_whitelist_and_versions():
    body = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([True, False]), "n": 3, "s": "x"}
    env = P.decode(P.encode(P.CHUNK, body, session="s1", seq=7))
    assert (env.type, env.session, env.seq) == (P.CHUNK, "s1", 7)
    np.testing.assert_array_equal(env.body["a"], body["a"])
    assert env.body["a"].dtype == np.float32 and env.body["b"].dtype == bool
    with pytest.raises(P.ProtocolError, match="dtype object is not allowed"):
        P.encode(P.CHUNK, {"a": np.array([object()])})
    with pytest.raises(P.ProtocolError, match="cannot send a set"):
        P.encode(P.CHUNK, {"a": {1, 2}})
    forged = msgpack.packb({"proto": P.PROTOCOL, "v": [1, 0], "type": "CHUNK", "session": "", "seq": 1,
                            "body": {"a": {"__nd__": "object", "shape": [1], "data": b"\x00" * 8}}})
    with pytest.raises(P.ProtocolError, match="dtype 'object' is not allowed"):
        P.decode(forged)
    short = msgpack.packb({"proto": P.PROTOCOL, "v": [1, 0], "type": "CHUNK", "session": "", "seq": 1,
                           "body": {"a": {"__nd__": "float64", "shape": [4], "data": b"\x00" * 8}}})
    with pytest.raises(P.ProtocolError, match="do not match"):
        P.decode(short)
    with pytest.raises(P.ProtocolError, match="SCHEMA"):
        P.decode(pickle.dumps({"type": "CHUNK"}))  # pickle is never unpickled
    with pytest.raises(P.VersionError, match="major version 2 .* not supported"):
        P.decode(P.encode(P.HELLO, version=(2, 0)))
    assert P.decode(P.encode(P.HELLO, version=(1, 9))).version == (1, 9)  # minor versions only add fields
    guard = P.SeqGuard()
    guard.check(P.Envelope("X", "", 1, {}))
    for stale in (1, 0):
        with pytest.raises(P.ProtocolError, match="STALE_SEQ"):
            guard.check(P.Envelope("X", "", stale, {}))


# ------------------------------------------------------------------------------------------------- safety
def _spec(safety: SafetyConfig | None = None, bound: float = 1.0) -> RobotSpec:
    return MockBackend(2, 50.0, safety or SafetyConfig(margin=0.1, max_step=0.1), bound=bound).spec()


def test_safety_rejects_nonfinite_and_bad_shapes_never_clips_nan():
    layer = SafetyLayer(_spec())
    for bad, match in [
        (np.array([[0.0, np.nan]]), "NONFINITE: non-finite action nan at step 0, dim 1"),
        (np.array([[0.0, 0.0], [np.inf, 0.0]]), "non-finite action inf at step 1"),
        (np.zeros((3, 3)), r"shape \(H, 2\)"),
        (np.zeros(2), r"shape \(H, 2\)"),
        (np.zeros((2, 2), dtype=np.int64), "float32/float64"),
        ([[0.0, 0.0]], "numpy array"),
        (np.zeros((0, 2)), r"1 <= H"),
    ]:
        with pytest.raises(SafetyError, match=match):
            layer.check(bad)


def test_safety_clips_with_margin_and_rate_limits():
    layer = SafetyLayer(_spec())  # bounds [-1, 1], margin 10% of the range -> [-0.8, 0.8], max step 0.2/tick
    clipped, report = layer.check(np.array([[0.5, 0.0], [3.0, -3.0], [0.7, 0.8]]))
    np.testing.assert_allclose(clipped, [[0.5, 0.0], [0.8, -0.8], [0.7, 0.8]])
    assert (report.clipped, report.total, report.abort) == (1, 3, False)
    target, limited = layer.rate_limit(np.array([0.8, -0.8]), np.zeros(2))
    np.testing.assert_allclose(target, [0.2, -0.2])
    assert limited and layer.is_safe(target, np.zeros(2))
    assert not layer.is_safe(np.array([0.8, 0.0]), np.zeros(2))  # a jump over the rate limit
    assert not layer.is_safe(np.array([0.9, 0.9]), np.array([0.9, 0.9]))  # outside the margin
    assert not layer.is_safe(np.array([np.nan, 0.0]), np.zeros(2))


def test_safety_aborts_on_excessive_clipping():
    layer = SafetyLayer(_spec(SafetyConfig(clip_window=10, clip_abort_fraction=0.5, clip_abort_excess=0.1)))
    _, report = layer.check(np.full((5, 2), 1.05))  # slightly outside: flagged, never counted toward abort
    assert report.clipped == 5 and not report.abort
    _, report = layer.check(np.full((5, 2), 2.0))
    assert not report.abort  # 5 of the last 10 count: not more than half
    _, report = layer.check(np.full((1, 2), 2.0))
    assert report.abort


def test_spec_check_units_bounds_and_observations():
    spec = _spec()
    good = gym.spaces.Box(-1.0, 1.0, (2,))
    check_spec(spec, good, spec.observation_space, ["m/s", "m/s"])
    with pytest.raises(SpecMismatch, match="action units differ"):
        check_spec(spec, good, action_units=["rad/s", "rad/s"])
    with pytest.raises(SpecMismatch, match="action bounds differ"):
        check_spec(spec, gym.spaces.Box(-2.0, 2.0, (2,)))
    with pytest.raises(SpecMismatch, match="3 action dims|expects"):
        check_spec(spec, gym.spaces.Box(-1.0, 1.0, (3,)))
    with pytest.raises(SpecMismatch, match="observation space differs"):
        check_spec(spec, observation_space=gym.spaces.Box(-1.0, 1.0, (5,)))
    spec.action_high = np.array([1.0, np.inf])
    with pytest.raises(SpecMismatch, match="finite"):
        spec.validate()
    round_trip = RobotSpec.from_wire(P.decode(P.encode("X", {"s": _spec().to_wire()})).body["s"])
    assert round_trip.action_units == ["m/s", "m/s"] and round_trip.safety.margin == 0.1


# ---------------------------------------------------------------------------------------------- scheduler
def test_scheduler_trims_cross_fades_and_starves():
    s = ActionScheduler(1)
    assert s.submit(np.arange(1.0, 6.0)[:, None], base_tick=1, now=0) == (1, 5)
    assert s.pop(1)[0] == 1.0 and s.pop(2)[0] == 2.0
    # A chunk addressed from tick 2 arriving after tick 2 ran: its first row is trimmed; blend 1 tick.
    assert s.submit(np.full((4, 1), 10.0), base_tick=2, now=2, blend=1) == (3, 5)
    assert s.pop(3)[0] == pytest.approx(0.5 * 3.0 + 0.5 * 10.0)
    assert s.pop(4)[0] == 10.0 and s.end_tick == 5
    with pytest.raises(P.ProtocolError, match="LATE"):
        s.submit(np.ones((2, 1)), base_tick=1, now=4)
    assert s.pop(5)[0] == 10.0 and s.pop(6) is None  # ran out: starved
    s.submit(np.ones((2, 1)), base_tick=9, now=6)  # a gap before the chunk is starved too
    assert s.pop(7) is None and s.pop(8) is None and s.pop(9)[0] == 1.0
    _act, valid = s.window(10, 13)
    assert valid.tolist() == [True, False, False]


# ----------------------------------------------------------------------------------- server over inproc
@pytest.fixture
def mock_server():
    backend = MockBackend(2, 50.0, SafetyConfig(margin=0.1, max_step=0.1))
    clock = ManualClock()
    endpoint = f"inproc://robot-{next(_names)}"
    server = RobotServer(backend, endpoint, clock=clock, watchdog_ticks=3, blend_ticks=0)
    thread = server.start_thread()
    client = RobotClient(endpoint, timeout_s=2.0)
    yield server, backend, clock, client
    client.close()
    server.stop()
    thread.join(5)


def _ticks(server: RobotServer, clock: ManualClock, n: int) -> None:
    target = server.tick + n
    clock.advance(n)
    server.wait_tick(target)


def test_server_state_machine_watchdog_estop(mock_server):
    server, backend, clock, client = mock_server
    client.connect()
    assert server.state == HOLD  # a (re)started server holds until reset
    with pytest.raises(RobotError, match="FAULTED"):
        client.submit_chunk(np.zeros((2, 2)))
    client.request(P.RESET)
    assert server.state == IDLE
    reply = client.submit_chunk(np.full((3, 2), 0.05))
    # The tick after a RESET holds (the rate limiter ramps from the hold): the chunk starts at tick 2.
    assert (reply.body["first"], reply.body["last"], server.state) == (2, 4, RUNNING)
    _ticks(server, clock, 2)
    client.heartbeat()  # the watchdog counts from the last message (3 ticks)
    _ticks(server, clock, 2)
    assert len(backend.commands) == 3 and client.wait_obs(4).state == RUNNING
    client.heartbeat()
    _ticks(server, clock, 2)
    assert server.state == STARVED and client.wait_obs(6).starved_ticks == 2
    client.heartbeat()
    _ticks(server, clock, 3)  # silent for 3 ticks: still within the watchdog
    assert server.state == STARVED
    _ticks(server, clock, 1)
    obs = client.wait_obs(server.tick)
    assert obs.state == HOLD and "WATCHDOG" in obs.faults[-1]
    client.heartbeat()  # latched: contact again does not release it
    _ticks(server, clock, 1)
    assert server.state == HOLD
    with pytest.raises(RobotError, match="FAULTED"):
        client.submit_chunk(np.zeros((1, 2)))
    client.request(P.CLEAR_FAULT)
    assert server.state == IDLE
    client.request(P.ESTOP, {"reason": "test"})
    assert server.state == "ESTOP" and backend.estopped
    with pytest.raises(RobotError, match="e-stopped"):
        client.request(P.RESET)
    for _ in range(2):  # latched locally: no remote message clears it
        with pytest.raises(RobotError, match="only the operator can clear it"):
            client.request(P.CLEAR_FAULT)
    assert server.state == "ESTOP"
    server.operator_clear()
    _ticks(server, clock, 1)
    assert server.state == HOLD and "cleared by the operator" in server.faults[-1]
    with pytest.raises(RobotError, match="send RESET"):  # held until an explicit RESET
        client.request(P.CLEAR_FAULT)
    n = len(backend.commands)
    _ticks(server, clock, 2)
    assert len(backend.commands) == n  # nothing commanded while held
    client.request(P.RESET)
    assert server.state == IDLE and not backend.estopped


def test_server_refuses_nan_version_stale_seq_and_foreign_session(mock_server):
    server, backend, clock, client = mock_server
    client.connect()
    client.request(P.RESET)
    bad = np.full((2, 2), 0.1)
    bad[1, 0] = np.nan
    with pytest.raises(RobotError, match="NONFINITE"):
        client.submit_chunk(bad)
    assert server.state == HOLD and "NONFINITE" in server.faults[-1]
    _ticks(server, clock, 3)
    assert backend.commands == []  # the valid first row never ran either
    client.request(P.RESET)
    raw_dealer = client.ctx.socket(zmq.DEALER)
    raw_dealer.connect(client.endpoint)
    try:
        raw_dealer.send(P.encode(P.HEARTBEAT, session=client.session, seq=client.seq + 1, version=(2, 0)))
        assert raw_dealer.poll(2000)
        reply = P.decode(raw_dealer.recv())
        assert reply.type == P.ERROR and reply.body["code"] == "VERSION" and "major version 2" in reply.body["message"]
        assert server.state == HOLD
        client.request(P.RESET)
        msg = P.encode(P.HEARTBEAT, session=client.session, seq=client.seq + 1)
        client.seq += 1
        for expect in (P.HEARTBEAT_OK, P.ERROR):  # the same bytes twice: the duplicate is refused
            raw_dealer.send(msg)
            assert raw_dealer.poll(2000)
            reply = P.decode(raw_dealer.recv())
            assert reply.type == expect
        assert reply.body["code"] == "STALE_SEQ" and server.state == IDLE  # refused, not a fault
        raw_dealer.send(P.encode(P.CHUNK, {"actions": np.zeros((1, 2)), "base_tick": -1}, session="intruder", seq=99))
        assert raw_dealer.poll(2000)
        assert P.decode(raw_dealer.recv()).body["code"] == "SESSION"
    finally:
        raw_dealer.close(0)


def test_server_clips_and_rate_limits_out_of_bounds(mock_server):
    server, backend, clock, client = mock_server
    client.connect()
    client.request(P.RESET)
    chunk = np.tile([[5.0, -5.0], [-5.0, 5.0]], (4, 1))  # wildly out of bounds, alternating sign
    reply = client.submit_chunk(chunk)
    assert reply.body["clipped"] == 8
    for n in (3, 3, 3):  # one more: the tick after a RESET holds
        _ticks(server, clock, n)
        client.heartbeat()
    sent = np.array(backend.commands)
    assert len(sent) == 8
    assert np.all(np.abs(sent) <= 0.8 + 1e-12)  # margin: 10% of the range inside [-1, 1]
    steps = np.abs(np.diff(np.vstack([np.zeros(2), sent]), axis=0))
    assert np.all(steps <= 0.2 + 1e-12)  # rate limit: 0.1 of the range per tick
    telemetry = client.telemetry()
    np.testing.assert_allclose(telemetry["targets"], sent)
    assert telemetry["unsafe_blocked"] == 0 and telemetry["rate_limited_ticks"] == 8


# ------------------------------------------------------------------------------- RobotEnv + check_env
@pytest.mark.parametrize("task", ["Hopper-v5", "pointmaze-umaze"])
def test_robot_env_passes_check_env(task):
    from gymnasium.utils.env_checker import check_env

    backend = MujocoBackend(task, control_hz=400.0)
    endpoint = f"inproc://robot-{next(_names)}"
    server = RobotServer(backend, endpoint, clock=RealTimeClock(400.0), watchdog_ticks=200)
    thread = server.start_thread()
    ref = backend.env
    env = RobotEnv(endpoint, timeout_s=2.0, action_space=ref.action_space, observation_space=ref.observation_space)
    try:
        check_env(env)  # gymnasium's defaults, RobotEnv's defaults
        assert {"tick", "state"} <= set(env.last_live)  # timing lives outside info by default
        env.live_info = True
        obs, info = env.reset(seed=3)
        assert env.observation_space.contains(obs)
        if task == "Hopper-v5":
            assert backend.spec().action_units == ["200*N*m"] * 3  # motors on hinges, gear 200 (compiled model)
        _, _, _, _, info = env.step(env.action_space.sample())
        assert {"tick", "obs_age_s", "obs_lag_ticks", "clipped", "faults", "state", "starved_ticks"} <= set(info)
        _, _, terminated, _, info = env.step(np.full(env.action_space.shape, np.nan, np.float32))
        assert terminated and "client safety" in info["fault"] and "NONFINITE" in info["fault"]
        assert server.state == HOLD  # the client's mirror refused it and asked the server to hold
        env.reset(seed=4)
        far = np.full((30, env.action_space.shape[0]), 10.0)  # far outside: the client mirror aborts first
        _, _, terminated, _, info = env.step_chunk(far)
        assert terminated and "CLIPPING" in info["fault"] and server.state == HOLD
        with pytest.raises(RobotError, match="SPEC: client expects another robot: action units differ"):
            RobotEnv(endpoint, action_units=["rad"] * ref.action_space.shape[0])  # refused by the server
        client = RobotClient(endpoint)
        spec = client.connect()
        client.close()
        with pytest.raises(SpecMismatch, match="action units differ"):  # and by the client's own check
            check_spec(spec, action_units=["rad"] * ref.action_space.shape[0])
    finally:
        env.close()
        server.stop()
        thread.join(5)
        backend.close()


# --------------------------------------------------------------------------- end to end, with faults
class GoToGoalChunks:
    """A stand-in chunk planner for PointMaze: PD toward the goal, repeated for H ticks (prefix kept)."""

    def __init__(self, horizon: int = 20) -> None:
        self.horizon = horizon
        self.calls = 0

    def plan_chunk(self, obs, committed):
        self.calls += 1
        o, goal = obs["observation"], obs["desired_goal"]
        act = np.clip(10.0 * (goal - o[:2]) - 1.0 * o[2:4], -1, 1)
        chunk = np.tile(act, (self.horizon, 1))
        chunk[: len(committed)] = committed
        return chunk


def _start_server(port: int, hz: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffplan.cli", "serve", "--env", "pointmaze-umaze", "--port", str(port),
         "--hz", str(hz), "--watchdog-ticks", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    line = proc.stdout.readline()  # blocks until the server has bound its sockets (or died: "")
    if "serving pointmaze-umaze" not in line:
        proc.kill()
        pytest.fail(f"robot server did not start: {line!r}, exit code {proc.wait()}")
    return proc


def test_end_to_end_mujoco_subprocess_with_fault_relay():
    hz = 50.0
    port, front = free_port_pair(), free_port_pair()
    server = _start_server(port, hz)
    relay = FaultRelay(f"tcp://127.0.0.1:{front}", f"tcp://127.0.0.1:{port}")
    env = None
    try:
        env = RobotEnv(f"tcp://127.0.0.1:{front}", timeout_s=0.5)
        planner = DelayedPlanner(GoToGoalChunks(), latency_s=3.0 / hz)  # planning takes 3 control periods
        assert isinstance(planner, ChunkPlanner)
        runner = LatencyAwareRunner(env, planner, execute_ticks=6)
        report = runner.run_episode(seed=5, max_ticks=60)
        assert report.fault == "" and report.ticks >= 60 and report.plans >= 5
        assert report.plan_ms_p50 >= 3000.0 / hz and report.lead_ticks >= 4  # plans ahead by the latency
        assert report.starved_ticks <= 10, report  # only while the first plans calibrate the lead

        # Dropped chunk: the schedule runs out (STARVED, held), then the next chunk resumes smoothly.
        client = env.client
        client.heartbeat()
        relay.add("drop", type=P.CHUNK)
        with pytest.raises(RobotTimeout):
            client.submit_chunk(np.full((3, 2), 0.3), timeout_s=0.1)
        for _ in range(30):  # the last plan's actions run out, nothing new arrived: held, STARVED
            client.heartbeat()
            o = client.wait_obs(client.server_tick + 1)
            if o.state != RUNNING:
                break
        assert o.state == STARVED
        before = client.server_tick
        relay.add("duplicate", type=P.CHUNK)  # the copy is refused as a stale sequence number
        reply = client.submit_chunk(np.full((5, 2), 0.3))
        o = client.wait_obs(reply.body["last"])
        assert o.state in (RUNNING, STARVED) and o.tick > before

        # Out of bounds: clipped and rate-limited; nothing above the limits ever reached the backend.
        client.submit_chunk(np.tile([[9.0, -9.0], [-9.0, 9.0]], (5, 1)))
        client.wait_obs(client.server_tick + 6)
        t = client.telemetry()
        spec = env.robot_spec
        low, high = spec.limits()
        targets = t["targets"]
        assert np.all(targets >= low - 1e-12) and np.all(targets <= high + 1e-12)
        # Each target vs the one commanded at the tick before (the hold action after a held gap).
        previous = np.vstack([spec.hold_action, targets[:-1]])
        previous[np.flatnonzero(np.diff(t["ticks"]) != 1) + 1] = spec.hold_action
        jumps = np.abs(targets - previous)
        assert np.all(jumps <= spec.safety.max_step * (spec.action_high - spec.action_low) + 1e-9)
        assert t["unsafe_blocked"] == 0 and t["clipped_actions"] >= 10

        # Delayed chunk: the part addressed to ticks that passed meanwhile is trimmed, the rest runs.
        relay.add("delay", type=P.CHUNK, delay_s=0.1)
        base = client.server_tick + 1
        reply = client.submit_chunk(np.full((30, 2), 0.1), base)
        assert reply.body["first"] > base + 2 and reply.body["last"] == base + 29
        # Reordered observations: the client never goes back in time.
        relay.add("reorder", direction="obs", count=3)
        ticks = [client.wait_obs(client.server_tick + 1).tick for _ in range(4)]
        assert ticks == sorted(set(ticks))

        # Corrupted requests: refused, robot held.
        relay.add("corrupt", type=P.HEARTBEAT)
        with pytest.raises(RobotError, match="SCHEMA"):
            client.heartbeat()
        assert client.wait_obs(client.server_tick + 1).state == HOLD

        # Frozen state publisher: the client refuses to act on stale observations.
        client.request(P.RESET)
        relay.add("freeze", direction="obs", count=-1)
        time.sleep(0.1)
        client.heartbeat()
        with pytest.raises(StaleObservation):
            client.wait_obs(client.server_tick + 1, timeout_s=0.3)
        relay.clear()

        # Server killed: the client raises within its deadline; a restarted server comes up held.
        server.send_signal(signal.SIGKILL)
        server.wait(5)
        t0 = time.monotonic()
        with pytest.raises(RobotTimeout):
            client.heartbeat()
        assert time.monotonic() - t0 < 0.5 + 0.25
        server = _start_server(port, hz)
        with pytest.raises(RobotError, match="SESSION"):  # the old session died with the old server
            client.request(P.HEARTBEAT, timeout_s=5.0)
        client.connect()
        assert client.request(P.HEARTBEAT).body["state"] == HOLD
        with pytest.raises(RobotError, match="FAULTED"):
            client.submit_chunk(np.zeros((2, 2)))
    finally:
        if env is not None:
            env.close()
        relay.close()
        server.kill()
        server.wait(5)


# ------------------------------------------------------------------------------ planner protocol + CLI
def test_diffuser_plan_chunk_inpaints_the_committed_prefix():
    from diffplan.agents import AGENTS
    from diffplan.compose import load_config
    from diffplan.envs import make_env
    from tests.conftest import TINY_DIFFUSER

    cfg = load_config(None, TINY_DIFFUSER)
    env = make_env(cfg.task, seed=0)
    policy = AGENTS["diffuser"].build(cfg, env.observation_space, env.action_space, None).policy
    assert isinstance(policy, ChunkPlanner)
    obs, _ = env.reset(seed=0)
    committed = np.array([[0.5, -0.25], [0.1, 0.2], [-1.0, 1.0]], np.float32)
    chunk = policy.plan_chunk(obs, committed)
    assert chunk.shape == (cfg.horizon, 2) and np.all(np.isfinite(chunk))
    np.testing.assert_array_equal(chunk[:3], committed)
    assert policy.plan_chunk(obs, np.zeros((0, 2))).shape == (cfg.horizon, 2)
    env.close()


def test_cli_serve_and_deploy_refuse_bad_input(capsys, tmp_path):
    from diffplan.cli import main

    assert main(["serve", "--env", "mock", "--margin", "0.7"]) == 2
    assert "safety margin must be in [0, 0.5)" in capsys.readouterr().err
    assert main(["deploy", str(tmp_path / "missing"), "--robot", "tcp://127.0.0.1:1"]) == 2
    assert "error" in capsys.readouterr().err
    with pytest.raises(TypeError, match="does not implement plan_chunk"):
        LatencyAwareRunner(object.__new__(RobotEnv), object())


# ------------------------------------------------------------------- hostile input, authentication, e-stop
# Every attack below goes over TCP to a server running as its own process (started through the same
# serve() that `diffplan serve` calls; the CLI start itself is covered above), with raw wire messages.
def _spawn(env: str, port: int, hz: float = 100.0, keys: str | None = None) -> subprocess.Popen:
    code = (f"from diffplan.envs.robot.server import serve; serve({env!r}, {port}, {hz}, watchdog_ticks=50, "
            f"keys={keys!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        pytest.fail(f"robot server did not start: {line!r}, exit code {proc.wait()}")
    return proc


class _Raw:
    """A hand-driven DEALER: any envelope, any session, any sequence number."""

    def __init__(self, endpoint: str, keys=None) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.apply(self.sock)
        self.sock.connect(endpoint)
        self.session, self.seq = "", 0

    def send_raw(self, raw: bytes, timeout_s: float = 2.0) -> P.Envelope | None:
        self.sock.send(raw)
        return P.decode(self.sock.recv()) if self.sock.poll(timeout_s * 1000) else None

    def req(self, type_: str, body=None, *, session: str | None = None, seq: int | None = None) -> P.Envelope:
        self.seq += 1
        reply = self.send_raw(P.encode(type_, body, session=self.session if session is None else session,
                                       seq=self.seq if seq is None else seq))
        assert reply is not None, f"no reply to {type_}"
        return reply

    def hello(self) -> P.Envelope:
        reply = self.req(P.HELLO)
        self.session = reply.body["session"]
        return reply

    def close(self) -> None:
        self.sock.close(0)


def _code(reply: P.Envelope) -> str:
    return reply.body["code"] if reply.type == P.ERROR else reply.type


@pytest.fixture(scope="module")
def maze_server():
    port = free_port_pair()
    proc = _spawn("pointmaze-umaze", port)
    yield proc, f"tcp://127.0.0.1:{port}"
    proc.kill()
    proc.wait(5)


@pytest.fixture
def maze_client(maze_server):
    """The shared server, and a raw client that has said HELLO (closed after the test)."""
    proc, endpoint = maze_server
    c = _Raw(endpoint)
    c.hello()
    yield proc, endpoint, c
    c.close()


ATTACKS = [  # (name, type, body, expected error code); all from the probe or of the same kind
    ("HELLO expect.action_units=5", P.HELLO, {"expect": {"action_units": 5}}, "SCHEMA"),
    ("HELLO expect.action_low='abc'", P.HELLO, {"expect": {"action_low": "abc", "action_high": [1.0, 1.0]}}, "SCHEMA"),
    ("HELLO expect=[1, 2]", P.HELLO, {"expect": [1, 2]}, "SCHEMA"),
    ("CHUNK base_tick=2**62", P.CHUNK, {"actions": np.zeros((2, 2)), "base_tick": 2**62}, "SCHEMA"),
    ("CHUNK base_tick='soon'", P.CHUNK, {"actions": np.zeros((2, 2)), "base_tick": "soon"}, "SCHEMA"),
    ("CHUNK blend=2**62", P.CHUNK, {"actions": np.zeros((2, 2)), "blend": 2**62}, "SCHEMA"),
    ("CHUNK actions={}", P.CHUNK, {"actions": {"x": 1}}, "SHAPE"),
    ("RESET seed=-1", P.RESET, {"seed": -1}, "SCHEMA"),
    ("RESET seed=2**64-1", P.RESET, {"seed": 2**64 - 1}, "SCHEMA"),
    ("RESET seed='x'", P.RESET, {"seed": "x"}, "SCHEMA"),
]


@pytest.mark.parametrize("name,type_,body,code", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_one_message_never_stops_the_server(maze_client, name, type_, body, code):
    proc, _, c = maze_client
    if type_ != P.HELLO:
        assert c.req(P.RESET, {"seed": 0}).type == P.RESET_OK
    reply = c.req(type_, body)
    assert _code(reply) == code, reply.body
    if type_ != P.HELLO:  # a malformed RESET or CHUNK holds the robot
        assert c.req(P.HEARTBEAT).body["state"] == HOLD
    assert proc.poll() is None  # still running, and serving:
    c.hello()
    assert c.req(P.HEARTBEAT).type == P.HEARTBEAT_OK
    log = c.req(P.TELEMETRY).body["fault_log"]
    assert any(f"REFUSED {type_}: {code}" in reason for _, reason in log[-3:])  # recorded


def test_undecodable_oversized_and_flooding_requests(maze_client):
    proc, endpoint, c = maze_client
    assert _code(c.send_raw(b"\xc1 not msgpack")) == "SCHEMA"
    assert _code(c.send_raw(msgpack.packb({"proto": P.PROTOCOL, "v": [1, 0], "type": 7}))) == "SCHEMA"
    # Larger than the largest legitimate chunk: ZeroMQ drops it before buffering it (MAXMSGSIZE).
    def peak_mb() -> int:
        with open(f"/proc/{proc.pid}/status") as f:
            return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmHWM"))
    before = peak_mb()
    big = _Raw(endpoint)
    assert big.send_raw(b"\x00" * (64 << 20), timeout_s=0.5) is None
    big.close()
    assert peak_mb() - before < 32, "a 64 MB request was buffered"
    # A flood of junk: every message answered, the fault record stays bounded.
    for _ in range(600):
        c.sock.send(b"junk")
    assert sum(c.sock.poll(2000) and bool(c.sock.recv()) for _ in range(600)) == 600
    c.hello()
    t = c.req(P.TELEMETRY).body
    assert len(t["fault_log"]) == 256 and t["refused_requests"] >= 600 and proc.poll() is None


def test_session_token_never_published_and_seq_window(maze_server):
    _, endpoint = maze_server
    c, intruder = _Raw(endpoint), _Raw(endpoint)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(obs_endpoint_for(endpoint))
    try:
        c.hello()
        c.req(P.RESET, {"seed": 0})
        assert sub.poll(2000)
        raw = sub.recv()
        assert c.session.encode() not in raw and c.session not in str(P.decode(raw))
        published = P.decode(raw).session
        assert published == P.public_session(c.session)
        chunk = {"actions": np.full((3, 2), 0.5), "base_tick": -1}
        assert _code(intruder.req(P.CHUNK, chunk, session=published, seq=c.seq + 1)) == "SESSION"
        # A far-ahead sequence number is refused and does not move the window: the client is not locked out.
        assert _code(intruder.req(P.HEARTBEAT, session=c.session, seq=2**62)) == "STALE_SEQ"
        assert _code(c.req(P.HEARTBEAT)) == P.HEARTBEAT_OK
        assert _code(c.req(P.HEARTBEAT, seq=c.seq + P.SEQ_WINDOW + 1)) == "STALE_SEQ"
        assert _code(c.req(P.HEARTBEAT, seq=c.seq + P.SEQ_WINDOW - 1)) == P.HEARTBEAT_OK  # lost requests are fine
    finally:
        for s in (c, intruder):
            s.close()
        sub.close(0)


def _wait_state(c: _Raw, state: str, timeout_s: float = 3.0) -> None:
    end = time.monotonic() + timeout_s
    while c.req(P.HEARTBEAT).body["state"] != state:
        assert time.monotonic() < end, f"server never reached {state}"
        time.sleep(0.01)


def test_estop_latched_until_the_operator_signals(maze_client):
    proc, _, c = maze_client
    c.req(P.RESET, {"seed": 0})
    assert c.req(P.ESTOP, {"reason": "test"}).type == P.ESTOP_OK
    for _ in range(2):  # two CLEAR_FAULTs cleared it before
        reply = c.req(P.CLEAR_FAULT)
        assert _code(reply) == "FAULTED" and "only the operator" in reply.body["message"]
    for type_, body in [(P.RESET, {}), (P.CHUNK, {"actions": np.full((5, 2), 0.5)})]:
        assert _code(c.req(type_, body)) == "FAULTED"
    c.hello()  # a new session does not clear it either
    assert _code(c.req(P.CLEAR_FAULT)) == "FAULTED" and c.req(P.HEARTBEAT).body["state"] == "ESTOP"
    n = len(c.req(P.TELEMETRY).body["targets"])
    os.kill(proc.pid, signal.SIGUSR1)  # the operator, on the robot's machine
    _wait_state(c, HOLD)
    assert "send RESET" in c.req(P.CLEAR_FAULT).body["message"]  # held until an explicit RESET
    assert c.req(P.RESET, {"seed": 0}).type == P.RESET_OK
    reply = c.req(P.CHUNK, {"actions": np.full((5, 2), 0.5)})
    assert reply.type == P.CHUNK_OK
    _wait_state(c, STARVED)
    assert len(c.req(P.TELEMETRY).body["targets"]) == n + 5  # it moves again, and reports it


def test_rate_limit_ramps_across_reset(maze_client):
    _, _, c = maze_client
    c.req(P.RESET, {"seed": 0})
    c.req(P.CHUNK, {"actions": np.full((200, 2), 1.0)})
    time.sleep(0.1)
    reset = c.req(P.RESET, {"seed": 1})  # while running at the top of the range
    reply = c.req(P.CHUNK, {"actions": np.full((10, 2), -1.0)})
    assert reply.body["first"] >= reset.body["tick"] + 2  # the tick after a RESET holds
    _wait_state(c, STARVED)
    t = c.req(P.TELEMETRY).body
    spec = RobotSpec.from_wire(c.req(P.HELLO).body["spec"])
    prev = np.vstack([spec.hold_action, t["targets"][:-1]])
    prev[np.flatnonzero(np.diff(t["ticks"]) != 1) + 1] = spec.hold_action  # held ticks apply the hold
    step = np.abs(t["targets"] - prev) / (spec.action_high - spec.action_low)
    assert step.max() <= spec.safety.max_step + 1e-9  # 73% of the range in one tick before


def test_curve_authentication_and_fresh_server_does_not_move(tmp_path):
    from diffplan.cli import main
    from diffplan.envs.robot.auth import AuthError, ClientKeys, ServerKeys

    keydir, other = tmp_path / "keys", tmp_path / "other"
    assert main(["robot", "keys", str(keydir), "--client", "alice", "--client", "bob"]) == 0
    assert main(["robot", "keys", str(other)]) == 0
    for secret in [keydir / "server.key_secret", keydir / "clients" / "alice.key_secret"]:
        assert secret.stat().st_mode & 0o777 == 0o600
    assert not list(keydir.rglob(".keys-*"))  # no temporary left behind
    ServerKeys.load(keydir)
    alice, bob, stranger = (ClientKeys.load(keydir, "alice"), ClientKeys.load(keydir, "bob"),
                            ClientKeys.load(other, "client"))
    port = free_port_pair()
    endpoint = f"tcp://127.0.0.1:{port}"
    proc = _spawn("mock", port, keys=str(keydir))
    clients = []
    try:
        c = RobotClient(endpoint, keys=alice, timeout_s=2.0)
        clients.append(c)
        c.connect()
        # A freshly started server does not move before a RESET: HELLO + CLEAR_FAULT + CHUNK moved it before.
        with pytest.raises(RobotError, match="send RESET"):
            c.request(P.CLEAR_FAULT)
        with pytest.raises(RobotError, match="FAULTED"):
            c.submit_chunk(np.full((5, 2), 0.5))
        time.sleep(0.05)
        assert len(c.telemetry()["targets"]) == 0
        c.request(P.RESET)
        first = c.submit_chunk(np.full((3, 2), 0.1)).body["first"]
        assert c.wait_obs(first).state == RUNNING  # alice, allowed, drives it and reads observations
        for keys in (None, stranger):  # no key, or a key the server does not list: no handshake, no reply
            x = RobotClient(endpoint, keys=keys, timeout_s=0.3)
            clients.append(x)
            with pytest.raises(RobotTimeout):
                x.connect()
            x.sub.setsockopt(zmq.SUBSCRIBE, b"")
            assert not x.sub.poll(300)  # nor the observation stream
        b = _Raw(endpoint, keys=bob)  # allowed, but alice's session token is not bob's to use
        reply = b.req(P.HEARTBEAT, session=c.session, seq=c.seq + 1)
        b.close()
        assert _code(reply) == "SESSION" and c.heartbeat().type == P.HEARTBEAT_OK
    finally:
        for x in clients:
            x.close()
        proc.kill()
        proc.wait(5)
    os.chmod(keydir / "server.key_secret", 0o644)
    with pytest.raises(AuthError, match="readable by other users"):
        ServerKeys.load(keydir)


class _FailingBackend(MockBackend):
    """Refuses commands (like an e-stopped drive) or fails to reset, on demand."""

    refuse = False
    fail_reset = False

    def command(self, target):
        if self.refuse:
            raise BackendError("drive refused the command")
        super().command(target)

    def reset(self, seed=None):
        if self.fail_reset:
            raise RuntimeError("homing failed")
        super().reset(seed)


def test_backend_failures_are_reported_not_silent():
    backend = _FailingBackend(2, 50.0)
    clock = ManualClock()
    endpoint = f"inproc://robot-{next(_names)}"
    server = RobotServer(backend, endpoint, clock=clock, watchdog_ticks=50, blend_ticks=0)
    thread = server.start_thread()
    client = RobotClient(endpoint, timeout_s=2.0)
    try:
        client.connect()
        client.request(P.RESET)
        backend.refuse = True
        client.submit_chunk(np.full((5, 2), 0.1))
        _ticks(server, clock, 3)
        obs = client.wait_obs(3)
        assert obs.state == HOLD and "BACKEND: command failed: BackendError" in obs.faults[-1]
        assert client.telemetry()["backend_errors"] >= 1 and backend.commands == []
        backend.refuse, backend.fail_reset = False, True
        with pytest.raises(RobotError, match="INTERNAL: RESET failed: RuntimeError: homing failed"):
            client.request(P.RESET)
        assert server.state == HOLD and thread.is_alive()
        backend.fail_reset = False
        client.request(P.RESET)
        assert server.state == IDLE
    finally:
        client.close()
        server.stop()
        thread.join(5)


@pytest.mark.parametrize("argv,message", [
    (["serve", "--env", "nope"], "cannot serve --env 'nope': unknown task 'nope'"),
    (["serve", "--env", "mock", "--hz", "0"], "--hz must be a control rate in (0, 10000]"),
    (["serve", "--env", "mock", "--hz", "nan"], "--hz must be a control rate"),
    (["serve", "--env", "mock", "--host", "0.0.0.0"], "refusing to serve tcp://0.0.0.0:5555 without authentication"),
    (["serve", "--env", "mock", "--keys", "/nonexistent"], "key file /nonexistent/server.key_secret does not exist"),
    (["serve", "--env", "mock", "--port", "70000"], "--port must be in 1-65534"),
    (["deploy", "runs/none", "--robot", "notaurl"], "--robot 'notaurl' is not a robot address"),
    (["robot", "keys", "/tmp", "--client", "../x"], "bad client name '../x'"),
])
def test_cli_robot_bad_input_is_one_line(capsys, argv, message):
    from diffplan.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffplan: error: ") and message in err and err.count("\n") == 1, err
