"""Robot-bridge benchmarks; each writes a JSON result (never run by the tests)::

    python -m diffplan.deploy.bench rtt --out benchmarks/robot_rtt.json
    python -m diffplan.deploy.bench jitter --out benchmarks/robot_jitter.json
    python -m diffplan.deploy.bench deploy runs/quickstart --episodes 20 --out benchmarks/robot_deploy.json

* ``rtt``: request round trip (HEARTBEAT -> HEARTBEAT_OK) over loopback TCP to a ``diffplan serve`` process,
  unauthenticated and with CURVE keys (``--keys``: per-message encryption and authentication).
* ``jitter``: how late each tick starts (server telemetry) at 50 and 100 Hz with a MuJoCo backend, while a
  client streams chunks, on whatever else the machine is running (recorded as the load average).
* ``deploy``: a trained chunk planner driving the MuJoCo robot through the bridge with the latency-aware
  runner, beside the same planner in the plain simulator (synchronous: no latency) and in the plain simulator
  with the same committed-prefix lead the bridge used (the cost of latency itself, without the bridge).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from diffplan.envs.robot.server import free_port_pair


def _machine() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()}-core CPU, {platform.python_version()}",
        "load_average_1_5_15": list(os.getloadavg()),
        "note": "shared machine: other trainings and test runs were using the CPUs (see load average)",
    }


def _write(result: dict[str, Any], out: str | None) -> dict[str, Any]:
    if out:
        from diffplan.checkpoint import write_text_atomic

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(out), json.dumps(result, indent=2, default=float))
    return result


@contextmanager
def served(env: str, hz: float, *extra: str):
    """A ``diffplan serve`` subprocess on 127.0.0.1; yields its command endpoint."""
    port = free_port_pair()
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffplan.cli", "serve", "--env", env, "--port", str(port), "--hz", str(hz), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = proc.stdout.readline()
        if "serving" not in line:
            raise RuntimeError(f"server did not start: {line!r}")
        yield f"tcp://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


def _stats_ms(xs: np.ndarray) -> dict[str, float]:
    ms = np.asarray(xs) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "n": len(ms)}


def bench_rtt(args: argparse.Namespace) -> dict[str, Any]:
    """Round trip without authentication (loopback) and with CURVE (every message encrypted and authenticated):
    both servers run at once and the two clients alternate in blocks of 250 requests, so load that changes
    during the run (a shared machine) falls on both alike."""
    import tempfile

    from diffplan.envs.robot.auth import ClientKeys, generate_keys
    from diffplan.envs.robot.client import RobotClient

    block = 250
    with tempfile.TemporaryDirectory() as keydir:
        generate_keys(keydir, ["bench"])
        with served("mock", 100.0, "--watchdog-ticks", "1000000") as plain_ep, \
                served("mock", 100.0, "--watchdog-ticks", "1000000", "--keys", keydir) as curve_ep:
            clients = {"plain": RobotClient(plain_ep, timeout_s=2.0),
                       "curve": RobotClient(curve_ep, timeout_s=2.0, keys=ClientKeys.load(keydir, "bench"))}
            times: dict[str, list[float]] = {name: [] for name in clients}
            for client in clients.values():
                client.connect()
                for _ in range(100):  # warm-up excluded
                    client.heartbeat()
            while len(times["plain"]) < args.repeats:
                for name, client in clients.items():
                    for _ in range(min(block, args.repeats - len(times[name]))):
                        t0 = time.perf_counter()
                        client.heartbeat()
                        times[name].append(time.perf_counter() - t0)
            for client in clients.values():
                client.close()
    return _write({"benchmark": "robot_rtt", "transport": "ZeroMQ DEALER/ROUTER over loopback TCP, msgpack",
                   "server": "diffplan serve --env mock --hz 100 (subprocess)", "request": "HEARTBEAT",
                   "method": f"an unauthenticated and a CURVE server at once; clients alternate blocks of {block}",
                   **_stats_ms(np.array(times["plain"])),
                   "curve": {"auth": "CURVE (diffplan serve --keys)", **_stats_ms(np.array(times["curve"]))},
                   "command": f"python -m diffplan.deploy.bench rtt --repeats {args.repeats} --out {args.out}",
                   **_machine()}, args.out)


def bench_jitter(args: argparse.Namespace) -> dict[str, Any]:
    from diffplan.envs.robot.client import RobotClient, RobotError

    results = []
    for hz in (50.0, 100.0):
        with served(args.env, hz, "--watchdog-ticks", "1000000") as endpoint:
            client = RobotClient(endpoint, timeout_s=2.0)
            spec = client.connect()
            client.request("RESET", {"seed": 0})
            end = time.monotonic() + args.seconds
            resets = 0
            while time.monotonic() < end:  # keep the robot RUNNING: 10-tick chunks of the hold action
                try:
                    client.submit_chunk(np.tile(spec.hold_action, (10, 1)))
                except RobotError:  # the episode ended (Hopper fell): start the next one
                    client.request("RESET", {"seed": resets})
                    resets += 1
                time.sleep(5.0 / hz)
            t = client.telemetry()
            client.close()
        late = np.asarray(t["tick_lateness_s"])
        results.append({"hz": hz, "period_ms": 1000.0 / hz, "ticks": len(late), "overruns": int(t["overruns"]),
                        "episode_resets": resets, "lateness": _stats_ms(late)})
    return _write({"benchmark": "robot_jitter", "env": args.env, "seconds_per_rate": args.seconds,
                   "definition": "lateness = actual tick start - scheduled start (monotonic clock); overrun = a tick "
                   "more than one period late (missed periods are dropped, not caught up)",
                   "rates": results,
                   "command": f"python -m diffplan.deploy.bench jitter --env {args.env} --seconds {args.seconds:g} "
                              f"--out {args.out}",
                   **_machine()}, args.out)


def bench_deploy(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from diffplan.deploy.runner import LatencyAwareRunner, run_in_process
    from diffplan.envs import make_env
    from diffplan.envs.robot.client import RobotEnv
    from diffplan.training import load_trained

    torch.set_num_threads(1)
    exp = load_trained(args.path, ["torch_threads=1", *args.overrides])
    policy = exp.agent.policy
    task = exp.cfg.task
    seeds = [args.seed + i for i in range(args.episodes)]
    sim = make_env(task)

    def sim_returns(lead: int) -> list[float]:
        out = []
        for i, s in enumerate(seeds):
            policy.reseed(i)
            out.append(run_in_process(sim, policy, execute_ticks=args.execute_ticks, seed=s, lead_ticks=lead))
        return out

    with served(task, args.hz) as endpoint:
        env = RobotEnv(endpoint, timeout_s=2.0, action_space=sim.action_space, observation_space=sim.observation_space)
        runner = LatencyAwareRunner(env, policy, execute_ticks=args.execute_ticks)
        reports = []
        for i, s in enumerate(seeds):
            policy.reseed(i)
            reports.append(runner.run_episode(seed=s))
            print(f"bridged episode {i}: {reports[-1].to_dict()}", flush=True)
        telemetry = env.client.telemetry()
        env.close()
    bridged = [r.ret for r in reports]
    leads = [r.lead_ticks for r in reports]
    lead = int(np.round(np.median(leads)))
    plain = sim_returns(0)
    lagged = sim_returns(lead)
    all_plan_ms = np.concatenate([r.plan_ms for r in reports])

    def summary(xs: list[float]) -> dict[str, float]:
        return {"mean": float(np.mean(xs)), "se": float(np.std(xs, ddof=1) / np.sqrt(len(xs))), "returns": xs}

    b, p = float(np.mean(bridged)), float(np.mean(plain))
    return _write({
        "benchmark": "robot_deploy", "run": str(args.path), "task": task, "control_hz": args.hz,
        "overrides": list(args.overrides),
        "command": " ".join(["python -m diffplan.deploy.bench deploy", str(args.path), *args.overrides,
                             f"--episodes {args.episodes} --hz {args.hz:g}"] + ([f"--out {args.out}"] if args.out else [])),
        "control_period_ms": 1000.0 / args.hz, "episodes": args.episodes, "env_seeds": seeds,
        "execute_ticks": args.execute_ticks, "sampling_steps": getattr(exp.cfg, "sampling_steps", None),
        "plan_ms": {"p50": float(np.percentile(all_plan_ms, 50)), "p95": float(np.percentile(all_plan_ms, 95)),
                    "max": float(all_plan_ms.max())},
        "lead_ticks_median": lead,
        "bridged_return": summary(bridged),
        "in_process_return": summary(plain),
        "in_process_with_same_lead_return": summary(lagged),
        "bridged_vs_in_process_pct": 100.0 * (b - p) / max(abs(p), 1e-9),
        "within_10pct": bool(abs(b - p) <= 0.1 * abs(p)),
        "starved_ticks_total": int(sum(r.starved_ticks for r in reports)),
        "misses_total": int(sum(r.misses for r in reports)), "plans_total": int(sum(r.plans for r in reports)),
        "ticks_total": int(sum(r.ticks for r in reports)),
        "control_step_ms_p50_p99": [float(np.median([r.step_ms_p50 for r in reports])),
                                    float(np.max([r.step_ms_p99 for r in reports]))],
        "server_unsafe_blocked": int(telemetry["unsafe_blocked"]),
        "server_clipped_actions": int(telemetry["clipped_actions"]),
        "server_rate_limited_ticks": int(telemetry["rate_limited_ticks"]),
        "episodes_detail": [r.to_dict() for r in reports],
        **_machine(),
    }, args.out)


BENCHMARKS = {"rtt": bench_rtt, "jitter": bench_jitter, "deploy": bench_deploy}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=sorted(BENCHMARKS))
    parser.add_argument("path", nargs="?", help="run directory (deploy)")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--out", default=None)
    parser.add_argument("--repeats", type=int, default=5000, help="rtt: timed requests")
    parser.add_argument("--seconds", type=float, default=20.0, help="jitter: seconds per rate")
    parser.add_argument("--env", default="Hopper-v5", help="jitter: env served")
    parser.add_argument("--episodes", type=int, default=20, help="deploy: episodes per condition")
    parser.add_argument("--seed", type=int, default=1000, help="deploy: first env seed")
    parser.add_argument("--hz", type=float, default=50.0, help="deploy: control rate")
    parser.add_argument("--execute-ticks", type=int, default=8, help="deploy: new actions per plan")
    args = parser.parse_args(argv)
    if args.what == "deploy" and not args.path:
        parser.error("deploy needs a run directory")
    print(json.dumps({k: v for k, v in BENCHMARKS[args.what](args).items() if k != "episodes_detail"},
                     indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
