"""Benchmarks behind ``diffplan bench``; each writes a JSON result (never run by the tests).

* ``plan <run>``: planning latency at batch 1 (median ms per replan) on evaluation states, and the decision
  latency: ms per ``policy(obs, state)`` call (one env step, batch 1) along ``--steps`` steps of a real episode,
  which for chunk-executing or replan-every-k agents includes the calls that only read a cached plan.
* ``train <config> [k=v]``: gradient steps per second of a config on this machine.
* ``curve <run> [<run> ...]``: the learning curves kept in each run's ``results.json`` (score and success vs
  training minutes and gradient steps) as one JSON file and a PNG beside it.
* ``report [benchmarks/]``: ``benchmarks/README.md`` generated from the JSON results (``diffplan.report``); ``--out``
  writes the page elsewhere.
* ``ddp <config> [k=v] --ranks 1,2``: training samples per second under torchrun with each number of ranks.
* ``sweep <config> [k=v] --repeats N``: the per-run cost of ``diffplan sweep`` on a local Ray (N tiny runs).
* ``fastgen <run> [name:k=v,k=v ...]``: one trained planner under several sampler settings (default: ddim
  10/5/3 steps, dpmsolver++ 5/3, replanning every 16 steps cold and warm-started): normalized score over the
  protocol episodes, cold plan latency and warm replan latency at batch 1 (median, p95), model calls per plan.
* ``suite <suite.yaml>``: agents x tasks x seeds at one fixed budget, resumable, one JSON per run
  (:mod:`diffplan.suite`); ``--only``, ``--dry-run``, ``--parallel N``, ``--out``, ``--runs``.
* ``maze <run>``: the maze evaluation protocol over ``--episodes`` episodes, beside the planner-free
  go-to-goal PD baseline on the same start/goal pairs, and the score on the "hard" episodes that baseline fails.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tianshou.algorithm.algorithm_base import Policy
from tianshou.data import Batch

from diffplan.checkpoint import CheckpointError, write_text_atomic
from diffplan.data import observation_arrays
from diffplan.envs.evaluation import as_batch, decision_latency
from diffplan.training import machine_info


def _write(result: dict[str, Any], out: str | None) -> dict[str, Any]:
    if out:
        write_text_atomic(Path(out), json.dumps(result, indent=2, default=float))
    return result


class GoToGoalPolicy(Policy):
    """Planner-free baseline: PD control straight at the goal (slides along walls, no path planning)."""

    def __init__(self, action_space: Any, kp: float = 10.0, kd: float = 1.0) -> None:
        super().__init__(action_space=action_space)
        self.kp, self.kd = kp, kd

    def forward(self, batch: Batch, state: Any = None, **kwargs: Any) -> Batch:
        obs, goal = observation_arrays(batch.obs)
        act = self.kp * (goal - obs[:, :2]) - self.kd * obs[:, 2:4]
        return Batch(act=np.clip(act, -1.0, 1.0).astype(np.float32), state=state)


def bench_plan(args: argparse.Namespace) -> dict[str, Any]:
    from diffplan.agent import Planner, Reseedable
    from diffplan.config import config_to_dict
    from diffplan.envs import make_env
    from diffplan.training import load_trained

    exp = load_trained(args.path, args.overrides)
    policy = exp.agent.policy
    env = make_env(exp.cfg.task, seed=0)
    times = []
    if isinstance(policy, Reseedable):
        policy.reseed(0)
    if isinstance(policy, Planner):  # latency of one batched planning call; other agents: decision latency only
        for i in range(args.repeats + 3):
            obs, _ = env.reset(seed=i)
            observation, goal = observation_arrays(Batch(obs=as_batch(obs)).obs)
            t0 = time.perf_counter()
            policy.plan(observation, goal)
            if i >= 3:  # warm-up calls excluded
                times.append((time.perf_counter() - t0) * 1000)
    decision_ms = decision_latency(policy, env, args.steps)
    env.close()
    settings = config_to_dict(exp.cfg)  # the planner settings that matter for latency, where the agent has them
    result = {
        "benchmark": "plan",
        "agent": exp.cfg.agent,
        "run": str(args.path),
        **{key: settings.get(key) for key in ("horizon", "sampling_steps", "n_candidates")},
        "repeats": len(times),
        **({"plan_ms_median": float(np.median(times)), "plan_ms_p90": float(np.percentile(times, 90)),
            "plan_ms_p95": float(np.percentile(times, 95))} if times else {}),
        "decision_steps": len(decision_ms),
        "decision_ms_median": float(np.median(decision_ms)),
        "decision_ms_mean": float(np.mean(decision_ms)),
        "decision_ms_p90": float(np.percentile(decision_ms, 90)),
        "decision_ms_p95": float(np.percentile(decision_ms, 95)),
        **machine_info(),
    }
    return _write(result, args.out)


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    """Updates per second of a config: the training loop's own step (offline: one gradient step; online: one
    collection + update), after 5 warm-up steps."""
    from diffplan.compose import load_config
    from diffplan.training import OfflineSteps, OnlineSteps, setup

    cfg = load_config(args.path, args.overrides)
    exp = setup(cfg)
    steps = OnlineSteps(exp) if exp.agent.online else OfflineSteps(exp)
    n = args.repeats
    try:
        for _ in range(5):
            steps.step()
        t0 = time.perf_counter()
        for _ in range(n):
            steps.step()
        wall = time.perf_counter() - t0
    finally:
        steps.close()
    params = sum(p.numel() for p in exp.agent.policy.parameters() if p.requires_grad)
    result = {
        "benchmark": "train",
        "config": str(args.path),
        "overrides": list(args.overrides),
        "parameters": int(params),
        "batch_size": cfg.batch_size,
        "steps": n,
        "steps_per_s": n / wall,
        "ms_per_step": 1000 * wall / n,
        **machine_info(),
    }
    return _write(result, args.out)


def bench_maze(args: argparse.Namespace) -> dict[str, Any]:
    from diffplan.envs import EVAL_SEED, make_env
    from diffplan.envs.evaluation import evaluate
    from diffplan.training import load_trained

    exp = load_trained(args.path, args.overrides)
    planner = exp.evaluate(args.episodes)
    env = make_env(exp.cfg.task)
    baseline = evaluate(
        GoToGoalPolicy(env.action_space), exp.make_venv, args.episodes, n_envs=exp.cfg.eval_envs,
        seed=EVAL_SEED, ref_min=exp.ref_min, ref_max=exp.ref_max,
    )
    env.close()
    hard = ~baseline.successes
    result: dict[str, Any] = {
        "benchmark": "maze",
        "run": str(args.path),
        "task": exp.cfg.task,
        "overrides": list(args.overrides),
        "planner": planner.to_dict(),
        "go_to_goal_baseline": baseline.to_dict(),
        "hard_episodes": int(hard.sum()),
        **machine_info(),
    }
    if hard.any() and planner.normalized is not None and len(planner.normalized) == len(hard):
        result["planner_hard"] = {
            "normalized_score": float(planner.normalized[hard].mean()),
            "success_rate": float(planner.successes[hard].mean()),
        }
        assert baseline.normalized is not None
        result["baseline_hard"] = {
            "normalized_score": float(baseline.normalized[hard].mean()),
            "success_rate": float(baseline.successes[hard].mean()),
        }
    results_path = Path(args.path) / "results.json"
    if results_path.exists():
        trained = json.loads(results_path.read_text())
        result["train_time_s"] = trained.get("train_time_s")
        result["gradient_steps"] = trained.get("gradient_steps", trained.get("updates"))
    return _write(result, args.out)


FASTGEN_SETTINGS: dict[str, list[str]] = {
    "ddim-10": ["sampler=ddim", "sampling_steps=10"],
    "ddim-5": ["sampler=ddim", "sampling_steps=5"],
    "ddim-3": ["sampler=ddim", "sampling_steps=3"],
    "dpmsolver++-5": ["sampler=dpmsolver++", "sampling_steps=5"],
    "dpmsolver++-3": ["sampler=dpmsolver++", "sampling_steps=3"],
    "dpmsolver++-5-replan16": ["sampler=dpmsolver++", "sampling_steps=5", "replan_every=16"],
    "dpmsolver++-5-replan16-warm0.4": [
        "sampler=dpmsolver++", "sampling_steps=5", "replan_every=16", "warm_start_level=0.4",
    ],
}
"""Default settings of ``bench fastgen``: name -> overrides (the same trained weights under each)."""


def _ms_stats(times: list[float], prefix: str) -> dict[str, float]:
    return {f"{prefix}_median": float(np.median(times)), f"{prefix}_p95": float(np.percentile(times, 95))}


def bench_fastgen(args: argparse.Namespace) -> dict[str, Any]:
    """Samplers side by side on one trained Diffuser: score and batch-1 latency of each setting.

    Settings: ``name:k=v,k=v`` arguments after the run (default :data:`FASTGEN_SETTINGS`). Per setting: the
    evaluation protocol over ``--episodes``; ``--repeats`` cold plans on evaluation states; for replanning
    settings as many warm replans (the same plan shifted by ``replan_every`` steps as the guess). The plan
    timings go round robin over the settings (``--steps`` is not used).
    """
    from diffplan.agent import Planner, Reseedable, WarmPlanner
    from diffplan.config import config_to_dict
    from diffplan.envs import make_env
    from diffplan.training import load_trained

    settings = dict(FASTGEN_SETTINGS)
    if args.overrides:
        settings = {}
        for spec in args.overrides:
            name, _, kvs = spec.partition(":")
            settings[name] = [kv for kv in kvs.split(",") if kv]
    exps = {name: load_trained(args.path, overrides) for name, overrides in settings.items()}
    for name, exp in exps.items():
        if not isinstance(exp.agent.policy, Planner):
            raise CheckpointError(f"{args.path}: agent {exp.cfg.agent!r} is not a planner")
        if isinstance(exp.agent.policy, Reseedable):
            exp.agent.policy.reseed(0)
    cold: dict[str, list[float]] = {name: [] for name in exps}
    warm: dict[str, list[float]] = {name: [] for name in exps}
    calls: dict[str, dict[str, int]] = {name: {} for name in exps}
    env = make_env(next(iter(exps.values())).cfg.task, seed=0)
    # Round robin over the settings: on a shared machine the load drifts, and interleaving spreads the drift
    # evenly over the settings instead of favouring whichever ran in a quiet minute.
    for i in range(args.repeats + 3):
        obs, _ = env.reset(seed=i)
        observation, goal = observation_arrays(Batch(obs=as_batch(obs)).obs)
        for name, exp in exps.items():
            policy = exp.agent.policy
            t0 = time.perf_counter()
            plan_obs, plan_act, _ = policy.plan(observation, goal)
            if i >= 3:
                cold[name].append((time.perf_counter() - t0) * 1000)
            if not isinstance(policy, WarmPlanner):
                continue
            calls[name]["cold"] = int(policy.last_plan.get("calls", 0))
            cfg = config_to_dict(exp.cfg)
            k = int(cfg.get("replan_every", 0))
            if k and cfg.get("warm_start_level", 0.0) > 0:
                init = policy.warm_guess(plan_obs, plan_act, k)
                t0 = time.perf_counter()
                policy.plan(observation, goal, init)
                if i >= 3:
                    warm[name].append((time.perf_counter() - t0) * 1000)
                calls[name]["warm"] = int(policy.last_plan.get("calls", 0))
    env.close()
    rows: dict[str, dict[str, Any]] = {}
    for name, exp in exps.items():
        result = exp.evaluate(args.episodes).to_dict()
        rows[name] = {
            "overrides": settings[name],
            **_ms_stats(cold[name], "plan_ms"),
            **(_ms_stats(warm[name], "warm_plan_ms") if warm[name] else {}),
            "model_calls": calls[name],
            "normalized_score": result.get("normalized_score"),
            "normalized_score_se": result.get("normalized_score_se"),
            "success_rate": result["success_rate"],
            "episodes": result["episodes"],
            "eval_plan_ms_median": result.get("plan_ms_median"),
        }
        print(json.dumps({name: rows[name]}, default=float), flush=True)
    trained = json.loads((Path(args.path) / "results.json").read_text())
    out = {
        "benchmark": "fastgen",
        "command": " ".join(["diffplan bench fastgen", str(args.path), *args.overrides, f"--repeats {args.repeats}",
                             f"--episodes {args.episodes}", f"--steps {args.steps}"]
                            + ([f"--out {args.out}"] if args.out else [])),
        "run": str(args.path),
        "task": trained.get("task"),
        "gradient_steps": trained.get("gradient_steps", trained.get("updates")),
        "repeats": args.repeats,
        "settings": rows,
        **machine_info(),
    }
    return _write(out, args.out)


def bench_curve(args: argparse.Namespace) -> dict[str, Any]:
    """Learning curves of finished runs; extra positional arguments are more run directories."""
    curves: dict[str, list[dict[str, Any]]] = {}
    runs: dict[str, Any] = {}
    for run in [args.path, *args.overrides]:
        results_path = Path(run) / "results.json"
        if not results_path.exists():
            raise CheckpointError(f"{results_path} not found: is {run} a finished run directory?")
        trained = json.loads(results_path.read_text())
        label = f"{trained['agent']} {trained['task']}"
        keep = ("step", "train_time_s", "normalized_score", "normalized_score_se", "success_rate", "plan_ms_median")
        curves[label] = [{k: h[k] for k in keep if k in h} for h in trained["history"]]
        runs[label] = {
            "run": str(run), "gradient_steps": trained.get("gradient_steps", trained.get("updates")),
            "train_time_s": trained["train_time_s"],
            "steps_per_s": trained.get("steps_per_s"), "final": trained["final"],
        }
    result = _write({"benchmark": "curve", "runs": runs, "curves": curves, **machine_info()}, args.out)
    if args.out:
        from diffplan.viz import plot_learning_curves

        plot_learning_curves(curves).savefig(Path(args.out).with_suffix(".png"), dpi=90)
    return result


def bench_ddp(args: argparse.Namespace) -> dict[str, Any]:
    """Training throughput (samples per second of the global batch) of a config under ``torchrun`` with each
    number of ranks in ``--ranks`` (one torch thread per rank), ``--repeats`` runs each, interleaved so that
    the machine's load changes hit every rank count alike. Read from each run's results.json: training time
    only (start-up and the final evaluation excluded)."""
    import subprocess
    import sys
    import tempfile

    ranks = [int(r) for r in str(args.ranks).split(",")]
    trials: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="diffplan-ddp-") as tmp:
        for rep in range(args.repeats):
            for n in ranks:
                run_dir = Path(tmp) / f"r{n}-{rep}"
                load_before = os.getloadavg()[0]
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                       "-m", "diffplan", "train", str(args.path), *args.overrides, "torch_threads=1",
                       f"run_dir={run_dir}", "--no-progress"]
                subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL)
                res = json.loads((run_dir / "results.json").read_text())
                batch = int(yaml.safe_load((run_dir / "config.yaml").read_text())["batch_size"])
                trials.append({
                    "ranks": n, "repeat": rep, "gradient_steps": res["gradient_steps"], "batch_size": batch,
                    "train_time_s": res["train_time_s"],
                    "samples_per_s": res["gradient_steps"] * batch / res["train_time_s"],
                    "load_1min_before": load_before, "load_1min_after": os.getloadavg()[0],
                })
    summary = []
    for n in ranks:
        rates = np.array([t["samples_per_s"] for t in trials if t["ranks"] == n])
        se = float(rates.std(ddof=1) / np.sqrt(len(rates))) if len(rates) > 1 else 0.0
        summary.append({"ranks": n, "samples_per_s": float(rates.mean()), "samples_per_s_se": se,
                        "runs": len(rates)})
    base = summary[0]["samples_per_s"]
    for row in summary:
        row["speedup"] = row["samples_per_s"] / base
    command = " ".join(["diffplan bench ddp", str(args.path), *args.overrides, f"--ranks {args.ranks}",
                        f"--repeats {args.repeats}"] + ([f"--out {args.out}"] if args.out else []))
    result = {"benchmark": "ddp", "config": str(args.path), "overrides": list(args.overrides), "command": command,
              "summary": summary, "trials": trials, **machine_info()}
    return _write(result, args.out)


def bench_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """What a sweep on a local Ray costs per run beyond its training: ``--repeats`` runs of a tiny config
    (``seed=0..N-1``, one CPU each), each a Ray task, then the same sweep again (every run finished: skipped).

    Overhead per run = (sweep wall time x CPU slots - the time ``train`` ran in all tasks) / runs: the slot time
    a run costs beyond its training (worker start, imports, config, scheduling, waiting for results)."""
    import tempfile

    import ray

    from diffplan.sweep import run_sweep

    t0 = time.perf_counter()
    ray.init(log_to_driver=False, include_dashboard=False)
    init_s = time.perf_counter() - t0
    slots = int(ray.cluster_resources().get("CPU", 1))
    seeds = ",".join(str(i) for i in range(args.repeats))
    try:
        with tempfile.TemporaryDirectory(prefix="diffplan-sweep-") as tmp:
            first = run_sweep(str(args.path), [*args.overrides, f"seed={seeds}"], Path(tmp) / "a", echo=False)
            again = run_sweep(str(args.path), [*args.overrides, f"seed={seeds}"], Path(tmp) / "a", echo=False)
    finally:
        ray.shutdown()
    runs = first["runs"]
    train_s = np.array([r["train_s"] for r in runs])
    command = " ".join(["diffplan bench sweep", str(args.path), *args.overrides, f"--repeats {args.repeats}"]
                       + ([f"--out {args.out}"] if args.out else []))
    result = {
        "benchmark": "sweep", "config": str(args.path), "overrides": list(args.overrides), "command": command,
        "runs": len(runs), "cpu_slots": slots, "ray_init_s": init_s, "sweep_wall_s": first["wall_s"],
        "rerun_wall_s": again["wall_s"], "train_s_mean": float(train_s.mean()),
        "overhead_s_per_run": (first["wall_s"] * slots - float(train_s.sum())) / len(runs),
        "in_task_setup_s_mean": float(np.mean([r["task_s"] - r["train_s"] for r in runs])),
        "per_run": [{k: r[k] for k in ("name", "train_s", "task_s", "latency_s")} for r in runs],
        **machine_info(),
    }
    return _write(result, args.out)


def bench_report(args: argparse.Namespace) -> dict[str, Any]:
    """Regenerate the benchmark page from the committed JSON results (no training code involved) and each
    suite's learning-curve figure (``suites/<name>/curves.png``, drawn from the same JSON)."""
    from diffplan.report import write
    from diffplan.viz import write_suite_figures

    root = args.path or "benchmarks"
    page = write(root, args.out)
    figures = write_suite_figures(root)
    return {"benchmark": "report", "page": str(page), "figures": [str(f) for f in figures]}


