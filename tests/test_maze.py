"""Maze tasks, the evaluation protocol, the D4RL maze2d recipe and plan drawing (fast, seeded, offline)."""

from __future__ import annotations

import itertools
import json

import minari
import numpy as np
import pytest

from diffplan.data.recipes.pointmaze import (
    RECIPE,
    WaypointController,
    controller_episode_returns,
    ensure_dataset,
    generate_pointmaze_dataset,
    random_episode_returns,
    run_stream,
)
from diffplan.envs.maze import (
    MAZE_TASKS,
    free_cells,
    make_maze_env,
    make_maze_vector_env,
    maze_geometry,
)
from diffplan.viz import figure_to_array, plot_plans


def _cells(env, obs) -> tuple[tuple[int, int], tuple[int, int]]:
    """(start cell, goal cell) of a freshly reset protocol env, read back from the observation."""
    maze = env.unwrapped.maze
    start = tuple(int(v) for v in maze.cell_xy_to_rowcol(obs["achieved_goal"]))
    goal = tuple(int(v) for v in maze.cell_xy_to_rowcol(obs["desired_goal"]))
    return start, goal


def _pairs(env, n: int) -> list:
    return [_cells(env, env.reset()[0]) for _ in range(n)]


# ------------------------------------------------------------------------------------------------ protocol


def test_tasks_and_unknown_name():
    assert set(MAZE_TASKS) == {"pointmaze-umaze", "pointmaze-medium", "pointmaze-large"}
    assert [MAZE_TASKS[t].max_episode_steps for t in sorted(MAZE_TASKS)] == [800, 600, 300]
    assert MAZE_TASKS["pointmaze-umaze"].maze_map[2] == [1, 1, 1, 0, 1]
    with pytest.raises(ValueError, match="pointmaze-umaze"):
        make_maze_env("pointmaze-huge")


def test_random_cells_distinct_deterministic_and_seed_dependent():
    env = make_maze_env("pointmaze-medium", seed=3)
    free = {tuple(c) for c in free_cells("pointmaze-medium")}
    pairs = _pairs(env, 20)
    for start, goal in pairs:
        assert start != goal and start in free and goal in free
    assert len(set(pairs)) > 10  # cells vary per episode
    assert pairs == _pairs(make_maze_env("pointmaze-medium", seed=3), 20)
    assert pairs != _pairs(make_maze_env("pointmaze-medium", seed=4), 20)
    # reset(seed=s) reseeds both the cell stream and the env's position noise
    a = env.reset(seed=11)[0]
    b = make_maze_env("pointmaze-medium", seed=0).reset(seed=11)[0]
    np.testing.assert_array_equal(a["observation"], b["observation"])
    np.testing.assert_array_equal(a["desired_goal"], b["desired_goal"])
    # start and goal keep the env's +-0.25 noise around the drawn cell centres
    maze = env.unwrapped.maze
    (sr, sc), (gr, gc) = env.last_cells
    assert np.all(np.abs(a["achieved_goal"] - maze.cell_rowcol_to_xy(np.array([sr, sc]))) <= 0.25)
    assert np.all(np.abs(a["desired_goal"] - maze.cell_rowcol_to_xy(np.array([gr, gc]))) <= 0.25)


@pytest.mark.parametrize("task", sorted(MAZE_TASKS))
def test_episode_length_and_info(task):
    env = make_maze_env(task, seed=0)
    obs, info = env.reset()
    assert set(obs) == {"observation", "achieved_goal", "desired_goal"} and obs["observation"].shape == (4,)
    assert "is_success" in info and "success" in info
    steps, done = 0, False
    while not done:
        obs, r, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
        assert info["is_success"] == info["success"] and r == float(info["success"])
        steps += 1
        done = terminated or truncated
    assert steps == MAZE_TASKS[task].max_episode_steps and truncated and not terminated


def test_vector_env_under_tianshou_collector():
    from tianshou.algorithm.algorithm_base import RandomActionPolicy
    from tianshou.data import Collector, ReplayBuffer

    class _NoJitRandomPolicy(RandomActionPolicy):
        @staticmethod
        def _compile() -> None:
            """Skip Policy's eager numba compilation of GAE / n-step kernels (5-15 s here; collection never uses them)."""

    venv = make_maze_vector_env("pointmaze-umaze", 3, seed=5)
    obs, info = venv.reset()
    assert len(obs) == 3 and obs[0]["observation"].shape == (4,)
    obs, rew, _, _, info = venv.step(np.zeros((3, 2), dtype=np.float32))
    assert rew.shape == (3,) and "is_success" in info[0]
    # deterministic given the seed, and each env has its own start/goal stream (seeds 5, 6, 7)
    g1 = np.stack([o["desired_goal"] for o in make_maze_vector_env("pointmaze-umaze", 3, seed=5).reset()[0]])
    g2 = np.stack([o["desired_goal"] for o in make_maze_vector_env("pointmaze-umaze", 3, seed=5).reset()[0]])
    np.testing.assert_array_equal(g1, g2)
    assert len({tuple(g) for g in g1}) == 3
    venv.close()
    # Collector over the vector env. One env with a plain ReplayBuffer: a VectorReplayBuffer would cost ~13 s
    # of one-off numba compilation on this 2-core box, and the env path exercised is the same.
    venv = make_maze_vector_env("pointmaze-umaze", 1, seed=5)
    collector = Collector(_NoJitRandomPolicy(venv.action_space[0]), venv, ReplayBuffer(1000))
    collector.reset()
    stats = collector.collect(n_episode=2)
    assert stats.n_collected_episodes == 2 and np.all(stats.lens == 300)
    buf = collector.buffer
    assert buf.obs.observation.shape[1:] == (4,) and buf.obs.desired_goal.shape[1:] == (2,)
    assert len(buf) == 600 and "success" in buf.info and "is_success" in buf.info
    venv.close()


