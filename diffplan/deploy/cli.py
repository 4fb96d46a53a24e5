"""``diffplan serve`` and ``diffplan deploy`` (argument parsing lives in :mod:`diffplan.cli`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np


def serve_command(args: argparse.Namespace) -> int:
    from diffplan.envs.robot.safety import SafetyConfig
    from diffplan.envs.robot.server import serve

    try:
        safety = SafetyConfig(margin=args.margin, max_step=args.max_step)
    except ValueError as exc:
        print(f"diffplan serve: error: {exc}", file=sys.stderr)
        return 2
    serve(args.env, args.port, args.hz, args.host, args.watchdog_ticks, safety, args.seed)
    return 0


def deploy(run_dir: str, robot: str, *, episodes: int = 1, seed: int = 0, execute_ticks: int = 8,
           overrides: list[str] | None = None, timeout_s: float = 1.0, extra_latency_s: float = 0.0,
           latency_budget_ms: float | None = None) -> dict[str, Any]:
    """Drive the robot at ``robot`` with the trained planner in ``run_dir``; returns the per-episode reports."""
    import torch

    from diffplan.agent import ChunkPlanner, Reseedable
    from diffplan.deploy.runner import DelayedPlanner, LatencyAwareRunner
    from diffplan.envs import make_env
    from diffplan.envs.robot.client import RobotEnv
    from diffplan.training import load_trained

    torch.set_num_threads(1)
    exp = load_trained(run_dir, overrides)
    policy = exp.agent.policy
    if not isinstance(policy, ChunkPlanner):
        raise TypeError(f"agent {exp.cfg.agent!r} does not plan chunks: its policy has no "
                        "plan_chunk(obs, committed) -> (H, A) (the chunk-planning protocol)")
    planner: ChunkPlanner = DelayedPlanner(policy, extra_latency_s) if extra_latency_s > 0 else policy
    ref = make_env(exp.cfg.task)  # what the policy was trained on: the robot's spec must match it
    env = RobotEnv(robot, timeout_s=timeout_s, action_space=ref.action_space, observation_space=ref.observation_space)
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
    from diffplan.envs.robot.client import RobotError
    from diffplan.envs.robot.safety import SpecMismatch

    try:
        result = deploy(args.run_dir, args.robot, episodes=args.episodes, seed=args.seed,
                        execute_ticks=args.execute_ticks, overrides=args.overrides, timeout_s=args.timeout,
                        latency_budget_ms=args.latency_budget_ms)
    except (RobotError, SpecMismatch, TypeError) as exc:
        print(f"diffplan deploy: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=float))
    return 0
