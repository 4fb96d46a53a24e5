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
* ``dppo [runs-dir] [key=value]``: DPPO beside the Gaussian PPO baseline on a locomotion task, resumable: both
  pre-trainings, then fine-tuning with evaluations at several env-step counts, 3 seeds (:data:`DPPO_BENCH`).
* ``dppo-throughput [config] [ref=<irom-lab/dppo checkout>]``: the online loop's env steps/s and seconds per PPO
  update, and model-level timings beside irom-lab/dppo's model code on the same synthetic shapes.
* ``maze <run>``: the maze evaluation protocol over ``--episodes`` episodes, beside the planner-free
  go-to-goal PD baseline on the same start/goal pairs, and the score on the "hard" episodes that baseline fails;
  ``--plan-to-end`` also scores the plans followed to their end without the switch to the goal-directed PD
  controller (:data:`PLAN_TO_END`), ``--plan-latency`` times ``--repeats`` plans at batch 1. Every score says
  the execution it used.
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


def _plan_latency(policy: Policy, env: Any, repeats: int) -> list[float]:
    """ms of ``repeats`` planning calls at batch 1 on evaluation states (3 warm-up calls excluded); empty for
    a policy that is not a :class:`~diffplan.agent.Planner`."""
    from diffplan.agent import Planner, Reseedable

    if isinstance(policy, Reseedable):
        policy.reseed(0)
    times: list[float] = []
    if isinstance(policy, Planner):  # latency of one batched planning call; other agents: decision latency only
        for i in range(repeats + 3):
            obs, _ = env.reset(seed=i)
            observation, goal = observation_arrays(Batch(obs=as_batch(obs)).obs)
            t0 = time.perf_counter()
            policy.plan(observation, goal)
            if i >= 3:  # warm-up calls excluded
                times.append((time.perf_counter() - t0) * 1000)
    return times


def bench_plan(args: argparse.Namespace) -> dict[str, Any]:
    from diffplan.config import config_to_dict
    from diffplan.envs import make_env
    from diffplan.training import load_trained

    exp = load_trained(args.path, args.overrides)
    policy = exp.agent.policy
    env = make_env(exp.cfg.task, seed=0)
    times = _plan_latency(policy, env, args.repeats)
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


PLAN_TO_END = ["park_radius=0", "after_plan=stop"]
"""Overrides of ``bench maze --plan-to-end``: the whole plan is tracked, then the agent brakes where it is; no
switch to the go-to-goal PD controller (the planner-free baseline's), so the score is the plan's own."""


def execution_text(settings: dict[str, Any]) -> str:
    """How a planner's plans are executed, in words, from its config (``config_to_dict``); '' for agents
    without plan execution settings."""
    if "tracking" not in settings:
        return ""
    track = (f"PD on the next planned state (kp {settings['kp']:g}, kd {settings['kd']:g})"
             if settings["tracking"] == "pd" else "planned actions")
    replan = settings.get("replan_every", 0)
    parts = [f"{track}, {'one plan per episode' if not replan else f'a new plan every {replan} steps'}"]
    if settings.get("park_radius", 0) > 0:
        parts.append(f"plan cut within {settings['park_radius']:g} of the goal")
    if settings.get("after_plan", "goal") == "stop":
        parts.append("then brake (no goal-directed PD)")
    else:
        parts.append(f"then PD to the goal (kp {settings['hold_kp']:g}, kd {settings['hold_kd']:g})")
    if settings.get("n_candidates", 1) > 1:
        parts.append(f"best of {settings['n_candidates']} plans")
    return "; ".join(parts)


def _hard_split(result: Any, hard: np.ndarray) -> dict[str, float] | None:
    """Score and success of an evaluation on the "hard" episodes (bool mask over the same episodes)."""
    if not hard.any() or result.normalized is None or len(result.normalized) != len(hard):
        return None
    return {"normalized_score": float(result.normalized[hard].mean()),
            "success_rate": float(result.successes[hard].mean())}


