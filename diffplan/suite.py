"""``diffplan bench suite <suite.yaml>``: agents x tasks x seeds at one fixed budget, one JSON per run.

A suite file names the tasks (datasets), the agents with their execution settings, the seeds, one training
budget (CPU minutes of training and/or gradient steps: the same for every run, so every agent of a table had the
same budget) and one evaluation (the task's protocol seed, ``eval.episodes`` final episodes over ``eval.envs``
envs: the same episodes for every run of a table). The suite sets those keys itself; an agent's overrides may
not (one error line names the key). Where ``configs/experiments/<agent>-<task>.yaml`` exists it is the run's
config (the agent's per-dataset paper settings). An agent's ``act`` overrides are applied to the trained run for
the final evaluation and the latency timing only (execution settings such as the sampler): a JSON evaluated with
other ``act`` settings is evaluated again, on the same episodes, without training the run again.

Each run trains in ``<runs>/<task>/<agent>-s<seed>`` and, when it has finished, writes one JSON,
``<out>/<task>/<agent>-s<seed>.json``: agent, task, dataset and its metadata, seed, budget, gradient steps
reached, wall time, each final episode's raw and D4RL-normalized return with mean ± s.e., decision latency
(median / p95 per ``policy(obs, state)`` call at batch 1), the learning-curve points, the commands, date, git
commit, machine, load average at start and end, execution settings. ``diffplan bench report`` turns these into
the page's suite section and a learning-curve figure.

Resumable, in the background and across sessions: a run whose JSON exists is skipped; any other run continues
from its latest checkpoint through the training loop's exact resume (the same task body as ``diffplan sweep``,
:func:`diffplan.sweep.run_one`: skip a finished run, resume from the latest checkpoint, start over only when
none was saved, record each attempt). A run directory is locked while a process trains it, so two suite
processes (two sessions) can work through one suite side by side without touching each other's runs.

Why processes rather than Ray tasks: a suite run is a 15-minute single-threaded CPU training on one machine;
``--parallel N`` worker processes (each run a fresh process, ``torch_threads`` from the suite, one by default)
need no optional dependency and no cluster start-up, while the run itself is exactly what a ``diffplan sweep``
Ray task runs. ``diffplan sweep`` remains the way to spread one agent's runs over a Ray cluster.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

from diffplan.checkpoint import write_text_atomic
from diffplan.compose import CONFIG_DIR, load_config
from diffplan.config import BUDGET_CLOCKS, ConfigError, config_yaml, read_yaml
from diffplan.sweep import _check_same_config, run_one

SUITE_KEYS = ("name", "description", "seeds", "budget", "eval", "tasks", "agents", "latency_steps", "torch_threads")
BUDGET_KEYS = ("train_minutes", "gradient_steps", "clock")
EVAL_KEYS = ("episodes", "envs", "curve_episodes")
AGENT_KEYS = ("settings", "overrides", "tasks", "act")
TASK_KEYS = ("dataset",)
RESERVED = ("agent", "task", "seed", "run_dir", "dataset", "train_steps", "max_train_minutes", "final_eval_episodes",
            "eval_envs", "eval_episodes", "torch_threads", "budget_clock")
"""Config keys the suite sets for every run (budget, evaluation, threads): an agent's overrides may not."""
UNBOUNDED_STEPS = 100_000_000
"""``train_steps`` of a run whose budget is minutes only (the loop needs a step limit; this one is never hit)."""
RUN_KIND = "suite-run"


class SuiteError(ConfigError):
    """A suite file or output folder the suite cannot use (one line, nothing started or overwritten)."""


@dataclass(frozen=True)
class AgentSpec:
    """One agent of a suite: its execution settings and what they are."""

    settings: str
    """A label of the settings (e.g. "paper's", "CPU: dim 16, DDIM 10"), shown in the table."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Config overrides for every task."""
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-task overrides on top of ``overrides``."""
    act: dict[str, Any] = field(default_factory=dict)
    """Execution overrides applied to the trained run only, for the final evaluation and the latency timing
    (e.g. a few-step sampler): not part of the training config, so changing them re-evaluates finished runs
    without training them again. The learning curve keeps the training config's execution."""


