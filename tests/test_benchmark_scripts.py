"""The benchmark scripts (``benchmarks/**/*.sh``) call ``diffplan`` with the settings they document: each run
here with a stand-in ``diffplan`` (``DIFFPLAN=``) that records its arguments, so no training happens."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").rglob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_benchmark_script_is_valid_bash_and_executable(script):
    assert os.access(script, os.X_OK), f"{script} is not executable"
    subprocess.run(["bash", "-n", str(script)], check=True)


def _run(script: str, tmp_path: Path, fake_body: str = "", **env: str) -> tuple[list[list[str]], str]:
    """Run ``script`` with a stand-in diffplan (recording its arguments, then running ``fake_body``); returns its
    calls (one argument list each) and stdout."""
    log = tmp_path / "calls.txt"
    fake = tmp_path / "diffplan"
    # One write per call (an O_APPEND write this small is atomic): scripts run seeds in parallel.
    fake.write_text(f'#!/usr/bin/env bash\nline=$(printf "%s\\x1f" "$@")\nprintf "%s\\n" "$line" >> {log}\n{fake_body}\n')
    fake.chmod(0o755)
    out = subprocess.run(["bash", str(ROOT / script)], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "DIFFPLAN": str(fake), **env}).stdout
    calls = [line.rstrip("\x1f").split("\x1f") for line in log.read_text().splitlines()] if log.exists() else []
    return calls, out


def _trained(runs: Path, *names: str) -> None:
    for name in names:
        (runs / name).mkdir(parents=True)
        (runs / name / "results.json").write_text("{}")


def test_fastgen_large_runs_each_agents_settings_on_each_trained_seed(tmp_path):
    runs = tmp_path / "runs"
    _trained(runs, "diffuser-large-s0", "hierarchical-large-s0", "hierarchical-large-s2")
    calls, out = _run("benchmarks/fastgen/large.sh", tmp_path, RUNS=str(runs), OUT=str(tmp_path / "out"),
                      SEEDS="0 2")
    assert [c[:3] for c in calls] == [["bench", "fastgen", str(runs / "diffuser-large-s0")],
                                      ["bench", "fastgen", str(runs / "hierarchical-large-s0")],
                                      ["bench", "fastgen", str(runs / "hierarchical-large-s2")]]
    assert f"missing trained run {runs}/diffuser-large-s2" in out
    flat, hier = calls[0], calls[1]
    assert [a.split(":")[0] for a in flat if ":" in a] == ["ddim-10", "dpmsolver++-5", "dpmsolver++-3", "dpmsolver++-2"]
    assert "dpmsolver++-2/1:sampler=dpmsolver++,sampling_steps=2,low_sampling_steps=1,torch_threads=1" in hier
    assert flat[-8:] == ["--episodes", "50", "--repeats", "20", "--steps", "300", "--out",
                         str(tmp_path / "out" / "diffuser-large-s0.json")]


def test_fastgen_hopper_replans_every_step_in_every_setting(tmp_path):
    runs = tmp_path / "runs"
    _trained(runs, "diffuser-s1")
    calls, _ = _run("benchmarks/fastgen/hopper.sh", tmp_path, RUNS=str(runs), OUT=str(tmp_path / "out"), SEEDS="1")
    settings = [a for a in calls[0] if ":" in a]
    assert len(calls) == 1 and len(settings) == 8
    assert all("replan_every=1" in s and "torch_threads=1" in s for s in settings)
    # the deterministic solver cannot keep Diffuser's std-scaled guidance; the stochastic ones do
    assert all(("scale_grad_by_std=false" in s) == s.startswith("dpmsolver++") for s in settings)


def test_fastgen_guidance_switches_only_the_gradient_and_the_candidates(tmp_path):
    runs = tmp_path / "runs"
    _trained(runs, "diffuser-s0", "diffuser-s2")
    calls, out = _run("benchmarks/fastgen/guidance.sh", tmp_path, RUNS=str(runs), OUT=str(tmp_path / "out"))
    assert [c[2] for c in calls] == [str(runs / "diffuser-s0"), str(runs / "diffuser-s2")]
    assert f"missing trained run {runs}/diffuser-s1" in out
    settings = dict(a.split(":", 1) for a in calls[0] if ":" in a)
    assert list(settings) == ["guided-best-of-8", "ranked-best-of-8", "guided-1", "unguided-1",
                              "guided-best-of-32", "ranked-best-of-32"]
    suite_act = "sampler=ddim,ddim_eta=1,sampling_steps=2,replan_every=1,torch_threads=1"
    for name, kvs in settings.items():
        assert kvs.startswith(suite_act + ",")  # the suite's acting, then only what the row is about
        rest = set(kvs[len(suite_act) + 1:].split(","))
        candidates = "1" if name.endswith("-1") else name.rsplit("-", 1)[1]
        assert rest == {f"n_candidates={candidates}"} | ({"guide_scale=0"} if not name.startswith("guided") else set())
    assert calls[1][-6:] == ["--episodes", "20", "--repeats", "20", "--out", str(tmp_path / "out" / "diffuser-s2.json")]
    # the same rows on the hierarchical planners of a folder
    _trained(runs, "hierarchical-s1")
    calls, _ = _run("benchmarks/fastgen/guidance.sh", tmp_path / "runs", RUNS=str(runs), OUT=str(tmp_path / "hd"),
                    AGENT="hierarchical")
    assert [(c[2], c[-1]) for c in calls] == [(str(runs / "hierarchical-s1"), str(tmp_path / "hd" / "hierarchical-s1.json"))]


def test_hierarchical_run_trains_new_runs_resumes_started_ones_and_skips_finished(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    (runs / "diffuser-medium-s0" / "checkpoints").mkdir(parents=True)
    (runs / "diffuser-medium-s0" / "checkpoints" / "latest").write_text("step_4")
    out.mkdir()
    (out / "hierarchical-medium-s0.json").write_text("{}")
    _trained(runs, "hierarchical-medium-s0")
    calls, _ = _run("benchmarks/hierarchical/run.sh", tmp_path, RUNS=str(runs), OUT=str(out), SEEDS="0",
                    MAZES="medium", BUDGET_MIN="15")
    assert [c[:2] for c in calls] == [["train", "--resume"], ["bench", "maze"]]
    assert calls[0][2:4] == [str(runs / "diffuser-medium-s0"), "max_train_minutes=15"]
    assert calls[1][2] == str(runs / "diffuser-medium-s0") and "--plan-to-end" in calls[1]
    # a fresh run: the shipped experiment config at the budget, CPU clock, one thread
    calls, _ = _run("benchmarks/hierarchical/run.sh", tmp_path / "out", RUNS=str(tmp_path / "fresh"),
                    OUT=str(tmp_path / "fresh-out"), SEEDS="1", MAZES="large", AGENTS="hierarchical")
    train = calls[0]
    assert train[:2] == ["train", "configs/experiments/hierarchical-pointmaze-large.yaml"]
    assert {"seed=1", "max_train_minutes=60", "budget_clock=cpu", "torch_threads=1"} <= set(train)


def test_dppo_run_trains_each_seed_then_combines_them(tmp_path):
    runs = tmp_path / "runs"
    calls, out = _run("benchmarks/dppo/run.sh", tmp_path, RUNS=str(runs), OUT=str(tmp_path / "hopper.json"),
                      SEEDS="0 1", EXTRA="env_steps=400")
    per_seed = sorted(c for c in calls if "seeds=0" in c or "seeds=1" in c)
    assert [c[:3] for c in per_seed] == [["bench", "dppo", "task=hopper-medium"]] * 2
    assert all("env_steps=400" in c and f"runs={runs}" in c for c in calls)
    assert calls[-1][-2:] == ["--out", str(tmp_path / "hopper.json")] and "seeds=0,1" in calls[-1]
    assert "== seed 0 done" in out and "== seed 1 done" in out


def test_fastgen_bridge_trains_a_missing_planner_once_and_deploys_each_missing_setting(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    out.mkdir()
    for name in ("deploy_20hz_dpm3_cold.json", "deploy_50hz_dpm3_cold.json", "deploy_50hz_ddim10.json",
                 "deploy_20hz_dpm3_cold_s1.json"):
        (out / name).write_text("{}")
    trains = 'if [ "$1" = quickstart ]; then mkdir -p "${@: -2:1}" && echo {} > "${@: -2:1}/results.json"; fi'
    calls, _ = _run("benchmarks/fastgen/bridge.sh", tmp_path, trains, RUNS=str(runs), OUT=str(out), SEEDS="0 1",
                    PYTHON=str(tmp_path / "diffplan"))
    # seed 0 is complete: nothing; seed 1: its planner trained once, then the two missing deployments
    assert calls[0][:3] == ["quickstart", "seed=1", "torch_threads=1"]
    assert calls[0][-3:] == ["--out", str(runs / "fastgen-qs-s1"), "--no-progress"]
    deploys = [c for c in calls if c[:3] == ["-m", "diffplan.deploy.bench", "deploy"]]
    assert [(c[4:6], c[c.index("--hz") + 1], c[-1]) for c in deploys] == [
        (["sampler=dpmsolver++", "sampling_steps=3"], "50", str(out / "deploy_50hz_dpm3_cold_s1.json")),
        (["sampler=ddim", "sampling_steps=10"], "50", str(out / "deploy_50hz_ddim10_s1.json"))]
    assert all(c[3] == str(runs / "fastgen-qs-s1") for c in deploys) and len(calls) == 1 + len(deploys)