def bench_suite(args: argparse.Namespace) -> dict[str, Any]:
    """Agents x tasks x seeds of a suite file at its fixed budget, one JSON per run (:mod:`diffplan.suite`)."""
    from diffplan.config import ConfigError
    from diffplan.suite import run_suite

    if not args.path:
        raise ConfigError("bench suite: give a suite file, e.g. benchmarks/suites/locomotion-medium.yaml")
    if args.overrides:
        raise ConfigError(f"bench suite: unexpected {' '.join(args.overrides)} (a suite file sets every run's config)")
    command = " ".join(["diffplan bench suite", str(args.path)]
                       + [f"{flag} {value}" for flag, value in (("--out", args.out), ("--runs", args.runs),
                                                               ("--only", args.only)) if value]
                       + [f"--parallel {args.parallel}"])
    summary = run_suite(args.path, out=args.out, runs_dir=args.runs, only=args.only, dry_run=args.dry_run,
                        parallel=args.parallel, command=command)
    return {"benchmark": "suite", **summary}


BENCHMARKS = {
    "plan": bench_plan, "train": bench_train, "maze": bench_maze, "curve": bench_curve, "report": bench_report,
    "ddp": bench_ddp, "sweep": bench_sweep, "fastgen": bench_fastgen, "suite": bench_suite,
}
