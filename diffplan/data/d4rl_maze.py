"""D4RL maze2d files in the PointMaze frame: which maze a file is, and the map from D4RL's frame to PointMaze's.

D4RL's maze2d env (``d4rl/pointmaze/maze_model.py``) and gymnasium-robotics' PointMaze (``maze_v4.py`` +
``point_maze.py``) simulate the same ball (timestep 0.01, joint damping 1, motors with gear 100 and controls in
[-1, 1], velocity clipped to 5) in the same layouts, in different frames:

* **D4RL.** A layout string is parsed into ``maze_arr[w][h]`` with ``w`` the line (row) and ``h`` the character
  (column). The wall of cell (row r, col c) is a unit box centred at world ``(r + 1, c + 1)``; the ball's body
  sits at world ``(1.2, 1.2)`` and ``qpos`` is its slide-joint displacement, so the ball is at world
  ``qpos + 1.2``. Starts and goals are drawn as ``qpos = (r, c) + U(-0.1, 0.1)``, i.e. 0.2 off the centre of
  cell (r, c) along both axes (the origin of the "x 0.74-3.0" range of maze2d-umaze). The observation is
  ``[qpos, qvel]``; ``infos/goal`` is the target in the qpos frame (the reward compares it with ``qpos``).
* **PointMaze.** Cell (row, col) has its centre at ``x = (col + 0.5) * s - W * s / 2``,
  ``y = H * s / 2 - (row + 0.5) * s`` (``Maze.cell_rowcol_to_xy``; W columns, H rows, scaling ``s``); the
  observation is ``[x, y, vx, vy]``.

Hence, with the D4RL position ``(px, py) = qpos`` in cell units ``(row, col) = (px + 0.2, py + 0.2)``::

    x  = (py + 0.2 + 0.5) * s - W * s / 2        vx = s * vy_d4rl        ax = a_y
    y  = H * s / 2 - (px + 0.2 + 0.5) * s        vy = -s * vx_d4rl       ay = -a_x

D4RL's x axis runs down the rows, PointMaze's y axis up them: the frames differ by a rotation of 90 degrees
(``[[0, 1], [-1, 0]]``, a proper rotation, so the physics is the same), an offset, and the scale ``s`` (1 for
PointMaze). Actions are forces along the axes, so they rotate like velocities (no scale: the motors are the
same). The three layouts of :data:`D4RL_LAYOUTS` are D4RL's own strings; a file is matched to a PointMaze task
only when its layout equals that task's map cell by cell (checked, not assumed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffplan.data.episodes import DatasetError

# D4RL's layout strings (maze_model.py: U_MAZE, MEDIUM_MAZE, LARGE_MAZE), one string per row: '#' wall,
# 'O' free, 'G' the env's default goal (a free cell).
D4RL_LAYOUTS: dict[str, tuple[str, ...]] = {
    "umaze": ("#####", "#GOO#", "###O#", "#OOO#", "#####"),
    "medium": ("########", "#OO##OO#", "#OO#OOO#", "##OOO###", "#OO#OOO#", "#O#OO#O#", "#OOO#OG#", "########"),
    "large": (
        "############", "#OOOO#OOOOO#", "#O##O#O#O#O#", "#OOOOOO#OOO#", "#O####O###O#", "#OO#O#OOOOO#",
        "##O#O#O#O###", "#OO#OOO#OGO#", "############",
    ),
}
"""D4RL maze2d layouts by maze name (the ``umaze`` of ``maze2d-umaze-v1``)."""

D4RL_TO_TASK = {"umaze": "pointmaze-umaze", "medium": "pointmaze-medium", "large": "pointmaze-large"}
"""The diffplan task evaluated on each D4RL maze."""

D4RL_BALL_OFFSET = 0.2
"""Ball body position (1.2) minus the wall grid's offset (1.0) in D4RL's world: qpos (r, c) is 0.2 off the
centre of cell (r, c)."""

_NAME = re.compile(r"^maze2d-(?:eval-)?(?P<maze>[a-z]+)(?:-dense)?-v\d+$")


def layout_map(layout: tuple[str, ...]) -> list[list[int]]:
    """A D4RL layout string's rows as a 0/1 map (1 wall), gymnasium-robotics' convention, same row order."""
    return [[1 if ch == "#" else 0 for ch in row] for row in layout]


def maze2d_maze(name: str | None) -> str | None:
    """The maze of a canonical D4RL dataset name (``maze2d-umaze-v1`` -> ``umaze``); None if not maze2d.

    Raises:
        DatasetError: a maze2d dataset whose maze has no PointMaze task here (``open``, the ``eval`` layouts).
    """
    match = _NAME.match(name or "")
    if match is None:
        return None
    maze = match["maze"]
    if maze not in D4RL_LAYOUTS or "-eval-" in str(name):
        raise DatasetError(
            f"D4RL dataset {name!r}: its maze has no PointMaze task in diffplan (matched mazes: "
            f"{', '.join(f'maze2d-{m}' for m in D4RL_LAYOUTS)}), so it cannot be evaluated in the PointMaze frame"
        )
    return maze


@dataclass(frozen=True)
class Maze2dFrame:
    """The map from D4RL's maze2d frame to PointMaze's for one layout of ``rows`` x ``cols`` cells.

    Shapes: positions, velocities and actions are ``(N, 2)`` arrays (last axis x, y in their own frame).
    """

    rows: int
    cols: int
    scaling: float = 1.0
    """gymnasium-robotics' ``maze_size_scaling`` (1 for PointMaze)."""

    def position(self, p: np.ndarray) -> np.ndarray:
        """D4RL qpos ``(N, 2)`` -> PointMaze xy ``(N, 2)``."""
        row = p[:, 0] + D4RL_BALL_OFFSET
        col = p[:, 1] + D4RL_BALL_OFFSET
        x = (col + 0.5) * self.scaling - self.cols * self.scaling / 2
        y = self.rows * self.scaling / 2 - (row + 0.5) * self.scaling
        return np.stack([x, y], axis=1)

    def velocity(self, v: np.ndarray) -> np.ndarray:
        """D4RL qvel ``(N, 2)`` -> PointMaze velocity ``(N, 2)``: rotated, scaled like positions."""
        return self.scaling * np.stack([v[:, 1], -v[:, 0]], axis=1)

    def action(self, a: np.ndarray) -> np.ndarray:
        """D4RL action ``(N, 2)`` -> PointMaze action ``(N, 2)``: forces rotate with the axes, same motors."""
        return np.stack([a[:, 1], -a[:, 0]], axis=1)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        """D4RL observation ``(N, 4)`` = [qpos, qvel] -> PointMaze ``(N, 4)`` = [x, y, vx, vy]."""
        return np.concatenate([self.position(obs[:, :2]), self.velocity(obs[:, 2:4])], axis=1)


