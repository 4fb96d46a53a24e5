"""Environment makers: one name space of tasks for training, evaluation and deployment.

``make_env(task, seed)`` returns a gymnasium env; ``make_vector_env(task, n, seed)`` a Tianshou vector env
of ``n`` such envs with seeds ``seed .. seed+n-1``. Maze tasks (the built-in ``pointmaze-*`` and the user
mazes of task files, :data:`diffplan.envs.maze.MAZE_TASKS`) follow the evaluation protocol of
:mod:`diffplan.envs.maze`; locomotion dataset tasks (``hopper-medium``, ``walker2d-random``, ...)
map to Gymnasium's v5 MuJoCo envs with D4RL's 1000-step limit; any other name is passed to ``gymnasium.make``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np

if TYPE_CHECKING:  # imported where used: a robot server (diffplan.envs.robot) starts without torch/tianshou
    from tianshou.env import BaseVectorEnv

    from diffplan.envs.maze import MazeTask


EVAL_SEED = 12_345
"""Seed of the evaluation environments, part of every task's evaluation protocol: every evaluation of every run
(and the locomotion reference scores) sees the same start states and start/goal pairs."""


def is_maze_task(task: str) -> bool:
    """A built-in maze or a user maze registered in this process (:func:`diffplan.envs.maze.register_maze`)."""
    from diffplan.envs.maze import MAZE_TASKS

    return task in MAZE_TASKS


# D4RL's locomotion datasets, rebuilt on Gymnasium's v5 MuJoCo envs (the -v2 envs D4RL used need mujoco-py).
LOCOMOTION_ENVS: dict[str, str] = {"hopper": "Hopper-v5", "walker2d": "Walker2d-v5", "halfcheetah": "HalfCheetah-v5"}
LOCOMOTION_KINDS: tuple[str, ...] = ("random", "medium", "medium-replay", "medium-expert", "expert")
# D4RL's episode limit; Gymnasium's v5 default is the same, it is passed explicitly so it cannot drift.
LOCOMOTION_MAX_STEPS = 1000


def split_locomotion_task(task: str) -> tuple[str, str] | None:
    """``"hopper-medium-replay"`` -> ``("hopper", "medium-replay")``; None if ``task`` is no locomotion task."""
    env, _, kind = task.partition("-")
    if env in LOCOMOTION_ENVS and kind in LOCOMOTION_KINDS:
        return env, kind
    return None


def is_locomotion_task(task: str) -> bool:
    return split_locomotion_task(task) is not None


def task_family(task: str) -> str:
    """``"maze"``, ``"locomotion"`` or ``"gym"`` (any other gymnasium id): picks an agent's method file."""
    if is_maze_task(task):
        return "maze"
    return "locomotion" if is_locomotion_task(task) or task in LOCOMOTION_ENVS.values() else "gym"


def is_known_task(task: str) -> bool:
    """Whether :func:`make_env` knows ``task`` by name (without making the env)."""
    if is_maze_task(task) or is_locomotion_task(task) or ":" in task:  # "module:Env-v0" imports its module
        return True
    try:
        gym.spec(task)
    except gym.error.Error:
        return False
    return True


def locomotion_gym_id(env: str) -> str:
    """Gymnasium id of a locomotion env name (``"hopper"`` -> ``"Hopper-v5"``), with a clear error."""
    if env not in LOCOMOTION_ENVS:
        raise ValueError(f"unknown locomotion env {env!r}; expected one of {sorted(LOCOMOTION_ENVS)}")
    return LOCOMOTION_ENVS[env]


def _warn_mujoco(message: str) -> None:
    warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)


