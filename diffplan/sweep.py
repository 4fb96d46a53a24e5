"""Many runs at once: ``diffplan sweep <config or agent> key=v1,v2 seed=0,1,2 [--address ...]`` on Ray.

Every combination of the comma-separated values is one training run, in its own directory
``<out>/<key=value,...>``, launched as one Ray task (Ray schedules them over this machine or a cluster; no
scheduler of ours). Each task asks Ray for the resources its config says: ``torch_threads`` CPUs (1 when the
config leaves it 0, "every core", which a sweep must not give each run) and one GPU when ``device`` is CUDA.

Resumable at two levels:

* **The sweep.** Running the same command again skips every run that has its ``results.json`` and resumes every
  other one from its latest checkpoint (a run that saved none starts over).
* **A run.** A worker that dies (killed, out of memory, its node lost) fails the task at the system level; Ray
  retries it (``--retries``, Ray's ``max_retries``) and the retry resumes the run from its latest checkpoint,
  exactly (:mod:`diffplan.training.loop`). ``sweep_attempts.json`` in the run directory records each attempt:
  process, host, and the step it resumed from.

The driver composes and validates every run's config before it starts anything (a bad value is one error line,
nothing launched) and sends the resolved config to the task, so a cluster's workers need the package and the
datasets, not the config files; ``--out`` must be a path every worker can write (a shared file system). At the end it writes ``<out>/summary.json``: every run's final evaluation and, for
every (agent, task, dataset, setting), the mean ± s.e. over seeds — aggregated by :func:`diffplan.report.aggregate`,
the same rule as the benchmark page (one seed: the s.e. over evaluation episodes).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from diffplan.checkpoint import write_text_atomic
from diffplan.compose import load_config
from diffplan.config import ConfigError, config_yaml, parse_overrides
from diffplan.envs import connect_ray
from diffplan.report import RunResult, aggregate

SUMMARY = "summary.json"
ATTEMPTS = "sweep_attempts.json"


@dataclass
class SweepRun:
    """One combination of a sweep."""

    name: str
    """Its directory name: the swept ``key=value`` items, joined by commas."""
    overrides: list[str]
    setting: str
    """The swept items other than ``seed`` (the rows of the summary group seeds by it)."""
    run_dir: Path
    config_yaml: str
    """The run's resolved config (what its task trains)."""
    num_cpus: float
    num_gpus: float
    seed: int = 0
    result: dict[str, Any] = field(default_factory=dict)


def split_values(value: str) -> list[str]:
    """``"1e-3,3e-4"`` -> two values; commas inside ``[...]`` / ``{...}`` / quotes do not split
    (``dim_mults=[1,2]`` is one value)."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in value:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def expand(items: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Split ``key=value`` items into fixed overrides and sweep axes (``key=v1,v2``), axes in command order."""
    fixed: list[str] = []
    axes: list[tuple[str, list[str]]] = []
    for item in items:
        parse_overrides([item])  # one clear error for a malformed item
        key, value = item.split("=", 1)
        values = split_values(value)
        if len(values) == 1:
            fixed.append(item)
            continue
        if any(v == "" for v in values):
            raise ConfigError(f"sweep item {item!r}: an empty value between commas")
        if key in (k for k, _ in axes):
            raise ConfigError(f"sweep item {item!r}: {key!r} is swept twice")
        axes.append((key, values))
    if any(item.split("=", 1)[0] == "run_dir" for item in items):
        raise ConfigError("a sweep names its run directories itself (<out>/<key=value,...>): drop run_dir=")
    return fixed, axes


def _dir_name(items: list[str]) -> str:
    name = ",".join(items) or "run"
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)


