"""Reliability: every bad input ends in one clear line and exit 2, nothing is lost, D4RL maze2d files are converted.

``BAD_INPUTS`` is the table of bad inputs -> expected message, each run through the CLI (``diffplan.cli.main``)
and checked for exit code 2, exactly one line on stderr (``diffplan: error: ...``) and no traceback. The other
tests cover what a table row cannot: a run that is not lost (refused run_dir, ``--overwrite``, checkpoint
rotation), a full disk, file permissions, and D4RL maze2d files in the PointMaze frame.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections import deque
from pathlib import Path

import gymnasium_robotics  # noqa: F401 - imported first so its import-time warning never lands in a test's stderr
import h5py
import numpy as np
import pytest
import torch

from diffplan import checkpoint
from diffplan.checkpoint import DiskFullError, load_checkpoint, save_checkpoint, write_text_atomic
from diffplan.cli import main
from diffplan.data import load_episodes
from diffplan.data.d4rl_maze import D4RL_LAYOUTS, D4RL_TO_TASK
from diffplan.data.recipes import pointmaze
from diffplan.envs.maze import get_task, make_maze_env, maze_geometry

from .conftest import TINY_DIFFUSER

TRAIN = ["train", "diffuser", *TINY_DIFFUSER[1:]]
"""`diffplan train diffuser <tiny overrides>`: the agent's composed config, made tiny."""


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tiny_run(tiny_maze_dataset, tmp_path_factory) -> Path:
    """A trained tiny Diffuser run (shared, never modified by the tests that use it)."""
    run_dir = tmp_path_factory.mktemp("reliab") / "run"
    assert main([*TRAIN, f"dataset={tiny_maze_dataset}", f"run_dir={run_dir}", "--no-progress"]) == 0
    return run_dir


@pytest.fixture()
def quick_refs(monkeypatch, tmp_path):
    """Protocol reference scores over 4 episodes instead of 100 (cached in a temporary directory)."""
    monkeypatch.setattr(pointmaze, "PROTOCOL_REF_EPISODES", 4)
    monkeypatch.setenv("DIFFPLAN_CACHE_DIR", str(tmp_path / "cache"))


def _h5(path: Path, compression: str | None = None, **arrays: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key.replace("__", "/"), data=value, compression=compression)
    return path


# ------------------------------------------------------------------ D4RL maze2d files, written in D4RL's frame

DT = 0.01  # D4RL maze2d and PointMaze: MuJoCo timestep 0.01, frame_skip 1


def _d4rl_cells(maze: str) -> list[tuple[int, int]]:
    """Free cells of a D4RL layout, as ``maze_model.MazeEnv.empty_and_goal_locations`` lists them."""
    return [(r, c) for r, row in enumerate(D4RL_LAYOUTS[maze]) for c, ch in enumerate(row) if ch != "#"]


def _d4rl_cell_of(qpos: np.ndarray) -> np.ndarray:
    """The D4RL cell holding a ball at ``qpos`` (N, 2), from D4RL's world geometry only: the ball is at world
    ``qpos + 1.2`` and the wall box of cell (r, c) is centred at world ``(r + 1, c + 1)`` with half-size 0.5."""
    return np.floor(qpos + 1.2 - 0.5).astype(int)


def _bfs(maze: str, start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, int]]:
    free, prev, queue = set(_d4rl_cells(maze)), {start: start}, deque([start])
    while queue:
        cell = queue.popleft()
        for nxt in ((cell[0] + 1, cell[1]), (cell[0] - 1, cell[1]), (cell[0], cell[1] + 1), (cell[0], cell[1] - 1)):
            if nxt in free and nxt not in prev:
                prev[nxt] = cell
                queue.append(nxt)
    path = [goal]
    while path[-1] != start:
        path.append(prev[path[-1]])
    return path[::-1]


