"""benchmarks/README.md is what ``diffplan bench report`` makes of the committed JSON, and its rows aggregate right."""

import json
import math
import shutil
from pathlib import Path

import pytest

from diffplan.report import ReportError, RunResult, aggregate, format_score, generate
from diffplan.viz import write_report_figures

ROOT = Path(__file__).resolve().parents[1]


def test_committed_page_equals_the_generated_one():
    committed = (ROOT / "benchmarks" / "README.md").read_text()
    assert generate(ROOT / "benchmarks") == committed, (
        "benchmarks/README.md is out of date with the JSON results: run `diffplan bench report` and commit it"
    )


def _result(seed: int, score: float, se: float = 1.0, **kw) -> dict:
    """A results.json as a training run writes it (only the fields the report reads)."""
    return {
        "agent": "diffuser", "task": "hopper-medium", "dataset": "minari:diffplan/hopper-medium-v0",
        "seed": seed, "gradient_steps": 100 * (seed + 1), "train_time_s": 480.0 + seed,
        "final": {"episodes": 20, "normalized_score": score, "normalized_score_se": se, "length_mean": 100.0},
        **kw,
    }


def _runs(results: list[dict]) -> list[RunResult]:
    from diffplan.report import _run_result

    return [_run_result(f"r{i}.json", r) for i, r in enumerate(results)]


def test_two_seeds_of_one_setting_make_one_row_with_the_standard_error_over_seeds():
    rows = aggregate(_runs([_result(1, 37.0, se=1.2), _result(0, 74.0, se=7.7)]))
    assert len(rows) == 1
    row = rows[0]
    assert row.seeds == [0, 1]
    assert row.score_mean == pytest.approx(55.5)
    # stdev([74, 37]) / sqrt(2) = |74 - 37| / 2, not the per-episode standard errors
    assert row.score_se == pytest.approx(18.5)
    assert row.mean("gradient_steps") == pytest.approx(150)
    assert format_score(row) == "55.5 ± 18.5 (s0 74.0, s1 37.0)"


def test_one_seed_keeps_the_episode_standard_error():
    (row,) = aggregate(_runs([_result(0, 30.66, se=0.04)]))
    assert row.seeds == [0] and format_score(row) == "30.7 ± 0.0"


def test_rows_split_by_variant_dataset_and_budget():
    results = [
        _result(0, 10.0),
        _result(1, 20.0, variant="public config"),
        _result(0, 30.0, dataset="minari:diffplan/walker2d-medium-v0"),
        _result(0, 40.0, train_time_s=720.0),
    ]
    rows = aggregate(_runs(results))
    assert [len(r.runs) for r in rows] == [1, 1, 1, 1]


def test_a_repeated_seed_is_refused():
    with pytest.raises(ReportError, match="repeated seed"):
        aggregate(_runs([_result(0, 10.0), _result(0, 11.0)]))


def test_missing_field_names_the_file():
    from diffplan.report import _run_result

    broken = _result(0, 1.0)
    del broken["final"]["normalized_score"]
    with pytest.raises(ReportError, match="broken.json: missing field 'normalized_score'"):
        _run_result("broken.json", broken)


def test_a_third_seed_file_changes_the_page(tmp_path):
    """A per-seed JSON dropped beside a suite's runs lands in the same row: mean ± s.e. over the three seeds, the
    seed listed, and the "fewer than 3" warning gone."""
    import shutil
    import statistics

    root = tmp_path / "benchmarks"
    shutil.copytree(ROOT / "benchmarks", root)
    shutil.copytree(ROOT / "tests" / "artifacts" / "suite-fixture" / "suites" / "tiny", root / "suites" / "tiny")
    folder = root / "suites" / "tiny" / "hopper-medium"
    src = json.loads((folder / "bc-s1.json").read_text())
    third = {**src, "seed": 2, "eval": {**src["eval"], "normalized_score": src["eval"]["normalized_score"] + 3}}
    (folder / "bc-s2.json").write_text(json.dumps(third))
    scores = [json.loads((folder / f"bc-s{s}.json").read_text())["eval"]["normalized_score"] for s in range(3)]
    page = generate(root)
    row = next(line for line in page.splitlines() if line.startswith("| bc | tiny |"))
    mean, se = statistics.fmean(scores), statistics.stdev(scores) / math.sqrt(3)
    assert f"| {mean:.1f} ± {se:.1f} |" in row and f"s2 {scores[2]:.1f}" in row, row
    assert "fewer than 3" not in row