def _check_layout(maze: str, task: str) -> Any:
    """The PointMaze geometry of ``task``, after checking that its map is D4RL's layout of ``maze``."""
    from diffplan.envs.maze import get_task, maze_geometry

    d4rl_map = layout_map(D4RL_LAYOUTS[maze])
    env_map = [[1 if cell == 1 else 0 for cell in row] for row in get_task(task).maze_map]
    if env_map != d4rl_map:
        raise DatasetError(
            f"D4RL maze2d-{maze} does not match the layout of {task!r} cell by cell; cannot convert its frame"
        )
    return maze_geometry(task)


def to_pointmaze_frame(
    arrays: dict[str, np.ndarray | None], maze: str, source: str
) -> tuple[dict[str, np.ndarray | None], dict[str, Any]]:
    """Convert a D4RL maze2d file's ``observations (N, 4)``, ``next_observations``, ``actions (N, 2)`` and
    ``infos/goal (N, 2)`` into the PointMaze frame of the matching task; returns the arrays and the metadata
    entries that record the conversion.

    Refuses (``DatasetError``, naming the reason) data that cannot be D4RL's frame of that maze: wrong widths,
    or positions that land outside the layout's free cells (e.g. a file already in the PointMaze frame).
    """
    task = D4RL_TO_TASK[maze]
    geometry = _check_layout(maze, task)
    obs = arrays["observations"]
    assert obs is not None
    if obs.shape[1] != 4 or arrays["actions"] is None or arrays["actions"].shape[1] != 2:
        raise DatasetError(
            f"dataset {source!r}: a D4RL maze2d file has observations (N, 4) and actions (N, 2), got "
            f"{obs.shape} and {None if arrays['actions'] is None else arrays['actions'].shape}"
        )
    layout = layout_map(D4RL_LAYOUTS[maze])
    frame = Maze2dFrame(len(layout), len(layout[0]), float(geometry.maze_size_scaling))
    out = dict(arrays)
    out["observations"] = frame.observation(obs)
    if arrays.get("next_observations") is not None:
        out["next_observations"] = frame.observation(arrays["next_observations"])
    out["actions"] = frame.action(arrays["actions"])
    goal = arrays.get("infos/goal")
    if goal is not None:
        if goal.shape[1] != 2:
            raise DatasetError(f"dataset {source!r}: key 'infos/goal' must be (N, 2) in a maze2d file, got {goal.shape}")
        out["infos/goal"] = frame.position(goal)
    # Every converted position must lie in a free cell of the PointMaze layout (the ball never enters a wall).
    xy = out["observations"][:, :2]
    rc = np.stack([np.floor((geometry.y_map_center - xy[:, 1]) / frame.scaling),
                   np.floor((xy[:, 0] + geometry.x_map_center) / frame.scaling)], axis=1).astype(int)
    inside = (rc[:, 0] >= 0) & (rc[:, 0] < frame.rows) & (rc[:, 1] >= 0) & (rc[:, 1] < frame.cols)
    free = np.zeros(len(xy), dtype=bool)
    free[inside] = np.asarray(layout)[rc[inside, 0], rc[inside, 1]] == 0
    if not free.all():
        i = int(np.flatnonzero(~free)[0])
        raise DatasetError(
            f"dataset {source!r}: {int((~free).sum())} of {len(xy)} positions fall outside the free cells of "
            f"D4RL maze2d-{maze} (first: row {i}, D4RL xy {obs[i, :2].round(3).tolist()}); not D4RL's frame of "
            "this maze, refusing to convert it"
        )
    meta = {
        "task": task,
        "frame": "pointmaze",
        "frame_conversion": (
            f"D4RL maze2d-{maze} -> {task}: x = (qpos_y + {D4RL_BALL_OFFSET + 0.5}) * s - {frame.cols} * s / 2, "
            f"y = {frame.rows} * s / 2 - (qpos_x + {D4RL_BALL_OFFSET + 0.5}) * s, (vx, vy) = s * (qvel_y, "
            f"-qvel_x), (ax, ay) = (a_y, -a_x), s = {frame.scaling:g}; goals as positions"
        ),
    }
    return out, meta
