"""Collect the locomotion benchmark JSONs written by ``run.sh`` into one table.

Usage (repository root): ``python benchmarks/locomotion/summarize.py [--out benchmarks/locomotion/summary.json]``.
Prints a Markdown table (dataset x agent: normalized score mean ± s.e., episodes, training wall time, gradient
steps, decision latency at batch 1 per env step, median and mean: a planner that replans every k steps has a
near-zero median and pays the plan every k-th step) and writes the same rows as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
AGENT_ORDER = ("bc", "td3bc", "cql", "diffusion_ql", "idql", "diffuser", "decision_diffuser")


def collect(folder: Path = HERE) -> list[dict]:
    """One row per ``<agent>-<task>[tag].json`` result file (latency files are merged into their row)."""
    rows = []
    for path in sorted(folder.glob("*.json")):
        if path.stem.endswith("-latency") or path.name == "summary.json":
            continue
        result = json.loads(path.read_text())
        if "final" not in result:
            continue
        final = result["final"]
        latency_path = path.with_name(path.stem + "-latency.json")
        latency = json.loads(latency_path.read_text()) if latency_path.exists() else {}
        rows.append(
            {
                "file": path.name,
                "agent": result["agent"],
                "task": result["task"],
                "dataset": result["dataset"],
                "normalized_score": final.get("normalized_score"),
                "normalized_score_se": final.get("normalized_score_se"),
                "episodes": final.get("episodes"),
                "episode_length_mean": final.get("length_mean"),
                "train_time_s": result.get("train_time_s"),
                "gradient_steps": result.get("gradient_steps"),
                "decision_ms_median": latency.get("decision_ms_median", latency.get("plan_ms_median")),
                "decision_ms_mean": latency.get("decision_ms_mean", latency.get("plan_ms_median")),
                "plan_ms_median": latency.get("plan_ms_median"),
            }
        )
    order = {a: i for i, a in enumerate(AGENT_ORDER)}
    rows.sort(key=lambda r: (r["dataset"], order.get(r["agent"], len(order))))
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        (
            "| dataset | agent | normalized score | episodes | episode length | train | gradient steps "
            "| decision ms (median / mean) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        score = "—" if r["normalized_score"] is None else f"{r['normalized_score']:.1f} ± {r['normalized_score_se']:.1f}"
        latency = "—"
        if r["decision_ms_median"] is not None:
            latency = f"{r['decision_ms_median']:.1f} / {r['decision_ms_mean']:.1f}"
        dataset = r["dataset"].removeprefix("minari:diffplan/")
        lines.append(
            f"| {dataset} | {r['agent']} | {score} | {r['episodes']} | {r['episode_length_mean']:.0f} | "
            f"{r['train_time_s'] / 60:.1f} min | {r['gradient_steps']} | {latency} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "summary.json")
    args = parser.parse_args()
    rows = collect()
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(args.out)  # atomic: a reader never sees half a file
    print(markdown(rows))


if __name__ == "__main__":
    main()
