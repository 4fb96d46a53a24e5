"""``benchmarks/README.md``, generated from the committed JSON results (``diffplan bench report``).

Every number on the page is read from a JSON file under ``benchmarks/``; the prose around the tables only says
what a table measures. A test regenerates the page and compares it with the committed one, so a new result
lands on the page by committing its JSON and running ``diffplan bench report``.

Rows aggregate training seeds: runs of the same agent, dataset, variant and training budget that differ only in
their ``seed`` become one row. With one seed the ``±`` is the standard error over evaluation episodes (from the
JSON); with two or more it is the standard error of the per-seed means over seeds.

This module reads JSON and writes Markdown; it imports nothing from the training code (the page must build
without torch or an environment).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MIN_SEEDS", "PUBLISHED", "ReportError", "Row", "RunResult", "aggregate", "by_dataset_then_agent", "format_score",
    "generate", "suite_results", "suite_tables", "sweep_table", "truncated", "write",
]

MIN_SEEDS = 3
"""Training seeds a result needs to meet the project's standard; rows with fewer are flagged on the page."""

AGENT_ORDER = (
    "bc", "td3bc", "cql", "diffusion_bc", "diffusion_ql", "idql", "diffuser", "hierarchical", "decision_diffuser",
)
"""Baselines first, then the diffusion agents, so each table reads baseline -> agent."""

MAZES = ("umaze", "medium", "large")

MAZE_EPISODE_STEPS = {"umaze": 300, "medium": 600, "large": 800}
"""Every PointMaze evaluation episode runs to this limit (a continuing task: reaching the goal ends nothing)."""

TRUNCATED = "†"
TRUNCATED_NOTE = (
    f"{TRUNCATED} Not shown: measured by the evaluator before 2026-11-22 (fixed in commit 8c2cfbd), which read "
    "each episode's success and length from only its last 64 steps; the mean length it recorded (44 / 24 / 32 "
    "for the 300 / 600 / 800-step mazes) gives it away. Not re-measured (the trained runs are not kept). Scores "
    "are unaffected: the Collector sums each episode's return over all its steps."
)


class ReportError(ValueError):
    """A benchmark JSON file the report cannot use (missing file or field, duplicate seed)."""


@dataclass(frozen=True)
class RunResult:
    """The final evaluation of one training run (one seed), as read from its JSON file.

    ``extra`` holds the numeric columns a table shows beside the score (gradient steps, latency, ...); the
    aggregated row reports their mean over seeds.
    """

    file: str
    agent: str
    dataset: str
    seed: int
    score: float
    score_se: float
    episodes: int
    variant: str = ""
    budget_min: float = 0.0
    extra: dict[str, float | None] = field(default_factory=dict)
    command: str = ""


@dataclass(frozen=True)
class Row:
    """Runs that differ only in their training seed, aggregated (one table row)."""

    runs: tuple[RunResult, ...]

    @property
    def first(self) -> RunResult:
        return self.runs[0]

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def score_mean(self) -> float:
        return statistics.fmean(r.score for r in self.runs)

    @property
    def score_se(self) -> float:
        """Episode s.e. of a single seed; s.e. over the per-seed means for two or more."""
        if len(self.runs) == 1:
            return self.first.score_se
        return statistics.stdev(r.score for r in self.runs) / math.sqrt(len(self.runs))

    def mean(self, key: str) -> float | None:
        """Mean over seeds of an extra column (None when no run has it)."""
        values = [r.extra.get(key) for r in self.runs]
        present = [v for v in values if v is not None]
        return statistics.fmean(present) if present else None


def aggregate(runs: Iterable[RunResult]) -> list[Row]:
    """Group runs by (agent, dataset, variant, training budget); each group is one row, seeds sorted.

    Rows come in the order their first run appears.

    Raises:
        ReportError: two files of one group carry the same seed (a duplicated result, not a second seed).
    """
    groups: dict[tuple[str, str, str, float], list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.agent, run.dataset, run.variant, run.budget_min), []).append(run)
    rows = []
    for members in groups.values():
        members.sort(key=lambda r: r.seed)
        seeds = [r.seed for r in members]
        if len(set(seeds)) != len(seeds):
            files = ", ".join(r.file for r in members)
            raise ReportError(f"{files}: same agent, dataset, variant and budget with a repeated seed {seeds}")
        rows.append(Row(tuple(members)))
    return rows


def by_dataset_then_agent(rows: list[Row]) -> list[Row]:
    """Rows sorted by dataset, then baselines before diffusion agents (``AGENT_ORDER``), then variant."""
    order = {a: i for i, a in enumerate(AGENT_ORDER)}
    return sorted(rows, key=lambda row: (row.first.dataset, order.get(row.first.agent, len(order)), row.first.variant))


def format_score(row: Row) -> str:
    """``mean ± s.e.``, plus each seed's score when there are several (``55.6 ± 18.6 (s0 74.2, s1 37.0)``)."""
    text = f"{row.score_mean:.1f} ± {row.score_se:.1f}"
    if len(row.runs) > 1:
        text += " (" + ", ".join(f"s{r.seed} {r.score:.1f}" for r in row.runs) + ")"
    return text


# ----------------------------------------------------------------------------------------------- helpers


def _load(path: Path) -> Any:
    if not path.exists():
        raise ReportError(f"{path}: benchmark file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc})") from exc