def plan(config: str | None, items: list[str], out: str | os.PathLike) -> list[SweepRun]:
    """Every run of the sweep, its config composed and validated (nothing is started)."""
    fixed, axes = expand(items)
    runs: list[SweepRun] = []
    keys = [k for k, _ in axes]
    for values in itertools.product(*(v for _, v in axes)) if axes else [()]:
        combo = [f"{k}={v}" for k, v in zip(keys, values, strict=True)]
        run_dir = (Path(out) / _dir_name(combo)).absolute()  # Ray workers need not share this process's cwd
        cfg = load_config(config, [*fixed, *combo, f"run_dir={run_dir}"])
        if cfg.torch_threads <= 0:  # "one thread per core" for each of many runs would oversubscribe the CPUs
            cfg.torch_threads = 1
        text = config_yaml(cfg)
        _check_same_config(run_dir, text)
        setting = ",".join(c for c in combo if not c.startswith("seed="))
        runs.append(SweepRun(
            name=run_dir.name, overrides=combo, setting=setting, run_dir=run_dir, config_yaml=text,
            num_cpus=float(cfg.torch_threads), num_gpus=1.0 if cfg.device.startswith("cuda") else 0.0,
            seed=cfg.seed,
        ))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError("two combinations of the sweep map to the same run directory; use plainer values")
    return runs