def test_cli_writes_the_page(tmp_path):
    from diffplan.cli import main

    out = tmp_path / "page.md"
    assert main(["bench", "report", str(ROOT / "benchmarks"), "--out", str(out)]) == 0
    assert out.read_text() == (ROOT / "benchmarks" / "README.md").read_text()


def test_a_sweep_summary_groups_seeds_by_setting_and_renders_as_a_table(tmp_path):
    """`diffplan sweep`'s summary (diffplan.sweep.summarize) groups runs by setting with the report's rule."""
    from diffplan.report import sweep_table
    from diffplan.sweep import SweepRun, summarize

    def run(setting: str, seed: int, score: float) -> SweepRun:
        r = SweepRun(name=f"{setting},seed={seed}", overrides=[], setting=setting, run_dir=tmp_path / f"{setting}{seed}",
                     config_yaml="", num_cpus=1, num_gpus=0, seed=seed)
        r.result = {"status": "trained", "results": {**_result(seed, score), "task": "hopper-medium", "updates": 1}}
        return r

    runs = [run("lr=0.001", 0, 10.0), run("lr=0.001", 1, 20.0), run("lr=0.0003", 0, 40.0)]
    failed = SweepRun(name="lr=0.0003,seed=1", overrides=[], setting="lr=0.0003", run_dir=tmp_path / "f",
                      config_yaml="", num_cpus=1, num_gpus=0, seed=1, result={"status": "failed", "error": "boom"})
    summary = summarize([*runs, failed], "diffplan sweep diffuser lr=0.001,0.0003 seed=0,1")
    assert summary["failed"] == 1
    first, second = summary["groups"]
    assert first["setting"] == "lr=0.001" and first["seeds"] == [0, 1]
    assert first["mean"] == pytest.approx(15.0) and first["se"] == pytest.approx(5.0)
    assert second["seeds"] == [0] and second["se"] == pytest.approx(1.0)  # one seed: the episode s.e.
    lines = sweep_table(summary)
    assert "| diffuser | hopper-medium | lr=0.001 | normalized score | 15.0 ± 5.0 | s0 10.0, s1 20.0 | 2 ⚠ |" in lines
    assert lines[-1] == "Failed runs (not in the rows): lr=0.0003,seed=1."


def _hier_json(agent: str, seed: int, score: float, end: float | None) -> dict:
    """A ``bench maze --plan-to-end --plan-latency`` result (the fields the report reads)."""
    ev = {"episodes": 100, "normalized_score": score, "normalized_score_se": 4.0, "success_rate": score / 100}
    out = {
        "benchmark": "maze", "task": "pointmaze-medium", "agent": agent, "seed": seed, "train_time_s": 3600.0,
        "gradient_steps": 9000, "steps_per_s": 2.5, "execution": f"{agent} execution", "planner": ev,
        "planner_hard": {"normalized_score": score / 2, "success_rate": 0.25},
        "go_to_goal_baseline": {**ev, "normalized_score": 60.9, "success_rate": 0.52}, "hard_episodes": 48,
        "plan_latency": {"plan_ms_median": 40.0 if agent == "hierarchical" else 120.0},
        "command": f"diffplan bench maze runs/{agent}-s{seed}",
    }
    if end is not None:
        out["plan_to_end"] = {**ev, "normalized_score": end, "execution": "then brake", "hard": {"normalized_score": 1.0}}
    return out


