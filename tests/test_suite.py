"""``diffplan bench suite``: a tiny suite end to end (2 agents x 1 task x 2 seeds on a real Hopper dataset), its
resume and skip, one JSON per run, the report section it makes, and bad suite files / output folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from diffplan.cli import main
from diffplan.report import (
    ReportError,
    _episodes_key,
    _suite_run,
    aggregate,
    generate,
    score_target_line,
    suite_results,
    suite_tables,
)
from diffplan.suite import SuiteError, load_suite, run_suite

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "artifacts" / "suite-fixture"
"""A committed real run of the tiny suite below (not a benchmark result): the notebook and the report test
read it. Regenerate: ``python -m tests.test_suite`` (see :func:`_make_fixture`)."""

TINY_NET = {"hidden": [16, 16], "batch_size": 8, "eval_every": 2, "checkpoint_every": 2, "log_every": 2}


def _suite_file(tmp_path: Path, dataset: str, **changes) -> Path:
    spec = {
        "name": "tiny",
        "description": "2 agents x 1 task x 2 seeds, 4 gradient steps: a test of the machinery, not a benchmark",
        "seeds": [0, 1],
        "budget": {"gradient_steps": 4},
        "eval": {"episodes": 2, "envs": 2, "curve_episodes": 2},
        "latency_steps": 5,
        "tasks": {"hopper-medium": {"dataset": dataset}},
        "agents": {"bc": {"settings": "tiny", "overrides": dict(TINY_NET)},
                   "td3bc": {"settings": "tiny", "overrides": dict(TINY_NET)}},
    }
    spec.update(changes)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(path: Path, out: Path, runs: Path, **kw):
    lines: list[str] = []
    result = run_suite(path, out=out, runs_dir=runs, parallel=kw.pop("parallel", 0), echo=lines.append, **kw)
    return result, lines


def test_tiny_suite_end_to_end_skip_resume_and_one_json_per_run(tiny_hopper_dataset, tmp_path, monkeypatch):
    path = _suite_file(tmp_path, tiny_hopper_dataset)
    out, runs = tmp_path / "bench" / "suites" / "tiny", tmp_path / "runs"

    # td3bc seed 1 is interrupted after its step-2 checkpoint: reported failed, the other runs go on.
    from diffplan.training import loop

    real_step, calls = loop.OfflineSteps.step, {"n": 0}

    def dies_once(self):
        if self.exp.cfg.agent == "td3bc" and self.exp.cfg.seed == 1:
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("killed")
        return real_step(self)

    monkeypatch.setattr(loop.OfflineSteps, "step", dies_once)
    result, lines = _run(path, out, runs)
    assert result["failed"] == 1 and result["runs"]["hopper-medium/td3bc-s1"] == "failed"
    assert "RuntimeError: killed" in "\n".join(lines)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json"))
    assert files == ["hopper-medium/bc-s0.json", "hopper-medium/bc-s1.json", "hopper-medium/td3bc-s0.json"]

    # Again: finished runs are skipped (their JSON untouched), the interrupted one resumes at step 2.
    monkeypatch.setattr(loop.OfflineSteps, "step", real_step)
    before = {f: (out / f).read_bytes() for f in files}
    dry, _ = _run(path, out, runs, dry_run=True)
    assert dry["runs"]["hopper-medium/td3bc-s1"] == "resume from step 2"
    result, _ = _run(path, out, runs)
    assert result["failed"] == 0 and result["runs"]["hopper-medium/td3bc-s1"] == "trained"
    assert all((out / f).read_bytes() == data for f, data in before.items())
    resumed = json.loads((out / "hopper-medium/td3bc-s1.json").read_text())
    attempts = json.loads((runs / "hopper-medium/td3bc-s1/sweep_attempts.json").read_text())
    assert [a["resumed_from_step"] for a in attempts] == [0, 2] and resumed["execution"]["attempts"] == 2

    # The resumed run equals an uninterrupted one: the same per-episode returns on the same episodes.
    straight, _ = _run(path, tmp_path / "straight", tmp_path / "straight-runs", only="*/td3bc-s1")
    assert straight["runs"] == {"hopper-medium/td3bc-s1": "trained"}
    again = json.loads((tmp_path / "straight/hopper-medium/td3bc-s1.json").read_text())
    assert again["eval"]["returns"] == resumed["eval"]["returns"]

    # One JSON per run with what the table needs; every run on the same episodes and budget.
    runs_json = [json.loads(p.read_text()) for p in sorted(out.rglob("*.json"))]
    assert len(runs_json) == 4
    for d in runs_json:
        assert d["kind"] == "suite-run" and d["gradient_steps"] == 4 and d["budget"]["gradient_steps"] == 4
        assert len(d["eval"]["returns"]) == len(d["eval"]["normalized_scores"]) == 2
        assert d["eval"]["normalized_score"] == pytest.approx(sum(d["eval"]["normalized_scores"]) / 2)
        assert (d["eval"]["protocol_seed"], d["eval"]["eval_envs"]) == (runs_json[0]["eval"]["protocol_seed"], 2)
        assert [p["step"] for p in d["curve"]] == [2, 4]
        assert d["decision_ms"]["steps"] == 5 and d["decision_ms"]["p95"] >= d["decision_ms"]["median"] > 0
        assert d["dataset_metadata"]["ref_max_score"] > d["dataset_metadata"]["ref_min_score"]
        assert len(d["load_avg_start"]) == 3 and d["execution"]["config"]["torch_threads"] == 1
        assert d["train_command"].startswith("diffplan train ")

    # The report: the section is a function of the JSON alone, one row per agent over both seeds.
    section = suite_tables(suite_results(tmp_path / "bench")["tiny"])
    assert section == suite_tables(suite_results(tmp_path / "bench")["tiny"])
    rows = [ln for ln in section if ln.startswith(("| bc ", "| td3bc "))]
    assert len(rows) == 2 and all("2 ⚠ (fewer than 3)" in r for r in rows)
    assert "59.3" in rows[1]  # TD3+BC's paper number beside ours


def test_changed_act_overrides_evaluate_a_trained_run_again_without_training_it(tiny_hopper_dataset, tmp_path):
    """``act``: execution settings for the final evaluation only. Changing them re-evaluates the finished run on
    the same protocol episodes (its training untouched); the JSON says which settings scored and keeps the
    training's own final score beside."""
    from diffplan.suite import RESERVED
    from diffplan.training import eval_run

    from .conftest import TINY_VALUE_DIFFUSER

    tiny = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in TINY_VALUE_DIFFUSER) if k not in RESERVED}
    agents = {"diffuser": {"settings": "tiny", "overrides": {**tiny, "eval_every": 2, "checkpoint_every": 2}}}
    out, runs = tmp_path / "out", tmp_path / "runs"
    run_dir, json_path = runs / "hopper-medium/diffuser-s0", out / "hopper-medium/diffuser-s0.json"
    result, _ = _run(_suite_file(tmp_path, tiny_hopper_dataset, seeds=[0], agents=agents), out, runs)
    assert result["runs"] == {"hopper-medium/diffuser-s0": "trained"}
    first = json.loads(json_path.read_text())
    assert first["act"] == [] and "trained_final" not in first
    trained = (run_dir / "results.json").read_bytes()

    agents["diffuser"]["act"] = {"sampler": "ddim", "ddim_eta": 1, "sampling_steps": 2}
    path = _suite_file(tmp_path, tiny_hopper_dataset, seeds=[0], agents=agents)
    dry, lines = _run(path, out, runs, dry_run=True)
    assert dry["runs"] == {"hopper-medium/diffuser-s0": "trained (to evaluate again: act changed)"}
    assert "act: ddim_eta=1 sampler=ddim sampling_steps=2" in "\n".join(lines)
    result, _ = _run(path, out, runs)
    assert result["runs"] == {"hopper-medium/diffuser-s0": "skipped"}  # not trained again
    assert (run_dir / "results.json").read_bytes() == trained
    second = json.loads(json_path.read_text())
    assert second["act"] == ["ddim_eta=1", "sampler=ddim", "sampling_steps=2"]
    assert second["trained_final"]["normalized_score"] == first["eval"]["normalized_score"]
    assert second["gradient_steps"] == first["gradient_steps"] and second["curve"] == first["curve"]
    assert _episodes_key(second) == _episodes_key(first) and second["eval"]["returns"] != first["eval"]["returns"]
    # The score is the trained run's under those settings, on the protocol episodes: `diffplan eval` with them
    # (the command the page shows) gives it again.
    summary = eval_run(run_dir, 2, ["torch_threads=1", *second["act"]])
    assert summary["return_mean"] == pytest.approx(second["eval"]["return_mean"])
    # The table says which rows acted with `act` settings and what the training config's execution scored.
    note = [ln for ln in suite_tables([("diffuser-s0.json", second)]) if "`act`" in ln]
    assert len(note) == 1 and f"diffuser {first['eval']['normalized_score']:.1f}." in note[0]
    # ... and the page's command for the row is the training, then the evaluation that scored it.
    from diffplan.report import _suite_run_command

    command = _suite_run_command(second)
    assert command.startswith("diffplan train ") and command.endswith(
        f" && diffplan eval {run_dir.absolute()} --episodes 2 ddim_eta=1 sampler=ddim sampling_steps=2 torch_threads=1")
    # Unchanged act: done, nothing run.
    result, _ = _run(path, out, runs)
    assert result["runs"] == {"hopper-medium/diffuser-s0": "done"}


