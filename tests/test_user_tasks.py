"""Tasks a user adds without code: a maze defined by its map in a task file goes through `data make`, `train`
and `eval` (the last without the task file: the run's config keeps the maze)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from diffplan.cli import main
from diffplan.envs import is_maze_task, make_env, task_family
from diffplan.envs.maze import MAZE_TASKS, RandomCellsReset, free_cells, make_maze_env, register_maze

# 4x6: a corridor with a wall stub; goals only in the two "g" cells.
SMALL = [[1, 1, 1, 1, 1, 1], [1, "r", 0, 0, "g", 1], [1, 0, 1, 0, "g", 1], [1, 1, 1, 1, 1, 1]]



def test_marked_cells_restrict_the_protocol_draws():
    register_maze("small-maze", SMALL, 40)
    assert is_maze_task("small-maze") and task_family("small-maze") == "maze"
    env = make_maze_env("small-maze", seed=3)
    starts, goals = set(), set()
    for _ in range(30):
        env.reset()
        start, goal = (tuple(int(v) for v in c) for c in env.last_cells)
        starts.add(start)
        goals.add(goal)
    env.close()
    assert starts == {(1, 1)} and goals == {(1, 4), (2, 4)}
    assert make_env("small-maze").spec.max_episode_steps == 40


def test_builtin_maze_draws_are_unchanged():
    """The built-in mazes (no marks) keep their original start/goal draw, so benchmark episodes stay the same."""
    env = make_maze_env("pointmaze-umaze", seed=5)
    cells, rng = free_cells("pointmaze-umaze"), np.random.default_rng(5)
    for _ in range(5):
        env.reset()
        i, j = rng.choice(len(cells), size=2, replace=False)
        assert [c.tolist() for c in env.last_cells] == [cells[i].tolist(), cells[j].tolist()]
    env.close()
    assert isinstance(env, RandomCellsReset)


def test_user_maze_data_make_train_eval_end_to_end(tmp_path, capsys):
    task = tmp_path / "small-maze.yaml"
    task.write_text(yaml.safe_dump({"task": "small-maze", "maze": {"maze_map": SMALL, "max_episode_steps": 100}}))
    assert main(["data", "make", str(task), "--steps", "2000"]) == 0
    assert "wrote minari:diffplan/small-maze-2k-v0" in capsys.readouterr().out

    from diffplan.data import load_episodes

    meta = load_episodes("minari:diffplan/small-maze-2k-v0").metadata
    assert meta["protocol"]["maze_map"] == SMALL and meta["protocol"]["episode_length"] == 100
    assert meta["ref_max_score"] > meta["ref_min_score"]

    run = tmp_path / "run"
    tiny = ["horizon=16", "dim=8", "dim_mults=[1,2]", "diffusion_steps=10", "sampling_steps=3", "batch_size=8",
            "train_steps=4", "eval_every=0", "checkpoint_every=0", "final_eval_episodes=2", "eval_envs=2",
            "ema_start=2", "plot_plans=1", "torch_threads=1", "dataset_steps=2000"]
    assert main(["train", "diffuser", f"task={task}", *tiny, f"run_dir={run}", "--no-progress"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["task"] == "small-maze" and saved["maze"]["maze_map"] == SMALL
    assert json.loads((run / "results.json").read_text())["final"]["episodes"] == 2
    capsys.readouterr()

    task.unlink()
    del MAZE_TASKS["small-maze"]  # as in a new process: only the run directory knows the maze
    assert main(["eval", str(run), "--episodes", "2", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 2 and "normalized_score" in summary


def test_a_dataset_of_another_layout_is_not_reused(tmp_path):
    from diffplan.data.recipes.pointmaze import ensure_dataset

    register_maze("small-maze", SMALL, 40)
    dataset_id = ensure_dataset("small-maze", num_steps=500, dataset_id="diffplan/small-maze-test-v0",
                                progress=False, ref_episodes=2)
    other = [row[:] for row in SMALL]
    other[2][1] = 1  # same name, another layout
    register_maze("small-maze", other, 40)
    with pytest.raises(ValueError, match="another layout"):
        ensure_dataset("small-maze", num_steps=500, dataset_id=dataset_id, progress=False, ref_episodes=2)


def test_data_make_of_an_unknown_or_bad_task_is_one_line(tmp_path, capsys):
    assert main(["data", "make", "pointmaze-umaz"]) == 2
    assert "did you mean 'pointmaze-umaze'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: bad-maze\nmaze:\n  maze_map: [[1, 1, 1], [1, 0, 1], [1, 0, 0]]\n")
    assert main(["data", "make", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "border cell (2, 1) must be a wall" in err