def test_hierarchical_section_aggregates_seeds_and_shows_the_plan_to_end_score(tmp_path):
    import shutil

    root = tmp_path / "benchmarks"
    shutil.copytree(ROOT / "benchmarks", root)
    shutil.rmtree(root / "hierarchical", ignore_errors=True)
    assert "hierarchical vs flat" not in generate(root)  # no results: no section
    (root / "hierarchical").mkdir(exist_ok=True)
    for name, d in {"h0": _hier_json("hierarchical", 0, 80.0, 70.0), "h1": _hier_json("hierarchical", 1, 70.0, 60.0),
                    "d0": _hier_json("diffuser", 0, 65.0, None)}.items():
        (root / "hierarchical" / f"{name}.json").write_text(json.dumps(d))
    page = generate(root)
    section = page.split("## Maze: hierarchical vs flat planner")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| pointmaze-medium")]
    assert len(rows) == 2 and "| diffuser |" in rows[0] and "| hierarchical |" in rows[1]  # flat planner first
    cells = [c.strip() for c in rows[1].strip("|").split("|")]
    assert cells[3] == "2 ⚠" and cells[6] == "40"  # two seeds; plan ms
    assert cells[7] == "75.0 ± 5.0 (s0 80.0, s1 70.0)" and cells[10] == "65.0 ± 5.0"  # over seeds, both scores
    assert cells[13] == "60.9 ± 4.0"  # the one baseline on the same episodes: its episode s.e., not 0 over seeds
    assert [c.strip() for c in rows[0].strip("|").split("|")][10] == "—"  # not measured: a dash, not a zero
    assert "hierarchical execution; plan to end: then brake" in section


def test_a_finetuning_result_renders_as_curves_beside_the_baseline(tmp_path):
    """``diffplan bench dppo`` JSON: a pre-training row and one row per evaluation point for each method."""
    root = tmp_path / "benchmarks"
    shutil.copytree(ROOT / "benchmarks", root)

    def point(steps, minutes, score):
        return {"env_steps": steps, "train_time_s": 60.0 * minutes, "normalized_score": score,
                "normalized_score_se": 1.0, "return_mean": 0.0, "episodes": 10}

    curves = {agent: [{"seed": s, "updates": 2, "env_steps": 2000,
                       "points": [point(0, 0, base), point(1000, 1, base + gain + s), point(2000, 2, base + 2 * gain + s)]}
                      for s in (0, 1, 2)] for agent, base, gain in (("dppo", 40.0, 10.0), ("ppo", 45.0, -5.0))}
    pretrained = {a: [{"seed": s, "normalized_score": v + s} for s in (0, 1, 2)] for a, v in (("diffusion_bc", 40.0),
                                                                                           ("bc", 45.0))}
    (root / "dppo" / "walker2d-medium.json").write_text(json.dumps({
        "benchmark": "dppo", "task": "walker2d-medium", "pretrained": pretrained, "curves": curves,
        "command": "diffplan bench dppo task=walker2d-medium", "date": "2026-12-01", "machine": "test",
    }))
    page = generate(root)
    assert "### walker2d-medium (`dppo/walker2d-medium.json`)" in page
    assert "| diffusion_bc (pre-training) | — | — | 41.0 ± 0.6 | 3 |" in page
    assert "| dppo | 2000 | 2.0 min | 61.0 ± 0.6 | 3 |" in page
    assert "| ppo | 1000 | 1.0 min | 41.0 ± 0.6 | 3 |" in page
    # the figure the page shows is drawn from the same rows, once (unchanged data: not rewritten)
    assert "![fine-tuning curves, walker2d-medium](dppo/walker2d-medium.png)" in page
    assert write_report_figures(root) == [root / "dppo" / "walker2d-medium.png"]
    assert (root / "dppo" / "walker2d-medium.png").read_bytes()[:4] == b"\x89PNG"
    assert write_report_figures(root) == []


