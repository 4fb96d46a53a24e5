"""Environment makers: one name space of tasks for training, evaluation and deployment.

``make_env(task, seed)`` returns a gymnasium env; ``make_vector_env(task, n, seed)`` a Tianshou vector env
of ``n`` such envs with seeds ``seed .. seed+n-1``. Maze tasks (``pointmaze-*``) follow the evaluation
protocol of :mod:`diffplan.envs.maze`; any other name is passed to ``gymnasium.make``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gymnasium as gym

if TYPE_CHECKING:  # imported where used: a robot server (diffplan.envs.robot) starts without torch/tianshou
    from tianshou.env import BaseVectorEnv


def is_maze_task(task: str) -> bool:
    return task.startswith("pointmaze-")


def make_env(task: str, seed: int = 0) -> gym.Env:
    """One environment for ``task`` (a maze task name or a gymnasium id)."""
    if is_maze_task(task):
        from diffplan.envs.maze import make_maze_env

        return make_maze_env(task, seed=seed)
    try:
        env = gym.make(task)
    except gym.error.Error as exc:
        from diffplan.envs.maze import MAZE_TASKS

        raise ValueError(f"unknown task {task!r}: not a maze task ({sorted(MAZE_TASKS)}) nor a gymnasium id ({exc})") from exc
    env.reset(seed=seed)
    return env


def make_vector_env(task: str, n: int, seed: int = 0, subproc: bool = False) -> BaseVectorEnv:
    """``n`` envs in a Tianshou vector env (Dummy by default: PointMaze steps are cheaper than a process hop)."""
    from tianshou.env import DummyVectorEnv, SubprocVectorEnv

    if is_maze_task(task):
        from diffplan.envs.maze import make_maze_vector_env

        return make_maze_vector_env(task, n, seed, subproc=subproc)
    fns = [lambda i=i: make_env(task, seed + i) for i in range(n)]
    return SubprocVectorEnv(fns) if subproc else DummyVectorEnv(fns)
