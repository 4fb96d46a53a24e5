"""PointMaze tasks and the ONE evaluation protocol used for every maze number diffplan reports.

Tasks (``MAZE_TASKS``, the built-in three below plus the user mazes registered with :func:`register_maze`, e.g.
by a task file's ``maze:`` section):

============================  ==========================  =====================
task                          gymnasium-robotics id       episode length (steps)
============================  ==========================  =====================
``pointmaze-umaze``           ``PointMaze_UMaze-v3``      300
``pointmaze-medium``          ``PointMaze_Medium-v3``     600
``pointmaze-large``           ``PointMaze_Large-v3``      800
============================  ==========================  =====================

Evaluation protocol (D4RL maze2d style):

* **Continuing task.** The env is built with ``continuing_task=True, reset_target=False``: reaching the goal
  neither terminates the episode nor moves the goal. Every episode runs exactly ``max_episode_steps`` steps
  and ends by truncation.
* **Sparse reward.** 1 for every step whose ball position is within ``goal_radius`` = 0.45 of the goal (the
  env's own threshold, also used for ``info["success"]``), else 0. The return therefore counts the steps spent
  at the goal: getting there fast *and* staying there both matter, as in D4RL's maze2d scores.
* **Random start and goal cells.** Each episode draws two *distinct* free cells (start, goal) uniformly from a
  numpy generator owned by :class:`RandomCellsReset` (a user maze whose map marks goal cells "g"/"c" or start
  cells "r"/"c", gymnasium-robotics' convention, draws its goals or starts from those cells only), and passes them to the env as
  ``options={"reset_cell": ..., "goal_cell": ...}``. The env adds its own uniform ±0.25 position noise to both
  (from its own ``np_random``), which we keep: start and goal are continuous, not cell centres.
* **Seeding.** ``make_maze_env(task, seed)`` is fully deterministic: the cell generator is seeded with
  ``seed`` at construction and the env's ``np_random`` (position noise) is seeded with ``seed`` at the first
  reset, even when that reset passes no seed (Tianshou's ``Collector`` never does). ``reset(seed=s)``
  reseeds both. ``make_maze_vector_env(task, n, seed)`` uses seeds ``seed .. seed+n-1``, so each env has its
  own start/goal stream and the whole set is deterministic given ``seed``.
* **Info.** ``info["success"]`` (from the env, per step) and ``info["is_success"]`` (same value, the name
  many RL tools look for).

Observations are the env's Dict: ``observation`` (4,) = [x, y, vx, vy], ``achieved_goal`` (2,) = [x, y],
``desired_goal`` (2,). Coordinates are the env's xy frame: cell (row, col) has its centre at
``maze.cell_rowcol_to_xy((row, col))``; x grows with the column, y *decreases* with the row.

Drawing plans over a maze lives in :mod:`diffplan.viz`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = [
    "GOAL_RADIUS",
    "MAZE_TASKS",
    "MazeTask",
    "RandomCellsReset",
    "free_cells",
    "get_task",
    "make_maze_env",
    "make_maze_vector_env",
    "maze_env_fns",
    "maze_geometry",
    "protocol_metadata",
    "register_maze",
    "register_maze_envs",
]

# The env's own success threshold (gymnasium_robotics MazeEnv.compute_reward / info["success"]).
GOAL_RADIUS: float = 0.45
# User mazes run on this id with their own ``maze_map`` (every PointMaze id accepts one; the id only picks the
# default map).
USER_MAZE_ENV_ID = "PointMaze_UMaze-v3"


def register_maze_envs() -> None:
    """Register the gymnasium-robotics envs with gymnasium (idempotent).

    Called by every maker here, so subprocess and spawn workers, which import this module afresh, can
    ``gym.make`` PointMaze ids too.
    """
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)


@dataclass(frozen=True)
class MazeTask:
    """One maze task of the evaluation protocol.

    Attributes:
        name: diffplan task name, e.g. ``"pointmaze-umaze"``.
        env_id: gymnasium-robotics id, e.g. ``"PointMaze_UMaze-v3"``.
        max_episode_steps: fixed episode length (every episode is truncated there).
        goal_radius: distance at which the ball counts as at the goal (the env's threshold).
        layout: a user maze's map, rows of cells (tuples, so the task is hashable); None: ``env_id``'s own map.
    """

    name: str
    env_id: str
    max_episode_steps: int
    goal_radius: float = GOAL_RADIUS
    layout: tuple[tuple[int | str, ...], ...] | None = None

    @property
    def maze_map(self) -> list[list[int | str]]:
        """The maze layout, rows of cells (1 = wall, anything else free): ``layout`` or the registered map."""
        if self.layout is not None:
            return [list(row) for row in self.layout]
        register_maze_envs()
        return gym.spec(self.env_id).kwargs["maze_map"]

    def env_kwargs(self) -> dict[str, Any]:
        """Extra ``gym.make`` kwargs of this task (a user maze passes its ``maze_map``)."""
        return {} if self.layout is None else {"maze_map": self.maze_map}


BUILTIN_MAZE_TASKS: tuple[str, ...] = ("pointmaze-umaze", "pointmaze-medium", "pointmaze-large")

MAZE_TASKS: dict[str, MazeTask] = {
    t.name: t
    for t in (
        MazeTask("pointmaze-umaze", "PointMaze_UMaze-v3", 300),
        MazeTask("pointmaze-medium", "PointMaze_Medium-v3", 600),
        MazeTask("pointmaze-large", "PointMaze_Large-v3", 800),
    )
}
"""Maze tasks by name: the built-in three, then the user mazes registered in this process."""


def register_maze(name: str, maze_map: Sequence[Sequence[int | str]], max_episode_steps: int) -> MazeTask:
    """Register (or replace) the user maze ``name`` so that ``make_env(name)`` and the recipe know it.

    A task file's ``maze:`` section comes here when its config is loaded (``diffplan.compose``), also from a
    saved run's config, so a run of a user maze is evaluable without the task file. The map is validated by
    :class:`diffplan.config.MazeConfig`.
    """
    if name in BUILTIN_MAZE_TASKS:
        raise ValueError(f"{name!r} is a built-in maze task; give a user maze another name")
    task = MazeTask(name, USER_MAZE_ENV_ID, int(max_episode_steps), layout=tuple(tuple(r) for r in maze_map))
    MAZE_TASKS[name] = task
    return task


def get_task(task: str | MazeTask) -> MazeTask:
    """Look up a task by name (a ``MazeTask`` passes through); unknown names raise ``ValueError``."""
    if isinstance(task, MazeTask):
        return task
    try:
        return MAZE_TASKS[task]
    except KeyError:
        raise ValueError(f"unknown maze task {task!r}; valid names: {sorted(MAZE_TASKS)}") from None


def maze_geometry(task: str | MazeTask):  # -> gymnasium_robotics.envs.maze.maze_v4.Maze
    """The env's ``Maze`` object (cell <-> xy conversions, scaling) without building a MuJoCo model.

    ``Maze.__init__`` only stores the map and computes the centre offsets, so this is cheap and uses exactly
    the env's formulas. PointMaze always uses ``maze_size_scaling=1`` and ``maze_height=0.4``.
    """
    return _geometry(get_task(task))


@functools.cache
def _geometry(task: MazeTask):  # cached per task value, so a user maze re-registered under its name is redrawn
    from gymnasium_robotics.envs.maze.maze_v4 import Maze

    return Maze(task.maze_map, maze_size_scaling=1.0, maze_height=0.4)


def free_cells(task: str | MazeTask) -> np.ndarray:
    """All free (non-wall) cells of the task's maze as an (n, 2) int array of (row, col), row-major order."""
    return _free_cells(get_task(task)).copy()


@functools.cache
def _free_cells(task: MazeTask) -> np.ndarray:
    m = task.maze_map
    return np.array([(r, c) for r, row in enumerate(m) for c, v in enumerate(row) if v != 1], dtype=np.int64)


def protocol_metadata(task: str | MazeTask) -> dict[str, Any]:
    """JSON-serializable description of the evaluation protocol (stored in dataset metadata)."""
    t = get_task(task)
    return {
        "task": t.name,
        "env_id": t.env_id,
        "episode_length": t.max_episode_steps,
        "goal_radius": t.goal_radius,
        "continuing_task": True,
        "reset_target": False,
        "reward": "sparse",
        "start_goal": "distinct uniform free cells + env's uniform +-0.25 position noise",
        # A user maze's layout, so a dataset made for another layout under the same name is never reused.
        **({"maze_map": t.maze_map} if t.layout is not None else {}),
    }


class RandomCellsReset(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Draw distinct (start, goal) free cells per episode from a seeded generator and pass them as reset options.

    The wrapper records its constructor args, so the env spec stored in a Minari dataset rebuilds the same
    protocol env with ``gym.make(spec)`` (after :func:`register_maze_envs`).

    Args:
        env: a (wrapped) gymnasium-robotics maze env.
        seed: seeds the cell generator now and the inner env's ``np_random`` at the first reset.
    """

    def __init__(self, env: gym.Env, seed: int | None = 0):
        gym.utils.RecordConstructorArgs.__init__(self, seed=seed)
        gym.Wrapper.__init__(self, env)
        maze_map = env.unwrapped.maze.maze_map
        self._cells = np.array(
            [(r, c) for r, row in enumerate(maze_map) for c, v in enumerate(row) if v != 1], dtype=np.int64
        )
        if len(self._cells) < 2:
            raise ValueError("the maze needs at least two free cells for distinct start and goal cells")
        # Cells marked "g"/"r"/"c" (gymnasium-robotics' convention) restrict the goals / starts; a map without
        # marks draws both from every free cell (the built-in mazes, with their original draw below).
        marks = [maze_map[r][c] for r, c in self._cells]
        self._goals = np.array([k for k, v in enumerate(marks) if v in ("g", "c")], dtype=np.int64)
        self._starts = np.array([k for k, v in enumerate(marks) if v in ("r", "c")], dtype=np.int64)
        self._rng = np.random.default_rng(seed)
        # The inner env is seeded lazily at the first reset so that a collector's seedless reset() is still
        # deterministic (otherwise the env's position noise would come from OS entropy).
        self._pending_seed = seed
        self.last_cells: tuple[np.ndarray, np.ndarray] | None = None

    def draw_cells(self) -> tuple[np.ndarray, np.ndarray]:
        """Draw (start_cell, goal_cell): two distinct free cells, each (row, col)."""
        if not len(self._goals) and not len(self._starts):
            i, j = self._rng.choice(len(self._cells), size=2, replace=False)
            return self._cells[i].copy(), self._cells[j].copy()
        starts = self._starts if len(self._starts) else np.arange(len(self._cells))
        goals = self._goals if len(self._goals) else np.arange(len(self._cells))
        while True:  # a valid map has a start that differs from a goal (MazeConfig.validate)
            i, j = starts[self._rng.integers(len(starts))], goals[self._rng.integers(len(goals))]
            if i != j:
                return self._cells[i].copy(), self._cells[j].copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            self._pending_seed = None
        elif self._pending_seed is not None:
            seed, self._pending_seed = self._pending_seed, None
        start, goal = self.draw_cells()
        opts = {"reset_cell": start, "goal_cell": goal}
        if options:
            # Explicit options (e.g. a fixed goal for a demo) win over the drawn cells.
            opts.update({k: v for k, v in options.items() if v is not None})
        self.last_cells = (np.asarray(opts["reset_cell"]), np.asarray(opts["goal_cell"]))
        obs, info = self.env.reset(seed=seed, options=opts)
        info["is_success"] = bool(info.get("success", False))
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["is_success"] = bool(info.get("success", False))
        return obs, reward, terminated, truncated, info


def make_maze_env(task: str | MazeTask, seed: int = 0, *, render_mode: str | None = None) -> gym.Env:
    """One protocol env for ``task`` (see the module docstring), deterministic given ``seed``."""
    t = get_task(task)
    register_maze_envs()
    env = gym.make(
        t.env_id,
        continuing_task=True,
        reset_target=False,
        max_episode_steps=t.max_episode_steps,
        render_mode=render_mode,
        **t.env_kwargs(),
    )
    return RandomCellsReset(env, seed=seed)


def maze_env_fns(task: str | MazeTask, n: int, seed: int = 0) -> list[functools.partial[gym.Env]]:
    """Factories of ``n`` protocol envs with seeds ``seed .. seed+n-1``.

    ``functools.partial`` keeps them picklable for subprocess and Ray workers; each worker imports this module
    and registers the gymnasium-robotics ids itself. The factories carry the ``MazeTask`` itself, not its name,
    so a worker process needs no registered user maze.
    """
    t = get_task(task)  # fail fast on a bad name, before any worker starts
    return [functools.partial(make_maze_env, t, seed + i) for i in range(n)]


def make_maze_vector_env(task: str | MazeTask, n: int, seed: int = 0, subproc: bool = False, kind: str = ""):
    """``n`` protocol envs (seeds ``seed .. seed+n-1``) in a Tianshou vector env, built by
    :func:`diffplan.envs.make_vector_env` (Dummy; Subproc with ``subproc``; or ``kind``)."""
    from diffplan.envs import make_vector_env

    return make_vector_env(task, n, seed, subproc, kind=kind)