def test_the_throughput_section_states_each_updates_flop_rate_against_the_cores_gemm_rate(tmp_path):
    """``bench dppo-throughput`` JSON with FLOP counts: the rate of each minibatch step, its share of the core's
    GEMM rate and the rate a 1.5x speed-up would need, all computed from the JSON."""
    root = tmp_path / "benchmarks"
    shutil.copytree(ROOT / "benchmarks", root)
    data = json.loads((root / "dppo" / "throughput.json").read_text())
    data["ours"]["model"].update(update_minibatch_ms=250.0, update_minibatch_gflop=15.0)  # 60 GFLOP/s
    data["reference"]["model"].update(update_minibatch_ms=300.0, update_minibatch_gflop=15.0)  # 50 GFLOP/s
    data["gemm_gflops"] = {"rows": 5000, "width": 512, "gflops": 80.0}
    (root / "dppo" / "throughput.json").write_text(json.dumps(data))
    section = generate(root).split("### Throughput beside irom-lab/dppo")[1].split("\n## ")[0]
    assert "| PPO minibatch step GFLOP/s | 60.0 | 50.0 |  |" in section
    assert "| PPO minibatch step GFLOP (matmuls, forward + backward) | 15.00 | 15.00 |  |" in section
    # 1.5x the reference: 15 GFLOP in 200 ms, 75 GFLOP/s, 94% of the core's 80
    assert "our minibatch step runs at 75% of that rate, the reference's at 62%" in section
    assert "would need 75.0 GFLOP/s (94% of the GEMM rate)" in section
    del data["gemm_gflops"]  # a file from before the FLOP count: the rows it has, no sentence
    (root / "dppo" / "throughput.json").write_text(json.dumps(data))
    assert "GFLOP" not in generate(root).split("### Throughput beside irom-lab/dppo")[1].split("\n## ")[0]


def _fastgen_json(agent, seed, task="pointmaze-large", scores=(60.0, 50.0), episodes=50):
    settings = {}
    for (name, overrides), score in zip([("ddim-10", ["torch_threads=1"]), ("dpm-3", ["sampler=dpmsolver++"])], scores):
        settings[name] = {"overrides": overrides, "plan_ms_median": 40.0 + seed, "plan_ms_p95": 50.0 + seed,
                          "model_calls": {"cold": 10}, "normalized_score": score, "normalized_score_se": 3.0,
                          "success_rate": 0.5, "episodes": episodes}
    return {"benchmark": "fastgen", "command": f"diffplan bench fastgen runs/{agent}-s{seed}", "run": f"runs/{agent}-s{seed}",
            "task": task, "agent": agent, "seed": seed, "gradient_steps": 1000, "repeats": 20, "settings": settings,
            "date": "2026-12-01", "machine": "test"}


