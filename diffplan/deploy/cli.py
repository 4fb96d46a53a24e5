"""``diffplan serve``, ``diffplan deploy`` and ``diffplan robot keys`` (argument parsing lives in
:mod:`diffplan.cli`). Bad input is a :class:`~diffplan.config.ConfigError`: one line, exit 2."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from typing import Any

import numpy as np

from diffplan.config import ConfigError

MAX_HZ = 10_000.0
"""Fastest control rate ``diffplan serve`` accepts (a tick loop in Python cannot keep a faster one)."""

_ROBOT_URL = re.compile(r"^tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def check_robot_url(url: str) -> str:
    """``tcp://host:port`` (observations on port + 1), or ConfigError naming the expected form."""
    m = _ROBOT_URL.match(url)
    if m is None or not 1 <= int(m.group(2)) <= 65534:
        raise ConfigError(f"--robot {url!r} is not a robot address: expected tcp://HOST:PORT (PORT 1-65534, "
                          "observations on PORT+1), e.g. tcp://127.0.0.1:5555")
    return url


def serve_command(args: argparse.Namespace) -> int:
    import zmq

    from diffplan.envs.robot.auth import AuthError
    from diffplan.envs.robot.safety import SafetyConfig
    from diffplan.envs.robot.server import serve

    if not (math.isfinite(args.hz) and 0 < args.hz <= MAX_HZ):
        raise ConfigError(f"--hz must be a control rate in (0, {MAX_HZ:g}] ticks per second, got {args.hz:g}")
    if not 1 <= args.port <= 65534:
        raise ConfigError(f"--port must be in 1-65534 (observations use port + 1), got {args.port}")
    if args.watchdog_ticks < 1:
        raise ConfigError(f"--watchdog-ticks must be >= 1, got {args.watchdog_ticks}")
    try:
        safety = SafetyConfig(margin=args.margin, max_step=args.max_step)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        serve(args.env, args.port, args.hz, args.host, args.watchdog_ticks, safety, args.seed, keys=args.keys)
    except AuthError as exc:
        raise ConfigError(str(exc)) from None
    except zmq.ZMQError as exc:
        raise ConfigError(f"cannot bind tcp://{args.host}:{args.port} (or port + 1): {exc}") from None
    return 0


def keys_command(args: argparse.Namespace) -> int:
    """``diffplan robot keys KEYDIR [--client NAME ...]``."""
    from diffplan.envs.robot.auth import AuthError, generate_keys

    try:
        written = generate_keys(args.keydir, args.client or ["client"])
    except AuthError as exc:
        raise ConfigError(str(exc)) from None
    for path in written:
        print(path)
    return 0


def deploy(run_dir: str, robot: str, *, episodes: int = 1, seed: int = 0, execute_ticks: int = 8,
           overrides: list[str] | None = None, timeout_s: float = 1.0, extra_latency_s: float = 0.0,
           keys: str | None = None, client: str = "client", latency_budget_ms: float | None = None) -> dict[str, Any]:
    """Drive the robot at ``robot`` with the trained planner in ``run_dir``; returns the per-episode reports.
    ``keys``/``client``: a key directory and the client name in it, for a server started with ``--keys``;
    ``latency_budget_ms``: fit every plan into this budget (the planner's solver steps)."""
    import torch

    from diffplan.agent import ChunkPlanner, Reseedable
    from diffplan.deploy.runner import DelayedPlanner, LatencyAwareRunner
    from diffplan.envs import make_env
    from diffplan.envs.robot.auth import ClientKeys
    from diffplan.envs.robot.client import RobotEnv
    from diffplan.training import load_trained

    check_robot_url(robot)
    client_keys = ClientKeys.load(keys, client) if keys is not None else None  # before the slow load
    torch.set_num_threads(1)
    exp = load_trained(run_dir, overrides)
    policy = exp.agent.policy
    if not isinstance(policy, ChunkPlanner):
        raise TypeError(f"agent {exp.cfg.agent!r} does not plan chunks: its policy has no "
                        "plan_chunk(obs, committed) -> (H, A) (the chunk-planning protocol)")
    planner: ChunkPlanner = DelayedPlanner(policy, extra_latency_s) if extra_latency_s > 0 else policy
    ref = make_env(exp.cfg.task)  # what the policy was trained on: the robot's spec must match it
    env = RobotEnv(robot, timeout_s=timeout_s, action_space=ref.action_space, observation_space=ref.observation_space,
                   keys=client_keys)
    ref.close()
    try:
        runner = LatencyAwareRunner(env, planner, execute_ticks=execute_ticks, latency_budget_ms=latency_budget_ms)
        reports = []
        for i in range(episodes):
            if isinstance(policy, Reseedable):
                policy.reseed(seed + i)
            reports.append(runner.run_episode(seed=seed + i).to_dict())
    finally:
        env.close()
    returns = [r["ret"] for r in reports]
    return {"run": run_dir, "robot": robot, "episodes": reports, "return_mean": float(np.mean(returns)),
            "misses": int(sum(r["misses"] for r in reports)),
            "starved_ticks": int(sum(r["starved_ticks"] for r in reports))}


def deploy_command(args: argparse.Namespace) -> int:
    from diffplan.envs.robot.auth import AuthError
    from diffplan.envs.robot.client import RobotError
    from diffplan.envs.robot.safety import SpecMismatch

    try:
        result = deploy(args.run_dir, args.robot, episodes=args.episodes, seed=args.seed,
                        execute_ticks=args.execute_ticks, overrides=args.overrides, timeout_s=args.timeout,
                        keys=args.keys, client=args.client, latency_budget_ms=args.latency_budget_ms)
    except (RobotError, SpecMismatch, AuthError, TypeError) as exc:
        print(f"diffplan deploy: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=float))
    return 0
