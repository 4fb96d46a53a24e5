"""Plotting in one place: plans drawn over a maze, learning curves, figures rasterized for TensorBoard.

Maze drawing (:func:`draw_maze`, :func:`plot_plans`) uses matplotlib's Agg canvas directly (no pyplot, no
display) so it is safe in headless training jobs; :func:`figure_to_array` rasterizes any figure. The maze
layouts and coordinates come from :mod:`diffplan.envs.maze` (the env protocol); this module only draws them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from diffplan.envs.maze import MazeTask, get_task, maze_geometry

__all__ = ["draw_maze", "figure_to_array", "plot_learning_curves", "plot_plans"]


def draw_maze(ax, task: str | MazeTask, *, wall_color: str = "0.35") -> None:
    """Draw the task's walls as filled unit squares in the env's xy frame and fit the axes to the maze."""
    from matplotlib.patches import Rectangle

    maze = maze_geometry(get_task(task))
    s = maze.maze_size_scaling
    for r, row in enumerate(maze.maze_map):
        for c, v in enumerate(row):
            if v == 1:
                x, y = maze.cell_rowcol_to_xy(np.array([r, c]))
                ax.add_patch(Rectangle((x - s / 2, y - s / 2), s, s, facecolor=wall_color, edgecolor="none"))
    ax.set_xlim(-maze.x_map_center, maze.x_map_center)
    ax.set_ylim(-maze.y_map_center, maze.y_map_center)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_plans(
    task: str,
    plans: np.ndarray,
    starts: np.ndarray | None = None,
    goals: np.ndarray | None = None,
    executed: Sequence[np.ndarray] | None = None,
    titles: Sequence[str] | None = None,
    subgoals: Sequence[np.ndarray | None] | np.ndarray | None = None,
    *,
    ncols: int | None = None,
    panel_size: float = 2.5,
):
    """A grid of maze panels, one per plan, each plan's xy drawn as dots colored by time (Diffuser style).

    Args:
        task: maze task name.
        plans: (N, H, 2) planned xy positions (or (H, 2) for one plan).
        starts: optional (N, 2) start positions (green circle).
        goals: optional (N, 2) goal positions (red star, with the goal radius as a circle).
        executed: optional list of N (T_i, 2) executed xy paths (thin black line).
        titles: optional N panel titles.
        subgoals: optional N (S_i, 2) subgoal positions of a hierarchical plan (white squares on the plan), or
            None for a panel without them.
        ncols: panels per row (default: about sqrt(N)).
        panel_size: inches per panel.

    Returns:
        A ``matplotlib.figure.Figure`` with an Agg canvas (use :func:`figure_to_array` to rasterize it).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    t = get_task(task)
    plans = np.asarray(plans, dtype=np.float64)
    if plans.ndim == 2:
        plans = plans[None]
    if plans.ndim != 3 or plans.shape[-1] < 2:
        raise ValueError(f"plans must be (N, H, 2), got {plans.shape}")
    n, horizon = plans.shape[:2]
    ncols = ncols or max(1, math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncols)
    maze = maze_geometry(t)
    aspect = maze.map_length / maze.map_width
    fig = Figure(figsize=(panel_size * ncols, panel_size * aspect * nrows + 0.3 * nrows), dpi=80)
    FigureCanvasAgg(fig)  # attach an Agg canvas: rasterizable without pyplot or a display
    axes = fig.subplots(nrows, ncols, squeeze=False)
    time_colors = np.linspace(0.0, 1.0, horizon)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_axis_off()
            continue
        draw_maze(ax, t.name)
        xy = plans[k, :, :2]
        ax.plot(xy[:, 0], xy[:, 1], color="0.6", linewidth=0.6, zorder=2)
        ax.scatter(xy[:, 0], xy[:, 1], c=time_colors, cmap="jet", s=6, zorder=3, linewidths=0)
        if executed is not None and k < len(executed) and executed[k] is not None and len(executed[k]):
            ex = np.asarray(executed[k], dtype=np.float64)
            ax.plot(ex[:, 0], ex[:, 1], color="black", linewidth=1.0, zorder=4)
        if subgoals is not None and k < len(subgoals) and subgoals[k] is not None:
            sg = np.asarray(subgoals[k], dtype=np.float64)[:, :2]
            ax.scatter(sg[:, 0], sg[:, 1], marker="s", s=22, facecolor="white", edgecolor="black", linewidths=0.8,
                       zorder=4)
        if starts is not None:
            ax.plot(
                *np.asarray(starts)[k, :2],
                marker="o",
                color="limegreen",
                markersize=7,
                markeredgecolor="black",
                zorder=5,
            )
        if goals is not None:
            g = np.asarray(goals)[k, :2]
            ax.add_patch(
                Circle(tuple(g), t.goal_radius, fill=False, edgecolor="red", linestyle="--", zorder=4)
            )
            ax.plot(*g, marker="*", color="red", markersize=11, markeredgecolor="black", zorder=5)
        if titles is not None and k < len(titles):
            ax.set_title(str(titles[k]), fontsize=8)
    fig.tight_layout()
    return fig