# ---------------------------------------------------------------------------------------------- controller


@pytest.mark.parametrize(
    "start,goal", [((1, 1), (3, 1)), ((3, 1), (1, 1)), ((1, 3), (3, 3)), ((3, 2), (1, 2))]
)
def test_controller_reaches_goal_on_umaze(start, goal):
    env = make_maze_env("pointmaze-umaze", seed=0)
    obs, _ = env.reset(options={"reset_cell": np.array(start), "goal_cell": np.array(goal)})
    ctrl = WaypointController("pointmaze-umaze", rng=np.random.default_rng(0))
    # the path goes around the U's wall (x and y frames: column -> x, row -> -y)
    assert len(ctrl.shortest_path(start, goal)) == {(1, 1): 6, (3, 1): 6, (1, 3): 2, (3, 2): 4}[start]
    for _ in range(250):
        o = obs["observation"]
        act, done = ctrl.get_action(o[:2], o[2:], obs["desired_goal"])
        assert act.dtype == np.float32 and np.all(np.abs(act) <= 1)
        if done:
            break
        obs, *_ = env.step(act)
    assert done, f"controller did not reach {goal} from {start} in 250 steps"
    assert np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"]) < 0.1


def test_reference_returns_order():
    ctrl = controller_episode_returns("pointmaze-umaze", 3, seed=1)
    rand = random_episode_returns("pointmaze-umaze", 3, seed=1)
    assert ctrl.shape == rand.shape == (3,)
    assert ctrl.mean() > 150 > rand.mean()
    np.testing.assert_array_equal(ctrl, controller_episode_returns("pointmaze-umaze", 3, seed=1))


def test_goal_change_on_running_env_takes_effect():
    """The mechanism the stream uses: set env.goal (+ target site) on a running env, no reset."""
    env = make_maze_env("pointmaze-umaze", seed=0).unwrapped
    obs, _ = env.reset(seed=0, options={"reset_cell": np.array([1, 1]), "goal_cell": np.array([3, 1])})
    here = obs["achieved_goal"].copy()
    env.goal = here.copy()
    env.update_target_site_pos()
    obs, r, _, _, info = env.step(np.zeros(2, dtype=np.float32))
    np.testing.assert_array_equal(obs["desired_goal"], here)
    assert r == 1.0 and info["success"]
    np.testing.assert_array_equal(env.model.site_pos[env.target_site_id][:2], here)


# ------------------------------------------------------------------------------------------------- dataset


def test_stream_cuts_and_goal_changes():
    s = run_stream("pointmaze-umaze", 2000, seed=0)
    lengths = np.diff(s["cuts"])
    assert lengths.sum() == 2000 and np.all(lengths <= 300) and len(lengths) >= 5
    assert s["reached"][:-1].all()  # the controller reaches every goal on umaze
    assert np.all(np.linalg.norm(np.diff(s["goals"], axis=0), axis=1) > 0)