def bench_maze(args: argparse.Namespace) -> dict[str, Any]:
    from diffplan.config import config_to_dict
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
    hard = ~baseline.successes
    settings = config_to_dict(exp.cfg)
    command = ["diffplan bench maze", str(args.path), *args.overrides, f"--episodes {args.episodes}"]
    result: dict[str, Any] = {
        "benchmark": "maze",
        "run": str(args.path),
        "task": exp.cfg.task,
        "agent": exp.cfg.agent,
        "seed": exp.cfg.seed,
        "overrides": list(args.overrides),
        "execution": execution_text(settings),
        "planner": planner.to_dict(),
        "go_to_goal_baseline": baseline.to_dict(),
        "hard_episodes": int(hard.sum()),
        **machine_info(),
    }
    if (split := _hard_split(planner, hard)) is not None:
        result["planner_hard"] = split
        result["baseline_hard"] = _hard_split(baseline, hard)
    if args.plan_to_end:
        command.append("--plan-to-end")
        follow = load_trained(args.path, [*args.overrides, *PLAN_TO_END])
        followed = follow.evaluate(args.episodes)
        result["plan_to_end"] = {
            **followed.to_dict(), "overrides": PLAN_TO_END, "execution": execution_text(config_to_dict(follow.cfg)),
            **({"hard": split} if (split := _hard_split(followed, hard)) is not None else {}),
        }
    if args.plan_latency:
        command.append(f"--plan-latency --repeats {args.repeats}")
        times = _plan_latency(exp.agent.policy, env, args.repeats)
        if times:
            result["plan_latency"] = {"repeats": len(times), **_ms_stats(times, "plan_ms"), "batch": 1}
    env.close()
    results_path = Path(args.path) / "results.json"
    if results_path.exists():
        trained = json.loads(results_path.read_text())
        result["train_time_s"] = trained.get("train_time_s")
        result["budget_clock"] = settings.get("budget_clock", "wall")  # the clock train_time_s was read on
        result["gradient_steps"] = trained.get("gradient_steps", trained.get("updates"))
        result["dataset"] = trained.get("dataset")
        if result["gradient_steps"] and result["train_time_s"]:
            result["steps_per_s"] = result["gradient_steps"] / result["train_time_s"]
    result["command"] = " ".join(command + ([f"--out {args.out}"] if args.out else []))
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