def write_d4rl_maze2d(
    path: Path, maze: str = "umaze", goals: int = 4, seed: int = 0, stale: bool = False
) -> dict[str, np.ndarray]:
    """A maze2d file in D4RL's real format and frame (keys, shapes and dtypes of D4RL's maze2d-*-v1 files:
    float32 observations (N, 4), actions (N, 2), rewards, infos/goal, infos/qpos, infos/qvel (N, 2); bool
    terminals and timeouts; gzip-compressed, as ``scripts/generation/generate_maze2d_datasets.py`` writes them).

    The stream follows D4RL's conventions: starts and goals are ``cell + U(-0.1, 0.1)`` in the qpos frame
    (``maze_model.py``), the ball moves from waypoint to waypoint (the cells of a shortest path, in qpos
    coordinates) at 2 units/s with ``qvel`` its true velocity, the action points along the motion,
    ``timeouts`` mark a reached goal (terminals all False), the sparse reward is ``||qpos - goal|| <= 0.5``.
    ``stale``: as D4RL's generator, the row after a reached goal repeats the previous observation while the ball
    moves on from where it really is.
    """
    rng = np.random.default_rng(seed)
    cells = _d4rl_cells(maze)
    cell = cells[rng.integers(len(cells))]
    pos = np.asarray(cell, float) + rng.uniform(-0.1, 0.1, 2)
    rows: dict[str, list] = {k: [] for k in ("obs", "act", "goal", "timeout", "cell", "goal_cell")}
    repeat = False
    for _ in range(goals):
        goal_cell = cell
        while goal_cell == cell:
            goal_cell = cells[rng.integers(len(cells))]
        goal = np.asarray(goal_cell, float) + rng.uniform(-0.1, 0.1, 2)
        targets = [np.asarray(c, float) for c in _bfs(maze, cell, goal_cell)[1:-1]] + [goal]
        for target in targets:
            while True:
                delta = target - pos
                dist = float(np.linalg.norm(delta))
                step = delta if dist <= 0.02 else delta / dist * 0.02
                rows["obs"].append(rows["obs"][-1].copy() if repeat else np.concatenate([pos, step / DT]))
                repeat = False
                rows["act"].append(np.clip(step / 0.02, -1, 1))
                rows["goal"].append(goal)
                rows["cell"].append(_d4rl_cell_of(rows["obs"][-1][None, :2])[0])
                rows["goal_cell"].append(goal_cell)
                rows["timeout"].append(False)
                pos = pos + step
                if dist <= 0.02:
                    break
        rows["timeout"][-1] = True
        cell, repeat = goal_cell, stale
    obs = np.asarray(rows["obs"], np.float32)
    goal = np.asarray(rows["goal"], np.float32)
    reward = (np.linalg.norm(obs[:, :2] - goal, axis=1) <= 0.5).astype(np.float32)
    n = len(obs)
    _h5(
        path,
        compression="gzip",  # as D4RL's generate_maze2d_datasets.py writes every key
        observations=obs, actions=np.asarray(rows["act"], np.float32), rewards=reward,
        terminals=np.zeros(n, bool), timeouts=np.asarray(rows["timeout"], bool),
        infos__goal=goal, infos__qpos=obs[:, :2].copy(), infos__qvel=obs[:, 2:].copy(),
    )
    return {"obs": obs, "goal": goal, "cell": np.asarray(rows["cell"]), "goal_cell": np.asarray(rows["goal_cell"])}


@pytest.mark.parametrize("maze", sorted(D4RL_LAYOUTS))
def test_d4rl_layouts_are_pointmaze_layouts(maze):
    env_map = get_task(D4RL_TO_TASK[maze]).maze_map
    assert [[1 if ch == "#" else 0 for ch in row] for row in D4RL_LAYOUTS[maze]] == [
        [1 if v == 1 else 0 for v in row] for row in env_map
    ]


@pytest.mark.parametrize("maze", sorted(D4RL_LAYOUTS))
def test_d4rl_start_and_goal_cells_land_in_the_same_pointmaze_cells(maze, tmp_path, quick_refs):
    truth = write_d4rl_maze2d(tmp_path / f"maze2d-{maze}-sparse-v1.hdf5", maze, goals=3, seed=1)
    ep = load_episodes(f"d4rl:{tmp_path / f'maze2d-{maze}-sparse-v1.hdf5'}")
    task = D4RL_TO_TASK[maze]
    geometry, env_map = maze_geometry(task), get_task(task).maze_map
    n = ep.num_steps  # the stream's last row has no successor and is dropped
    # A ball exactly on a cell border (qpos = r + 0.3, D4RL's border) belongs to either cell: not a test.
    frac = (truth["obs"][:n, :2].astype(np.float64) + 0.7) % 1.0
    clear = ((frac > 1e-4) & (frac < 1 - 1e-4)).all(axis=1)
    assert clear.mean() > 0.9
    for xy, cell in zip(ep.obs[:, :2][clear], truth["cell"][:n][clear], strict=True):
        rc = tuple(geometry.cell_xy_to_rowcol(xy))
        assert rc == tuple(cell) and env_map[rc[0]][rc[1]] != 1
    for xy, cell in zip(ep.goal, truth["goal_cell"][:n], strict=True):
        assert tuple(geometry.cell_xy_to_rowcol(xy)) == tuple(cell)
    # Velocities are the derivative of the converted positions (D4RL's qvel is the derivative of its qpos).
    inside = ~ep.timeout[:-1]
    np.testing.assert_allclose((ep.next_obs[:, :2] - ep.obs[:, :2])[:-1][inside] / DT,
                               ep.obs[:-1, 2:][inside], atol=1e-3)
    # Distances are frame-invariant: the sparse reward is the file's.
    np.testing.assert_array_equal(ep.rew, (np.linalg.norm(truth["obs"][:n, :2] - truth["goal"][:n], axis=1)
                                           <= 0.5).astype(np.float32))
    md = ep.metadata
    assert md["frame"] == "pointmaze" and md["task"] == task and "qpos_y" in md["frame_conversion"]


