"""D4RL maze2d dataset recipe on gymnasium-robotics PointMaze.

This mirrors D4RL's ``scripts/generation/generate_maze2d_datasets.py`` and
``d4rl/pointmaze/waypoint_controller.py`` (Farama-Foundation/D4RL), re-written for gymnasium-robotics:

* **Controller** (:class:`WaypointController`). Shortest path over free maze cells (BFS; D4RL runs 50 sweeps
  of tabular Q-iteration with discount 0.99 on the grid, which yields the same shortest paths), one waypoint
  per cell on the path, each jittered by 0.2 (D4RL: ``cell - U(0,1)*0.2`` per axis, in a frame whose cell
  centres sit 0.2 off the walls; here the jitter is ``U(-0.1, 0.1)`` around the true centre), then the goal.
  PD control ``a = p_gain * (waypoint - pos) + d_gain * vel`` with D4RL's gains ``p_gain=10, d_gain=-1``;
  a waypoint is passed when within ``solve_thresh=0.1``; the controller reports *done* when within
  ``solve_thresh`` of the goal (D4RL also requires the per-step displacement below ``vel_thresh=0.1``, which
  PointMaze's velocity clip of 5 with dt=0.01 makes always true except right after a new goal).
  Actions are clipped to [-1, 1]; ``noisy`` adds N(0, 0.5^2) per dimension before the clip (D4RL ``--noisy``).
* **One continuous stream.** The env is never reset after the first step. When the controller is done, or
  after ``max_episode_steps`` steps toward one goal (D4RL's per-goal step limit), a new goal is drawn and set
  on the running env, and the stream is cut into an episode there.

Deliberate differences from D4RL, each to match diffplan's evaluation protocol (:mod:`diffplan.envs.maze`):

* The controller's final target is the exact (noisy) goal, not the goal cell's centre. D4RL's goals carry
  +-0.1 noise so its cell centre was always within its reward radius; gymnasium-robotics goals carry +-0.25,
  and the data should end *at* the goal a planner is conditioned on.
* New goal cells are drawn uniformly from the free cells other than the ball's current cell (D4RL: any free
  cell, so some of its "episodes" are a few steps long), and get the env's own +-0.25 position noise.
* D4RL does not advance its recorded state on the step a goal changes, which duplicates an observation at
  every cut; here every transition is recorded as it happened.

Any maze. Every function takes a task name (the built-in mazes, or a user maze registered from a task file's
``maze:`` section) or a :class:`~diffplan.envs.maze.MazeTask` itself, so a user-defined layout gets the same
controller, stream and reference-score protocol; its dataset metadata keeps the layout
(``protocol.maze_map``), so a dataset of another layout under the same name is never reused.

Coordinates. D4RL's maze2d frame has x = row index, y = column index. gymnasium-robotics uses
``cell_rowcol_to_xy``: x = (col + 0.5) - width/2, y = height/2 - (row + 0.5), i.e. x follows columns and y is
*flipped* relative to rows. The controller works on (row, col) cells and converts with the env's own ``Maze``
methods, so no frame is hard-coded. PointMaze's scaling is 1, so D4RL's gains and thresholds carry over.

Goal change on a running env: ``env.unwrapped.goal = xy`` then ``update_target_site_pos()`` (the visual
marker). ``step`` computes reward, ``info["success"]`` and the returned ``desired_goal`` from ``self.goal``,
so the very next step uses the new goal (checked in tests). With ``continuing_task=True, reset_target=False``
the env itself never moves the goal.

Episode layout in the Minari dataset: observations are dicts of (T+1, d) arrays; the last observation of a
cut episode is the next observation of the stream, i.e. the same physical state as the first observation of
the next episode (``observation`` and ``achieved_goal`` equal), but its ``desired_goal`` is still the old
goal (that is what the env returned and what the rewards were computed against); the next episode's first
observation carries the new goal. Terminations are all False, truncations True at the last step of every
episode; ``infos["success"]`` has T+1 entries.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffplan.data import recipes
from diffplan.data.episodes import DatasetError
from diffplan.envs.maze import (
    GOAL_RADIUS,
    MazeTask,
    free_cells,
    get_task,
    make_maze_env,
    maze_geometry,
    protocol_metadata,
    register_maze_envs,
)

__all__ = [
    "RECIPE",
    "REF_SEED",
    "WaypointController",
    "controller_episode_returns",
    "default_dataset_id",
    "ensure_dataset",
    "generate_pointmaze_dataset",
    "protocol_reference_scores",
    "random_episode_returns",
    "run_stream",
]

RECIPE = "d4rl-maze2d-waypoint"
# Reference scores are computed on their own fixed seed, independent of the dataset seed, so every dataset of
# a task shares the same ref_min/ref_max (and the ref episodes don't coincide with the small eval seeds 0..n).
REF_SEED = 100_000
NOISE_STD = 0.5  # D4RL --noisy: a + randn * 0.5


# --------------------------------------------------------------------------------------------- controller


class WaypointController:
    """D4RL's maze2d waypoint controller on a gymnasium-robotics maze (see the module docstring).

    Args:
        task: maze task name or ``MazeTask`` (gives the map and the env's cell <-> xy conversion).
        p_gain, d_gain: PD gains (D4RL defaults 10, -1: ``a = p*(wp - pos) + d*vel``).
        solve_thresh: distance at which a waypoint is passed and the goal counts as reached (D4RL 0.1).
        vel_thresh: maximum per-step displacement for passing a waypoint / being done (D4RL 0.1).
        waypoint_jitter: width of the uniform jitter on intermediate waypoints (D4RL 0.2).
        rng: generator for the jitter (seeded by the caller for reproducibility).
    """

    def __init__(
        self,
        task: str | MazeTask,
        *,
        p_gain: float = 10.0,
        d_gain: float = -1.0,
        solve_thresh: float = 0.1,
        vel_thresh: float = 0.1,
        waypoint_jitter: float = 0.2,
        rng: np.random.Generator | None = None,
    ):
        self.task = get_task(task)
        self.p_gain = float(p_gain)
        self.d_gain = float(d_gain)
        self.solve_thresh = float(solve_thresh)
        self.vel_thresh = float(vel_thresh)
        self.waypoint_jitter = float(waypoint_jitter)
        self.rng = rng if rng is not None else np.random.default_rng()
        self._maze = maze_geometry(self.task)
        grid = np.array([[v == 1 for v in row] for row in self._maze.maze_map], dtype=bool)
        self._wall = grid
        self._free = free_cells(self.task)
        self._dist_cache: dict[tuple[int, int], np.ndarray] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the current goal and path (the next ``get_action`` plans afresh)."""
        self._target: tuple[float, float] | None = None
        self._waypoints: list[tuple[float, float]] = []
        self._idx = 0
        self._prev = (0.0, 0.0)

    @property
    def waypoints(self) -> np.ndarray:
        """Current waypoints, (K, 2) xy; the last one is the goal."""
        return np.array(self._waypoints, dtype=np.float64).reshape(-1, 2)

    # -- grid search ---------------------------------------------------------------------------------------

    def cell_of(self, xy: Sequence[float]) -> tuple[int, int]:
        """The free cell containing ``xy`` (nearest free cell centre if ``xy`` falls in a wall or outside)."""
        r, c = (int(v) for v in self._maze.cell_xy_to_rowcol(np.asarray(xy, dtype=np.float64)))
        h, w = self._wall.shape
        if 0 <= r < h and 0 <= c < w and not self._wall[r, c]:
            return r, c
        centres = np.stack([self._maze.cell_rowcol_to_xy(rc) for rc in self._free])
        k = int(np.argmin(np.linalg.norm(centres - np.asarray(xy)[None, :2], axis=1)))
        return int(self._free[k, 0]), int(self._free[k, 1])

    def _distances_to(self, target: tuple[int, int]) -> np.ndarray:
        """BFS step distances from every cell to ``target`` (inf for walls/unreachable); cached per target."""
        d = self._dist_cache.get(target)
        if d is None:
            h, w = self._wall.shape
            d = np.full((h, w), np.inf)
            d[target] = 0
            queue = deque([target])
            while queue:
                r, c = queue.popleft()
                for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    nr, nc = r + dr, c + dc
                    if 0 <= nr < h and 0 <= nc < w and not self._wall[nr, nc] and d[nr, nc] == np.inf:
                        d[nr, nc] = d[r, c] + 1
                        queue.append((nr, nc))
            self._dist_cache[target] = d
        return d

    def shortest_path(self, start: tuple[int, int], target: tuple[int, int]) -> list[tuple[int, int]]:
        """Cells visited after ``start`` up to and including ``target`` (empty if start == target).

        Greedy descent of the BFS distance: the rollout D4RL does on its Q-values (ties broken in a fixed order:
        up, down, left, right in the row/col grid).
        """
        d = self._distances_to(target)
        if not np.isfinite(d[start]):
            raise ValueError(f"cell {target} is unreachable from {start}")
        path, cur = [], start
        while cur != target:
            r, c = cur
            for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                nxt = (r + dr, c + dc)
                if 0 <= nxt[0] < d.shape[0] and 0 <= nxt[1] < d.shape[1] and d[nxt] == d[cur] - 1:
                    break
            path.append(nxt)
            cur = nxt
        return path

    def _new_target(self, px: float, py: float, tx: float, ty: float) -> None:
        start = self.cell_of((px, py))
        target = self.cell_of((tx, ty))
        half = self.waypoint_jitter / 2
        wps: list[tuple[float, float]] = []
        for cell in self.shortest_path(start, target)[:-1]:
            cx, cy = self._maze.cell_rowcol_to_xy(np.array(cell))
            jx, jy = self.rng.uniform(-half, half, size=2) if half > 0 else (0.0, 0.0)
            wps.append((float(cx + jx), float(cy + jy)))
        wps.append((tx, ty))  # the exact goal, un-jittered (D4RL: the goal cell)
        self._waypoints = wps
        self._idx = 0
        self._target = (tx, ty)
        # D4RL starts the displacement check from the start cell's centre, not the ball's position.
        sx, sy = self._maze.cell_rowcol_to_xy(np.array(start))
        self._prev = (float(sx), float(sy))

    # -- control -------------------------------------------------------------------------------------------

    def get_action(self, position, velocity, target) -> tuple[np.ndarray, bool]:
        """PD action toward the current waypoint and whether the goal is reached (D4RL's ``get_action``).

        Args:
            position: ball xy (2,). velocity: ball velocity (2,). target: goal xy (2,); a changed target
                triggers a new shortest path from the ball's current cell.

        Returns:
            (action (2,) float32 in [-1, 1], done).
        """
        # Plain floats: this runs once per env step in a 1M-step loop, where numpy's per-call overhead on
        # 2-vectors would dominate.
        px, py = float(position[0]), float(position[1])
        tx, ty = float(target[0]), float(target[1])
        if self._target is None or abs(tx - self._target[0]) > 1e-9 or abs(ty - self._target[1]) > 1e-9:
            self._new_target(px, py, tx, ty)
        dist = math.hypot(px - tx, py - ty)
        disp = math.hypot(self._prev[0] - px, self._prev[1] - py)
        not_solved = dist >= self.solve_thresh or disp >= self.vel_thresh
        wx, wy = self._waypoints[self._idx] if not_solved else (tx, ty)
        ax = self.p_gain * (wx - px) + self.d_gain * float(velocity[0])
        ay = self.p_gain * (wy - py) + self.d_gain * float(velocity[1])
        if (
            not_solved
            and math.hypot(px - wx, py - wy) < self.solve_thresh
            and disp < self.vel_thresh
            and self._idx < len(self._waypoints) - 1
        ):
            self._idx += 1
        self._prev = (px, py)
        action = np.array([min(1.0, max(-1.0, ax)), min(1.0, max(-1.0, ay))], dtype=np.float32)
        return action, not not_solved


# ---------------------------------------------------------------------------------------- protocol scores


def controller_episode_returns(
    task: str | MazeTask, n: int, seed: int = REF_SEED, *, noisy: bool = False, return_steps: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Returns of the waypoint controller over ``n`` evaluation-protocol episodes of ``make_maze_env(task, seed)``.

    Args:
        task: maze task name.
        n: number of episodes (run one after the other on one env, as an evaluator would).
        seed: env seed (start/goal cells and position noise); the controller's jitter/noise use ``seed`` too.
        noisy: add the recipe's N(0, 0.5^2) action noise.
        return_steps: also return, per episode, the first step at which the ball is within the goal radius
            (-1 if never).

    Returns:
        (n,) float returns, or (returns, first_success_step) if ``return_steps``.
    """
    env = make_maze_env(task, seed)
    ctrl = WaypointController(task, rng=np.random.default_rng([seed, 1]))
    noise_rng = np.random.default_rng([seed, 2])
    returns = np.zeros(n)
    first = np.full(n, -1, dtype=np.int64)
    try:
        for ep in range(n):
            obs, _ = env.reset()
            ctrl.reset()
            t, done = 0, False
            while not done:
                o = obs["observation"]
                act, _ = ctrl.get_action(o[:2], o[2:], obs["desired_goal"])
                if noisy:
                    act = np.clip(act + noise_rng.normal(0.0, NOISE_STD, 2), -1.0, 1.0).astype(np.float32)
                obs, r, terminated, truncated, info = env.step(act)
                returns[ep] += r
                if info["success"] and first[ep] < 0:
                    first[ep] = t + 1
                t += 1
                done = terminated or truncated
    finally:
        env.close()
    return (returns, first) if return_steps else returns


def random_episode_returns(task: str | MazeTask, n: int, seed: int = REF_SEED) -> np.ndarray:
    """Returns of the uniform random policy (actions U[-1, 1]^2) over ``n`` protocol episodes."""
    env = make_maze_env(task, seed)
    rng = np.random.default_rng([seed, 3])
    returns = np.zeros(n)
    try:
        for ep in range(n):
            env.reset()
            done = False
            while not done:
                _, r, terminated, truncated, _ = env.step(rng.uniform(-1.0, 1.0, 2).astype(np.float32))
                returns[ep] += r
                done = terminated or truncated
    finally:
        env.close()
    return returns


PROTOCOL_REF_EPISODES = 100
"""Episodes per reference score, as every generated dataset's (``generate_pointmaze_dataset``'s default)."""


def protocol_reference_scores(task: str | MazeTask) -> tuple[float, float]:
    """``(ref_min, ref_max)`` of ``task`` under diffplan's evaluation protocol: the uniform random policy and the
    waypoint controller over :data:`PROTOCOL_REF_EPISODES` episodes of :data:`REF_SEED`, exactly the reference
    scores a generated dataset of the task stores. For data made elsewhere (a D4RL maze2d file), whose own
    reference scores belong to another protocol.

    Deterministic, so they are computed once (10-40 s on 2 cores) and cached as JSON in
    ``$DIFFPLAN_CACHE_DIR`` (default ``$XDG_CACHE_HOME/diffplan`` or ``~/.cache/diffplan``).
    """
    from diffplan.checkpoint import CheckpointError, write_text_atomic

    t = get_task(task)
    key = json.dumps([t.name, t.maze_map, t.max_episode_steps, t.goal_radius, PROTOCOL_REF_EPISODES, REF_SEED])
    cache = _cache_dir() / "protocol-ref-scores.json"
    try:
        known = json.loads(cache.read_text()) if cache.is_file() else {}
    except (OSError, ValueError):
        known = {}
    if key in known:
        lo, hi = known[key]
        return float(lo), float(hi)
    hi = float(np.mean(controller_episode_returns(t, PROTOCOL_REF_EPISODES, REF_SEED)))
    lo = float(np.mean(random_episode_returns(t, PROTOCOL_REF_EPISODES, REF_SEED)))
    try:
        write_text_atomic(cache, json.dumps({**known, key: [lo, hi]}, indent=1))
    except (OSError, CheckpointError):  # a read-only or full cache only costs the recomputation next time
        pass
    return lo, hi


def _cache_dir() -> Path:
    import os

    if os.environ.get("DIFFPLAN_CACHE_DIR"):
        return Path(os.environ["DIFFPLAN_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffplan"


# ------------------------------------------------------------------------------------------------ stream


def run_stream(
    task: str | MazeTask, num_steps: int, seed: int = 0, *, noisy: bool = False, progress: bool = False
) -> dict[str, Any]:
    """Run the D4RL-style controller stream for ``num_steps`` env steps (no env reset after the first).

    Returns a dict of stream arrays: ``obs`` (N+1, 4) float64, ``actions`` (N, 2) float32, ``rewards`` (N,),
    ``success`` (N+1,) bool (env's, relative to the goal in force at that step; index 0 relative to the first
    goal), ``cuts`` (E+1,) int episode boundaries (episode k = steps cuts[k]..cuts[k+1]-1), ``goals`` (E, 2)
    goal xy per episode, ``goal_cells`` (E, 2), ``reached`` (E,) bool (the controller was done, not timed out),
    ``seconds`` (wall time of the loop).
    """
    import gymnasium as gym
    from tqdm.auto import tqdm

    t = get_task(task)
    register_maze_envs()
    # The raw env, without TimeLimit / order-enforcing / checker wrappers: ~2x faster per step, and the stream
    # must not be truncated by a time limit anyway.
    env = gym.make(t.env_id, continuing_task=True, reset_target=False, **t.env_kwargs()).unwrapped
    maze = env.maze
    cells = free_cells(t)
    # Independent streams for goal cells, controller jitter and action noise: a clean and a noisy dataset of the
    # same seed then share their goal-cell sequence.
    cell_rng, ctrl_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    ctrl = WaypointController(t, rng=ctrl_rng)

    obs_buf = np.empty((num_steps + 1, 4), dtype=np.float64)
    act_buf = np.empty((num_steps, 2), dtype=np.float32)
    rew_buf = np.empty(num_steps, dtype=np.float64)
    succ_buf = np.empty(num_steps + 1, dtype=bool)
    cuts, goals, goal_cells, reached = [0], [], [], []

    i, j = cell_rng.choice(len(cells), size=2, replace=False)
    obs, info = env.reset(seed=seed, options={"reset_cell": cells[i], "goal_cell": cells[j]})
    goal = env.goal.copy()
    goals.append(goal.copy())
    goal_cells.append(cells[j].copy())
    obs_buf[0] = obs["observation"]
    succ_buf[0] = info["success"]
    noise = noise_rng.normal(0.0, NOISE_STD, size=(num_steps, 2)) if noisy else None

    steps_to_goal = 0
    t0 = time.perf_counter()
    bar = tqdm(
        total=num_steps,
        desc=f"{t.name}{' noisy' if noisy else ''}",
        unit="step",
        disable=not progress,
        mininterval=1.0,
    )
    o = obs["observation"]
    for k in range(num_steps):
        act, done = ctrl.get_action(o[:2], o[2:], goal)
        if noise is not None:
            act = np.clip(act + noise[k], -1.0, 1.0).astype(np.float32)
        obs, r, _, _, info = env.step(act)
        o = obs["observation"]
        obs_buf[k + 1] = o
        act_buf[k] = act
        rew_buf[k] = r
        succ_buf[k + 1] = info["success"]
        steps_to_goal += 1
        if (done or steps_to_goal >= t.max_episode_steps) and k + 1 < num_steps:
            # Cut here and give the running env a new goal (no reset: the stream continues from this state).
            here = ctrl.cell_of(o[:2])
            while True:
                cell = cells[cell_rng.integers(len(cells))]
                if (int(cell[0]), int(cell[1])) != here:
                    break
            goal = env.add_xy_position_noise(maze.cell_rowcol_to_xy(cell))
            env.goal = goal
            env.update_target_site_pos()
            goal = goal.copy()
            cuts.append(k + 1)
            goals.append(goal.copy())
            goal_cells.append(cell.copy())
            reached.append(bool(done))
            steps_to_goal = 0
        if (k + 1) % 10_000 == 0:
            bar.update(10_000)
    bar.update(num_steps - bar.n)
    bar.close()
    seconds = time.perf_counter() - t0
    cuts.append(num_steps)
    # The last episode is cut by the end of the stream; it counts as reached only if the controller was done.
    reached.append(bool(done))
    env.close()
    return {
        "obs": obs_buf,
        "actions": act_buf,
        "rewards": rew_buf,
        "success": succ_buf,
        "cuts": np.asarray(cuts, dtype=np.int64),
        "goals": np.asarray(goals),
        "goal_cells": np.asarray(goal_cells, dtype=np.int64),
        "reached": np.asarray(reached, dtype=bool),
        "seconds": seconds,
    }


def _episode_buffers(stream: dict[str, Any]) -> list:
    """Cut the stream into Minari ``EpisodeBuffer``s (see the module docstring for the layout)."""
    from minari.data_collector import EpisodeBuffer

    obs, cuts, goals = stream["obs"], stream["cuts"], stream["goals"]
    out = []
    for e in range(len(cuts) - 1):
        s, f = int(cuts[e]), int(cuts[e + 1])
        steps = f - s
        ob = obs[s : f + 1]
        success = stream["success"][s : f + 1].copy()
        # The stream's success at the cut index was measured against the previous episode's goal.
        success[0] = bool(np.linalg.norm(ob[0, :2] - goals[e]) <= GOAL_RADIUS)
        truncations = np.zeros(steps, dtype=bool)
        truncations[-1] = True
        out.append(
            EpisodeBuffer(
                id=e,
                observations={
                    "observation": ob,
                    "achieved_goal": ob[:, :2].copy(),
                    "desired_goal": np.repeat(goals[e][None, :], steps + 1, axis=0),
                },
                actions=stream["actions"][s:f],
                rewards=stream["rewards"][s:f],
                terminations=np.zeros(steps, dtype=bool),
                truncations=truncations,
                infos={"success": success},
            )
        )
    return out


# ----------------------------------------------------------------------------------------------- dataset


def default_dataset_id(task: str | MazeTask, noisy: bool = False) -> str:
    """``diffplan/<task>[-noisy]-v0``: :func:`diffplan.data.recipes.dataset_id` at the default size."""
    return recipes.dataset_id(get_task(task).name, noisy=noisy)


def generate_pointmaze_dataset(
    task: str | MazeTask,
    num_steps: int = 1_000_000,
    seed: int = 0,
    noisy: bool = False,
    dataset_id: str | None = None,
    progress: bool = True,
    *,
    ref_episodes: int = 100,
    ref_seed: int = REF_SEED,
) -> str:
    """Generate the D4RL maze2d-style dataset for ``task`` as a local Minari dataset and return its id.

    Args:
        task: maze task name (``pointmaze-umaze|medium|large`` or a registered user maze) or ``MazeTask``.
        num_steps: total env steps of the stream (D4RL: 1e6 for every maze).
        seed: seed of the stream (env noise, goal cells, controller jitter, action noise).
        noisy: D4RL's noisy variant (N(0, 0.5^2) action noise before clipping).
        dataset_id: Minari id; default :func:`default_dataset_id`. Must not exist yet.
        progress: show a tqdm bar.
        ref_episodes: protocol episodes for each reference score (>= 100 for published numbers).
        ref_seed: seed of the reference-score episodes (fixed, shared by all datasets of a task).

    Returns:
        The dataset id (``minari.load_dataset(id)`` loads it from ``$MINARI_DATASETS_PATH`` or ~/.minari).
    """
    import minari

    t = get_task(task)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    dataset_id = dataset_id or default_dataset_id(t.name, noisy)
    if recipes.dataset_dir(dataset_id).exists():
        raise DatasetError(f"Minari dataset {dataset_id!r} already exists at {recipes.dataset_dir(dataset_id)}")

    stream = run_stream(t, num_steps, seed, noisy=noisy, progress=progress)
    t_ref = time.perf_counter()
    max_returns = controller_episode_returns(t, ref_episodes, ref_seed)
    min_returns = random_episode_returns(t, ref_episodes, ref_seed)
    ref_seconds = time.perf_counter() - t_ref
    buffers = _episode_buffers(stream)

    env = make_maze_env(t, seed=ref_seed)  # the protocol env: its spec rebuilds it (eval_env_spec)
    t_write = time.perf_counter()
    with warnings.catch_warnings():
        # Minari warns about every unset optional field (author email, permalink); nothing to act on.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"minari\..*")
        minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=env,
            eval_env=env,
            algorithm_name=RECIPE + ("-noisy" if noisy else ""),
            author="diffplan",
            description=(
                f"D4RL maze2d-style waypoint-controller stream on {t.env_id} ({num_steps} steps, seed {seed}"
                f"{', noisy actions' if noisy else ''}), cut at goal changes. Reference scores: waypoint "
                f"controller (max) and uniform random policy (min), {ref_episodes} episodes each under the "
                f"diffplan evaluation protocol ({t.max_episode_steps} steps, sparse reward within "
                f"{t.goal_radius})."
            ),
            ref_min_score=float(min_returns.mean()),
            ref_max_score=float(max_returns.mean()),
            num_episodes_average_score=ref_episodes,
        )
    write_seconds = time.perf_counter() - t_write
    env.close()

    reached = stream["reached"]
    lengths = np.diff(stream["cuts"])
    recipes.merge_metadata(
        dataset_id,
        {
            "recipe": RECIPE,
            "task": t.name,
            "seed": int(seed),
            "noisy": bool(noisy),
            "num_steps": int(num_steps),
            "protocol": protocol_metadata(t),
            "controller": {
                "p_gain": 10.0,
                "d_gain": -1.0,
                "solve_thresh": 0.1,
                "vel_thresh": 0.1,
                "waypoint_jitter": 0.2,
                "action_noise_std": NOISE_STD if noisy else 0.0,
            },
            "ref_episodes": int(ref_episodes),
            "ref_seed": int(ref_seed),
            "ref_max_score_std": float(max_returns.std()),
            "ref_min_score_std": float(min_returns.std()),
            "stream_stats": {
                "episodes": len(lengths),
                "goals_reached_fraction": float(reached[:-1].mean())
                if len(reached) > 1
                else float(reached[0]),
                "mean_episode_length": float(lengths.mean()),
                "steps_per_second": float(num_steps / max(stream["seconds"], 1e-9)),
                "stream_seconds": float(stream["seconds"]),
                "ref_seconds": float(ref_seconds),
                "write_seconds": float(write_seconds),
            },
        },
    )
    return dataset_id


def ensure_dataset(
    task: str | MazeTask,
    num_steps: int = 1_000_000,
    seed: int = 0,
    noisy: bool = False,
    dataset_id: str | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> str:
    """Return the id of the recipe's dataset, generating it only if it does not exist locally.

    An existing dataset is reused only if it was made by this recipe with the same task (and, for a user maze,
    the same layout), seed, noise and size; otherwise :class:`DatasetError` (pass another ``dataset_id``). A
    half-written dataset (no recipe metadata, e.g. an interrupted run) raises ``RuntimeError`` asking to delete it
    (:func:`diffplan.data.recipes.check_existing`).
    """
    t = get_task(task)
    dataset_id = dataset_id or default_dataset_id(t.name, noisy)
    want = {"task": t.name, "seed": int(seed), "noisy": bool(noisy), "num_steps": int(num_steps)}
    if not recipes.check_existing(dataset_id, RECIPE, want):
        return generate_pointmaze_dataset(t, num_steps, seed, noisy, dataset_id, progress, **kwargs)
    if t.layout is not None:  # a user maze: the same name must mean the same layout
        meta = json.loads((recipes.dataset_dir(dataset_id) / "data" / "metadata.json").read_text())
        made = meta.get("protocol", {}).get("maze_map")
        if made != t.maze_map:
            raise DatasetError(f"dataset {dataset_id!r} was made from another layout of {t.name!r}; pass another id")
    return dataset_id