def _previous_fastgen_rows(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The settings already in ``--out`` for this run at these ``--repeats`` (none if the file does not exist).

    Raises:
        CheckpointError: ``--out`` exists but is not a ``bench fastgen`` result of this run at these repeats
            (so it is never overwritten by an unrelated result).
    """
    if not args.out or not Path(args.out).exists():
        return {}
    try:
        data = json.loads(Path(args.out).read_text())
        same = (data.get("benchmark") == "fastgen" and data.get("run") == str(args.path)
                and data.get("repeats") == args.repeats)
        rows = dict(data["settings"]) if same else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        rows = None
    if rows is None:
        raise CheckpointError(f"--out {args.out} exists and is not a `bench fastgen` result of {args.path} with "
                              f"--repeats {args.repeats}; move it away or choose another file")
    return rows


def bench_fastgen(args: argparse.Namespace) -> dict[str, Any]:
    """Samplers side by side on one trained Diffuser: score and batch-1 latency of each setting.

    Settings: ``name:k=v,k=v`` arguments after the run (default :data:`FASTGEN_SETTINGS`). Per setting: the
    evaluation protocol over ``--episodes``; ``--repeats`` cold plans on evaluation states; for replanning
    settings as many warm replans (the same plan shifted by ``replan_every`` steps as the guess). The plan
    timings go round robin over the settings (``--steps`` is not used).

    Resumable per setting: when ``--out`` already holds this run's results at the same ``--repeats``, a setting
    whose name, overrides and episodes match is kept as measured (its ``measured`` date and load say when), only
    the others are measured, and the file's earlier settings not asked for again stay in it; its ``command``
    lists every setting it holds.
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
    previous = _previous_fastgen_rows(args)
    kept = {name: row for name, row in previous.items()
            if settings.get(name) == row.get("overrides") and row.get("episodes") == args.episodes}
    earlier = {name: row for name, row in previous.items() if name not in settings}
    if kept:
        print(f"bench fastgen: kept from {args.out}: {', '.join(kept)}", flush=True)
    exps = {name: load_trained(args.path, overrides) for name, overrides in settings.items() if name not in kept}
    for name, exp in exps.items():
        if not isinstance(exp.agent.policy, Planner):
            raise CheckpointError(f"{args.path}: agent {exp.cfg.agent!r} is not a planner")
        if isinstance(exp.agent.policy, Reseedable):
            exp.agent.policy.reseed(0)
    cold: dict[str, list[float]] = {name: [] for name in exps}
    warm: dict[str, list[float]] = {name: [] for name in exps}
    calls: dict[str, dict[str, int]] = {name: {} for name in exps}
    if exps:  # settings left to measure
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
        measured = {k: v for k, v in machine_info().items() if k in ("date", "load_avg_1_5_15")}
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
            "measured": measured,
        }
        print(json.dumps({name: rows[name]}, default=float), flush=True)
    rows = {**{name: kept.get(name) or rows[name] for name in settings}, **earlier}
    trained = json.loads((Path(args.path) / "results.json").read_text())
    specs = [f"{name}:{','.join(row['overrides'])}" for name, row in rows.items()]
    out = {
        "benchmark": "fastgen",
        "command": " ".join(["diffplan bench fastgen", str(args.path), *specs, f"--repeats {args.repeats}",
                             f"--episodes {args.episodes}", f"--steps {args.steps}"]
                            + ([f"--out {args.out}"] if args.out else [])),
        "run": str(args.path),
        "task": trained.get("task"),
        "agent": trained.get("agent"),
        "seed": trained.get("seed"),
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
    """Regenerate the benchmark page from the committed JSON results (no training code involved) and its figures,
    drawn from the same JSON: each suite's learning curves (``suites/<name>/curves.png``) and each fastgen folder's
    score vs latency (``fastgen/<group>/tradeoff.png``)."""
    from diffplan.report import write
    from diffplan.viz import write_report_figures

    root = args.path or "benchmarks"
    page = write(root, args.out)
    figures = write_report_figures(root)
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


# ------------------------------------------------------------------------------------- online fine-tuning
DPPO_BENCH = {
    "task": "hopper-medium", "seeds": "0,1,2", "bc_steps": "100000", "env_steps": "1000000", "evals": "8",
    "runs": "runs/bench-dppo", "dataset_steps": "1000000", "minutes": "90", "methods": "dppo,ppo",
}
"""``diffplan bench dppo`` settings (``key=value`` among its arguments): the task, training seeds, gradient steps of
both pre-trainings, env steps of each fine-tuning run (DPPO and the Gaussian PPO baseline alike), evaluation points
along it, where the runs go, the generated dataset's size, each fine-tuning run's training-time cap (minutes, 0:
none) and the fine-tuning methods this process trains (``methods=ppo`` in a second process trains the baseline
beside the first one's DPPO; the JSON holds the methods trained, and a later run over all methods reads them).
``<agent>.<key>=<value>`` (agent: diffusion_bc, bc, dppo, ppo) overrides that agent's config."""


def _path_as_override(args: argparse.Namespace) -> None:
    """``bench dppo key=value ...`` without a path: argparse took the first item as the path."""
    if args.path and "=" in args.path and not args.path.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.path)
        args.path = None