def _num(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{unit}"


def _int(value: float | None) -> str:
    return "—" if value is None else f"{round(value)}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines


OTHER_EPISODES = "‡"
OTHER_EPISODES_NOTE = (
    f"{OTHER_EPISODES} Evaluated on other episodes than the rest of the table (5 evaluation envs, before the "
    "protocol seed was recorded; the others: 20 envs, seed 12345), so not comparable row to row; kept for the "
    "record until re-measured."
)


def _maze_name(text: str) -> str | None:
    match = re.search(r"pointmaze-(umaze|medium|large)", text)
    return match.group(1) if match else None


def truncated(final: dict[str, Any], task: str) -> bool:
    """Whether a maze evaluation's success and length come from the truncated evaluator: its episodes all run
    to the maze's limit, so a whole-episode evaluation records exactly that length; the old one recorded less."""
    maze = _maze_name(task)
    length = final.get("length_mean")
    return maze is not None and length is not None and length < MAZE_EPISODE_STEPS[maze]


def _short(dataset: str) -> str:
    return dataset.removeprefix("minari:").removeprefix("diffplan/")


def _load_text(data: dict[str, Any]) -> str:
    for key in ("load_average_1_5_15", "load_avg_1_5_15", "load_avg"):
        if isinstance(data.get(key), list):
            return "load average " + " / ".join(f"{x:.1f}" for x in data[key])
    return ""


class _Section:
    """Markdown lines of one page section plus the JSON files it read (listed under it)."""

    def __init__(self, root: Path, title: str) -> None:
        self.root = root
        self.lines: list[str] = [f"## {title}", ""]
        self.files: list[str] = []
        self.machines: list[str] = []

    def read(self, rel: str) -> Any:
        data = _load(self.root / rel)
        if rel not in self.files:
            self.files.append(rel)
        if isinstance(data, dict):
            self.note_machine(data, rel)
        return data

    def note_machine(self, data: dict[str, Any], rel: str = "") -> None:
        parts = [str(data[k]) for k in ("date", "machine") if data.get(k)]
        if not parts and rel:
            parts.append(f"`{rel}`")  # no date or machine recorded: say which file the load belongs to
        if _load_text(data):
            parts.append(_load_text(data))
        text = "; ".join(parts)
        if text and text not in self.machines:
            self.machines.append(text)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def commands(self, labelled: Iterable[tuple[str, str]]) -> None:
        items = [(label, cmd) for label, cmd in labelled if cmd]
        if items:
            self.add("", "Commands:", "")
            self.add(*[f"* {label}: `{cmd}`" for label, cmd in items])

    def render(self) -> list[str]:
        out = list(self.lines)
        if self.machines:
            out += ["", "Date and machine, as recorded:", ""]
            out += [f"* {m}" for m in self.machines]
        out += ["", "Source files: " + ", ".join(f"[`{f}`]({f})" for f in self.files), ""]
        return out


def _command(data: dict[str, Any]) -> str:
    if data.get("command"):
        return str(data["command"])
    parts = [data[k] for k in ("train_command", "eval_command") if data.get(k)]
    return "; then ".join(parts)


def _run_result(
    rel: str, data: dict[str, Any], extra: dict[str, float | None] | None = None, variant: str | None = None
) -> RunResult:
    """A RunResult from a run's ``results.json``-shaped dict (``final`` holds the evaluation)."""
    try:
        final = data["final"]
        cut = truncated(final, str(data.get("task") or data.get("dataset", "")))
        return RunResult(
            file=rel,
            agent=data["agent"],
            dataset=data["dataset"],
            seed=int(data.get("seed", 0)),  # RunConfig's default seed; early files did not record it
            score=float(final["normalized_score"]),
            score_se=float(final["normalized_score_se"]),
            episodes=int(final["episodes"]),
            variant=data.get("variant", "") if variant is None else variant,
            budget_min=round(float(data["train_time_s"]) / 60),
            extra={
                "gradient_steps": data.get("gradient_steps"),
                "train_min": float(data["train_time_s"]) / 60,
                "steps_per_s": data.get("steps_per_s"),
                "success": None if cut else final.get("success_rate"),
                "length": None if cut else final.get("length_mean"),
                "truncated": 1.0 if cut else None,
                "plan_ms": final.get("plan_ms_median"),
                **(extra or {}),
            },
            command=_command(data),
        )
    except KeyError as exc:
        raise ReportError(f"{rel}: missing field {exc}") from exc


def _success_cell(row: Row) -> str:
    return TRUNCATED if row.mean("truncated") else _num(row.mean("success"), 2)


def _truncation_note(sec: _Section, rows: Iterable[Row]) -> None:
    if any(r.mean("truncated") for r in rows):
        sec.add("", TRUNCATED_NOTE)


def _seeds_cell(row: Row) -> str:
    n = len(row.runs)
    return f"{n}" if n >= MIN_SEEDS else f"{n} ⚠"


def _row_commands(label: str, row: Row) -> list[tuple[str, str]]:
    if len(row.runs) == 1:
        return [(label, row.first.command)]
    return [(f"{label}, seed {r.seed}", r.command) for r in row.runs]


# ---------------------------------------------------------------------------------------------- sections


def _intro(root: Path) -> list[str]:
    return [
        "# Benchmarks",
        "",
        "<!-- Generated by `diffplan bench report` from the JSON files in this folder. Do not edit by hand:",
        "     change or add a JSON result and run the command again (tests/test_benchmark_report.py checks). -->",
        "",
        "Every number below is read from a JSON result committed in this folder; each section lists its files,",
        "the command that produced each row, and the date and machine the JSON recorded.",
        "",
        "* **Scores** are normalized: 100 × (return − ref_min) / (ref_max − ref_min), with the reference scores",
        "  stored in each dataset (maze: a uniform random policy and the dataset's own waypoint controller;",
        "  locomotion: D4RL's reference scores).",
        "* **mean ± s.e.**: with one training seed, the standard error over the evaluation episodes; with two or",
        "  more, the standard error of the per-seed means over seeds (each seed's score in brackets or its own column).",
        f"* **seeds** is the number of training seeds of a row. The project's standard is at least {MIN_SEEDS} seeds",
        "  per result; rows with fewer (marked ⚠) do **not** meet it yet.",
        "* Evaluation episodes are drawn from a fixed seed (the task's evaluation protocol), so every row of a",
        f"  table sees the same start states and goals; rows marked {OTHER_EPISODES} did not and say so.",
        "* Budgets are short CPU trainings (minutes, not the papers' 1M gradient steps) on shared machines. The",
        "  locomotion datasets are generated locally on Gymnasium's v5 envs from trained policies at D4RL's",
        "  levels (see [Datasets and behaviour policies](#datasets-and-behaviour-policies)); a published score",
        "  shown beside ours was measured on D4RL's own files, the same level of behaviour but not the same data.",
        "",
    ]


def _quickstart(root: Path) -> _Section:
    sec = _Section(root, "Quickstart")
    data = sec.read("quickstart.json")
    run = _run_result("quickstart.json", data)
    sec.add(
        "`diffplan quickstart` from an empty dataset root: generates a 200k-step pointmaze-umaze dataset, trains a",
        "small Diffuser and evaluates it.",
        "",
        *_table(
            ["normalized score", "success", "episodes", "seeds", "gradient steps", "train time", "plan ms (median)",
             "wall time in all"],
            [[format_score(Row((run,))), _success_cell(Row((run,))), str(run.episodes), _seeds_cell(Row((run,))),
              _int(run.extra["gradient_steps"]), _num(run.extra["train_min"], 1, " min"),
              _num(run.extra["plan_ms"], 0), _num(data.get("wall_time_total_s", 0) / 60, 1, " min")]],
        ),
    )
    _truncation_note(sec, [Row((run,))])
    sec.commands([("quickstart", run.command)])
    return sec


def _maze(root: Path) -> _Section:
    sec = _Section(root, "Maze: Diffuser planner on PointMaze")
    sec.add(
        "Goal-inpainted Diffuser on D4RL maze2d-style datasets generated by `diffplan data make pointmaze-<maze>`;",
        "a plan once per episode, tracked by a PD controller.",
        "",
        "### Short budget, 200k-step umaze dataset",
        "",
    )
    short = sec.read("umaze_6min.json")
    runs = [_run_result(f"umaze_6min.json:{name}", d, variant=_override(d.get("command", ""), "lr"))
            for name, d in short.items()]
    rows = aggregate(runs)
    sec.add(*_table(
        ["lr", "normalized score", "success", "episodes", "seeds", "gradient steps", "train time", "steps/s",
         "plan ms (median)"],
        [[r.first.variant, format_score(r), _success_cell(r), str(r.first.episodes), _seeds_cell(r),
          _int(r.mean("gradient_steps")), _num(r.mean("train_min"), 1, " min"), _num(r.mean("steps_per_s"), 2),
          _num(r.mean("plan_ms"), 0)] for r in rows],
    ))
    _truncation_note(sec, rows)
    for d in short.values():
        sec.note_machine(d)
    sec.commands(c for r in rows for c in _row_commands(f"lr {r.first.variant}", r))

    sec.add("", "### Full-size (1M-step) datasets: training runs", "")
    files = {"umaze": ["umaze_results.json"], "medium": ["medium_75min_results.json", "medium_results.json"],
             "large": ["large_90min_results.json", "large_results.json"]}
    rows = aggregate(_run_result(f, sec.read(f)) for maze in MAZES for f in files[maze])
    sec.add(*_table(
        ["dataset", "train time", "gradient steps", "normalized score", "success", "episodes", "seeds"],
        [[_short(r.first.dataset), _num(r.mean("train_min"), 0, " min"), _int(r.mean("gradient_steps")),
          format_score(r), _success_cell(r), str(r.first.episodes), _seeds_cell(r)] for r in rows],
    ))
    _truncation_note(sec, rows)
    sec.commands(c for r in rows for c in _row_commands(_short(r.first.dataset) + f", {r.first.budget_min:.0f} min", r))

    sec.add(
        "", "### Against a planner-free baseline", "",
        "`diffplan bench maze` evaluates a trained planner and a go-to-goal PD controller (no path planning) on the",
        "same episodes; \"hard\" episodes are those the baseline fails.",
        "",
    )
    bench = [(f"{m}{s}.json") for m in MAZES for s in (("", "_kp10", "_best16") if m == "umaze" else ("",))]
    table = []
    labelled = []
    for rel in bench:
        d = sec.read(rel)
        planner, base = d["planner"], d["go_to_goal_baseline"]
        settings = " ".join(o for o in d["overrides"] if not o.startswith("torch_threads")) or "as trained"
        hard = d.get("planner_hard"), d.get("baseline_hard")
        # "hard" episodes are the baseline's failures: with a truncated success they are not the right set.
        cut = truncated(planner, d["task"]) or truncated(base, d["task"])
        table.append([
            d["task"], settings, _num(d.get("train_time_s", 0) / 60, 0, " min"), _int(d.get("gradient_steps")),
            f"{planner['normalized_score']:.1f} ± {planner['normalized_score_se']:.1f}",
            TRUNCATED if cut else _num(planner["success_rate"], 2), str(planner["episodes"]), "1 ⚠",
            f"{base['normalized_score']:.1f} ± {base['normalized_score_se']:.1f}",
            TRUNCATED if cut else _num(base["success_rate"], 2), TRUNCATED if cut else str(d["hard_episodes"]),
            TRUNCATED if cut else
            "—" if hard[0] is None else f"{hard[0]['normalized_score']:.1f} / {hard[1]['normalized_score']:.1f}",
        ])
        labelled.append((f"{d['task']}, {settings}", _command(d)))
    sec.add(*_table(
        ["task", "evaluation settings", "train time", "gradient steps", "planner score", "success", "episodes",
         "seeds", "go-to-goal score", "go-to-goal success", "hard episodes", "hard: planner / baseline"],
        table,
    ))
    sec.add("", TRUNCATED_NOTE)
    sec.commands(labelled)

    sec.add("", "### Planning latency (batch 1)", "")
    table, labelled = [], []
    for rel in ("umaze_plan.json", "umaze_plan_best16.json"):
        d = sec.read(rel)
        table.append([d["run"], str(d["n_candidates"]), str(d["horizon"]), str(d["sampling_steps"]),
                      _num(d["plan_ms_median"], 0), _num(d["plan_ms_p90"], 0), str(d["repeats"])])
        labelled.append((f"{d['n_candidates']} candidate(s)", _command(d)))
    sec.add(*_table(["run", "candidates", "horizon", "sampling steps", "plan ms (median)", "p90", "repeats"], table))
    sec.commands(labelled)

    curves = sec.read("maze_curves.json")
    sec.add(
        "", "### Learning curves and plans", "",
        "Evaluation score and success against training minutes of the three full-size runs"
        f" ({', '.join(curves['runs'])}):",
        "", "![learning curves](maze_curves.png)", "",
        "Plans of the medium-maze planner drawn over the maze:", "", "![medium plans](medium_plans.png)",
    )
    cut = [label for label, run in curves["runs"].items() if truncated(run["final"], label)]
    if cut:
        sec.add("", f"The success curve of {', '.join(cut)} in the figure comes from the truncated evaluator "
                f"({TRUNCATED} above): read only its scores.")
    sec.commands([("curves", _command(curves))])
    return sec


def _override(command: str, key: str) -> str:
    match = re.search(rf"(?:^|\s){re.escape(key)}=(\S+)", command)
    return match.group(1) if match else ""


def _mean_se(values: Sequence[float]) -> str:
    """mean ± s.e. over seeds (a single value: no ±)."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values) / math.sqrt(len(values)):.1f}"


def score_mean_se(values: list[tuple[float, float]]) -> tuple[float, float]:
    """Mean and s.e. of (score, episode s.e.) pairs: the episode s.e. for one seed, over seeds for more."""
    if len(values) == 1:
        return values[0]
    scores = [v for v, _ in values]
    return statistics.fmean(scores), statistics.stdev(scores) / math.sqrt(len(scores))


def _score_se(values: list[tuple[float, float]]) -> str:
    """``mean ± s.e.`` of (score, episode s.e.) pairs (:func:`score_mean_se`)."""
    mean, se = score_mean_se(values)
    return f"{mean:.1f} ± {se:.1f}"


def _hierarchical(root: Path) -> _Section | None:
    """Hierarchical vs flat Diffuser at equal training budgets (``benchmarks/hierarchical/run.sh``); no section
    until a result is committed."""
    files = sorted((root / "hierarchical").glob("*.json"))
    if not files:
        return None
    sec = _Section(root, "Maze: hierarchical vs flat planner")
    sec.add(
        "Hierarchical Diffuser (subgoals every 15 steps, a 16-step low level between them) beside the flat",
        "Diffuser, each trained for the same budget (CPU- or wall-minutes of training, as the row says) by",
        "`benchmarks/hierarchical/run.sh`, and scored by `diffplan bench maze` on the same protocol episodes.",
        "\"as trained\": the shipped execution (plan tracked, then PD to the goal near its end); \"plan to end\": the",
        "plan followed to its end, then the agent brakes (no goal-directed PD switch: what the planner alone",
        "reaches). Hard episodes: those the go-to-goal PD baseline fails. Plan ms: one plan at batch 1 (median).",
        "",
    )
    data: dict[str, dict[str, Any]] = {}
    runs = []
    for path in files:
        rel = str(path.relative_to(root))
        d = data[rel] = sec.read(rel)
        try:
            planner = d["planner"]
            runs.append(RunResult(
                file=rel, agent=d["agent"], dataset=d["task"], seed=int(d["seed"]),
                score=float(planner["normalized_score"]), score_se=float(planner["normalized_score_se"]),
                episodes=int(planner["episodes"]), variant=d.get("execution", ""),
                budget_min=round(float(d["train_time_s"]) / 60), command=_command(d),
                extra={"cpu_clock": 1.0 if d.get("budget_clock") == "cpu" else 0.0},
            ))
        except (KeyError, TypeError) as exc:
            raise ReportError(f"{rel}: missing field {exc}") from exc
    table, executions, labelled = [], [], []
    for row in by_dataset_then_agent(aggregate(runs)):
        ds = [data[r.file] for r in row.runs]

        def mean(get: Callable[[dict[str, Any]], Any], ds: list[dict[str, Any]] = ds) -> float | None:
            values = [v for v in (get(d) for d in ds) if v is not None]
            return statistics.fmean(values) if values else None

        end = [d.get("plan_to_end") for d in ds]
        # A run budgeted in gradient steps names its budget itself (its wall time on a shared machine is not one)
        budget = ds[0].get("budget_label") or (
            f"{row.first.budget_min:.0f} {'CPU-' if row.first.extra.get('cpu_clock') else 'wall-'}min")
        label = f"{row.first.dataset} {row.first.agent}, {budget}"
        table.append([
            row.first.dataset, row.first.agent, budget, _seeds_cell(row),
            _int(mean(lambda d: d.get("gradient_steps"))), _num(mean(lambda d: d.get("steps_per_s")), 2),
            _num(mean(lambda d: (d.get("plan_latency") or {}).get("plan_ms_median")), 0),
            format_score(row), _num(mean(lambda d: d["planner"]["success_rate"]), 2),
            _num(mean(lambda d: (d.get("planner_hard") or {}).get("normalized_score")), 1) + " / "
            + _num(mean(lambda d: (d.get("planner_hard") or {}).get("success_rate")), 2),
            "—" if None in end else _score_se([(e["normalized_score"], e["normalized_score_se"]) for e in end]),
            "—" if None in end else _num(statistics.fmean(e["success_rate"] for e in end), 2),
            "—" if None in end else _num(mean(lambda d: (d["plan_to_end"].get("hard") or {}).get("normalized_score")), 1),
            # one controller on the same episodes for every seed: its episode s.e., not a zero s.e. over seeds
            _score_se(list({(d["go_to_goal_baseline"]["normalized_score"], d["go_to_goal_baseline"]["normalized_score_se"])
                            for d in ds})),
            _num(mean(lambda d: d["go_to_goal_baseline"]["success_rate"]), 2), _int(mean(lambda d: d["hard_episodes"])),
            str(row.first.episodes),
        ])
        executions.append(f"* {label}: as trained: {row.first.variant or '—'}"
                          + ("" if None in end else f"; plan to end: {end[0].get('execution', '—')}"))
        labelled += _row_commands(label, row)
    sec.add(*_table(
        ["task", "agent", "train budget", "seeds", "gradient steps", "steps/s", "plan ms", "score (as trained)",
         "success", "hard: score / success", "score (plan to end)", "success (plan to end)", "hard (plan to end)",
         "go-to-goal score", "go-to-goal success", "hard episodes", "episodes"],
        table,
    ))
    sec.add("", "Execution of each row:", "", *executions)
    for picture in sorted((root / "hierarchical").glob("*.png")):  # plans drawn by the runs (subgoals marked)
        sec.add("", f"![{picture.stem}](hierarchical/{picture.name})")
    sec.commands(labelled)
    return sec


def _qactors(root: Path) -> _Section:
    sec = _Section(root, "Maze: diffusion actors on pointmaze-umaze")
    sec.add(
        "Q-guided diffusion actors and their behaviour-cloning counterpart on the 1M-step umaze dataset. \"plan\" is",
        "one sampling call; \"decision\" is one `policy(obs, state)` call per env step (a chunk-executing agent",
        "samples only every few steps).",
        "",
    )
    runs, latency = [], {}
    for agent in ("diffusion_bc", "diffusion_ql", "idql"):
        rel = f"qactors/{agent}-umaze-train.json"
        lat = sec.read(f"qactors/{agent}-umaze-plan.json")
        latency[agent] = lat
        runs.append(_run_result(rel, sec.read(rel), extra={
            "decision_median": lat["decision_ms_median"], "decision_mean": lat["decision_ms_mean"],
            "lat_plan_ms": lat["plan_ms_median"],
        }))
    rows = aggregate(runs)
    sec.add(*_table(
        ["agent", "normalized score", "success", "episodes", "seeds", "gradient steps", "train time",
         "plan ms (median)", "decision ms (median / mean)"],
        [[r.first.agent, format_score(r), _success_cell(r), str(r.first.episodes), _seeds_cell(r),
          _int(r.mean("gradient_steps")), _num(r.mean("train_min"), 0, " min"), _num(r.mean("lat_plan_ms"), 1),
          f"{_num(r.mean('decision_median'), 1)} / {_num(r.mean('decision_mean'), 1)}"] for r in rows],
    ))
    _truncation_note(sec, rows)
    labelled = [c for r in rows for c in _row_commands(f"{r.first.agent} training", r)]
    labelled += [(f"{a} latency", _command(d)) for a, d in latency.items()]
    sec.commands(labelled)
    return sec


def _datasets(root: Path) -> _Section:
    sec = _Section(root, "Datasets and behaviour policies")
    rec = sec.read("recipes.json")
    sec.add(
        "### Maze datasets (1M steps, `diffplan data make pointmaze-<maze>`)", "",
        "Reference scores: the dataset's waypoint controller (ref_max) and a uniform random policy (ref_min), each",
        "over 100 episodes of the evaluation protocol.",
        "",
    )
    refs = rec["reference_scores"]
    table = []
    for maze in MAZES:
        task = f"pointmaze-{maze}"
        gen, ref = rec["generation_1M"][task], refs[task]
        ref_max = next(v for k, v in ref.items() if k.startswith("ref_max_score"))
        ref_min = next(v for k, v in ref.items() if k.startswith("ref_min_score"))
        table.append([task, _num(ref_min, 2), _num(ref_max, 2), _num(ref["controller_success_rate"], 2),
                      str(gen["episodes"]), _num(gen["mean_episode_length"], 1), _num(gen["dataset_size_MB"], 0),
                      _num(gen["wall_seconds"], 0, " s")])
    sec.add(*_table(["task", "ref_min (random)", "ref_max (controller)", "controller success", "episodes",
                     "mean length", "size MB", "generation wall time"], table))
    sec.commands([(f"pointmaze-{m}", rec["generation_1M"][f"pointmaze-{m}"]["command"]) for m in MAZES]
                 + [("reference scores", refs["command"])])

    zoo = sec.read("behaviour/zoo_candidates.json")
    sec.add(
        "", "### Locomotion behaviour policies (the RL Baselines3 Zoo's trained agents)", "",
        "Candidates on the v5 envs, mean return over the same episodes: stochastic = actions sampled as the datasets",
        "sample them, deterministic = the mean action. Expert: TQC (D4RL's expert level); medium: the candidate",
        "with a stochastic policy whose stochastic return is nearest D4RL's medium level (**bold**: shipped).",
        f"Protocol: {zoo['protocol']}.",
        "",
    )
    table = []
    for env, rows in zoo["candidates"].items():
        chosen = set(zoo["choice"][env].values())
        target = zoo["medium_targets"][env]
        for algo, r in rows.items():
            name = f"**{algo}**" if algo in chosen else algo
            det = r.get("deterministic")
            table.append([env, name, _num(r["stochastic"]["mean"], 0) + " ± " + _num(r["stochastic"]["std"], 0),
                          "—" if det is None else _num(det["mean"], 0) + " ± " + _num(det["std"], 0),
                          next((k for k, v in zoo["choice"][env].items() if v == algo), ""), _num(target, 0)])
    sec.add(*_table(["env", "policy", "stochastic return", "deterministic return", "shipped as",
                     "D4RL medium level"], table))
    sec.commands([("candidates", zoo["command"])])

    sec.add("", "### Locomotion datasets (`diffplan data make <env>-<kind> [--steps N]`)", "",
            "Reference scores are D4RL's (d4rl/infos.py). medium-replay: a Tianshou SAC run from scratch, stopped when",
            "its evaluated return reaches the medium policy's or its budget ends (columns on the right).", "")
    table, labelled, notes = [], [], []
    for path in sorted((root / "recipes-locomotion").glob("*.json")):
        d = sec.read(f"recipes-locomotion/{path.name}")
        replay = (d.get("behaviour") or {}).get("replay") or {}
        table.append([_short(d["source"]), str(d["steps"]), str(d["episodes"]), _num(d["episode_length_mean"], 0),
                      _num(d["return_mean"], 0), _num(d["ref_min_score"], 1), _num(d["ref_max_score"], 1),
                      _num(d["wall_s"], 0, " s"), _num(d["load_avg"][0], 1) if "load_avg" in d else "—",
                      _num(replay["best_return"], 0) + f" / {replay['target_return']:.0f}" if replay else "—",
                      ("yes" if replay["reached_target"] else f"no ({replay['stopped_by']})") if replay else "—"])
        if "command" in d:
            labelled.append((_short(d["source"]), d["command"]))
        if "note" in d:
            notes.append(f"* {_short(d['source'])}: {d['note']}")
    sec.add(*_table(["dataset", "steps", "episodes", "mean length", "mean return", "ref_min", "ref_max",
                     "wall time", "load", "SAC best eval / target", "reached"], table))
    sec.add("", "Wall time on the shared 2-core CPU at the load average shown (one torch thread; medium-expert",
            "reuses the medium and expert datasets when they exist).", *([""] + notes if notes else []))
    if labelled:
        sec.commands(labelled)
    return sec


def _robot(root: Path) -> _Section:
    sec = _Section(root, "Robot bridge")
    rtt, jitter = sec.read("robot_rtt.json"), sec.read("robot_jitter.json")
    sec.add("### Transport and tick clock", "")
    table = [["request round trip (" + rtt["transport"] + ")", str(rtt["n"]), _num(rtt["p50_ms"], 2),
              _num(rtt["p99_ms"], 1), _num(rtt["max_ms"], 1), "—"]]
    if "curve" in rtt:  # the same requests with CURVE authentication and encryption (diffplan serve --keys)
        curve = rtt["curve"]
        table.append([f"request round trip, {curve['auth']}", str(curve["n"]), _num(curve["p50_ms"], 2),
                      _num(curve["p99_ms"], 1), _num(curve["max_ms"], 1), "—"])
    for rate in jitter["rates"]:
        lat = rate["lateness"]
        table.append([f"tick lateness, {jitter['env']} at {rate['hz']:.0f} Hz", str(rate["ticks"]),
                      _num(lat["p50_ms"], 3), _num(lat["p99_ms"], 1), _num(lat["max_ms"], 1), str(rate["overruns"])])
    sec.add(*_table(["measurement", "samples", "p50 ms", "p99 ms", "max ms", "overruns"], table))
    sec.add("", f"Lateness: {jitter['definition']}.")
    sec.commands([("round trip", _command(rtt)), ("tick lateness", _command(jitter))])

    sec.add(
        "", "### A planner through the bridge", "",
        "The quickstart Diffuser driving a served PointMaze: returns (mean ± s.e. over the same episodes and",
        "planner seeds) through the bridge, in the plain simulator with the same committed-prefix lead, and in the",
        "plain simulator planning synchronously.",
        "",
    )
    table, labelled = [], []
    for hz in (20, 50):
        d = sec.read(f"robot_deploy_{hz}hz.json")

        def ret(key: str, d: dict[str, Any] = d) -> str:
            return f"{d[key]['mean']:.1f} ± {d[key]['se']:.1f}"

        table.append([
            f"{d['task']} at {d['control_hz']:.0f} Hz", str(d["episodes"]),
            f"{d['plan_ms']['p50']:.0f} / {d['plan_ms']['p95']:.0f}", str(d["lead_ticks_median"]),
            ret("bridged_return"), ret("in_process_with_same_lead_return"), ret("in_process_return"),
            f"{d['bridged_vs_in_process_pct']:.0f}%", str(d["starved_ticks_total"]), str(d["misses_total"]),
            str(d["ticks_total"]), str(d["server_unsafe_blocked"]),
        ])
        labelled.append((f"{hz} Hz", _command(d)))
    sec.add(*_table(
        ["robot", "episodes", "plan ms p50 / p95", "lead ticks", "bridged return", "same lead, in process",
         "synchronous, in process", "bridged vs synchronous", "starved ticks", "missed plans", "ticks",
         "unsafe commands blocked"], table,
    ))
    sec.commands(labelled)
    return sec


def sweep_table(summary: dict[str, Any]) -> list[str]:
    """A ``diffplan sweep`` summary (its ``summary.json``) as a Markdown table: one row per agent, task and
    setting, the mean ± s.e. over seeds (:func:`aggregate`'s rule, computed by the sweep), seeds flagged below
    :data:`MIN_SEEDS`."""
    rows = []
    try:
        for g in summary["groups"]:
            per_seed = ", ".join(f"s{seed} {v:.1f}" for seed, v in zip(g["seeds"], g["per_seed"], strict=True))
            seeds = f"{len(g['seeds'])}" + ("" if len(g["seeds"]) >= MIN_SEEDS else " ⚠")
            rows.append([g["agent"], str(g["task"]), g["setting"] or "—", g["metric"].replace("_", " "),
                         f"{g['mean']:.1f} ± {g['se']:.1f}", per_seed, seeds])
    except KeyError as exc:
        raise ReportError(f"sweep summary: missing field {exc}") from exc
    failed = [r["name"] for r in summary.get("runs", []) if r.get("status") == "failed"]
    out = _table(["agent", "task", "setting", "metric", "mean ± s.e.", "per seed", "seeds"], rows)
    return out + (["", f"Failed runs (not in the rows): {', '.join(failed)}."] if failed else [])


def _scaleout(root: Path) -> _Section:
    sec = _Section(root, "Scaling out")
    sec.add(
        "### Data-parallel training (`torchrun`, gloo on CPU)", "",
        "Samples per second of the global batch (gradient steps × batch size / training time; start-up and the",
        "final evaluation excluded), one torch thread per rank, mean ± s.e. over repeated runs interleaved across",
        "rank counts. On this shared 2-core machine two ranks share the two cores with whatever else ran then (the",
        "load column: above 2, the cores were oversubscribed), so these rows measure the cost of the all-reduce and",
        "the sharded batches, not the speed-up a multi-GPU node gives. No GPU machine was available to this work.",
        "",
        "What to expect on a multi-GPU node (an estimate, not a measurement): with the global batch fixed, each",
        "rank computes 1/N of it, and one step adds one all-reduce of the gradients (4 bytes a parameter: 4 MB for",
        "this 1M-parameter Diffuser, about a millisecond over NVLink). A step that keeps a GPU busy for tens of",
        "milliseconds then scales close to N-fold; a step of a small MLP (BC: 68k parameters) is launch-bound and",
        "gains nothing from more GPUs: run more seeds at once with `diffplan sweep` instead.",
        "",
    )
    table, labelled = [], []
    files = sorted(p.name for p in (root / "scaleout").glob("ddp_*.json"))
    if not files:
        raise ReportError(f"{root / 'scaleout'}: no ddp_*.json results (diffplan bench ddp)")
    for name in files:
        d = sec.read(f"scaleout/{name}")
        for row in d["summary"]:
            trials = [t for t in d["trials"] if t["ranks"] == row["ranks"]]
            load = statistics.fmean(t["load_1min_before"] for t in trials)
            table.append([d["config"], str(trials[0]["batch_size"]), str(row["ranks"]),
                          f"{row['samples_per_s']:.0f} ± {row['samples_per_s_se']:.0f}", f"{row['speedup']:.2f}",
                          str(row["runs"]), f"{load:.1f}"])
        labelled.append((f"{d['config']} ({name})", _command(d)))
    sec.add(*_table(["agent", "global batch", "ranks", "samples/s", "vs 1 rank", "runs", "load before (1 min)"],
                    table))
    sec.commands(labelled)
    d = sec.read("scaleout/sweep_overhead.json")
    sec.add(
        "", "### Sweep overhead (`diffplan sweep` on a local Ray)", "",
        f"{d['runs']} tiny runs as Ray tasks, one CPU each, on {d['cpu_slots']} CPU slots. Overhead per run: (sweep wall",
        "time × slots − the time `train` ran in all tasks) / runs, the slot time a run costs beyond its training",
        "(worker start, imports, config, scheduling); part of it is inside the task (imports, config).",
        "",
        *_table(
            ["ray.init", "overhead per run", "of which inside the task", "`train` per run (data, final eval)", "sweep wall time",
             "re-run (all finished: skipped)"],
            [[_num(d["ray_init_s"], 1, " s"), _num(d["overhead_s_per_run"], 1, " s"),
              _num(d["in_task_setup_s_mean"], 1, " s"), _num(d["train_s_mean"], 1, " s"),
              _num(d["sweep_wall_s"], 1, " s"), _num(d["rerun_wall_s"], 3, " s")]],
        ),
    )
    sec.commands([("sweep overhead", _command(d))])
    for path in sorted((root / "sweeps").glob("*.json")):
        summary = sec.read(f"sweeps/{path.name}")
        sec.add("", f"### Sweep `{path.stem}`", "", *sweep_table(summary))
        sec.commands([(path.stem, _command(summary))])
    return sec


def _calls_cell(calls: dict[str, int]) -> str:
    """Model calls of a fastgen setting: ``cold`` [`` / warm``]."""
    return str(calls.get("cold", "")) + (f" / {calls['warm']}" if "warm" in calls else "")


def _fastgen(root: Path) -> _Section:
    sec = _Section(root, "Fast generation")
    sec.add(
        "One trained planner per table (a folder: several trained runs, one table averaged over them) under",
        "several execution settings (`diffplan bench fastgen`): the same weights, only the solver, its steps,",
        "warm-started replanning or the guidance change (`runs/fastgen-qs-flow` is the quickstart",
        "trained with `objective=flow`). Plan latency is one planning call at batch 1 on",
        "evaluation states (median / p95); a warm replan starts from the previous plan shifted by `replan_every`",
        "steps and runs only the tail of the solver's steps. Scores: the evaluation protocol's episodes.",
        "",
    )
    labelled = []
    for path in sorted((root / "fastgen").glob("*.json")):
        rel = str(path.relative_to(root))
        data = sec.read(rel)
        if data.get("benchmark") != "fastgen":
            continue
        sec.add(f"### {data['task']}: run `{data['run']}`, {data['gradient_steps']} gradient steps (`{rel}`)", "")
        rows = []
        for name, r in data["settings"].items():
            calls = r["model_calls"]
            warm = (f"{r['warm_plan_ms_median']:.0f} / {r['warm_plan_ms_p95']:.0f}"
                    if "warm_plan_ms_median" in r else "—")
            score = (f"{r['normalized_score']:.1f} ± {r['normalized_score_se']:.1f}"
                     if r.get("normalized_score") is not None else "—")
            rows.append([
                name, _calls_cell(calls),
                f"{r['plan_ms_median']:.0f} / {r['plan_ms_p95']:.0f}", warm, score, _num(r["success_rate"], 2),
                str(r["episodes"]),
            ])
        sec.add(*_table(["setting", "model calls (cold / warm)", "plan ms p50 / p95", "warm replan ms p50 / p95",
                         "normalized score", "success", "episodes"], rows), "")
        if data.get("note"):
            sec.add(str(data["note"]), "")
        labelled.append((rel, _command(data)))
    for group in sorted(p for p in (root / "fastgen").glob("*") if p.is_dir()):
        labelled += _fastgen_group(sec, root, group)
    for path in sorted((root / "fastgen").glob("*.json")):
        rel = str(path.relative_to(root))
        data = sec.read(rel)
        if data.get("benchmark") != "fastgen-timing":
            continue
        sec.add(f"### Model and sampling time beside jannerm/diffuser (`{rel}`)", "", str(data["description"]), "")
        sec.add(*_table(
            ["implementation", "setting", "ms per model call", "ms per plan p50 / p95"],
            [[r["impl"], r["setting"], _num(r["model_call_ms"], 2),
              f"{r['plan_ms_median']:.0f} / {r['plan_ms_p95']:.0f}"] for r in data["rows"]],
        ), "")
        labelled.append((rel, _command(data)))
    deploys = [sec.read(str(p.relative_to(root))) for p in sorted((root / "fastgen").glob("*.json"))]
    deploys = [d for d in deploys if d.get("benchmark") == "robot_deploy"]
    if deploys:
        sec.add("### Through the robot bridge with the fast settings", "",
                "As the Robot bridge section's table, the planner's execution settings overridden (`overrides`). "
                "Results of several trained planners (training seeds: distinct runs) with the same robot and "
                "overrides share a row: returns are the mean ± s.e. over the planners, the percentage is each "
                "planner's own bridged vs synchronous return, averaged (per planner in brackets). Command: "
                "`benchmarks/fastgen/bridge.sh`.", "")
        groups: dict[tuple[str, float, tuple[str, ...]], list[dict[str, Any]]] = {}
        for d in deploys:
            groups.setdefault((d["task"], float(d["control_hz"]), tuple(d.get("overrides", []))), []).append(d)
            labelled.append((f"{d['control_hz']:.0f} Hz", _command(d)))
        table = []
        for (task, hz, overrides), runs in groups.items():
            if len({d["run"] for d in runs}) != len(runs):
                raise ReportError(f"fastgen: {task} at {hz:.0f} Hz {' '.join(overrides)}: the same trained run twice")

            def returns(key: str, runs: list[dict[str, Any]] = runs) -> str:
                if len(runs) == 1:
                    return f"{runs[0][key]['mean']:.1f} ± {runs[0][key]['se']:.1f}"
                return _mean_se([d[key]["mean"] for d in runs])

            pct = [d["bridged_vs_in_process_pct"] for d in runs]
            table.append([
                f"{task} at {hz:.0f} Hz", " ".join(overrides) or "—",
                str(len(runs)) + ("" if len(runs) >= MIN_SEEDS else " ⚠"), str(runs[0]["episodes"]),
                (f"{statistics.fmean(d['plan_ms']['p50'] for d in runs):.0f} / "
                 f"{statistics.fmean(d['plan_ms']['p95'] for d in runs):.0f}"),
                "/".join(str(d["lead_ticks_median"]) for d in runs),
                returns("bridged_return"), returns("in_process_return"),
                f"{statistics.fmean(pct):+.0f}%" + (f" ({', '.join(f'{p:+.0f}' for p in pct)})" if len(pct) > 1 else ""),
                str(sum(d["misses_total"] for d in runs)),
            ])
        sec.add(*_table(["robot", "overrides", "planners (seeds)", "episodes", "plan ms p50 / p95", "lead ticks",
                         "bridged return", "synchronous, in process", "bridged vs synchronous", "missed plans"],
                        table), "")
    while sec.lines[-1] == "":
        sec.lines.pop()  # the commands list opens with its own blank line
    sec.commands(labelled)
    return sec


_GUIDANCE_ROWS = (
    "They act as their suite does (DDIM eta 1 in 2 steps, replanning at every env step). `guided`: Diffuser's "
    "value-gradient guidance (0.1 std² ∇J, 2 guide steps, t ≥ 2); `ranked`/`unguided`: the gradient off "
    "(`guide_scale=0`). `best-of-K`: K plans per decision, the one with the highest EMA value estimate acted on; "
    "`1`: a single plan. `guided-best-of-8` is the suite's own setting (its score is the suite table's). Command: "
    "`benchmarks/fastgen/guidance.sh` (the halfcheetah runs: with `RUNS` and `OUT` set to their folders, and "
    "`AGENT=hierarchical` for the HD rows).")
"""How the rows of a guidance ablation (``benchmarks/fastgen/guidance.sh``) differ: its caption's second half."""

FASTGEN_GROUP_NOTES: dict[str, str] = {
    "hopper-medium-replan1": (
        "The value-guided Diffusers of the `locomotion-medium` suite (one per training seed; 15 CPU-minutes, U-Net "
        "dim 16, 8 candidates, horizon 32), replanning at every env step as in the paper, so the plan latency is the "
        "decision latency; in a warm row every decision after an episode's first is a warm replan (the previous "
        "plan shifted one step, re-noised to 0.34 of the way, one solver step). Guidance: ddpm-20 and the ddim-eta1 "
        "rows use Diffuser's std-scaled shift (0.1 std² ∇J, 2 guide steps, t ≥ 2). DDIM with eta 1 over K steps "
        "is the DDPM posterior between the kept steps, with a larger std per step than DDPM-20's. DPM-Solver++ "
        "steps have std 0, so its rows guide with the unscaled shift 0.1 ∇J (`scale_grad_by_std=false`). "
        "Command: `benchmarks/fastgen/hopper.sh`."),
    "hopper-medium-60min-guidance": (
        "The value-guided Diffusers of the `hopper-medium-60min` suite (one per training seed; 60 CPU-minutes, "
        "U-Net dim 16, horizon 32). " + _GUIDANCE_ROWS),
    "halfcheetah-medium-guidance": (
        "The value-guided Diffusers and Hierarchical Diffusers (HD-DA, jump 4: guidance and ranking act on the "
        "subgoal plan) of the `locomotion-medium` suite's halfcheetah-medium table (one per training seed; 15 "
        "CPU-minutes, U-Nets dim 16). " + _GUIDANCE_ROWS),
    "large-hd-vs-flat": (
        "The runs of the hierarchical benchmark (60 CPU-minutes each), one plan per episode, the shipped "
        "execution. Hierarchical settings `a/b`: a solver steps for the subgoals, b for the segments "
        "(`low_sampling_steps`); its model calls count both levels. Command: `benchmarks/fastgen/large.sh`."),
}
"""Caption under a ``fastgen/<group>/`` table: how the runs were made and what the settings mean."""


def fastgen_group_rows(group: str, results: list[tuple[str, dict[str, Any]]]) -> tuple[str, list[dict[str, Any]]]:
    """The rows of a ``fastgen/<group>/`` table from its ``bench fastgen`` results ``[(file, data)]``, one per
    (agent, setting), averaged over the runs (training seeds) that share them: the task and, per row, ``agent``,
    ``setting``, ``seeds``, ``gradient_steps``, ``model_calls``, mean plan (and warm replan) ms median / p95,
    ``scores`` [(score, s.e.)] per seed, ``success`` and ``episodes``. The table and the figure both read these.

    Raises:
        ReportError: a file is not a fastgen result naming its agent and seed, the runs are on different tasks,
            or runs of one (agent, setting) differ in overrides or episodes or repeat a seed.
    """
    cells: dict[tuple[str, str], list[tuple[int, dict[str, Any], dict[str, Any]]]] = {}
    tasks = set()
    for rel, data in results:
        if data.get("benchmark") != "fastgen" or data.get("agent") is None or data.get("seed") is None:
            raise ReportError(f"{rel}: not a `bench fastgen` result naming its agent and seed")
        tasks.add(data["task"])
        for name, r in data["settings"].items():
            cells.setdefault((data["agent"], name), []).append((int(data["seed"]), r, data))
    if len(tasks) > 1:
        raise ReportError(f"fastgen/{group}: runs of different tasks {sorted(map(str, tasks))} in one table")
    order = {a: i for i, a in enumerate(AGENT_ORDER)}
    first_seen = {key: i for i, key in enumerate(cells)}
    rows = []
    for (agent, name), runs in sorted(cells.items(), key=lambda kv: (order.get(kv[0][0], len(order)), first_seen[kv[0]])):
        seeds = [seed for seed, _, _ in runs]
        if len(set(seeds)) != len(seeds):
            raise ReportError(f"fastgen/{group}: {agent} {name}: seed repeated {seeds}")
        if len({(tuple(r["overrides"]), r["episodes"]) for _, r, _ in runs}) != 1:
            raise ReportError(f"fastgen/{group}: {agent} {name}: runs differ in overrides or episodes")
        runs.sort(key=lambda run: run[0])
        res = [r for _, r, _ in runs]

        def mean(key: str, res: list[dict[str, Any]] = res) -> float | None:
            values = [r[key] for r in res if r.get(key) is not None]
            return statistics.fmean(values) if len(values) == len(res) else None

        scores = [(r["normalized_score"], r["normalized_score_se"]) for r in res if r.get("normalized_score") is not None]
        rows.append({
            "agent": agent, "setting": name, "seeds": sorted(seeds),
            "gradient_steps": statistics.fmean(d["gradient_steps"] for _, _, d in runs),
            "model_calls": res[0]["model_calls"],
            "plan_ms": mean("plan_ms_median"), "plan_ms_p95": mean("plan_ms_p95"),
            "warm_ms": mean("warm_plan_ms_median"), "warm_ms_p95": mean("warm_plan_ms_p95"),
            "scores": scores if len(scores) == len(res) else [],
            "success": mean("success_rate"), "episodes": res[0]["episodes"],
        })
    return (tasks.pop() if tasks else ""), rows


def _fastgen_group(sec: _Section, root: Path, group: Path) -> list[tuple[str, str]]:
    """One table for a folder ``fastgen/<group>/`` of ``bench fastgen`` results, one JSON per trained run
    (:func:`fastgen_group_rows`), with its score-vs-latency figure (``tradeoff.png``, drawn by
    :func:`diffplan.viz.write_report_figures` from the same rows)."""
    results = []
    for path in sorted(group.glob("*.json")):
        rel = str(path.relative_to(root))
        results.append((rel, sec.read(rel)))
    if not results:  # a folder a benchmark script is still filling: no table yet
        return []
    task, rows = fastgen_group_rows(group.name, results)
    table = [[
        r["agent"], r["setting"], ", ".join(map(str, r["seeds"])) + ("" if len(r["seeds"]) >= MIN_SEEDS else " ⚠"),
        _int(r["gradient_steps"]), _calls_cell(r["model_calls"]), f"{r['plan_ms']:.0f} / {r['plan_ms_p95']:.0f}",
        "—" if r["warm_ms"] is None else f"{r['warm_ms']:.0f} / {r['warm_ms_p95']:.0f}",
        _score_se(r["scores"]) if r["scores"] else "—", _num(r["success"], 2), str(r["episodes"]),
    ] for r in rows]
    sec.add(f"### {task}: `{group.name}`, {len(results)} trained runs (`fastgen/{group.name}/`)", "",
            "Latencies: the mean over runs of each run's median / p95; score: mean ± s.e. over the runs (seeds).", "")
    sec.add(*_table(["agent", "setting", "seeds", "gradient steps", "model calls (cold / warm)", "plan ms p50 / p95",
                     "warm replan ms p50 / p95", "normalized score", "success", "episodes"], table), "")
    if group.name in FASTGEN_GROUP_NOTES:
        sec.add(FASTGEN_GROUP_NOTES[group.name], "")
    if any(r["scores"] for r in rows):  # the figure (diffplan.viz.write_report_figures) needs scores
        sec.add(f"![score vs latency, {group.name}](fastgen/{group.name}/tradeoff.png)", "")
    return [(rel, _command(data)) for rel, data in results]


# ------------------------------------------------------------------------------------------------ suites

SUITE_RUN = "suite-run"
"""``kind`` of a run JSON written by ``diffplan bench suite`` (:mod:`diffplan.suite`)."""

PUBLISHED: dict[str, tuple[str, dict[str, float]]] = {
    "bc": ("BC as tabulated by Diffusion-QL (Wang et al. 2023) and Decision Diffuser (Ajay et al. 2023), D4RL -v2",
           {"hopper-medium": 52.9, "walker2d-medium": 75.3, "halfcheetah-medium": 42.6}),
    "td3bc": ("TD3+BC (Fujimoto & Gu 2021), D4RL -v2",
              {"hopper-medium": 59.3, "walker2d-medium": 83.7, "halfcheetah-medium": 48.3}),
    "cql": ("CQL(H) (Kumar et al. 2020, Table 1), D4RL -v0",
            {"hopper-medium": 58.0, "walker2d-medium": 79.2, "halfcheetah-medium": 44.4}),
    "diffusion_ql": ("Diffusion-QL (Wang et al. 2023), D4RL -v2",
                     {"hopper-medium": 90.5, "walker2d-medium": 87.0, "halfcheetah-medium": 51.1}),
    "idql": ("IDQL (Hansen-Estruch et al. 2023, the one-setting IDQL row), D4RL -v2",
             {"hopper-medium": 63.1, "walker2d-medium": 80.2, "halfcheetah-medium": 49.7}),
    # HalfCheetah: 42.8 in the authors' own table (jannerm/diffuser scripts/table.py); the Decision Diffuser
    # paper quotes Diffuser at 44.2 there.
    "diffuser": ("Diffuser (Janner et al. 2022, the authors' table), D4RL -v2",
                 {"hopper-medium": 74.3, "walker2d-medium": 79.6, "halfcheetah-medium": 42.8}),
    "decision_diffuser": ("Decision Diffuser (Ajay et al. 2023), D4RL -v2",
                          {"hopper-medium": 79.3, "walker2d-medium": 82.5, "halfcheetah-medium": 49.1}),
}
"""The papers' D4RL-normalized scores on the -medium datasets (agent -> (source, task -> score)). They were
measured on D4RL's own files; ours are same-level behaviour policies on Gymnasium's v5 envs: set beside, not
equal."""


DIFFUSION_AGENTS = frozenset({"diffuser", "hierarchical", "decision_diffuser", "diffusion_ql", "idql", "diffusion_bc"})
"""The agents whose policy or planner is a diffusion model: a suite table's target line compares the best of them
with :data:`TARGET_BASELINE`."""

TARGET_BASELINE = "td3bc"
"""The baseline a diffusion agent must beat in a suite table (issue 12: by at least the two rows' combined
standard error, at the same budget)."""


def _best_diffusion(rows: list[Row]) -> Row | None:
    """The diffusion row (:data:`DIFFUSION_AGENTS`) with the highest mean score, or None."""
    return max((r for r in rows if r.first.agent in DIFFUSION_AGENTS), key=lambda r: r.score_mean, default=None)


def _provisional(*rows: Row) -> str:
    """The mark of a target verdict resting on a row with fewer than :data:`MIN_SEEDS` seeds ("" otherwise)."""
    return f" (provisional: fewer than {MIN_SEEDS} seeds)" if min(len(r.runs) for r in rows) < MIN_SEEDS else ""


def _per_seed(row: Row) -> str:
    return ", ".join(f"s{x.seed} {x.score:.1f}" for x in row.runs)


def target_line(rows: list[Row]) -> list[str]:
    """The table's target: does the best diffusion row beat :data:`TARGET_BASELINE`'s by at least their combined
    standard error ``sqrt(se_a^2 + se_b^2)``? One sentence, or nothing when either side has no row."""
    baseline = next((r for r in rows if r.first.agent == TARGET_BASELINE), None)
    best = _best_diffusion(rows)
    if baseline is None or best is None:
        return []
    margin = best.score_mean - baseline.score_mean
    combined = math.hypot(best.score_se, baseline.score_se)
    verdict = "met" if margin >= combined else "not met"
    line = (f"Target (the best diffusion agent beats {TARGET_BASELINE} by at least the combined standard error): "
            f"**{verdict}**{_provisional(best, baseline)}: "
            f"{best.first.agent} {best.score_mean:.1f} ± {best.score_se:.1f} against {TARGET_BASELINE} "
            f"{baseline.score_mean:.1f} ± {baseline.score_se:.1f}, a margin of {margin:+.1f} against a combined "
            f"standard error of {combined:.1f}.")
    return [line, ""]


SCORE_TARGETS: dict[str, tuple[float, float]] = {"hopper-medium": (75.0, 60.0)}
"""Per task: the D4RL-normalized score a diffusion agent should reach (its mean over seeds) and within how many
CPU-minutes of training (issue 12: 75 on hopper-medium within 60, where the reference implementations train 1-2M
gradient steps on a GPU). Stated under every table of that task trained for at most those CPU-minutes."""


def score_target_line(task: str, rows: list[Row], budget: dict[str, Any]) -> list[str]:
    """The task's :data:`SCORE_TARGETS` line: has the best diffusion row's mean over seeds reached the score at
    this table's budget? Nothing for another task, a budget that is not CPU-minutes or exceeds the target's, or a
    table without a diffusion row."""
    if task not in SCORE_TARGETS:
        return []
    score, minutes = SCORE_TARGETS[task]
    trained = float(budget.get("train_minutes") or 0)
    best = _best_diffusion(rows)
    if budget.get("clock") != "cpu" or not 0 < trained <= minutes or best is None:
        return []
    verdict = "reached" if best.score_mean >= score else "not reached"
    line = (f"Target (a diffusion agent reaches {score:g} within {minutes:g} CPU-minutes of training, mean over "
            f"seeds): **{verdict}** at {trained:g} CPU-minutes{_provisional(best)}: {best.first.agent} "
            f"{best.score_mean:.1f} ± {best.score_se:.1f} ({_per_seed(best)}).")
    return [line, ""]


def suite_results(root: Path | str = "benchmarks") -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Every suite's run JSONs under ``<root>/suites/<name>/``: name -> [(file relative to root, data)], sorted.

    Raises:
        ReportError: a JSON file there that is not valid JSON or not a suite run's.
    """
    root = Path(root)
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for folder in sorted(p for p in (root / "suites").glob("*") if p.is_dir()):
        runs = []
        for path in sorted(folder.rglob("*.json")):
            data = _load(path)
            if not isinstance(data, dict) or data.get("kind") != SUITE_RUN:
                raise ReportError(f"{path}: not a suite run's JSON (kind: {SUITE_RUN})")
            runs.append((str(path.relative_to(root)), data))
        if runs:
            out[folder.name] = runs
    return out


def _suite_run(rel: str, data: dict[str, Any]) -> RunResult:
    try:
        ev = data["eval"]
        scored = ev.get("normalized_score") is not None
        return RunResult(
            file=rel, agent=data["agent"], dataset=data["task"], seed=int(data["seed"]),
            score=float(ev["normalized_score"] if scored else ev["return_mean"]),
            score_se=float(ev["normalized_score_se"] if scored else ev["return_se"]),
            episodes=int(ev["episodes"]), variant=str(data.get("settings", "")),
            extra={"gradient_steps": data["gradient_steps"], "train_min": float(data["train_time_s"]) / 60,
                   "return": ev["return_mean"], "decision_median": data["decision_ms"]["median"],
                   "decision_p95": data["decision_ms"]["p95"], "scored": 1.0 if scored else 0.0,
                   **_trained_score(data)},
            command=data.get("train_command", ""),
        )
    except (KeyError, TypeError) as exc:
        raise ReportError(f"{rel}: missing field {exc}") from exc


def _trained_score(data: dict[str, Any]) -> dict[str, float]:
    """A run evaluated with its agent's ``act`` settings: the score its training config's own execution got
    (``trained_final``, the same episodes), so the table can say what the acting settings changed."""
    final = data.get("trained_final") or {}
    score = final.get("normalized_score", final.get("return_mean"))
    return {"trained_score": float(score)} if data.get("act") and score is not None else {}


def _episodes_key(data: dict[str, Any]) -> tuple[Any, ...]:
    ev = data["eval"]
    return ev["protocol_seed"], ev["eval_envs"], ev["episodes"]


def _budget_text(budget: dict[str, Any]) -> str:
    parts = []
    if budget.get("train_minutes"):
        clock = {"cpu": "CPU-", "wall": "wall-"}.get(budget.get("clock", ""), "")
        parts.append(f"{budget['train_minutes']:g} training {clock}min")
    if budget.get("gradient_steps"):
        parts.append(f"{budget['gradient_steps']} gradient steps")
    return " or ".join(parts) + (" (first reached)" if len(parts) == 2 else "")


def suite_tables(runs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """One suite's Markdown: per task, a table of its agents (rows: seeds aggregated by :func:`aggregate`) beside
    the papers' numbers (:data:`PUBLISHED`).

    Raises:
        ReportError: runs of one task evaluated on different episodes (protocol seed, eval envs, episodes) or
            trained with different budgets: they cannot share a table.
    """
    lines: list[str] = []
    tasks: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for rel, data in runs:
        if "task" not in data:
            raise ReportError(f"{rel}: missing field 'task'")
        tasks.setdefault(data["task"], []).append((rel, data))
    for task in sorted(tasks):
        members = tasks[task]
        for what, key in (("episodes (protocol seed, eval envs, episodes)", _episodes_key),
                          ("budgets", lambda d: json.dumps(d["budget"], sort_keys=True))):
            try:
                keys = {key(d): rel for rel, d in members}
            except KeyError as exc:
                raise ReportError(f"{task}: a run JSON is missing field {exc}") from exc
            if len(keys) > 1:
                shown = "; ".join(f"{k} in {rel}" for k, rel in keys.items())
                raise ReportError(f"{task}: runs with different {what} cannot share a table: {shown}")
        rows = by_dataset_then_agent(aggregate(_suite_run(rel, d) for rel, d in members))
        first = members[0][1]
        seed, envs, episodes = _episodes_key(first)
        dataset = first.get("dataset", "")
        lines += [f"#### {task}", "",
                  (f"Dataset `{_short(dataset)}`; budget {_budget_text(first['budget'])} per run; {episodes} final "
                  f"episodes per run from the protocol seed {seed} over {envs} envs (the same episodes in every row)."),
                  ""]
        table = []
        for r in rows:
            paper = PUBLISHED.get(r.first.agent, ("", {}))[1].get(task)
            scored = bool(r.mean("scored"))
            table.append([
                r.first.agent, r.first.variant or "—",
                f"{r.score_mean:.1f} ± {r.score_se:.1f}" + ("" if scored else " (return)"),
                _per_seed(r),
                _mean_se([float(x.extra["return"]) for x in r.runs]),  # type: ignore[arg-type]
                f"{_num(r.mean('decision_median'), 1)} / {_num(r.mean('decision_p95'), 1)}",
                _int(r.mean("gradient_steps")), _num(r.mean("train_min"), 1, " min"), _budget_text(first["budget"]),
                str(len(r.runs)) if len(r.runs) >= MIN_SEEDS else f"{len(r.runs)} ⚠ (fewer than {MIN_SEEDS})",
                _num(paper, 1),
            ])
        lines += _table(["agent", "settings", "D4RL-normalized (mean ± s.e. over seeds)", "per seed",
                         "raw return", "decision ms (median / p95)", "gradient steps", "training time", "budget", "seeds",
                         "paper (D4RL's file)"], table)
        lines += ["", *target_line(rows), *score_target_line(task, rows, first["budget"])]
        acting = [r for r in rows if all("trained_score" in x.extra for x in r.runs)]
        if acting:
            lines += ["Evaluated with the suite's `act` execution settings after training (the settings' \"acting\" "
                      "part): " + ", ".join(r.first.agent for r in acting) + ". With the training config's own "
                      "execution (the learning curve's) the same runs scored "
                      + "; ".join(f"{r.first.agent} {_mean_se([float(x.extra['trained_score']) for x in r.runs])}"  # type: ignore[arg-type]
                                  for r in acting) + ".", ""]
    cited = sorted({PUBLISHED[a][0] for a in {d["agent"] for _, d in runs} if a in PUBLISHED})
    if cited:
        lines += ["\"paper\" is the published score on D4RL's own -medium file, from: " + "; ".join(cited) + ". "
                  "Ours are trained on datasets from same-level behaviour policies on Gymnasium's v5 envs, so the "
                  "columns sit side by side, not on the same data.", ""]
    lines += [("With one seed the ± is the standard error over that seed's episodes; with two or more, over the "
              "per-seed means (raw return likewise)."), ""]
    return lines


def _suite_run_command(data: dict[str, Any]) -> str:
    """A suite run's commands: its training and, when it was scored with ``act`` settings, the evaluation that
    gives its score (``diffplan eval`` draws the same protocol episodes)."""
    train = str(data.get("train_command", ""))
    if not data.get("act"):
        return train
    cfg = data.get("execution", {}).get("config", {})
    evaluate = " ".join(["diffplan eval", str(cfg.get("run_dir", "RUN_DIR")), f"--episodes {data['eval']['episodes']}",
                         *data["act"], f"torch_threads={cfg.get('torch_threads', 1)}"])
    return f"{train} && {evaluate}"


def _suites(root: Path) -> _Section:
    sec = _Section(root, "Benchmark suites")
    sec.add(
        "`diffplan bench suite <suite.yaml>` runs agents × tasks × seeds at one fixed training budget and writes one",
        "JSON per run under `suites/<name>/`; this section and each suite's learning-curve figure",
        "(`suites/<name>/curves.png`, mean ± s.e. band over seeds) are generated from them.",
        "",
    )
    suites = suite_results(root)
    if not suites:
        sec.add("No suite results are committed yet: `diffplan bench suite benchmarks/suites/locomotion-medium.yaml`",
                "writes them to `benchmarks/suites/locomotion-medium/`. The papers' -medium scores they will stand",
                "beside (D4RL's own files):", "")
        tasks = ("hopper-medium", "walker2d-medium", "halfcheetah-medium")
        sec.add(*_table(["agent", *tasks, "source"],
                        [[a, *(_num(v.get(t), 1) for t in tasks), src] for a, (src, v) in PUBLISHED.items()]))
        sec.files.append("suites/")
        return sec
    for name, runs in suites.items():
        for rel, data in runs:
            sec.files.append(rel)
            sec.note_machine({"date": data.get("date"), "machine": data.get("machine"),
                              "load_avg": data.get("load_avg_start")})
        if sec.lines[-1]:  # the previous suite's command list ends without a blank line
            sec.add("")
        sec.add(f"### Suite `{name}` (`{runs[0][1].get('suite_file', '')}`)", "")
        sec.add(*suite_tables(runs))
        if any(d.get("curve") for _, d in runs):
            sec.add(f"![learning curves of {name}](suites/{name}/curves.png)", "")
        commits = sorted({str(d.get("git_commit")) for _, d in runs})
        sec.add(f"Git commit(s): {', '.join(commits)}.")
        sec.commands([(name, runs[0][1].get("command", ""))]
                     + [(f"{d['task']} {d['agent']} seed {d['seed']}", _suite_run_command(d)) for _, d in runs])
    return sec


FINETUNE_METHODS = (("dppo", "diffusion_bc"), ("ppo", "bc"))
"""The fine-tuning methods of ``bench dppo`` and the pre-training each starts from."""


def finetune_curve_rows(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The learning curves of a ``bench dppo`` result, per method (``dppo``, ``ppo``): ``pretrained`` (the
    pre-trained run's own final scores, one per seed) and ``points``, one per evaluation index every seed reached,
    with the mean ``env_steps`` and training ``minutes`` over seeds and the per-seed ``scores``. Seeds evaluate at
    the same update counts, so the i-th evaluation of every seed is one point. The table and the figure both read
    these."""
    out = {}
    for agent, pre in FINETUNE_METHODS:
        curves = data["curves"][agent]
        points = []
        for i in range(min((len(c["points"]) for c in curves), default=0)):
            at = [c["points"][i] for c in curves]
            points.append({"env_steps": statistics.fmean(p["env_steps"] for p in at),
                           "minutes": statistics.fmean(p["train_time_s"] for p in at) / 60, "seeds": len(at),
                           "scores": [p["normalized_score"] for p in at if p.get("normalized_score") is not None]})
        out[agent] = {"pretrained_from": pre, "points": points,
                      "pretrained": [r["normalized_score"] for r in data["pretrained"][pre]
                                     if r.get("normalized_score") is not None]}
    return out


def _finetune(root: Path) -> _Section:
    sec = _Section(root, "Online fine-tuning: DPPO and the Gaussian PPO baseline")
    sec.add(
        "A pre-trained policy fine-tuned online (`diffplan finetune`): DPPO from a `diffusion_bc` run beside Tianshou's",
        "PPO from a Gaussian `bc` run, both pre-trained on the same dataset and fine-tuned for the same env steps",
        "(`diffplan bench dppo`). Each row is one evaluation point of the fine-tuning runs (env steps 0: the",
        "pre-trained policy as the fine-tuning run acts), normalized score mean ± s.e. over the training seeds on the",
        "evaluation protocol's episodes, with the training wall clock (evaluations excluded) it took. The figure",
        "(`dppo/<task>.png`) draws the same rows against env steps and against training minutes.",
        "",
    )
    labelled = []
    results = [p for p in sorted((root / "dppo").glob("*.json")) if p.name != "throughput.json"]
    for path in results:
        rel = f"dppo/{path.name}"
        data = sec.read(rel)
        if data.get("benchmark") != "dppo":
            continue
        sec.add(f"### {data['task']} (`{rel}`)", "")
        rows, methods = [], finetune_curve_rows(data)
        for agent, curve in methods.items():
            pre = curve["pretrained"]
            rows.append([f"{curve['pretrained_from']} (pre-training)", "—", "—", _mean_se(pre) if pre else "—",
                         str(len(pre)) + ("" if len(pre) >= MIN_SEEDS else " ⚠")])
            rows += [[agent, _int(p["env_steps"]), _num(p["minutes"], 1, " min"),
                      _mean_se(p["scores"]) if p["scores"] else "—",
                      str(p["seeds"]) + ("" if p["seeds"] >= MIN_SEEDS else " ⚠")] for p in curve["points"]]
        sec.add(*_table(["agent", "env steps", "training time", "normalized score", "seeds"], rows), "")
        if any(p["scores"] for c in methods.values() for p in c["points"]):  # drawn by viz.write_report_figures
            sec.add(f"![fine-tuning curves, {data['task']}](dppo/{path.stem}.png)", "")
        labelled.append((data["task"], _command(data)))
    if not labelled:
        sec.add("No fine-tuning results are committed yet (`diffplan bench dppo` trains them: hours on a 2-core CPU).",
                "")
    path = root / "dppo" / "throughput.json"
    if path.exists():
        d = sec.read("dppo/throughput.json")
        shapes, ours, loop = d["shapes"], d["ours"]["model"], d["ours"]["loop"]
        ref = d.get("reference", {}).get("model", {})
        sec.add(
            "### Throughput beside irom-lab/dppo", "",
            f"Our training loop on {d['task']} ({loop['train_envs']} Subproc envs, {loop['env_steps_per_update']} env "
            f"steps per update, mean of {loop['iterations']} updates):",
            f"collection {loop['collect_env_steps_per_s']:.0f} env steps/s, {loop['update_s_per_iteration']:.1f} s per "
            f"PPO update ({d['minibatches_per_iteration']} minibatches). The rows below time the same work on",
            "synthetic tensors in both implementations (DPPO's own model code, imported without its env stack; the",
            f"same network sizes): one exploring sample of {shapes['envs']} chunks of {shapes['chunk']}x"
            f"{shapes['act_dim']} actions over {shapes['denoising_steps']} DDPM steps, and one PPO minibatch step on",
            f"{shapes['decisions']} decisions x {shapes['ft_steps']} fine-tuned denoising steps (forward, backward, "
            "both Adam steps). One torch thread.",
            "",
        )
        commit = d.get("reference", {}).get("commit", "")
        rows = [["exploring sample (ms)", _num(ours["sample_ms"], 1), _num(ref.get("sample_ms"), 1),
                 _num(d.get("speedup", {}).get("sample"), 2, "x")],
                ["PPO minibatch step (ms)", _num(ours["update_minibatch_ms"], 0), _num(ref.get("update_minibatch_ms"), 0),
                 _num(d.get("speedup", {}).get("update_minibatch"), 2, "x")],
                ["actor / critic parameters", f"{ours['actor_parameters']} / {ours['critic_parameters']}",
                 f"{ref['actor_parameters']} / {ref['critic_parameters']}" if ref else "—", ""]]
        # FLOP counts and the core's GEMM rate (files from before them have neither: no rows, no sentence)
        gemm = d.get("gemm_gflops") if "update_minibatch_gflop" in ours and "update_minibatch_gflop" in ref else None
        if gemm:
            rate = {name: m["update_minibatch_gflop"] / m["update_minibatch_ms"] * 1000
                    for name, m in (("ours", ours), ("ref", ref))}
            rows[2:2] = [["PPO minibatch step GFLOP (matmuls, forward + backward)", _num(ours["update_minibatch_gflop"], 2),
                          _num(ref["update_minibatch_gflop"], 2), ""],
                         ["PPO minibatch step GFLOP/s", _num(rate["ours"], 1), _num(rate["ref"], 1), ""]]
        sec.add(*_table(["", "diffplan", f"irom-lab/dppo{' @ ' + commit[:8] if commit else ''}", "speed-up"], rows))
        if gemm:
            needed = ours["update_minibatch_gflop"] / (ref["update_minibatch_ms"] / 1.5) * 1000
            sec.add(
                "", f"The update is bound by its matrix products. This core multiplies a {gemm['rows']}x{gemm['width']} "
                f"by a {gemm['width']}x{gemm['width']} matrix (the hidden layers' product for one minibatch) at "
                f"{gemm['gflops']:.1f} GFLOP/s: our minibatch step runs at {rate['ours'] / gemm['gflops']:.0%} of that "
                f"rate, the reference's at {rate['ref'] / gemm['gflops']:.0%}. A step 1.5x faster than the reference's "
                f"with our FLOPs would need {needed:.1f} GFLOP/s ({needed / gemm['gflops']:.0%} of the GEMM rate).",
            )
        labelled.append(("throughput", _command(d)))
    while sec.lines[-1] == "":
        sec.lines.pop()
    sec.commands(labelled)
    return sec


SECTIONS: tuple[Callable[[Path], _Section | None], ...] = (
    _quickstart, _maze, _hierarchical, _qactors, _suites, _datasets, _robot, _fastgen, _finetune,
    _scaleout,
)
"""Page sections in order; a section function returns None while it has no results to show."""


def generate(root: Path | str = "benchmarks") -> str:
    """The Markdown page for the JSON results under ``root`` (nothing is written)."""
    root = Path(root)
    lines = _intro(root)
    sections = [sec for make in SECTIONS if (sec := make(root)) is not None]
    lines += ["Contents: " + " · ".join(f"[{s.lines[0][3:]}](#{_anchor(s.lines[0][3:])})" for s in sections), ""]
    for sec in sections:
        lines += sec.render()
    return "\n".join(lines).rstrip("\n") + "\n"


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def write(root: Path | str = "benchmarks", out: Path | str | None = None) -> Path:
    """Generate the page and write it to ``out`` (default ``<root>/README.md``); returns the path."""
    root = Path(root)
    path = Path(out) if out is not None else root / "README.md"
    text = generate(root)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # a reader never sees half a page
    return path