def figure_to_array(fig) -> np.ndarray:
    """Rasterize a figure to an (H, W, 3) uint8 RGB array (TensorBoard: ``add_image(..., dataformats="HWC")``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3], dtype=np.uint8)


def plot_learning_curves(curves: dict[str, list[dict[str, Any]]]) -> Any:
    """One figure: normalized score (± s.e.) and success rate vs training minutes for each labelled history.

    ``curves``: label -> evaluation history rows (``train_time_s``, ``success_rate``, optional
    ``normalized_score`` / ``normalized_score_se``), as kept in a run's ``results.json``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.5))
    FigureCanvasAgg(fig)  # no pyplot: nothing global to close, safe without a display
    score_ax, success_ax = fig.subplots(1, 2)
    for label, history in curves.items():
        minutes = np.array([h["train_time_s"] / 60 for h in history])
        score = np.array([h.get("normalized_score", np.nan) for h in history])
        se = np.array([h.get("normalized_score_se", 0.0) for h in history])
        score_ax.plot(minutes, score, marker="o", ms=3, label=label)
        score_ax.fill_between(minutes, score - se, score + se, alpha=0.2)
        success_ax.plot(minutes, [h["success_rate"] for h in history], marker="o", ms=3, label=label)
    score_ax.axhline(100, color="grey", lw=0.8, ls="--")
    score_ax.set(xlabel="training minutes", ylabel="normalized score", title="evaluation score (mean ± s.e.)")
    success_ax.set(xlabel="training minutes", ylabel="success rate", ylim=(-0.05, 1.05), title="goal reached")
    score_ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def suite_curves(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Mean ± s.e. over seeds of the learning curves of suite runs (their JSON's ``curve`` points), per task and
    agent: ``{task: {agent: {"steps", "steps_mean", "steps_se", "minutes", "minutes_mean", "minutes_se"}}}``.

    Against gradient steps: the evaluation steps every seed has (seeds evaluate at the same multiples of
    ``eval_every``; a time budget ends them at different steps). Against training minutes: each seed's curve
    interpolated linearly on 25 points over the minutes every seed's evaluations span. One seed: its own curve, s.e. 0.
    """
    grouped: dict[str, dict[str, list[list[dict[str, Any]]]]] = {}
    for run in runs:
        points = [p for p in run.get("curve", []) if p.get("normalized_score") is not None]
        if points:
            grouped.setdefault(run["task"], {}).setdefault(run["agent"], []).append(points)
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for task, agents in sorted(grouped.items()):
        for agent, seeds in agents.items():
            common = sorted(set.intersection(*({p["step"] for p in s} for s in seeds)))
            by_step = np.array([[next(p["normalized_score"] for p in s if p["step"] == st) for st in common]
                                for s in seeds])
            # the span every seed covers: no seed's curve is extended past its own evaluations
            start = max(s[0]["train_time_s"] for s in seeds) / 60
            end = min(s[-1]["train_time_s"] for s in seeds) / 60
            minutes = np.linspace(start, max(start, end), 25)
            by_min = np.array([np.interp(minutes, [p["train_time_s"] / 60 for p in s],
                                         [p["normalized_score"] for p in s]) for s in seeds])
            n = len(seeds)
            out.setdefault(task, {})[agent] = {
                "steps": np.array(common, dtype=float), "steps_mean": by_step.mean(0),
                "steps_se": by_step.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(len(common)),
                "minutes": minutes, "minutes_mean": by_min.mean(0),
                "minutes_se": by_min.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(len(minutes)),
                "seeds": np.array([n]),
            }
    return out


def plot_suite_curves(runs: Sequence[dict[str, Any]]) -> Any | None:
    """One row per task: D4RL-normalized score vs gradient steps and vs training minutes, one line per agent
    with its ± s.e. band over seeds (:func:`suite_curves`); None when no run has curve points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = suite_curves(runs)
    if not curves:
        return None
    fig = Figure(figsize=(11, 3.2 * len(curves)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(curves), 2, squeeze=False)
    # One colour per agent in every panel, so an agent is the same line on every task.
    colors = {agent: f"C{i}" for i, agent in enumerate(sorted({a for agents in curves.values() for a in agents}))}
    for (task, agents), (ax_steps, ax_min) in zip(curves.items(), axes, strict=True):
        for agent, c in agents.items():
            label = f"{agent} ({int(c['seeds'][0])} seed{'s' if c['seeds'][0] > 1 else ''})"
            for ax, x, key in ((ax_steps, c["steps"], "steps"), (ax_min, c["minutes"], "minutes")):
                ax.plot(x, c[f"{key}_mean"], marker="." if key == "steps" else None, label=label, color=colors[agent])
                ax.fill_between(x, c[f"{key}_mean"] - c[f"{key}_se"], c[f"{key}_mean"] + c[f"{key}_se"],
                                color=colors[agent], alpha=0.2)
        ax_steps.set(title=f"{task}: vs gradient steps", xlabel="gradient steps", ylabel="D4RL-normalized score")
        ax_min.set(title=f"{task}: vs training minutes", xlabel="training minutes (CPU)")
        ax_steps.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_fastgen_tradeoff(task: str, rows: Sequence[dict[str, Any]]) -> Any | None:
    """Score vs latency of a ``fastgen/<group>/`` table (:func:`diffplan.report.fastgen_group_rows`): one point
    per (agent, setting) with its ± s.e. bar over seeds, x the batch-1 plan latency (a warm row: its warm
    replan's, what each decision after the first costs), log scale; None when no row has a score."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    from diffplan.report import score_mean_se

    scored = [r for r in rows if r["scores"]]
    if not scored:
        return None
    fig = Figure(figsize=(7.5, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colors: dict[str, str] = {}
    for i, r in enumerate(scored):
        mean, se = score_mean_se(r["scores"])
        x = r["warm_ms"] if r["warm_ms"] is not None else r["plan_ms"]
        label = None if r["agent"] in colors else r["agent"]  # one legend entry per agent
        color = colors.setdefault(r["agent"], f"C{len(colors)}")
        ax.errorbar([x], [mean], yerr=[se], fmt="o", color=color, capsize=3, label=label)
        # Labels alternate above and below their points: neighbouring settings often sit close together.
        ax.annotate(r["setting"], (x, mean), textcoords="offset points", xytext=(4, 5 if i % 2 == 0 else -11),
                    fontsize=7)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    seeds = sorted({len(r["seeds"]) for r in scored})
    ax.set(title=f"{task}: score vs latency ({'/'.join(map(str, seeds))} seed(s) per point, ± s.e.)",
           xlabel="plan latency at batch 1, ms (median; warm rows: the warm replan)", ylabel="normalized score")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_finetune_curves(task: str, methods: dict[str, dict[str, Any]]) -> Any | None:
    """Online fine-tuning curves of a ``bench dppo`` result (:func:`diffplan.report.finetune_curve_rows`):
    normalized score (mean ± s.e. over seeds) against env steps and against training minutes, one line per method,
    its pre-trained policy's own score dashed; None when no point has a score."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not any(p["scores"] for m in methods.values() for p in m["points"]):
        return None
    fig = Figure(figsize=(11, 3.6))
    FigureCanvasAgg(fig)
    ax_steps, ax_min = fig.subplots(1, 2, sharey=True)
    for i, (agent, m) in enumerate(methods.items()):
        points = [p for p in m["points"] if p["scores"]]
        mean = np.array([np.mean(p["scores"]) for p in points])
        se = np.array([np.std(p["scores"], ddof=1) / np.sqrt(len(p["scores"])) if len(p["scores"]) > 1 else 0.0
                       for p in points])
        seeds = max(p["seeds"] for p in points)
        label = f"{agent} from {m['pretrained_from']} ({seeds} seed{'s' if seeds > 1 else ''})"
        for ax, x in ((ax_steps, [p["env_steps"] for p in points]), (ax_min, [p["minutes"] for p in points])):
            ax.plot(x, mean, marker="o", ms=3, color=f"C{i}", label=label)
            ax.fill_between(x, mean - se, mean + se, color=f"C{i}", alpha=0.2)
            if m["pretrained"]:
                ax.axhline(float(np.mean(m["pretrained"])), color=f"C{i}", lw=0.8, ls="--")
    ax_steps.set(title=f"{task}: vs env steps", xlabel="env steps", ylabel="D4RL-normalized score")
    ax_min.set(title=f"{task}: vs training minutes", xlabel="training minutes (evaluations excluded)")
    ax_steps.legend(fontsize=8, title="dashed: pre-trained run's own score", title_fontsize=7)
    fig.tight_layout()
    return fig


def _write_png(fig: Any, path: Any) -> bool:
    """Save ``fig`` to ``path`` only when the image changed (same bytes again: no version stamp), so that
    regenerating an unchanged page leaves the tree clean; whether it was written."""
    import io

    from diffplan.checkpoint import write_bytes_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    if path.exists() and path.read_bytes() == buf.getvalue():
        return False
    write_bytes_atomic(path, buf.getvalue())
    return True


def write_report_figures(root: Any = "benchmarks") -> list[Any]:
    """Draw every committed suite's curves to ``<root>/suites/<name>/curves.png`` and every fastgen group's
    score-vs-latency figure to ``<root>/fastgen/<group>/tradeoff.png`` and every online fine-tuning result's
    curves to ``<root>/dppo/<task>.png`` (each rewritten only when the image changed); returns the paths written."""
    import json
    from pathlib import Path

    from diffplan.report import fastgen_group_rows, finetune_curve_rows, suite_results

    written = []
    for name, runs in suite_results(root).items():
        fig = plot_suite_curves([data for _, data in runs])
        path = Path(root) / "suites" / name / "curves.png"
        if fig is not None and _write_png(fig, path):
            written.append(path)
    for group in sorted(p for p in (Path(root) / "fastgen").glob("*") if p.is_dir()):
        results = [(str(f), json.loads(f.read_text())) for f in sorted(group.glob("*.json"))]
        if not results:
            continue
        fig = plot_fastgen_tradeoff(*fastgen_group_rows(group.name, results))
        if fig is not None and _write_png(fig, group / "tradeoff.png"):
            written.append(group / "tradeoff.png")
    for result in sorted((Path(root) / "dppo").glob("*.json")):
        data = json.loads(result.read_text())
        if data.get("benchmark") != "dppo":  # the throughput file
            continue
        fig = plot_finetune_curves(data["task"], finetune_curve_rows(data))
        if fig is not None and _write_png(fig, result.with_suffix(".png")):
            written.append(result.with_suffix(".png"))
    return written