def test_generated_dataset():
    dataset_id = generate_pointmaze_dataset("pointmaze-umaze", 3000, seed=0, progress=False, ref_episodes=5)
    assert dataset_id == "diffplan/pointmaze-umaze-v0"
    assert ensure_dataset("pointmaze-umaze", 3000, progress=False) == dataset_id  # reused, not regenerated
    with pytest.raises(ValueError, match="exists"):
        ensure_dataset("pointmaze-umaze", 5000, progress=False)
    ds = minari.load_dataset(dataset_id)
    meta = ds.storage.metadata
    assert ds.total_steps == 3000
    for key in ("recipe", "task", "seed", "noisy", "num_steps", "protocol"):
        assert key in meta
    assert meta["recipe"] == RECIPE and meta["task"] == "pointmaze-umaze" and meta["num_steps"] == 3000
    assert meta["protocol"]["episode_length"] == 300 and meta["protocol"]["goal_radius"] == 0.45
    assert meta["ref_max_score"] > meta["ref_min_score"]
    data_dir = ds.storage.data_path
    # the atomic metadata rewrite keeps minari's file permissions (mkstemp alone would leave 0600)
    assert (data_dir / "metadata.json").stat().st_mode == (data_dir / "main_data.hdf5").stat().st_mode
    eps = list(ds.iterate_episodes())
    assert len(eps) == meta["total_episodes"] > 5
    for a, b in itertools.pairwise(eps):
        # one continuous stream: the same physical state across the cut, but a new goal after it
        np.testing.assert_array_equal(a.observations["observation"][-1], b.observations["observation"][0])
        np.testing.assert_array_equal(a.observations["achieved_goal"][-1], b.observations["achieved_goal"][0])
        assert not np.allclose(a.observations["desired_goal"][-1], b.observations["desired_goal"][0])
    for e in eps:
        n = len(e.actions)
        assert e.observations["observation"].shape == (n + 1, 4) and e.infos["success"].shape == (n + 1,)
        assert not e.terminations.any() and e.truncations[-1] and not e.truncations[:-1].any()
        assert np.all(np.abs(e.actions) <= 1.0)
        np.testing.assert_array_equal(e.rewards, e.infos["success"][1:].astype(float))
        assert np.unique(e.observations["desired_goal"], axis=0).shape[0] == 1
    # the stored eval env is the protocol env
    env = ds.recover_environment(eval_env=True)
    obs, _ = env.reset()
    assert obs["observation"].shape == (4,)
    assert json.loads(json.dumps(meta["protocol"]))["continuing_task"] is True  # plain JSON in metadata.json


def test_noisy_differs_from_clean():
    clean = run_stream("pointmaze-umaze", 500, seed=2)
    noisy = run_stream("pointmaze-umaze", 500, seed=2, noisy=True)
    # same env seed and goal-cell stream, different actions
    np.testing.assert_array_equal(clean["obs"][0], noisy["obs"][0])
    np.testing.assert_array_equal(clean["goal_cells"][0], noisy["goal_cells"][0])
    assert not np.allclose(clean["actions"], noisy["actions"])
    assert np.all(np.abs(noisy["actions"]) <= 1.0)
    assert (np.abs(noisy["actions"]) == 1.0).mean() > 0.0
    rerun = run_stream("pointmaze-umaze", 500, seed=2, noisy=True)
    np.testing.assert_array_equal(rerun["actions"], noisy["actions"])


# ------------------------------------------------------------------------------------------------- drawing


def test_plot_plans_and_figure_to_array():
    maze = maze_geometry("pointmaze-umaze")
    starts = np.stack([maze.cell_rowcol_to_xy(np.array(c)) for c in [(1, 1), (3, 1), (1, 3)]])
    goals = np.stack([maze.cell_rowcol_to_xy(np.array(c)) for c in [(3, 1), (1, 1), (3, 3)]])
    plans = np.linspace(starts, goals, 16, axis=1)  # (3, 16, 2)
    fig = plot_plans(
        "pointmaze-umaze",
        plans,
        starts,
        goals,
        executed=[plans[0], plans[1], plans[2]],
        titles=["a", "b", "c"],
    )
    img = figure_to_array(fig)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.shape[0] > 50
    assert img.std() > 0  # something was drawn
    one = figure_to_array(plot_plans("pointmaze-large", plans[0]))
    assert one.shape[2] == 3


def test_evaluate_sees_whole_episodes():
    """Lengths and success come from the whole episode, not from the tail a small buffer would keep."""
    from diffplan.bench import GoToGoalPolicy
    from diffplan.envs.evaluation import evaluate

    space = make_maze_vector_env("pointmaze-umaze", 1).action_space[0]
    result = evaluate(
        GoToGoalPolicy(space), lambda n, s: make_maze_vector_env("pointmaze-umaze", n, s), 4, n_envs=2, seed=3,
        ref_min=0.0, ref_max=300.0,
    )
    assert np.all(result.lengths == 300)
    # reward is 1 per step inside the goal radius, so "reached the goal at some step" == "return > 0"
    np.testing.assert_array_equal(result.successes, result.returns > 0)


def test_evaluate_progress_bar_counts_steps_and_changes_nothing(capsys):
    from diffplan.bench import GoToGoalPolicy
    from diffplan.envs.evaluation import evaluate

    space = make_maze_vector_env("pointmaze-umaze", 1).action_space[0]

    def run(progress):
        return evaluate(
            GoToGoalPolicy(space), lambda n, s: make_maze_vector_env("pointmaze-umaze", n, s), 2, n_envs=2, seed=3,
            progress=progress,
        )

    quiet = run(False)
    assert "eval" not in capsys.readouterr().err
    shown = run(True)
    err = capsys.readouterr().err
    assert "eval 2/2 episodes" in err and "600" in err  # two 300-step episodes, counted in env steps
    np.testing.assert_array_equal(quiet.returns, shown.returns)