@dataclass
class Suite:
    """A parsed and checked suite file."""

    path: Path
    name: str
    description: str
    seeds: list[int]
    train_minutes: float
    """Minutes of training per run (``max_train_minutes``; evaluations excluded); 0: no time limit."""
    clock: str
    """What those minutes count (``budget_clock``): ``cpu`` (default: the run's own CPU time, which runs beside
    it on the machine cannot shrink) or ``wall``."""
    gradient_steps: int
    """Gradient steps per run (``train_steps``); 0: no step limit (the minutes bind)."""
    eval_episodes: int
    """Final evaluation episodes per run (the table's), drawn from the task's protocol seed."""
    eval_envs: int
    """Vector envs of every evaluation: with the protocol seed, they decide which episodes are drawn."""
    curve_episodes: int
    """Episodes of each learning-curve evaluation (every ``eval_every`` steps of an agent)."""
    latency_steps: int
    """Env steps timed for the decision latency after training."""
    torch_threads: int
    tasks: dict[str, dict[str, Any]]
    agents: dict[str, AgentSpec]

    def budget(self) -> dict[str, float]:
        return {"train_minutes": self.train_minutes, "gradient_steps": self.gradient_steps, "clock": self.clock}


@dataclass
class SuiteRun:
    """One (task, agent, seed) of a suite, its config composed and validated."""

    name: str
    """``<task>/<agent>-s<seed>``: the run's directory under ``--runs`` and its JSON under ``--out``."""
    task: str
    agent: str
    seed: int
    settings: str
    source: str
    """What the config was composed from: the experiment file or the agent's name."""
    overrides: list[str]
    config_yaml: str
    run_dir: Path
    json_path: Path
    act: list[str] = field(default_factory=list)
    """The agent's ``act`` overrides (``key=value``) for the final evaluation and latency of the trained run."""

    def train_command(self) -> str:
        """The ``diffplan train`` command that trains this run by itself."""
        return " ".join(["diffplan train", self.source, *self.overrides, "--no-progress"])


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SuiteError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _unknown(data: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    extra = sorted(set(data) - set(allowed))
    if extra:
        raise SuiteError(f"{where}: unknown key {extra[0]!r} (known: {', '.join(allowed)})")


def _number(value: Any, where: str, kind: type = float) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
        raise SuiteError(f"{where}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    if value < 0:
        raise SuiteError(f"{where}: {value} is negative")
    return kind(value)


def load_suite(path: str | os.PathLike) -> Suite:
    """Parse and check a suite file (keys, agents, numbers); the configs are checked by :func:`plan`."""
    from diffplan.agents import AGENTS

    path = Path(path)
    data = read_yaml(path, "suite file")
    _unknown(data, SUITE_KEYS, str(path))
    for key in ("seeds", "budget", "eval", "tasks", "agents"):
        if key not in data:
            raise SuiteError(f"{path}: missing key {key!r}")
    budget = _mapping(data["budget"], f"{path}: budget")
    _unknown(budget, BUDGET_KEYS, f"{path}: budget")
    minutes = _number(budget.get("train_minutes", 0), f"{path}: budget.train_minutes")
    steps = _number(budget.get("gradient_steps", 0), f"{path}: budget.gradient_steps", int)
    if minutes == 0 and steps == 0:
        raise SuiteError(f"{path}: budget: give train_minutes and/or gradient_steps (both are 0)")
    clock = str(budget.get("clock", "cpu"))
    if clock not in BUDGET_CLOCKS:
        raise SuiteError(f"{path}: budget.clock: {clock!r} is not one of {', '.join(BUDGET_CLOCKS)}")
    ev = _mapping(data["eval"], f"{path}: eval")
    _unknown(ev, EVAL_KEYS, f"{path}: eval")
    episodes = _number(ev.get("episodes", 20), f"{path}: eval.episodes", int)
    envs = _number(ev.get("envs", episodes), f"{path}: eval.envs", int)
    if episodes < 1 or envs < 1:
        raise SuiteError(f"{path}: eval.episodes and eval.envs must be at least 1")
    seeds = data["seeds"]
    if not isinstance(seeds, list) or not seeds:
        raise SuiteError(f"{path}: seeds: expected a non-empty list of integers, got {seeds!r}")
    seeds = [_number(s, f"{path}: seeds", int) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise SuiteError(f"{path}: seeds: {seeds} repeats a seed")
    tasks = _mapping(data["tasks"], f"{path}: tasks")
    if not tasks:
        raise SuiteError(f"{path}: tasks: name at least one task")
    for task, spec in tasks.items():
        tasks[task] = _mapping(spec, f"{path}: tasks.{task}")
        _unknown(tasks[task], TASK_KEYS, f"{path}: tasks.{task}")
    agents_data = _mapping(data["agents"], f"{path}: agents")
    if not agents_data:
        raise SuiteError(f"{path}: agents: name at least one agent")
    agents = {}
    for agent, spec in agents_data.items():
        if agent not in AGENTS:
            raise SuiteError(f"{path}: agents: unknown agent {agent!r} (registered: {', '.join(sorted(AGENTS))})")
        spec = _mapping(spec, f"{path}: agents.{agent}")
        _unknown(spec, AGENT_KEYS, f"{path}: agents.{agent}")
        overrides = _mapping(spec.get("overrides"), f"{path}: agents.{agent}.overrides")
        per_task = _mapping(spec.get("tasks"), f"{path}: agents.{agent}.tasks")
        for task, extra in per_task.items():
            if task not in tasks:
                raise SuiteError(f"{path}: agents.{agent}.tasks: {task!r} is not one of the suite's tasks")
            per_task[task] = _mapping(extra, f"{path}: agents.{agent}.tasks.{task}")
        act = _mapping(spec.get("act"), f"{path}: agents.{agent}.act")
        for where, keys in [("overrides", overrides), ("act", act),
                            *((f"tasks.{t}", e) for t, e in per_task.items())]:
            reserved = sorted(set(keys) & set(RESERVED))
            if reserved:
                raise SuiteError(f"{path}: agents.{agent}.{where}: {reserved[0]!r} is set by the suite for every "
                                 "run (budget, evaluation, seeds, threads); remove it")
        agents[agent] = AgentSpec(str(spec.get("settings", "")), overrides, per_task, act)
    return Suite(
        path=path, name=str(data.get("name") or path.stem), description=str(data.get("description", "")).strip(),
        seeds=seeds, train_minutes=minutes, clock=clock, gradient_steps=steps, eval_episodes=episodes, eval_envs=envs,
        curve_episodes=_number(ev.get("curve_episodes", episodes), f"{path}: eval.curve_episodes", int) or episodes,
        latency_steps=_number(data.get("latency_steps", 100), f"{path}: latency_steps", int),
        torch_threads=_number(data.get("torch_threads", 1), f"{path}: torch_threads", int) or 1,
        tasks=tasks, agents=agents,
    )


def _items(values: dict[str, Any]) -> list[str]:
    """``{"lr": 1e-3, "dim_mults": [1, 2]}`` -> ``["lr=0.001", "dim_mults=[1,2]"]`` (values as YAML flow)."""
    out = []
    for key, value in values.items():
        text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True, width=10**6)
        out.append(f"{key}={str(text).strip().removesuffix('...').strip()}".replace(", ", ","))
    return out


def _shown(path: Path) -> str:
    """A path as a command shows it: relative to the working directory when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def plan(suite: Suite, out: str | os.PathLike, runs_dir: str | os.PathLike) -> list[SuiteRun]:
    """Every run of the suite, its config composed and validated (nothing started, nothing written)."""
    runs = []
    for task, task_spec in suite.tasks.items():
        for agent, spec in suite.agents.items():
            experiment = CONFIG_DIR / "experiments" / f"{agent}-{task}.yaml"
            source = _shown(experiment) if experiment.is_file() else agent
            base = [] if experiment.is_file() else [f"task={task}"]
            for seed in suite.seeds:
                name = f"{task}/{agent}-s{seed}"
                run_dir = (Path(runs_dir) / task / f"{agent}-s{seed}").absolute()
                overrides = [
                    *base, *_items({**spec.overrides, **spec.tasks.get(task, {})}),
                    *([f"dataset={task_spec['dataset']}"] if task_spec.get("dataset") else []),
                    f"seed={seed}", f"train_steps={suite.gradient_steps or UNBOUNDED_STEPS}",
                    f"max_train_minutes={suite.train_minutes}", f"budget_clock={suite.clock}", f"final_eval_episodes={suite.eval_episodes}",
                    f"eval_episodes={suite.curve_episodes}", f"eval_envs={suite.eval_envs}",
                    f"torch_threads={suite.torch_threads}", f"run_dir={run_dir}",
                ]
                try:
                    cfg = load_config(source, overrides)
                    act = _items(spec.act)
                    if act:  # the trained run with its act overrides must be a valid config too
                        load_config(source, [*overrides, *act])
                except ConfigError as exc:
                    raise SuiteError(f"{suite.path}: {agent} on {task}: {exc}") from None
                text = config_yaml(cfg)
                _check_same_config(run_dir, text)
                runs.append(SuiteRun(name=name, task=task, agent=agent, seed=seed, settings=spec.settings,
                                     source=source, overrides=overrides, config_yaml=text, run_dir=run_dir,
                                     json_path=Path(out) / task / f"{agent}-s{seed}.json", act=act))
    return runs


def _written(run: SuiteRun) -> dict[str, Any] | None:
    """The run's JSON, None when there is none; a file that is not a suite run's JSON stops everything (one
    error line, the file left as it is) rather than being overwritten or skipped as done."""
    if not run.json_path.exists():
        return None
    try:
        data = json.loads(run.json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SuiteError(f"{run.json_path}: not valid JSON ({exc}); move it away to run {run.name} again") from None
    if not isinstance(data, dict) or data.get("kind") != RUN_KIND:
        raise SuiteError(f"{run.json_path}: not a suite run's JSON (no kind: {RUN_KIND}); move it away to run "
                         f"{run.name} again")
    return data


# ------------------------------------------------------------------------------------------- one run


def git_commit() -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted changes), None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _dataset_metadata(source: str) -> dict[str, Any]:
    """The dataset's own metadata (recipe, behaviour policy, reference returns, size), read from its Minari
    ``metadata.json`` without loading the data; {} when there is none."""
    from diffplan.data import recipes

    where = recipes.dataset_dir(source.removeprefix("minari:")) if source.startswith("minari:") else Path(source)
    path = where / "data" / "metadata.json"
    if not path.is_file():
        return {}
    meta = json.loads(path.read_text())
    # Minari's own bookkeeping (spaces, env spec, file lists) is long and says nothing a table needs.
    drop = {"observation_space", "action_space", "env_spec", "eval_env_spec", "data_format", "dataset_size"}
    return {k: v for k, v in meta.items() if k not in drop}


def _trained(run_dir: Path, threads: int, act: list[str]) -> Any:
    """The trained run with its ``act`` overrides, its policy's sampling reseeded (deterministic evaluation)."""
    from diffplan.agent import Reseedable
    from diffplan.training import load_trained

    exp = load_trained(run_dir, [f"torch_threads={threads}", *act])
    if isinstance(exp.agent.policy, Reseedable):
        exp.agent.policy.reseed(0)
    return exp


def _decision_ms(exp: Any, task: str, steps: int) -> dict[str, float]:
    """Median / p95 / mean ms of ``steps`` batch-1 decisions of the trained run ``exp`` on ``task``."""
    import numpy as np

    from diffplan.envs import make_env
    from diffplan.envs.evaluation import decision_latency

    env = make_env(task, seed=0)
    try:
        ms = decision_latency(exp.agent.policy, env, steps)
    finally:
        env.close()
    return {"median": float(np.median(ms)), "p95": float(np.percentile(ms, 95)), "mean": float(np.mean(ms)),
            "steps": len(ms)}


def execute(job: dict[str, Any]) -> dict[str, Any]:
    """The body of one suite run (in a worker process): train or resume it (:func:`diffplan.sweep.run_one`),
    time its decisions, write its JSON. ``job``: plain values (it crosses a process boundary)."""
    from diffplan.checkpoint import run_lock
    from diffplan.training import machine_info

    run_dir = Path(job["run_dir"])
    with run_lock(run_dir) as held:
        if not held:
            return {"status": "busy"}
        load_start = [round(x, 2) for x in os.getloadavg()]
        started = time.time()
        record = run_one(job["config_yaml"], str(run_dir))
        res = record["results"]
        act = list(job.get("act", []))
        cfg = yaml.safe_load(job["config_yaml"])
        per_episode = res.get("final_episodes", {})
        final = res["final"]
        exp = _trained(run_dir, job["torch_threads"], act)
        if act:  # the final evaluation again, on the same protocol episodes, with the act overrides
            result = exp.evaluate(int(cfg["final_eval_episodes"]))
            per_episode, final = result.per_episode(), result.to_dict()
        latency = _decision_ms(exp, job["task"], job["latency_steps"])
        info = machine_info()
        data = {
            "kind": RUN_KIND,
            "suite": job["suite"],
            "suite_file": job["suite_file"],
            "agent": res["agent"],
            "task": res["task"],
            "seed": int(res["seed"]),
            "settings": job["settings"],
            "dataset": res["dataset"],
            "dataset_metadata": _dataset_metadata(res["dataset"]),
            "budget": job["budget"],
            "gradient_steps": res.get("gradient_steps", res["updates"]),
            "train_time_s": res["train_time_s"],
            "steps_per_s": res.get("steps_per_s"),
            "wall_s": time.time() - started,
            "ref_min_score": res.get("ref_min_score"),
            "ref_max_score": res.get("ref_max_score"),
            "eval": {
                "protocol_seed": res["eval_seed"], "eval_envs": cfg["eval_envs"], "episodes": final["episodes"],
                "returns": per_episode.get("returns"), "normalized_scores": per_episode.get("normalized_scores"),
                "lengths": per_episode.get("lengths"),
                "return_mean": final["return_mean"], "return_se": final["return_se"],
                "normalized_score": final.get("normalized_score"),
                "normalized_score_se": final.get("normalized_score_se"),
            },
            "decision_ms": latency,
            "act": act,
            **({"trained_final": {k: res["final"].get(k) for k in ("episodes", "return_mean", "return_se",
                                                                   "normalized_score", "normalized_score_se")}}
               if act else {}),
            "curve": [{k: h[k] for k in ("step", "train_time_s", "episodes", "return_mean", "normalized_score",
                                         "normalized_score_se") if k in h} for h in res["history"]],
            "command": job["command"],
            "train_command": job["train_command"],
            "date": info["date"],
            "git_commit": job["git_commit"],
            "machine": info["machine"],
            "load_avg_start": load_start,
            "load_avg_end": info["load_avg_1_5_15"],
            "execution": {"torch_threads": job["torch_threads"], "parallel": job["parallel"],
                          "attempts": record.get("attempts", 0), "config": cfg},
        }
        path = Path(job["json_path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(data, indent=1, default=float))
    return {"status": record["status"], "score": final.get("normalized_score", final["return_mean"]),
            "gradient_steps": data["gradient_steps"], "train_min": res["train_time_s"] / 60}


# ------------------------------------------------------------------------------------------ the driver


def _select(runs: list[SuiteRun], only: str | None) -> list[SuiteRun]:
    if not only:
        return runs
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    chosen = [r for r in runs if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]
    if not chosen:
        raise SuiteError(f"--only {only!r} matches no run (runs are named <task>/<agent>-s<seed>, e.g. "
                         f"{runs[0].name})")
    return chosen


def _status(run: SuiteRun) -> str:
    from diffplan.checkpoint import CheckpointError, resolve_checkpoint

    written = _written(run)
    if written is not None:
        return "done" if list(written.get("act", [])) == run.act else "trained (to evaluate again: act changed)"
    if (run.run_dir / "results.json").exists():
        return "trained (JSON to write)"
    try:
        ckpt = resolve_checkpoint(run.run_dir)
    except CheckpointError:
        return "new"
    return f"resume from step {int(ckpt.name.rsplit('_', 1)[-1])}"


def _line(result: dict[str, Any]) -> str:
    if result["status"] in ("failed", "busy"):
        return result["status"] + (f": {result['error']}" if result.get("error") else " (another process runs it)")
    return (f"{result['status']}, score {result['score']:.1f}, {result['gradient_steps']} gradient steps, "
            f"{result['train_min']:.1f} training minutes")


def _error_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def run_suite(
    path: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    runs_dir: str | os.PathLike | None = None,
    only: str | None = None,
    dry_run: bool = False,
    parallel: int = 1,
    command: str = "",
    echo: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Run (or continue) a suite; returns ``{"runs": {name: status}, "failed": n}``.

    ``out``: the JSON folder (default ``benchmarks/suites/<name>``); ``runs_dir``: the run directories (default
    ``runs/suites/<name>``); ``only``: comma-separated ``fnmatch`` patterns of run names; ``parallel``: runs at
    once, each in a fresh worker process (0: one after another in this process, for debugging and tests).
    """
    say = echo or (lambda _line: None)
    if parallel < 0:
        raise SuiteError(f"--parallel {parallel}: give the number of runs at once (0: in this process)")
    suite = load_suite(path)
    out = Path(out) if out is not None else Path("benchmarks") / "suites" / suite.name
    runs_dir = Path(runs_dir) if runs_dir is not None else Path("runs") / "suites" / suite.name
    runs = _select(plan(suite, out, runs_dir), only)
    statuses = {r.name: _status(r) for r in runs}
    if dry_run:
        for r in runs:
            say(f"{r.name}: {statuses[r.name]}\n  {r.train_command()}" + (f"\n  act: {' '.join(r.act)}" if r.act else ""))
        return {"runs": statuses, "failed": 0, "dry_run": True}
    todo = [r for r in runs if statuses[r.name] != "done"]
    say(f"suite {suite.name}: {len(runs)} runs, {len(runs) - len(todo)} done, {len(todo)} to run "
        f"(JSON: {out}, runs: {runs_dir})")
    commit = git_commit()
    jobs = {r.name: {
        "suite": suite.name, "suite_file": str(suite.path), "task": r.task, "settings": r.settings,
        "config_yaml": r.config_yaml, "run_dir": str(r.run_dir), "json_path": str(r.json_path),
        "budget": suite.budget(), "latency_steps": suite.latency_steps, "torch_threads": suite.torch_threads,
        "parallel": parallel, "command": command or f"diffplan bench suite {path}",
        "train_command": r.train_command(), "git_commit": commit, "act": r.act,
    } for r in todo}
    results: dict[str, dict[str, Any]] = {}

    def done(name: str, result: dict[str, Any]) -> None:
        results[name] = result
        statuses[name] = result["status"]
        say(f"[{len(results)}/{len(todo)}] {name}: {_line(result)}")

    if parallel == 0:
        for r in todo:
            try:
                done(r.name, execute(jobs[r.name]))
            except Exception as exc:  # noqa: BLE001 - one run's failure is reported; the others go on
                done(r.name, {"status": "failed", "error": _error_line(exc)})
    elif todo:
        # OMP_NUM_THREADS travels to the workers through the environment (torch reads it at import).
        os.environ.setdefault("OMP_NUM_THREADS", str(suite.torch_threads))
        # spawn: a fresh interpreter per worker (no forked torch state); one task per worker process, so each
        # run starts clean and its memory is returned when it ends.
        with ProcessPoolExecutor(max_workers=parallel, mp_context=get_context("spawn"),
                                 max_tasks_per_child=1) as pool:
            pending: dict[Future, str] = {pool.submit(execute, jobs[r.name]): r.name for r in todo}
            while pending:
                ready, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in ready:
                    name = pending.pop(fut)
                    try:
                        done(name, fut.result())
                    except Exception as exc:  # noqa: BLE001 - the run's error, or its worker process died
                        done(name, {"status": "failed", "error": _error_line(exc)})
    failed = sum(res["status"] == "failed" for res in results.values())
    return {"runs": statuses, "failed": failed, "out": str(out), "runs_dir": str(runs_dir)}