@functools.cache
def route_mujoco_warnings() -> None:
    """Send MuJoCo's warnings to Python's ``warnings`` (once per process, unless a handler is already set).

    Why: MuJoCo prints its warnings itself, on every model build. MuJoCo 4 warns that Gymnasium's
    ``half_cheetah.xml`` uses a deprecated compiler attribute, so every HalfCheetah env printed the same two lines
    (twenty times per 20-env evaluation). As Python warnings, they show once per place and users can filter them.
    """
    import mujoco

    if mujoco.get_mju_user_warning() is None:  # keep a handler the user installed
        mujoco.set_mju_user_warning(_warn_mujoco)


def make_locomotion_env(
    env: str, seed: int | None = 0, render_mode: str | None = None, render_size: int = 160
) -> gym.Env:
    """Gymnasium's v5 env for ``env`` (``hopper``, ``walker2d``, ``halfcheetah``), reset and action space seeded.

    ``render_size``: square frame side when ``render_mode`` is set (small: software GL renders every pixel).
    """
    route_mujoco_warnings()
    extra = {"render_mode": render_mode, "width": render_size, "height": render_size} if render_mode else {}
    e = gym.make(locomotion_gym_id(env), max_episode_steps=LOCOMOTION_MAX_STEPS, **extra)
    if seed is not None:
        e.reset(seed=seed)
        e.action_space.seed(seed)
    return e


def make_env(task: str, seed: int = 0, render_mode: str | None = None) -> gym.Env:
    """One environment for ``task`` (a maze task name or a gymnasium id); ``render_mode`` e.g. "rgb_array"."""
    if is_maze_task(task):
        from diffplan.envs.maze import make_maze_env

        return make_maze_env(task, seed=seed, render_mode=render_mode)
    loco = split_locomotion_task(task)
    if loco is not None:
        return make_locomotion_env(loco[0], seed, render_mode=render_mode)
    try:
        env = gym.make(task, render_mode=render_mode) if render_mode else gym.make(task)
    except gym.error.Error as exc:
        from diffplan.envs.maze import MAZE_TASKS

        raise ValueError(f"unknown task {task!r}: not a maze task ({sorted(MAZE_TASKS)}) nor a gymnasium id ({exc})") from exc
    env.reset(seed=seed)
    return env


VECTOR_ENVS: tuple[str, ...] = ("dummy", "subproc", "ray")
"""Kinds of vector env: ``dummy`` (Tianshou's DummyVectorEnv, every env in this process), ``subproc``
(SubprocVectorEnv, one process each) or ``ray`` (RayVectorEnv, one Ray actor each: on a Ray cluster the envs
spread over its machines)."""


def check_vector_env(kind: str) -> None:
    """A :data:`VECTOR_ENVS` kind ('' for the caller's default) that can run here, else one ``ConfigError``."""
    from diffplan.config import ConfigError

    if kind and kind not in VECTOR_ENVS:
        raise ConfigError(f"vector_env={kind!r}; valid: {', '.join(VECTOR_ENVS)} (or empty for the default)")
    if kind == "ray":
        _require_ray("vector_env=ray")


def _require_ray(what: str) -> None:
    import importlib.util

    from diffplan.config import ConfigError

    if importlib.util.find_spec("ray") is None:
        raise ConfigError(f"{what} needs Ray: pip install 'diffplan[distributed]' (or ray)")


def connect_ray(address: str = "", what: str = "vector_env=ray") -> None:
    """Join the Ray cluster at ``address`` ("auto": the one this machine belongs to), or start a local Ray
    when ``address`` is empty; nothing when this process is connected already. ``what`` names the feature in
    the error when Ray is not installed."""
    _require_ray(what)
    import ray

    if not ray.is_initialized():
        ray.init(address=address or None, ignore_reinit_error=True, log_to_driver=False)