def _check_same_config(run_dir: Path, planned: str) -> None:
    """A run directory that exists already must hold this very run (a sweep continued, not another sweep
    written over it): its saved config must equal the planned one, or one ``ConfigError`` names the keys."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        return
    saved, new = yaml.safe_load(saved_path.read_text()) or {}, yaml.safe_load(planned)
    differ = sorted(k for k in set(saved) | set(new) if k != "run_dir" and saved.get(k) != new.get(k))
    if differ:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in differ[:4])
        raise ConfigError(f"{run_dir} holds a run of another config ({shown}); give the sweep another --out")


def _has_checkpoint(run_dir: Path) -> bool:
    from diffplan.checkpoint import CheckpointError, resolve_checkpoint

    try:
        resolve_checkpoint(run_dir)
    except CheckpointError:
        return False
    return True


def run_one(config_text: str, run_dir: str) -> dict[str, Any]:
    """The body of a sweep task: train the run in ``run_dir`` (resume it when it has a checkpoint; nothing when
    it has finished) and return a small record with its results."""
    started = time.time()
    path = Path(run_dir)
    done = path / "results.json"
    if done.exists():
        return {"status": "skipped", "results": json.loads(done.read_text()), "task_s": time.time() - started}
    from diffplan.training import train

    attempts = json.loads((path / ATTEMPTS).read_text()) if (path / ATTEMPTS).exists() else []
    resume = path if _has_checkpoint(path) else None
    resumed_from = 0
    if resume is None and path.exists():
        shutil.rmtree(path)  # an attempt that saved no checkpoint: nothing in it to keep but its record
    if resume is not None:
        from diffplan.checkpoint import resolve_checkpoint

        resumed_from = int(resolve_checkpoint(path).name.rsplit("_", 1)[-1])
    path.mkdir(parents=True, exist_ok=True)
    attempts.append({"pid": os.getpid(), "host": socket.gethostname(), "started": started,
                     "resumed_from_step": resumed_from})
    write_text_atomic(path / ATTEMPTS, json.dumps(attempts, indent=1))
    cfg = load_config(None, [], base=yaml.safe_load(config_text))
    train_start = time.time()
    results = train(cfg, resume=resume, progress=False)
    return {"status": "trained", "results": results, "attempts": len(attempts), "task_start": started,
            "train_s": time.time() - train_start, "task_s": time.time() - started}


def run_sweep(
    config: str | None,
    items: list[str],
    out: str | os.PathLike,
    *,
    address: str = "",
    retries: int = 3,
    command: str = "",
    echo: bool = True,
) -> dict[str, Any]:
    """Run (or continue) the sweep and write ``<out>/summary.json``; returns the summary.

    ``address``: the Ray cluster ("auto", "host:port", "ray://host:10001"); empty starts a local Ray unless
    this process is connected already. ``retries``: times Ray restarts a run whose worker died.
    """
    runs = plan(config, items, out)
    Path(out).mkdir(parents=True, exist_ok=True)
    finished = [r for r in runs if (r.run_dir / "results.json").exists()]
    for r in finished:
        r.result = {"status": "skipped", "results": json.loads((r.run_dir / "results.json").read_text())}
    todo = [r for r in runs if not r.result]
    t0 = time.time()
    if todo:
        connect_ray(address, what="diffplan sweep")
        import ray

        remote = ray.remote(run_one)
        pending = {}
        for r in todo:
            ref = remote.options(num_cpus=r.num_cpus, num_gpus=r.num_gpus, max_retries=retries, name=r.name) \
                .remote(r.config_yaml, str(r.run_dir))
            pending[ref] = (r, time.time())
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            r, submitted = pending.pop(ready[0])
            try:
                r.result = ray.get(ready[0])
                r.result["latency_s"] = time.time() - submitted
            except ray.exceptions.RayError as exc:  # the run's own error, or its worker died `retries` + 1 times
                lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
                r.result = {"status": "failed", "error": lines[-1] if lines else type(exc).__name__}
            if echo:
                print(f"[{len(runs) - len(pending) - len(finished)}/{len(todo)}] {r.name}: {_brief(r.result)}",
                      flush=True)
    summary = summarize(runs, command or "diffplan sweep " + " ".join([config or "", *items]).strip())
    summary["wall_s"] = time.time() - t0
    write_text_atomic(Path(out) / SUMMARY, json.dumps(summary, indent=1, default=float))
    return summary


def _brief(record: dict[str, Any]) -> str:
    if record["status"] == "failed":
        return f"failed: {record['error']}"
    final = record["results"]["final"]
    if "normalized_score" in final:
        return f"{record['status']}, score {final['normalized_score']:.1f} ± {final['normalized_score_se']:.1f}"
    return f"{record['status']}, return {final['return_mean']:.1f} ± {final['return_se']:.1f}"


def summarize(runs: list[SweepRun], command: str) -> dict[str, Any]:
    """The sweep's summary: each run's record and, per setting, the mean ± s.e. over seeds (report's rule).

    The metric is the normalized score where the task has reference scores, else the return.
    """
    from diffplan.training.experiment import machine_info

    results, records = [], []
    for r in runs:
        rec: dict[str, Any] = {"name": r.name, "setting": r.setting, "seed": r.seed, "run_dir": str(r.run_dir),
                               "status": r.result.get("status", "failed")}
        if rec["status"] == "failed":
            rec["error"] = r.result.get("error", "")
        else:
            res = r.result["results"]
            final = res["final"]
            scored = "normalized_score" in final
            rec.update({k: res.get(k) for k in ("agent", "task", "dataset", "updates", "train_time_s")})
            rec["final"] = final
            for k in ("attempts", "train_s", "task_s", "latency_s"):
                if k in r.result:
                    rec[k] = r.result[k]
            results.append(RunResult(
                file=str(r.run_dir / "results.json"), agent=res["agent"], dataset=res.get("dataset") or res["task"],
                seed=int(res["seed"]), score=float(final["normalized_score" if scored else "return_mean"]),
                score_se=float(final["normalized_score_se" if scored else "return_se"]),
                episodes=int(final["episodes"]), variant=r.setting,
            ))
            rec["metric"] = "normalized_score" if scored else "return"
        records.append(rec)
    tasks = {rec["run_dir"]: rec.get("task") for rec in records}
    metric = {rec["run_dir"]: rec.get("metric") for rec in records}
    groups = []
    for row in aggregate(results):
        first_dir = str(Path(row.first.file).parent)
        groups.append({
            "agent": row.first.agent, "task": tasks[first_dir], "dataset": row.first.dataset,
            "setting": row.first.variant, "metric": metric[first_dir], "seeds": row.seeds,
            "mean": row.score_mean, "se": row.score_se, "per_seed": [r.score for r in row.runs],
        })
    return {"kind": "sweep", "command": command, "runs": records, "groups": groups,
            "failed": sum(rec["status"] == "failed" for rec in records), **machine_info()}