def test_the_committed_fixture_regenerates_its_section():
    """The committed tiny-suite JSON (a real run of the suite above) gives the committed section, byte for byte."""
    runs = suite_results(FIXTURE)["tiny"]
    assert len(runs) == 4
    assert "\n".join(suite_tables(runs)) + "\n" == (FIXTURE / "section.md").read_text()


def test_a_worker_process_runs_a_run(tiny_hopper_dataset, tmp_path):
    """--parallel N: each run in a fresh spawned worker process (the JSON records the setting)."""
    path = _suite_file(tmp_path, tiny_hopper_dataset, seeds=[0])
    result, _ = _run(path, tmp_path / "out", tmp_path / "runs", parallel=1, only="*/bc-s0")
    assert result["runs"] == {"hopper-medium/bc-s0": "trained"}
    data = json.loads((tmp_path / "out/hopper-medium/bc-s0.json").read_text())
    assert data["execution"]["parallel"] == 1 and data["gradient_steps"] == 4


def test_a_run_another_process_holds_is_left_alone(tiny_hopper_dataset, tmp_path):
    """Two suite processes (two sessions) on one suite: a run directory locked by the other is skipped."""
    import fcntl

    path = _suite_file(tmp_path, tiny_hopper_dataset, seeds=[0])
    out, runs = tmp_path / "out", tmp_path / "runs"
    (runs / "hopper-medium").mkdir(parents=True)
    with open(runs / "hopper-medium" / "td3bc-s0.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result, _ = _run(path, out, runs, only="*/td3bc-s0")
    assert result["runs"] == {"hopper-medium/td3bc-s0": "busy"}
    assert not (out / "hopper-medium/td3bc-s0.json").exists() and not (runs / "hopper-medium/td3bc-s0").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"agents": {"dqn": {}}}, "unknown agent 'dqn'"),
    ({"tasks": {"hoper-medium": {}}}, "bc on hoper-medium"),
    ({"budget": {"train_minutes": -5}}, "budget.train_minutes: -5 is negative"),
    ({"budget": {"gradient_steps": 0}}, "give train_minutes and/or gradient_steps"),
    ({"evaluation": {}}, "unknown key 'evaluation'"),
    ({"agents": {"bc": {"overrides": {"final_eval_episodes": 5}}}}, "'final_eval_episodes' is set by the suite"),
    ({"agents": {"bc": {"overrides": {"lrr": 1}}}}, "lrr"),
    ({"seeds": [0, 0]}, "repeats a seed"),
    ({"agents": {"bc": {"act": {"seed": 3}}}}, "agents.bc.act: 'seed' is set by the suite"),
    ({"agents": {"bc": {"act": {"lrr": 1}}}}, "lrr"),
    ({"agents": {"bc": {"act": [1]}}}, "agents.bc.act: expected a mapping"),
])
def test_a_bad_suite_file_is_one_error_line_and_starts_nothing(tmp_path, capsys, change, message):
    path = _suite_file(tmp_path, "minari:diffplan/hopper-medium-v0", **change)
    rc = main(["bench", "suite", str(path), "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_a_missing_or_broken_suite_file_is_one_error_line(tmp_path, capsys):
    assert main(["bench", "suite", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: no such suite file" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("seeds: [0, 1\n")
    assert main(["bench", "suite", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: not valid YAML" in err and len(err.strip().splitlines()) == 1


def test_a_corrupt_run_json_stops_the_suite_and_is_kept(tmp_path, capsys):
    path = _suite_file(tmp_path, "minari:diffplan/hopper-medium-v0")
    bad = tmp_path / "out" / "hopper-medium" / "bc-s1.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"kind": "suite-run", "agent": "bc"')  # cut off mid-write by something else
    rc = main(["bench", "suite", str(path), "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and "bc-s1.json: not valid JSON" in err and len(err.strip().splitlines()) == 1
    assert bad.read_text() == '{"kind": "suite-run", "agent": "bc"' and not (tmp_path / "runs").exists()


def test_only_matching_nothing_is_refused(tmp_path):
    path = _suite_file(tmp_path, "minari:diffplan/hopper-medium-v0")
    with pytest.raises(SuiteError, match="matches no run"):
        run_suite(path, out=tmp_path / "o", runs_dir=tmp_path / "r", only="walker2d-medium/*", echo=None)


def test_the_shipped_suite_file_composes_every_run(tmp_path):
    """benchmarks/suites/locomotion-medium.yaml: 8 agents x 3 tasks x 3 seeds, each config valid, one budget."""
    suite = load_suite(ROOT / "benchmarks" / "suites" / "locomotion-medium.yaml")
    assert (suite.train_minutes, suite.eval_episodes, suite.seeds) == (15, 20, [0, 1, 2])
    result = run_suite(suite.path, out=tmp_path / "o", runs_dir=tmp_path / "r", dry_run=True, echo=None)
    assert len(result["runs"]) == 72 and set(result["runs"].values()) == {"new"}


def test_the_hopper_60_minute_suite_trains_the_15_minute_diffuser_four_times_as_long(tmp_path):
    """benchmarks/suites/hopper-medium-60min.yaml: the locomotion suite's hopper Diffuser (same training settings,
    same final episodes) at 60 CPU-minutes, its learning curve acting as the final evaluation does."""
    long = load_suite(ROOT / "benchmarks" / "suites" / "hopper-medium-60min.yaml")
    short = load_suite(ROOT / "benchmarks" / "suites" / "locomotion-medium.yaml")
    assert (long.train_minutes, long.clock, long.seeds, list(long.tasks)) == (60, "cpu", [0, 1, 2], ["hopper-medium"])
    assert (long.eval_episodes, long.eval_envs) == (short.eval_episodes, short.eval_envs)
    trained, acting = long.agents["diffuser"].overrides, short.agents["diffuser"]
    for key in ("dim", "dim_mults", "value_dim", "value_dim_mults", "n_candidates", "lr"):
        assert trained[key] == acting.overrides[key], key
    assert {k: trained[k] for k in acting.act} == acting.act
    result = run_suite(long.path, out=tmp_path / "o", runs_dir=tmp_path / "r", dry_run=True, echo=None)
    assert len(result["runs"]) == 3 and set(result["runs"].values()) == {"new"}


def test_the_cdf_suite_is_the_locomotion_decision_diffuser_row_but_for_the_normalizer(tmp_path):
    """benchmarks/suites/decision-diffuser-cdf.yaml: the locomotion suite's halfcheetah Decision Diffuser with
    the CDF normalizer; budget, seeds, episodes and every other setting the same, so the rows compare."""
    cdf = load_suite(ROOT / "benchmarks" / "suites" / "decision-diffuser-cdf.yaml")
    base = load_suite(ROOT / "benchmarks" / "suites" / "locomotion-medium.yaml")
    assert list(cdf.tasks) == ["halfcheetah-medium"] and list(cdf.agents) == ["decision_diffuser"]
    for key in ("train_minutes", "clock", "gradient_steps", "seeds", "eval_episodes", "eval_envs", "torch_threads"):
        assert getattr(cdf, key) == getattr(base, key), key
    changed = cdf.agents["decision_diffuser"].overrides
    unchanged = base.agents["decision_diffuser"].overrides
    assert changed == {**unchanged, "normalizer": "cdf"} and "normalizer" not in unchanged
    result = run_suite(cdf.path, out=tmp_path / "o", runs_dir=tmp_path / "r", dry_run=True, echo=None)
    assert len(result["runs"]) == 3 and set(result["runs"].values()) == {"new"}


def test_report_refuses_runs_on_other_episodes_in_one_table(tmp_path):
    root = tmp_path / "bench"
    shutil.copytree(FIXTURE / "suites", root / "suites")
    path = root / "suites" / "tiny" / "hopper-medium" / "td3bc-s0.json"
    data = json.loads(path.read_text())
    data["eval"]["eval_envs"] = 5
    path.write_text(json.dumps(data))
    with pytest.raises(ReportError, match="different episodes"):
        suite_tables(suite_results(root)["tiny"])
    path.write_text("{not json")
    with pytest.raises(ReportError, match="td3bc-s0.json: not valid JSON"):
        suite_results(root)


@pytest.mark.parametrize(("diffusion", "verdict", "margin"), [((60.0, 62.0), "met", "+10.0"),
                                                                ((51.0, 53.0), "not met", "+1.0")])
def test_a_table_says_whether_the_best_diffusion_agent_beats_td3bc(tmp_path, diffusion, verdict, margin):
    """The issue-12 target line: best diffusion row against TD3+BC's, the margin against the combined s.e."""
    root = tmp_path / "bench"
    shutil.copytree(FIXTURE / "suites", root / "suites")
    folder = root / "suites" / "tiny" / "hopper-medium"
    scores = {"bc": diffusion, "td3bc": (50.0, 52.0)}
    for agent, seeds in scores.items():
        for seed, score in enumerate(seeds):
            path = folder / f"{agent}-s{seed}.json"
            data = json.loads(path.read_text())
            data["eval"]["normalized_score"] = score
            data["agent"] = "diffuser" if agent == "bc" else agent
            path.write_text(json.dumps(data))
    lines = [ln for ln in suite_tables(suite_results(root)["tiny"]) if ln.startswith("Target")]
    expected = ("Target (the best diffusion agent beats td3bc by at least the combined standard error): "
                f"**{verdict}** (provisional: fewer than 3 seeds): diffuser {sum(diffusion) / 2:.1f} ± 1.0 against "
                f"td3bc 51.0 ± 1.0, a margin of {margin} against a combined standard error of 1.4.")
    assert lines == [expected]
    (folder / "td3bc-s0.json").unlink()
    (folder / "td3bc-s1.json").unlink()
    assert not [ln for ln in suite_tables(suite_results(root)["tiny"]) if ln.startswith("Target")]


@pytest.mark.parametrize(("scores", "budget", "expected"), [
    ((78.0, 74.0), {"train_minutes": 60, "clock": "cpu"}, "**reached** at 60 CPU-minutes (provisional"),
    ((78.0, 70.0), {"train_minutes": 15, "clock": "cpu"}, "**not reached** at 15 CPU-minutes (provisional"),
    ((78.0, 74.0), {"train_minutes": 90, "clock": "cpu"}, None),    # over the target's CPU-minutes
    ((78.0, 74.0), {"train_minutes": 60, "clock": "wall"}, None),   # wall minutes are not CPU-minutes
    ((78.0, 74.0), {"train_minutes": 0, "gradient_steps": 4}, None),
])
def test_a_hopper_table_says_whether_a_diffusion_agent_reached_75_within_60_cpu_minutes(
        tmp_path, scores, budget, expected):
    """Issue 12's second target, under each hopper-medium table of at most 60 CPU-minutes: the best diffusion
    row's mean over seeds against 75, with that row's per-seed scores."""
    root = tmp_path / "bench"
    shutil.copytree(FIXTURE / "suites", root / "suites")
    folder = root / "suites" / "tiny" / "hopper-medium"
    for seed, score in enumerate(scores):
        path = folder / f"bc-s{seed}.json"
        data = json.loads(path.read_text())
        data["eval"]["normalized_score"], data["agent"] = score, "diffuser"
        path.write_text(json.dumps(data))
    rows = aggregate(_suite_run(rel, d) for rel, d in suite_results(root)["tiny"])
    lines = score_target_line("hopper-medium", rows, budget)
    if expected is None:
        assert lines == []
        return
    assert lines[0].startswith("Target (a diffusion agent reaches 75 within 60 CPU-minutes of training, mean over "
                               "seeds): " + expected)
    assert lines[0].endswith(f": diffuser {sum(scores) / 2:.1f} ± {abs(scores[0] - scores[1]) / 2:.1f} "
                             f"(s0 {scores[0]:.1f}, s1 {scores[1]:.1f}).")
    assert score_target_line("walker2d-medium", rows, budget) == []
    td3bc_only = [r for r in rows if r.first.agent == "td3bc"]
    assert score_target_line("hopper-medium", td3bc_only, budget) == []


def test_the_page_shows_a_committed_suite(tmp_path):
    """A suite folder under benchmarks/suites/ lands on the page with its figure (bench report draws it)."""
    root = tmp_path / "benchmarks"
    shutil.copytree(ROOT / "benchmarks", root)
    shutil.copytree(FIXTURE / "suites" / "tiny", root / "suites" / "tiny")
    assert main(["bench", "report", str(root)]) == 0
    page = (root / "README.md").read_text()
    assert "### Suite `tiny`" in page and "![learning curves of tiny](suites/tiny/curves.png)" in page
    png = (root / "suites" / "tiny" / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert main(["bench", "report", str(root)]) == 0  # again: the same figure, not rewritten
    assert (root / "suites" / "tiny" / "curves.png").read_bytes() == png


def _make_fixture() -> None:  # pragma: no cover - run by hand to refresh the committed fixture
    """Run the tiny suite for real into tests/artifacts/suite-fixture and write its section (needs a Minari
    root with the tiny Hopper dataset: made here the way tests/conftest.py makes it)."""
    import os
    import tempfile

    from tests import conftest

    tmp = Path(tempfile.mkdtemp(prefix="suite-fixture-"))
    os.environ["MINARI_DATASETS_PATH"] = str(tmp / "minari")

    class _Factory:
        def mktemp(self, name: str) -> Path:
            path = tmp / name
            path.mkdir()
            return path

    dataset = conftest.tiny_hopper_dataset.__wrapped__(_Factory())
    path = _suite_file(tmp, dataset)
    out = FIXTURE / "suites" / "tiny"
    shutil.rmtree(out, ignore_errors=True)
    run_suite(path, out=out, runs_dir=tmp / "runs", parallel=0,
              command="python -m tests.test_suite (the tiny suite of tests/test_suite.py)")
    (FIXTURE / "section.md").write_text("\n".join(suite_tables(suite_results(FIXTURE)["tiny"])) + "\n")


if __name__ == "__main__":
    _make_fixture()
    print(generate.__module__, "fixture written to", FIXTURE)