class ActionChunks(gym.Wrapper):
    """One step of this env = one *decision* of a chunk policy: the action is a flat chunk of ``chunk`` actions
    (chunk * A,), of which the first ``act_steps`` are executed in the wrapped env (fewer when the episode ends
    first); the reward is their sum, the observation the last one, and ``info["env_steps"]`` says how many env
    steps the decision took. This is DPPO's decision MDP (its ``MultiStep`` wrapper, rewards summed), so a
    Tianshou Collector, buffer and GAE see decisions as ordinary transitions.
    """

    def __init__(self, env: gym.Env, chunk: int, act_steps: int) -> None:
        super().__init__(env)
        if not 1 <= act_steps <= chunk:
            raise ValueError(f"act_steps={act_steps} must be in [1, chunk={chunk}]")
        space = env.action_space
        assert isinstance(space, gym.spaces.Box), "action chunks need a Box action space"
        self.chunk, self.act_steps, self.act_shape = chunk, act_steps, space.shape
        self.action_space = gym.spaces.Box(
            low=np.tile(space.low.ravel(), chunk), high=np.tile(space.high.ravel(), chunk), dtype=space.dtype
        )

    def step(self, action: np.ndarray) -> tuple[object, float, bool, bool, dict]:
        actions = np.asarray(action).reshape(self.chunk, *self.act_shape)
        total, info = 0.0, {}
        obs, terminated, truncated = None, False, False
        steps = 0
        for act in actions[: self.act_steps]:
            obs, reward, terminated, truncated, info = self.env.step(act)
            total += float(reward)
            steps += 1
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, {**info, "env_steps": steps}


def _wrapped(fn: Callable[[], gym.Env], wrapper: Callable[[gym.Env], gym.Env]) -> gym.Env:
    return wrapper(fn())


def make_vector_env(
    task: str | MazeTask,
    n: int,
    seed: int = 0,
    subproc: bool = False,
    *,
    kind: str = "",
    ray_address: str = "",
    wrapper: Callable[[gym.Env], gym.Env] | None = None,
) -> BaseVectorEnv:
    """``n`` envs of ``task`` with seeds ``seed .. seed+n-1`` in a Tianshou vector env: the one place that builds
    vector envs (evaluation, online training, tests).

    ``kind``: one of :data:`VECTOR_ENVS`; empty: ``subproc`` when ``subproc`` else ``dummy`` (PointMaze steps are
    cheaper than a process hop). ``ray_address``: the Ray cluster of ``kind="ray"`` (empty: a local Ray).
    ``wrapper``: applied to each env where it is built (a picklable callable, e.g. a ``functools.partial`` of
    :class:`ActionChunks`).
    """
    from tianshou.env import DummyVectorEnv, RayVectorEnv, SubprocVectorEnv

    check_vector_env(kind)
    kind = kind or ("subproc" if subproc else "dummy")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not isinstance(task, str) or is_maze_task(task):  # a maze by name, or a MazeTask itself
        from diffplan.envs.maze import maze_env_fns

        fns = maze_env_fns(task, n, seed)
    else:
        fns = [functools.partial(make_env, task, seed + i) for i in range(n)]
    if wrapper is not None:
        fns = [functools.partial(_wrapped, fn, wrapper) for fn in fns]
    if kind == "dummy":
        return DummyVectorEnv(fns)
    if kind == "subproc":
        return SubprocVectorEnv(fns)
    connect_ray(ray_address)
    return RayVectorEnv([functools.partial(_BuiltInActor, fn) for fn in fns])


class _BuiltInActor:
    """What Tianshou's ``RayEnvWorker`` ships to its actor: the env factory, which runs there.

    ``RayEnvWorker`` calls the factory in this process and sends the env it returns to a Ray actor by pickling.
    A gymnasium env does not survive that (it unpickles as a fresh env from its constructor arguments, EzPickle,
    losing the seeding the factory did), so the factory returns this stand-in, which unpickles into
    ``fn()``: the env is built in the actor, as a SubprocVectorEnv builds it in its worker process.
    """

    def __init__(self, fn: functools.partial[gym.Env]) -> None:
        self.fn = fn

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return _call, (self.fn,)


def _call(fn: functools.partial[gym.Env]) -> gym.Env:
    return fn()