def test_a_fastgen_folder_is_one_table_averaged_over_seeds(tmp_path, capsys):
    from diffplan.cli import main

    root = tmp_path / "benchmarks"
    shutil.copytree(ROOT / "benchmarks", root)
    group = root / "fastgen" / "large-sweep"
    group.mkdir()
    for name, d in {"h0": _fastgen_json("hierarchical", 0, scores=(80.0, 70.0)),
                    "h1": _fastgen_json("hierarchical", 1, scores=(90.0, 60.0)), "d0": _fastgen_json("diffuser", 0)}.items():
        (group / f"{name}.json").write_text(json.dumps(d))
    section = generate(root).split("### pointmaze-large: `large-sweep`, 3 trained runs")[1].split("\n### ")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| ")]
    assert [r[:3] for r in rows[1:]] == [["diffuser", "ddim-10", "0 ⚠"], ["diffuser", "dpm-3", "0 ⚠"],
                                         ["hierarchical", "ddim-10", "0, 1 ⚠"], ["hierarchical", "dpm-3", "0, 1 ⚠"]]
    assert rows[3][5] == "40 / 50" and rows[3][7] == "85.0 ± 5.0"  # latency and score averaged over the seeds
    assert rows[4][5] == "40 / 50" and rows[4][7] == "65.0 ± 5.0" and rows[1][7] == "60.0 ± 3.0"
    # bad folders are one clear error naming the folder or the file
    (group / "h1.json").write_text(json.dumps(_fastgen_json("hierarchical", 1, episodes=20)))
    with pytest.raises(ReportError, match="hierarchical ddim-10: runs differ in overrides or episodes"):
        generate(root)
    (group / "h1.json").write_text(json.dumps(_fastgen_json("hierarchical", 0)))
    with pytest.raises(ReportError, match="seed repeated"):
        generate(root)
    (group / "h1.json").write_text(json.dumps(_fastgen_json("hierarchical", 1, task="pointmaze-medium")))
    with pytest.raises(ReportError, match="runs of different tasks"):
        generate(root)
    (group / "h1.json").write_text(json.dumps({**_fastgen_json("hierarchical", 1), "seed": None}))
    with pytest.raises(ReportError, match="h1.json: not a `bench fastgen` result naming its agent and seed"):
        generate(root)
    # ... and from the command line one line, no traceback, the page untouched
    page = (root / "README.md").read_text()
    assert main(["bench", "report", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffplan: error: ") and "h1.json: not a `bench fastgen` result" in err
    assert len(err.strip().splitlines()) == 1 and (root / "README.md").read_text() == page
    # an empty folder (a benchmark still filling it) makes no table
    for path in group.glob("*.json"):
        path.unlink()
    assert "large-sweep" not in generate(root)


def test_a_fastgen_folder_gets_its_score_vs_latency_figure(tmp_path):
    """``bench report`` draws each fastgen folder's rows as score vs latency (``tradeoff.png``, on the page), one
    point per (agent, setting) at the seeds' mean latency and score, and leaves an unchanged figure untouched."""
    from diffplan.cli import main
    from diffplan.report import fastgen_group_rows
    from diffplan.viz import plot_fastgen_tradeoff

    root = tmp_path / "benchmarks"
    shutil.copytree(ROOT / "benchmarks", root)
    group = root / "fastgen" / "large-sweep"
    group.mkdir()
    results = {"h0": _fastgen_json("hierarchical", 0, scores=(80.0, 70.0)),
               "h1": _fastgen_json("hierarchical", 1, scores=(90.0, 60.0)), "d0": _fastgen_json("diffuser", 0)}
    for name, d in results.items():
        (group / f"{name}.json").write_text(json.dumps(d))
    task, rows = fastgen_group_rows("large-sweep", list(results.items()))
    ax = plot_fastgen_tradeoff(task, rows).axes[0]
    points = sorted((float(ln.get_xdata()[0]), float(ln.get_ydata()[0])) for ln in ax.lines if ln.get_marker() == "o")
    assert points == [(40.0, 50.0), (40.0, 60.0), (40.5, 65.0), (40.5, 85.0)]
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["diffuser", "hierarchical"]

    assert main(["bench", "report", str(root)]) == 0
    png = group / "tradeoff.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    assert "![score vs latency, large-sweep](fastgen/large-sweep/tradeoff.png)" in (root / "README.md").read_text()
    before = png.stat().st_mtime_ns
    assert main(["bench", "report", str(root)]) == 0 and png.stat().st_mtime_ns == before


def test_bridge_results_of_several_trained_planners_share_a_row(tmp_path):
    """Fast-setting bridge results of other training seeds (distinct runs, same robot and overrides) are one row:
    returns averaged over the planners, each planner's own bridged-vs-synchronous percentage kept."""
    root = tmp_path / "benchmarks"
    shutil.copytree(ROOT / "benchmarks", root)
    for extra in (root / "fastgen").glob("deploy_20hz_dpm3_cold_s*.json"):  # the committed other seeds
        extra.unlink()
    first = json.loads((root / "fastgen" / "deploy_20hz_dpm3_cold.json").read_text())
    other = {**first, "run": "runs/fastgen-qs-s1", "bridged_return": {"mean": 100.0, "se": 5.0},
             "in_process_return": {"mean": 120.0, "se": 4.0}, "bridged_vs_in_process_pct": -20.0}
    (root / "fastgen" / "deploy_20hz_dpm3_cold_s1.json").write_text(json.dumps(other))
    section = generate(root).split("### Through the robot bridge with the fast settings")[1].split("\n## ")[0]
    row = next(ln for ln in section.splitlines()
               if ln.startswith("| pointmaze-umaze at 20 Hz | sampler=dpmsolver++ sampling_steps=3 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    mean = (first["bridged_return"]["mean"] + 100.0) / 2
    se = abs(first["bridged_return"]["mean"] - 100.0) / 2  # two values: stdev / sqrt(2) = |a - b| / 2
    assert cells[2] == "2 ⚠" and cells[6] == f"{mean:.1f} ± {se:.1f}"
    pct = (first["bridged_vs_in_process_pct"] - 20.0) / 2
    assert cells[8] == f"{pct:+.0f}% ({first['bridged_vs_in_process_pct']:+.0f}, -20)"
    (root / "fastgen" / "deploy_20hz_dpm3_cold_s1.json").write_text(json.dumps({**other, "run": first["run"]}))
    with pytest.raises(ReportError, match="the same trained run twice"):
        generate(root)