def _bench_settings(items: list[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    from diffplan.config import ConfigError

    settings, per_agent = dict(DPPO_BENCH), {a: [] for a in ("diffusion_bc", "bc", "dppo", "ppo")}
    for item in items:
        key, sep, value = item.partition("=")
        agent, dot, field = key.partition(".")
        if sep and dot and agent in per_agent:
            per_agent[agent].append(f"{field}={value}")
        elif sep and key in settings:
            settings[key] = value
        else:
            raise ConfigError(f"bench dppo: {item!r}: give key=value with key in {sorted(settings)} or <agent>.<key>")
    return settings, per_agent


def _train_or_resume(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """A finished run's results; an interrupted one resumed from its last checkpoint; otherwise a new run.

    The run directory is locked while it trains (``<run_dir>.lock``), so two ``bench dppo`` processes given
    different seeds share a runs folder safely, and one given a run another is training stops with one line.

    Raises:
        CheckpointError: another process is training this run.
    """
    from diffplan.checkpoint import run_lock
    from diffplan.training import train

    if (run_dir / "results.json").exists():
        return json.loads((run_dir / "results.json").read_text())
    with run_lock(run_dir) as held:
        if not held:
            raise CheckpointError(f"{run_dir}: another process is training this run (its .lock is held); "
                                  "wait for it, or give this one other seeds")
        if (run_dir / "results.json").exists():  # finished while this process waited for the lock
            return json.loads((run_dir / "results.json").read_text())
        if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
            return train(cfg, resume=run_dir, progress=True)
        return train(cfg, progress=True, overwrite=True)  # a run that died before its first checkpoint: moved aside


def _curve(results: dict[str, Any], start: dict[str, Any] | None) -> list[dict[str, Any]]:
    """(env steps, training seconds, score) points of a fine-tuning run, from its start evaluation on."""
    keys = ("env_steps", "train_time_s", "normalized_score", "normalized_score_se", "return_mean", "episodes")
    points = [{k: h.get(k) for k in keys} for h in results["history"]]
    return ([{**{k: start.get(k) for k in keys}, "env_steps": 0, "train_time_s": 0.0}] if start else []) + points


def bench_dppo(args: argparse.Namespace) -> dict[str, Any]:
    """DPPO against the Gaussian PPO baseline, resumable: per seed, diffusion_bc and bc pre-training on the task's
    dataset, then each fine-tuned online for the same env steps with evaluations along the way (score vs env
    steps and vs training wall clock), on the evaluation protocol's episodes (``--episodes`` each). Finished runs
    are read, interrupted ones resumed; the JSON is rewritten after every run."""
    import math

    from diffplan.checkpoint import load_checkpoint, parse_saved_config
    from diffplan.compose import config_class, load_config, load_finetune_config
    from diffplan.config import ConfigError
    from diffplan.training import setup

    _path_as_override(args)
    settings, per_agent = _bench_settings(list(args.overrides))
    if args.path:
        per_agent_path = [f"runs={args.path}"]  # `bench dppo RUNS_DIR`: where the runs go
        settings.update(_bench_settings(per_agent_path)[0])
    task, root = settings["task"], Path(settings["runs"])
    seeds = [int(s) for s in settings["seeds"].split(",")]
    episodes, env_steps, evals = args.episodes, int(settings["env_steps"]), max(int(settings["evals"]), 1)
    bc_steps = int(settings["bc_steps"])
    methods = [m for m in ("dppo", "ppo") if m in settings["methods"].split(",")]
    if not methods or set(settings["methods"].split(",")) - {"dppo", "ppo"}:
        raise ConfigError(f"bench dppo: methods={settings['methods']!r}: give dppo, ppo or dppo,ppo")
    pretrain = {m: config_class(m).PRETRAINED_AGENT for m in methods}  # dppo: diffusion_bc, ppo: bc
    out = args.out or f"benchmarks/dppo/{task}.json"
    result: dict[str, Any] = {
        "benchmark": "dppo", "task": task, "seeds": seeds, "settings": settings, "episodes": episodes,
        "agent_overrides": per_agent,
        "command": "diffplan bench dppo " + " ".join([*(([args.path]) if args.path else []), *args.overrides,
                                                      f"--episodes {episodes}"]),
        "pretrained": {"diffusion_bc": [], "bc": []}, "curves": {"dppo": [], "ppo": []},
    }
    for seed in seeds:
        for agent in [pretrain[m] for m in methods]:
            run_dir = root / f"{agent}-s{seed}"
            cfg = load_config(agent, [
                f"task={task}", f"seed={seed}", f"train_steps={bc_steps}", f"run_dir={run_dir}",
                f"dataset_steps={settings['dataset_steps']}", "eval_every=0",
                f"checkpoint_every={max(bc_steps // 5, 1)}", f"final_eval_episodes={episodes}", "torch_threads=1",
                *per_agent[agent],
            ])
            res = _train_or_resume(cfg, run_dir)
            result["pretrained"][agent].append({"seed": seed, "gradient_steps": res["updates"],
                                                "train_time_s": res["train_time_s"], **res["final"]})
        for agent, pre in [(m, pretrain[m]) for m in methods]:
            pre_dir, run_dir = root / f"{pre}-s{seed}", root / f"{agent}-s{seed}"
            state, config_yaml = load_checkpoint(pre_dir)
            saved = parse_saved_config(config_yaml, str(pre_dir))
            probe = load_finetune_config(agent, [*per_agent[agent]], saved, str(pre_dir))
            updates = max(1, math.ceil(env_steps / probe.env_steps_per_update))
            every = max(1, updates // evals)
            cfg = load_finetune_config(agent, [
                f"seed={seed}", f"run_dir={run_dir}", f"train_steps={updates}", f"eval_every={every}",
                f"checkpoint_every={every}", f"eval_episodes={episodes}", f"final_eval_episodes={episodes}",
                f"max_train_minutes={settings['minutes']}", "torch_threads=1", *per_agent[agent],
            ], saved, str(pre_dir))
            start_file = run_dir.with_name(run_dir.name + ".start.json")
            if not start_file.exists():  # the fine-tuned policy before any update, evaluated as it will be
                exp = setup(cfg, progress=False)
                exp.agent.algorithm.warm_start(str(pre_dir))
                exp.ref_min, exp.ref_max = state.get("ref_min_score"), state.get("ref_max_score")
                start_file.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(start_file, json.dumps(exp.evaluate(episodes).to_dict(), default=float))
            res = _train_or_resume(cfg, run_dir)
            result["curves"][agent].append({
                "seed": seed, "updates": res["updates"], "env_steps": res["env_steps"],
                "points": _curve(res, json.loads(start_file.read_text())),
            })
        _write({**result, **machine_info()}, out)
    return _write({**result, **machine_info()}, out)


_REFERENCE_TIMING = """
import json, sys, time, torch
torch.set_num_threads(1)
from model.diffusion.diffusion_ppo import PPODiffusion
from model.diffusion.mlp_diffusion import DiffusionMLP
from model.common.critic import CriticObs
s = json.loads(sys.argv[1])
O, A, C, T, K, B, E = s["obs_dim"], s["act_dim"], s["chunk"], s["denoising_steps"], s["ft_steps"], s["decisions"], s["envs"]
torch.manual_seed(0)
actor = DiffusionMLP(action_dim=A, horizon_steps=C, cond_dim=O, time_dim=16, mlp_dims=[512] * 3, activation_type="ReLU",
                     residual_style=True)
critic = CriticObs(cond_dim=O, mlp_dims=[256] * 3, activation_type="Mish", residual_style=True)
model = PPODiffusion(actor=actor, critic=critic, ft_denoising_steps=K, denoising_steps=T, horizon_steps=C, obs_dim=O,
                     action_dim=A, device="cpu", gamma_denoising=0.99, clip_ploss_coef=0.01, clip_ploss_coef_base=0.01,
                     clip_ploss_coef_rate=3, randn_clip_value=3, min_sampling_denoising_std=0.1,
                     min_logprob_denoising_std=0.1)
actor_opt = torch.optim.Adam(model.actor_ft.parameters(), lr=1e-4)
critic_opt = torch.optim.Adam(model.critic.parameters(), lr=1e-3)
def sample_ms(n):
    cond = {"state": torch.randn(E, 1, O)}
    model(cond, deterministic=False)
    t0 = time.perf_counter()
    for _ in range(n):
        out = model(cond, deterministic=False)
    return 1000 * (time.perf_counter() - t0) / n, out.chains
obs, chains = {"state": torch.randn(B, 1, O)}, torch.randn(B, K + 1, C, A)
with torch.no_grad():
    old = model.get_logprobs(obs, chains).reshape(B, K, C, A)
ret, val, adv = torch.randn(B), torch.randn(B), torch.randn(B)
def update_step():
    pg, ent, v, clipfrac, kl, ratio, bc, eta = model.loss(obs, chains, ret, val, adv, old)
    loss = pg + 0.5 * v
    actor_opt.zero_grad(); critic_opt.zero_grad()
    loss.backward()
    actor_opt.step(); critic_opt.step()
def update_ms(n):
    times = []
    for i in range(n + 1):
        t0 = time.perf_counter()
        update_step()
        if i:
            times.append(time.perf_counter() - t0)
    return 1000 * sum(times) / len(times)
def update_gflop():
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        update_step()
    return counter.get_total_flops() / 1e9
sms, _ = sample_ms(s["repeats"])
print(json.dumps({"sample_ms": sms, "update_minibatch_ms": update_ms(s["repeats"]), "update_minibatch_gflop": update_gflop(),
                  "actor_parameters": sum(p.numel() for p in model.actor_ft.parameters()),
                  "critic_parameters": sum(p.numel() for p in model.critic.parameters())}))
"""
"""Timing of irom-lab/dppo's own model code on synthetic tensors (run in a subprocess with its ``model`` package on
the path): one exploring chunk sample for the collection envs, one PPO minibatch step (forward, backward, both
optimizers) on ``decisions`` decisions with all their fine-tuned denoising steps, as its update loop takes them."""


def gemm_gflops(rows: int, width: int, repeats: int = 30) -> float:
    """This core's fp32 matrix-multiply rate (GFLOP/s, the current torch threads) at one layer's shape: a
    ``(rows, width) @ (width, width)`` product, the hidden layers' GEMM of a minibatch. The ceiling a GEMM-bound
    update can approach: its FLOPs over this rate is the least time it can take."""
    import torch

    a, b = torch.randn(rows, width), torch.randn(width, width)
    a @ b  # warm-up: allocation and the BLAS kernel choice
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * rows * width * width * repeats / (time.perf_counter() - t0) / 1e9


REF_OPTIONS = ("ref", "ref_path", "ref_commit")
"""``bench dppo-throughput`` arguments about the reference code; the others override the DPPO config."""


def bench_dppo_throughput(args: argparse.Namespace) -> dict[str, Any]:
    """DPPO's speed here: the online loop's env steps per second of collection and seconds per PPO update on the
    task (the locomotion recipe's sizes), plus model-level timings on synthetic tensors, beside irom-lab/dppo's
    model code timed on the same shapes (``ref=<dir holding its model/ package>``, ``ref_path=<extra sys.path>``,
    ``ref_commit=<its commit, recorded>``); one torch thread each."""
    import subprocess
    import sys

    import torch

    from diffplan.agents.dppo import chain_pairs
    from diffplan.compose import load_config
    from diffplan.training import OnlineSteps, setup

    _path_as_override(args)
    opts = dict(item.partition("=")[::2] for item in args.overrides if item.split("=")[0] in REF_OPTIONS)
    overrides = [o for o in args.overrides if o.split("=")[0] not in REF_OPTIONS]
    torch.set_num_threads(1)
    cfg = load_config(args.path or "dppo", [
        "task=hopper-medium", "hidden=512", "depth=3", "time_dim=16", "chunk=4", "execute_steps=4",
        "diffusion_steps=20", "goal_conditioned=false", "torch_threads=1", "eval_every=0", *overrides,
    ])
    exp = setup(cfg, progress=False)
    policy, algorithm = exp.agent.policy, exp.agent.algorithm
    update_s: list[float] = []
    update = algorithm.update

    def timed_update(**kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return update(**kw)
        finally:
            update_s.append(time.perf_counter() - t0)

    algorithm.update = timed_update  # type: ignore[method-assign]
    steps = OnlineSteps(exp)
    iterations, wall, env_steps = max(args.repeats, 1), [], []
    try:
        for _ in range(iterations + 1):  # the first iteration warms up (process start, allocations)
            t0 = time.perf_counter()
            _, n, _ = steps.step()
            wall.append(time.perf_counter() - t0)
            env_steps.append(n)
    finally:
        steps.close()
    collect_s = [w - u for w, u in zip(wall[1:], update_s[1:], strict=True)]
    ours_loop = {
        "env_steps_per_update": cfg.env_steps_per_update, "train_envs": cfg.train_envs, "iterations": iterations,
        "collect_env_steps_per_s": sum(env_steps[1:]) / sum(collect_s),
        "update_s_per_iteration": float(np.mean(update_s[1:])), "iteration_s": float(np.mean(wall[1:])),
    }
    # model level, synthetic tensors of the reference's shapes
    O, A, C, K, B, E = 11, 3, cfg.chunk, cfg.ft_denoising_steps, cfg.batch_size // cfg.ft_denoising_steps, cfg.train_envs
    cond = torch.randn(E, O)
    policy.sample_chain(cond, cfg.min_logprob_std)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        policy.sample_chain(cond, cfg.min_logprob_std)
    sample_ms = 1000 * (time.perf_counter() - t0) / args.steps
    chain = torch.randn(B, K + 1, C, A)
    big_cond = torch.randn(B, O)
    x_t, x_next, k, rows = chain_pairs(chain)
    with torch.no_grad():
        old = algorithm._surrogate_log_prob(big_cond[rows], x_t, x_next, k).reshape(B, K)
    batch = Batch(chain=chain, cond=big_cond, logp_old=old, adv=torch.randn(B), returns=torch.randn(B), v_s=torch.randn(B))
    times = []
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        algorithm._update_with_batch(batch, batch_size=B * K, repeat=1)
        if i:
            times.append(time.perf_counter() - t0)
    # FLOPs of one minibatch step (matmuls, forward and backward, counted by torch), in an untimed pass: with the
    # core's GEMM rate they say how close to its ceiling each implementation's update runs
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        algorithm._update_with_batch(batch, batch_size=B * K, repeat=1)
    minibatches = -(-(cfg.env_steps_per_update // cfg.execute_steps) * K // cfg.batch_size) * cfg.update_epochs
    shapes = {"obs_dim": O, "act_dim": A, "chunk": C, "denoising_steps": cfg.diffusion_steps, "ft_steps": K,
              "decisions": B, "envs": E, "repeats": args.steps}
    ours_model = {"sample_ms": sample_ms, "update_minibatch_ms": 1000 * float(np.mean(times)),
                  "update_minibatch_gflop": counter.get_total_flops() / 1e9,
                  "actor_parameters": sum(p.numel() for p in policy.model.parameters()),
                  "critic_parameters": sum(p.numel() for p in algorithm.critic.parameters())}
    result: dict[str, Any] = {
        "benchmark": "dppo-throughput", "task": cfg.task, "shapes": shapes, "minibatches_per_iteration": minibatches,
        "ours": {"loop": ours_loop, "model": ours_model},
        "gemm_gflops": {"rows": B * K, "width": cfg.hidden, "gflops": gemm_gflops(B * K, cfg.hidden)},
        "command": "diffplan bench dppo-throughput " + " ".join([*([args.path] if args.path else []), *args.overrides,
                                                                 f"--repeats {args.repeats}", f"--steps {args.steps}"]),
    }
    if opts.get("ref"):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (opts["ref"], opts.get("ref_path", "")) if p),
               "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-c", _REFERENCE_TIMING, json.dumps(shapes)], env=env, cwd=opts["ref"],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise CheckpointError(f"bench dppo-throughput: the reference timing failed: {proc.stderr.strip()[-500:]}")
        ref = json.loads(proc.stdout.strip().splitlines()[-1])
        result["reference"] = {"model": ref, "source": opts["ref"], "commit": opts.get("ref_commit", "")}
        result["speedup"] = {
            "sample": ref["sample_ms"] / ours_model["sample_ms"],
            "update_minibatch": ref["update_minibatch_ms"] / ours_model["update_minibatch_ms"],
        }
    return _write({**result, **machine_info()}, args.out or "benchmarks/dppo/throughput.json")


BENCHMARKS = {
    "plan": bench_plan, "train": bench_train, "maze": bench_maze, "curve": bench_curve, "report": bench_report,
    "ddp": bench_ddp, "sweep": bench_sweep, "fastgen": bench_fastgen, "suite": bench_suite, "dppo": bench_dppo,
    "dppo-throughput": bench_dppo_throughput,
}