def test_d4rl_stale_rows_at_goal_changes_are_dropped(tmp_path, quick_refs):
    path = tmp_path / "maze2d-umaze-sparse-v1.hdf5"
    truth = write_d4rl_maze2d(path, goals=4, stale=True)
    ep = load_episodes(str(path))
    assert ep.metadata["dropped_stale_rows"] == 2 * 3  # the cut row and the repeat, at each of 3 goal changes
    assert ep.num_episodes == 4 and ep.num_steps == len(truth["obs"]) - 6 - 1  # and the file's last row
    # Every kept transition is real motion: the successor is where the ball went (velocity = its derivative).
    np.testing.assert_allclose((ep.next_obs[:, :2] - ep.obs[:, :2]) / DT, ep.obs[:, 2:], atol=1e-3)


def test_d4rl_action_moves_the_ball_the_same_way_in_pointmaze(tmp_path, quick_refs):
    """D4RL's action +x pushes the ball toward higher rows (maze_arr's first axis); after conversion the same
    action must do that in the real PointMaze env."""
    obs = np.zeros((3, 4), np.float32) + [3.0, 1.0, 0.0, 0.0]  # D4RL qpos of cell (3, 1) of the U-maze
    _h5(tmp_path / "maze2d-umaze-sparse-v1.hdf5", observations=obs, actions=np.tile([[1.0, 0.0]], (3, 1)),
        rewards=np.zeros(3, np.float32), terminals=np.zeros(3, bool), timeouts=np.zeros(3, bool),
        infos__goal=np.tile([[1.0, 1.0]], (3, 1)).astype(np.float32))
    ep = load_episodes(f"d4rl:{tmp_path / 'maze2d-umaze-sparse-v1.hdf5'}")
    env = make_maze_env("pointmaze-umaze", seed=0)
    geometry = maze_geometry("pointmaze-umaze")
    out, _ = env.reset(options={"reset_cell": np.array([1, 3]), "goal_cell": np.array([3, 3])})
    start = out["observation"][:2].copy()
    for _ in range(60):
        out, *_ = env.step(ep.act[0])
    env.close()
    assert geometry.cell_xy_to_rowcol(out["observation"][:2])[0] > geometry.cell_xy_to_rowcol(start)[0]
    assert abs(out["observation"][0] - start[0]) < 0.05  # no motion across columns


def test_d4rl_maze2d_normalizes_with_the_protocol_references(tmp_path, quick_refs):
    write_d4rl_maze2d(tmp_path / "maze2d-umaze-sparse-v1.hdf5")
    md = load_episodes(str(tmp_path / "maze2d-umaze-sparse-v1.hdf5")).metadata
    refs = pointmaze.protocol_reference_scores("pointmaze-umaze")
    assert (md["ref_min_score"], md["ref_max_score"]) == refs and refs[1] > refs[0]
    assert md["d4rl_ref_scores"] == [23.85, 161.86]  # kept for the record, not used


