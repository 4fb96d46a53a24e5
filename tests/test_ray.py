"""Ray: evaluation on RayVectorEnv, ``diffplan sweep`` (a 2-run sweep, a re-run that skips finished runs, a run
whose worker is killed and resumed). One local Ray (2 CPUs) is shared by the module: starting it costs seconds."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import ray  # the `distributed` extra, which CI installs: no silent skip without it

from diffplan.cli import main
from diffplan.envs import make_vector_env
from diffplan.envs.evaluation import evaluate
from diffplan.sweep import ATTEMPTS, SUMMARY, run_sweep

BC = ["task=pointmaze-umaze", "hidden=[16,16]", "batch_size=16", "eval_every=0", "checkpoint_every=0",
      "log_every=50", "final_eval_episodes=2", "eval_envs=2", "plot_plans=0", "torch_threads=1"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_evaluation_on_ray_vector_env_equals_dummy(local_ray):
    """The evaluation protocol through Ray actors: the same episodes (start/goal draws from the same seeds),
    returns and successes as in this process."""
    from diffplan.bench import GoToGoalPolicy

    space = make_vector_env("pointmaze-umaze", 1).action_space[0]
    results, kinds = [], []
    for kind in ("dummy", "ray"):
        def make(n: int, s: int, kind: str = kind):
            venv = make_vector_env("pointmaze-umaze", n, s, kind=kind)
            kinds.append(type(venv).__name__)
            return venv

        results.append(evaluate(GoToGoalPolicy(space), make, 3, n_envs=2, seed=3, max_episode_steps=300))
    assert kinds == ["DummyVectorEnv", "RayVectorEnv"]
    np.testing.assert_array_equal(results[0].returns, results[1].returns)
    np.testing.assert_array_equal(results[0].lengths, results[1].lengths)
    np.testing.assert_array_equal(results[0].successes, results[1].successes)


def test_unknown_vector_env_is_one_error_line(capsys, tiny_maze_dataset, tmp_path):
    code = main(["train", "bc", *BC, f"dataset={tiny_maze_dataset}", f"run_dir={tmp_path / 'r'}", "vector_env=rey"])
    assert code == 2
    assert "vector_env='rey'; valid: dummy, subproc, ray" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_two_run_sweep_aggregates_and_a_rerun_skips(local_ray, tiny_maze_dataset, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "bc", *BC, "train_steps=20", f"dataset={tiny_maze_dataset}", "seed=0,1", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / SUMMARY).read_text())
    assert [r["name"] for r in summary["runs"]] == ["seed=0", "seed=1"]
    assert all(r["status"] == "trained" and r["updates"] == 20 for r in summary["runs"])
    (group,) = summary["groups"]
    per_run = [json.loads((out / n / "results.json").read_text())["final"] for n in ("seed=0", "seed=1")]
    assert group["seeds"] == [0, 1] and group["agent"] == "bc" and group["metric"] == "normalized_score"
    scores = [f["normalized_score"] for f in per_run]
    assert group["mean"] == pytest.approx(np.mean(scores))
    assert group["se"] == pytest.approx(np.std(scores, ddof=1) / np.sqrt(2))
    assert "over seeds [0, 1]" in capsys.readouterr().out
    # again: both runs finished, nothing is trained or started
    mtimes = [(out / n / "results.json").stat().st_mtime_ns for n in ("seed=0", "seed=1")]
    again = run_sweep("bc", [*BC, "train_steps=20", f"dataset={tiny_maze_dataset}", "seed=0,1"], out, echo=False)
    assert [r["status"] for r in again["runs"]] == ["skipped", "skipped"]
    assert [(out / n / "results.json").stat().st_mtime_ns for n in ("seed=0", "seed=1")] == mtimes
    assert again["groups"] == summary["groups"]
    # the same folder with another config is refused in one line (nothing started, nothing overwritten)
    assert main([a.replace("train_steps=20", "train_steps=30") for a in args]) == 2
    assert "holds a run of another config (train_steps: 20 -> 30)" in capsys.readouterr().err
    assert [(out / n / "results.json").stat().st_mtime_ns for n in ("seed=0", "seed=1")] == mtimes


def test_bad_sweep_item_is_one_error_line_and_starts_nothing(capsys, tmp_path):
    assert main(["sweep", "bc", "lrr=1e-3,3e-4", "--out", str(tmp_path / "s")]) == 2
    assert "unknown config key 'lrr'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_killed_worker_is_resumed_from_its_checkpoint(local_ray, tiny_maze_dataset, tmp_path):
    """SIGKILL the worker once the run has a checkpoint: Ray retries the task, which resumes the run there."""
    out = tmp_path / "sweep"
    steps = 2000
    items = [*BC, f"train_steps={steps}", "checkpoint_every=100", f"dataset={tiny_maze_dataset}", "seed=0"]
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(run_sweep("bc", items, out, retries=2, echo=False)))
    thread.start()
    run_dir = out / "run"
    deadline = time.time() + 120
    while not ((run_dir / "checkpoints" / "latest").exists() and (run_dir / ATTEMPTS).exists()):
        assert time.time() < deadline and thread.is_alive(), "the run made no checkpoint"
        time.sleep(0.05)
    pid = json.loads((run_dir / ATTEMPTS).read_text())[0]["pid"]
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=180)
    assert not thread.is_alive()
    attempts = json.loads((run_dir / ATTEMPTS).read_text())
    assert len(attempts) == 2 and attempts[1]["pid"] != pid and attempts[1]["resumed_from_step"] > 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["gradient_steps"] == steps
    assert [r["status"] for r in box["runs"]] == ["trained"] and box["runs"][0]["attempts"] == 2
    # exact: the killed-and-resumed run ends with the weights of an uninterrupted one
    import torch

    from diffplan.compose import load_config
    from diffplan.training import load_trained, train

    straight = tmp_path / "straight"
    train(load_config("bc", [*items, f"run_dir={straight}"]), progress=False)
    a = load_trained(straight).agent.algorithm.state_dict()
    b = load_trained(run_dir).agent.algorithm.state_dict()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key


def test_online_training_on_ray_vector_envs_equals_in_process(local_ray, tmp_path):
    """PPO collecting through RayVectorEnv (training and evaluation envs) learns exactly what it learns with
    its envs in this process: same seeds, same episodes, same updates."""
    import torch

    from diffplan.compose import load_config
    from diffplan.training import load_trained, train

    from .conftest import TINY_PPO

    weights = []
    for kind in ("dummy", "ray"):
        cfg = load_config(None, [*TINY_PPO, "train_steps=2", "final_eval_episodes=1", f"vector_env={kind}",
                                 f"run_dir={tmp_path / kind}"])
        results = train(cfg, progress=False)
        weights.append(load_trained(tmp_path / kind).agent.algorithm.state_dict())
        assert results["env_steps"] == 2 * 64
    for key, value in weights[0].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, weights[1][key]), key