def test_d4rl_maze2d_file_trains_and_evaluates_in_the_pointmaze_frame(tmp_path, quick_refs, capsys):
    path = tmp_path / "maze2d-umaze-sparse-v1.hdf5"
    write_d4rl_maze2d(path, goals=6)
    run_dir = tmp_path / "run"
    assert main([*TRAIN, f"dataset=d4rl:{path}", f"run_dir={run_dir}", "--no-progress"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["ref_min_score"], results["ref_max_score"]) == pointmaze.protocol_reference_scores(
        "pointmaze-umaze")
    assert "normalized_score" in results["final"]
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--episodes", "2", "--no-progress"]) == 0
    assert "normalized_score" in json.loads(capsys.readouterr().out)
    assert main(["data", "info", f"d4rl:{path}"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["task"] == "pointmaze-umaze" and info["frame"] == "pointmaze" and "qpos_y" in info["frame_conversion"]


# ------------------------------------------------------------------------------------- the bad-input table


def _write_bad_inputs(tmp: Path, run: Path) -> dict[str, str]:
    """Files the table's rows point at (``{name}`` placeholders)."""
    paths = {"tmp": str(tmp), "run": str(run)}
    cfg = tmp / "cfg.yaml"
    cfg.write_text("".join(f"{a.split('=', 1)[0]}: {a.split('=', 1)[1]}\n" for a in TINY_DIFFUSER))
    paths["cfg"] = str(cfg)
    n = 10
    base = {"actions": np.zeros((n, 2), np.float32), "rewards": np.ones(n, np.float32),
            "terminals": np.zeros(n, bool)}
    paths["bytes"] = str(_h5(tmp / "bytes.hdf5", **{**base, "observations": np.array([b"ab"] * n)}))
    paths["allterm"] = str(_h5(tmp / "allterm.hdf5", **{**base, "observations": np.ones((n, 3), np.float32),
                                                         "terminals": np.ones(n, bool)}))
    maze = {**base, "observations": np.zeros((n, 4), np.float32), "infos__goal": np.zeros((n, 2), np.float32)}
    paths["open"] = str(_h5(tmp / "maze2d-open-v0.hdf5", **maze))
    paths["centred"] = str(_h5(tmp / "maze2d-umaze-sparse-v1.hdf5", **maze))  # (0, 0): PointMaze's frame
    (tmp / "d4rl").mkdir()
    paths["medium"] = str(tmp / "d4rl" / "maze2d-medium-sparse-v1.hdf5")
    write_d4rl_maze2d(Path(paths["medium"]), "medium", goals=2)
    paths["noname"] = str(_h5(tmp / "stream.hdf5", **maze))
    save_checkpoint(tmp / "noalg", 1, {"step": 1}, (run / "config.yaml").read_text())
    paths["noalg"] = str(tmp / "noalg")
    shutil.copytree(run, tmp / "copy")
    paths["copy"] = str(tmp / "copy")
    unsafe = tmp / "unsafe"
    shutil.copytree(run, unsafe)
    ckpt = checkpoint.resolve_checkpoint(unsafe)
    for target in (ckpt / "config.yaml", unsafe / "config.yaml"):
        target.write_text(target.read_text() + "evil: !!python/object/apply:os.system ['echo pwned']\n")
    paths["unsafe"] = str(unsafe)
    exists = tmp / "minari" / "diffplan" / "taken-v0"
    exists.mkdir(parents=True)
    paths["minari"] = str(tmp / "minari")
    return paths


BAD_INPUTS: list[tuple[str, list[str], str]] = [
    # (case, argv with {placeholders}, expected part of the one error line)
    ("train into a run_dir that holds a run", ["train", "{cfg}", "run_dir={run}", "--no-progress"],
     "already holds a run"),
    ("train into a run_dir that is a file", ["train", "{cfg}", "run_dir={cfg}"], "is a file, not a directory"),
    ("train into a run_dir under a file", ["train", "{cfg}", "run_dir={cfg}/run"], "cannot write"),
    ("train_steps=0", ["train", "{cfg}", "train_steps=0"], "train_steps=0 must be >= 1"),
    ("train_steps=-5", ["train", "{cfg}", "train_steps=-5"], "train_steps=-5 must be >= 1"),
    ("batch_size=0", ["train", "{cfg}", "batch_size=0"], "batch_size=0 must be >= 1"),
    ("log_every=0", ["train", "{cfg}", "log_every=0"], "log_every=0 must be >= 1"),
    ("final_eval_episodes=0", ["train", "{cfg}", "final_eval_episodes=0"], "final_eval_episodes=0 must be >= 1"),
    ("eval_every>0 with eval_episodes=0", ["train", "{cfg}", "eval_every=2", "eval_episodes=0"],
     "eval_episodes=0 must be >= 1"),
    ("checkpoint_every=-1", ["train", "{cfg}", "checkpoint_every=-1"], "checkpoint_every=-1 must be >= 0"),
    ("seed=-1", ["train", "{cfg}", "seed=-1"], "seed=-1 must be >= 0"),
    ("device that is not a torch device", ["train", "{cfg}", "device=banana"], "is not a torch device"),
    ("device this machine does not have", ["train", "{cfg}", "device=cuda:99"], "device='cuda:99'"),
    ("config path does not exist", ["train", "{tmp}/absent.yaml"], "no such config file"),
    ("config path is a directory", ["train", "{tmp}"], "is a directory"),
    ("eval --episodes 0", ["eval", "{run}", "--episodes", "0"], "evaluate at least 1 episode"),
    ("eval --episodes -1", ["eval", "{run}", "--episodes", "-1"], "evaluate at least 1 episode"),
    ("eval --seed -5", ["eval", "{run}", "--seed", "-5"], "a seed is a non-negative integer"),
    ("eval --video into a directory", ["eval", "{run}", "--video", "{tmp}"], "is a directory"),
    ("eval with a network override (dim=64)", ["eval", "{run}", "dim=64", "--episodes", "1"],
     "dim=64 (saved 8)"),
    ("eval with a task override (task=Hopper-v5)", ["eval", "{run}", "task=Hopper-v5", "--episodes", "1"],
     "cannot change at eval time"),
    ("eval with another noise process (diffusion_steps=50)", ["eval", "{run}", "diffusion_steps=50"],
     "diffusion_steps=50 differs from the run's diffusion_steps=10"),
    ("eval of a checkpoint without training state", ["eval", "{noalg}"], "holds no 'algorithm' state"),
    ("eval of a checkpoint config with an unsafe YAML tag", ["eval", "{unsafe}", "--episodes", "1"],
     "not a plain YAML config"),
    ("resume with a network override (dim=64)", ["train", "--resume", "{copy}", "dim=64"],
     "does not fit the model this config builds"),
    ("resume of a run config with an unsafe YAML tag", ["train", "--resume", "{unsafe}"], "not a plain YAML config"),
    ("hdf5 with a byte-string observation dtype", ["data", "info", "d4rl:{bytes}"], "has dtype |S2"),
    ("hdf5 whose every row is terminal", ["data", "info", "d4rl:{allterm}"], "every one of the 10 rows"),
    ("D4RL maze2d file of a maze without a PointMaze task", ["data", "info", "d4rl:{open}"],
     "has no PointMaze task"),
    ("D4RL maze2d file not in D4RL's frame", ["data", "info", "d4rl:{centred}"], "outside the free cells"),
    ("D4RL maze2d-medium file trained on pointmaze-umaze", ["train", "{cfg}", "dataset=d4rl:{medium}"],
     "converted to the frame of 'pointmaze-medium'"),
    ("D4RL-layout file without a D4RL name on a maze task", ["train", "{cfg}", "dataset=d4rl:{noname}"],
     "must be named as D4RL names it"),
    ("data make --steps 0", ["data", "make", "pointmaze-umaze", "--steps", "0"], "at least 1 env step"),
    ("data make --steps -1000", ["data", "make", "pointmaze-umaze", "--steps", "-1000"], "at least 1 env step"),
    ("data make --seed -1", ["data", "make", "pointmaze-umaze", "--steps", "100", "--seed", "-1"],
     "a seed is a non-negative integer"),
    ("data make with a malformed --id", ["data", "make", "pointmaze-umaze", "--id", "../../etc/evil"],
     "a Minari id looks like"),
    ("data make with an --id without version", ["data", "make", "pointmaze-umaze", "--id", "diffplan/mine"],
     "a Minari id looks like"),
    ("data make with an existing --id", ["data", "make", "pointmaze-umaze", "--steps", "1500", "--id",
                                         "diffplan/taken-v0"], "already exists"),
    ("Minari id not in the local root", ["data", "info", "minari:nobody/absent-v0"], "minari download"),
]


@pytest.mark.parametrize(("case", "argv", "expected"), BAD_INPUTS, ids=[c for c, _, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(case, argv, expected, tiny_run, tmp_path, monkeypatch, capsys,
                                          quick_refs):
    paths = _write_bad_inputs(tmp_path, tiny_run)
    monkeypatch.setenv("MINARI_DATASETS_PATH", paths["minari"])
    monkeypatch.chdir(tmp_path)  # a default run_dir (runs/...) never lands in the repository
    capsys.readouterr()
    before = sorted(p.name for p in Path(tiny_run).rglob("*"))
    code = main([a.format(**paths) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("diffplan: error: "), err
    assert expected in lines[0]
    assert "--download" not in lines[0]  # no diffplan command has such a flag
    assert sorted(p.name for p in Path(tiny_run).rglob("*")) == before  # the shared run is untouched


def test_readme_quotes_the_table_size():
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    match = re.search(r"test_reliability.py`: (\d+) bad inputs", readme)
    assert match is not None and int(match.group(1)) == len(BAD_INPUTS)


# -------------------------------------------------------------------------------------------- no lost run


def test_refused_train_leaves_the_old_run_intact(tiny_maze_dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = [*TRAIN[1:], f"dataset={tiny_maze_dataset}", f"run_dir={run_dir}", "--no-progress"]
    assert main(["train", *args]) == 0
    snapshot = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert main(["train", *args, "train_steps=8"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == snapshot
    # --overwrite moves the old run aside (nothing deleted), and the new run starts clean.
    assert main(["train", *args, "train_steps=8", "--overwrite"]) == 0
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert {aside / p.relative_to(run_dir): b for p, b in snapshot.items()} == {
        p: p.read_bytes() for p in aside.rglob("*") if p.is_file()}
    assert json.loads((run_dir / "results.json").read_text())["updates"] == 8


def test_options_after_overrides_and_before_both_work(tiny_maze_dataset, tmp_path):
    base = [*TRAIN[1:], f"dataset={tiny_maze_dataset}", "train_steps=2", "final_eval_episodes=1"]
    assert main(["train", *base, f"run_dir={tmp_path / 'a'}", "--no-progress"]) == 0
    assert main(["train", "--no-progress", *base, f"run_dir={tmp_path / 'b'}"]) == 0
    assert main(["train", base[0], "--no-progress", *base[1:], f"run_dir={tmp_path / 'c'}"]) == 0
    for name in "abc":
        assert json.loads((tmp_path / name / "results.json").read_text())["updates"] == 2


def _state(step: int) -> dict:
    return {"w": torch.full((2,), float(step)), "step": step}


def test_rotation_never_deletes_the_checkpoint_latest_names(tmp_path):
    for step in (1000, 2000, 3000):
        save_checkpoint(tmp_path, step, _state(step), "agent: x\n", keep=3)
    save_checkpoint(tmp_path, 100, _state(100), "agent: x\n", keep=3)  # lower than every older step
    state, _ = load_checkpoint(tmp_path)
    assert state["step"] == 100
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert names == ["step_00000100", "step_00002000", "step_00003000"]


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 10, _state(10), "agent: x\n")

    def full(obj, fh):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(DiskFullError, match="the disk is full.*previous checkpoint step_00000010 is kept"):
        save_checkpoint(tmp_path, 20, _state(20), "agent: x\n")
    state, _ = load_checkpoint(tmp_path)
    assert state["step"] == 10
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")] == []


def test_disk_full_during_training_is_one_line(tiny_maze_dataset, tmp_path, monkeypatch, capsys):
    real_save, calls = torch.save, []

    def fills_up(obj, fh):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, fh)

    monkeypatch.setattr(checkpoint.torch, "save", fills_up)
    run_dir = tmp_path / "run"
    argv = [*TRAIN, f"dataset={tiny_maze_dataset}", f"run_dir={run_dir}", "checkpoint_every=3",
            "--no-progress"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the disk is full" in err and "step_00000003 is kept" in err
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert load_checkpoint(run_dir)[0]["step"] == 3


def test_disk_full_in_an_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    with pytest.raises(DiskFullError, match="the disk is full"):
        write_text_atomic(target, "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "a.json", "{}")
        ckpt = save_checkpoint(tmp_path / "run", 1, _state(1), "agent: x\n")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert ckpt.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (ckpt / "state.pt").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("steps", [0, -1000])
def test_recipe_make_refuses_a_non_positive_size(steps):
    from diffplan.data import DatasetError, recipes

    with pytest.raises(DatasetError, match="steps must be >= 1"):  # 0 once made the default million steps
        recipes.make("pointmaze-umaze", steps=steps, minari_id="diffplan/never-made-v0", progress=False)
