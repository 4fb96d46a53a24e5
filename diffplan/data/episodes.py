"""Validated offline episodes: flat step arrays plus episode offsets.

Every dataset source (Minari, D4RL HDF5, plain paths) is turned into one :class:`Episodes`, so the
normalizers, the :class:`~diffplan.data.sequences.SequenceDataset` and the agents only ever see one layout:

* step arrays of length ``N`` (all episodes concatenated in order),
* ``starts``/``lengths`` of length ``E`` that cut the flat arrays into episodes.

Bad input fails early with a :class:`DatasetError` whose message names the source, the key and the problem,
instead of surfacing later as a shape error deep inside a training step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np


class DatasetError(ValueError):
    """Bad dataset input; message names the file/source, the key and the problem."""


def _where(source: str) -> str:
    return f"dataset {source!r}" if source else "dataset <unnamed>"


def check_finite(arr: np.ndarray, key: str, source: str) -> None:
    """Raise :class:`DatasetError` naming ``key`` and the first row holding NaN/inf.

    The all-finite fast path costs one pass; the index search only runs on failure.
    """
    if not np.issubdtype(arr.dtype, np.floating) or arr.size == 0:
        return
    finite = np.isfinite(arr)
    if finite.all():
        return
    bad_rows = ~finite.reshape(len(arr), -1).all(axis=1)
    row = int(np.flatnonzero(bad_rows)[0])
    value = arr[row].reshape(-1)[~finite[row].reshape(-1)][0]
    raise DatasetError(f"{_where(source)}: key {key!r} has a non-finite value ({value}) at index {row}")


def check_rows(arr: np.ndarray, key: str, n: int, ref_key: str, source: str) -> None:
    """Raise :class:`DatasetError` if ``arr`` does not have ``n`` rows like ``ref_key``."""
    if len(arr) != n:
        raise DatasetError(
            f"{_where(source)}: length mismatch: key {key!r} has {len(arr)} rows but {ref_key!r} has {n}"
        )


def _box_dim(space: gym.Space, what: str, source: str) -> tuple[int, tuple[int, ...]]:
    if not isinstance(space, gym.spaces.Box):
        raise DatasetError(
            f"{_where(source)}: env {what} space {space} is not a Box; "
            "only continuous Box spaces are supported"
        )
    return int(np.prod(space.shape)), tuple(space.shape)


@dataclass
class Episodes:
    """A whole offline dataset as flat step arrays (N steps) cut into E episodes.

    Shapes (N = total steps, E = episodes, O/A/G = observation/action/goal dims):

    * ``obs`` (N, O) float32: observation at each step (the ``'observation'`` entry for dict observations).
    * ``act`` (N, A) float32: action taken at each step.
    * ``rew`` (N,) float32: reward received for each step.
    * ``terminal`` (N,) bool: the step ended the episode in a terminal state (no bootstrapping).
    * ``timeout`` (N,) bool: the episode was cut here without termination (time limit, goal switch,
      end of recorded data).
    * ``next_obs`` (N, O) float32: observation after each step.
    * ``starts``/``lengths`` (E,) int64: offset and length of each episode in the flat arrays; episodes are
      contiguous and in order, so ``starts[0] == 0`` and ``lengths.sum() == N``.
    * ``goal`` (N, G) float32 or None: desired goal at each step for goal-conditioned data.

    Construction coerces dtypes and runs :meth:`validate`, so an ``Episodes`` object is always consistent.
    """

    obs: np.ndarray
    act: np.ndarray
    rew: np.ndarray
    terminal: np.ndarray
    timeout: np.ndarray
    next_obs: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    goal: np.ndarray | None = None
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Coerce once here so every consumer can rely on exact dtypes (float32 for the networks, bool masks,
        # int64 offsets) without re-checking.
        self.obs = np.ascontiguousarray(self.obs, dtype=np.float32)
        self.act = np.ascontiguousarray(self.act, dtype=np.float32)
        self.rew = np.ascontiguousarray(self.rew, dtype=np.float32)
        self.terminal = np.ascontiguousarray(self.terminal, dtype=bool)
        self.timeout = np.ascontiguousarray(self.timeout, dtype=bool)
        self.next_obs = np.ascontiguousarray(self.next_obs, dtype=np.float32)
        self.starts = np.ascontiguousarray(self.starts, dtype=np.int64)
        self.lengths = np.ascontiguousarray(self.lengths, dtype=np.int64)
        if self.goal is not None:
            self.goal = np.ascontiguousarray(self.goal, dtype=np.float32)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check shapes, lengths, finiteness and episode offsets; raise :class:`DatasetError` on the first
        issue."""
        src = self.source
        ndims = {
            "obs": 2,
            "act": 2,
            "rew": 1,
            "terminal": 1,
            "timeout": 1,
            "next_obs": 2,
            "starts": 1,
            "lengths": 1,
            "goal": 2,
        }
        for key, nd in ndims.items():
            arr = getattr(self, key)
            if arr is not None and arr.ndim != nd:
                raise DatasetError(
                    f"{_where(src)}: key {key!r} must have {nd} dims, got shape {tuple(arr.shape)}"
                )
        n = len(self.obs)
        if n == 0:
            raise DatasetError(f"{_where(src)} is empty: key 'obs' has 0 steps")
        for key in ("act", "rew", "terminal", "timeout", "next_obs", "goal"):
            arr = getattr(self, key)
            if arr is not None:
                check_rows(arr, key, n, "obs", src)
        if self.next_obs.shape[1] != self.obs.shape[1]:
            raise DatasetError(
                f"{_where(src)}: key 'next_obs' has {self.next_obs.shape[1]} dims "
                f"but 'obs' has {self.obs.shape[1]}"
            )
        for key in ("obs", "act", "rew", "next_obs", "goal"):
            arr = getattr(self, key)
            if arr is not None:
                check_finite(arr, key, src)

        starts, lengths = self.starts, self.lengths
        if len(starts) != len(lengths):
            raise DatasetError(
                f"{_where(src)}: length mismatch: key 'starts' has {len(starts)} entries but 'lengths' has "
                f"{len(lengths)}"
            )
        if len(lengths) == 0:
            raise DatasetError(f"{_where(src)}: key 'lengths' is empty but there are {n} steps")
        if (lengths <= 0).any():
            e = int(np.flatnonzero(lengths <= 0)[0])
            raise DatasetError(
                f"{_where(src)}: key 'lengths' has non-positive length {lengths[e]} at episode {e}"
            )
        total = int(lengths.sum())
        if total != n:
            raise DatasetError(f"{_where(src)}: key 'lengths' sums to {total} but there are {n} steps")
        expected = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        if not np.array_equal(starts, expected):
            e = int(np.flatnonzero(starts != expected)[0])
            raise DatasetError(
                f"{_where(src)}: key 'starts' is {starts[e]} at episode {e}, expected {expected[e]} "
                "(episodes must be contiguous and in order)"
            )
        # Terminal/timeout flags are episode-end markers; one inside an episode means the cut is wrong and
        # windows would silently run across a reset.
        is_last = np.zeros(n, dtype=bool)
        is_last[starts + lengths - 1] = True
        for key in ("terminal", "timeout"):
            inner = getattr(self, key) & ~is_last
            if inner.any():
                i = int(np.flatnonzero(inner)[0])
                e = int(np.searchsorted(starts, i, side="right") - 1)
                raise DatasetError(
                    f"{_where(src)}: key {key!r} is set at step {i}, inside episode {e} (not its last step)"
                )

    # ------------------------------------------------------------------ sizes
    @property
    def num_episodes(self) -> int:
        """E, the number of episodes."""
        return len(self.lengths)

    @property
    def num_steps(self) -> int:
        """N, the number of steps over all episodes."""
        return len(self.obs)

    @property
    def obs_dim(self) -> int:
        """O."""
        return int(self.obs.shape[1])

    @property
    def act_dim(self) -> int:
        """A."""
        return int(self.act.shape[1])

    @property
    def goal_dim(self) -> int:
        """G, 0 when the data has no goals."""
        return 0 if self.goal is None else int(self.goal.shape[1])

    # ------------------------------------------------------------------ access
    def episode(self, i: int) -> dict[str, np.ndarray]:
        """Views (not copies) of episode ``i``: obs/next_obs (L, O), act (L, A), rew/terminal/timeout (L,),
        goal (L, G) if present."""
        if not -self.num_episodes <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range for {self.num_episodes} episodes")
        i %= self.num_episodes
        s = slice(int(self.starts[i]), int(self.starts[i] + self.lengths[i]))
        out = {k: getattr(self, k)[s] for k in ("obs", "act", "rew", "terminal", "timeout", "next_obs")}
        if self.goal is not None:
            out["goal"] = self.goal[s]
        return out

    def returns(self) -> np.ndarray:
        """Undiscounted return of every episode, (E,) float64 (summed in float64 to avoid drift)."""
        return np.add.reduceat(self.rew.astype(np.float64), self.starts)

    def check_spaces(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        """Raise :class:`DatasetError` if the data does not fit the env's spaces.

        For a ``Dict`` observation space the ``'observation'`` sub-space is compared with ``obs`` and, when
        both exist, ``'desired_goal'`` with ``goal``. Goals present on only one side are allowed: an agent
        that is not goal-conditioned ignores them.
        """
        src = self.source
        goal_space = None
        if isinstance(observation_space, gym.spaces.Dict):
            if "observation" not in observation_space.spaces:
                raise DatasetError(
                    f"{_where(src)}: env observation space is a Dict without an 'observation' key "
                    f"(keys: {sorted(observation_space.spaces)})"
                )
            goal_space = observation_space.spaces.get("desired_goal")
            observation_space = observation_space["observation"]
        obs_dim, obs_shape = _box_dim(observation_space, "observation", src)
        if obs_dim != self.obs_dim:
            raise DatasetError(
                f"observation dim {self.obs_dim} in {_where(src)} "
                f"does not match env observation space {obs_shape}"
            )
        act_dim, act_shape = _box_dim(action_space, "action", src)
        if act_dim != self.act_dim:
            raise DatasetError(
                f"action dim {self.act_dim} in {_where(src)} does not match env action space {act_shape}"
            )
        if goal_space is not None and self.goal is not None:
            goal_dim, goal_shape = _box_dim(goal_space, "desired_goal", src)
            if goal_dim != self.goal_dim:
                raise DatasetError(
                    f"goal dim {self.goal_dim} in {_where(src)} "
                    f"does not match env desired_goal space {goal_shape}"
                )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_list(
        cls,
        episodes: Sequence[Mapping[str, np.ndarray]],
        source: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> Episodes:
        """Concatenate per-episode dicts into one :class:`Episodes`.

        Each dict holds ``obs`` (L, O), ``act`` (L, A), ``rew`` (L,), ``next_obs`` (L, O) and optionally
        ``terminal``/``timeout`` (L,) (default all False) and ``goal`` (L, G). Either every episode has a goal
        or none does.
        """
        if len(episodes) == 0:
            raise DatasetError(f"{_where(source)} is empty: no episodes given")
        required = ("obs", "act", "rew", "next_obs")
        has_goal = "goal" in episodes[0] and episodes[0]["goal"] is not None
        parts: dict[str, list[np.ndarray]] = {k: [] for k in (*required, "terminal", "timeout", "goal")}
        lengths = np.empty(len(episodes), dtype=np.int64)
        for i, ep in enumerate(episodes):
            where = f"{source or '<unnamed>'} episode {i}"
            for key in required:
                if key not in ep:
                    raise DatasetError(f"{_where(where)}: required key {key!r} missing (keys: {sorted(ep)})")
            if ("goal" in ep and ep["goal"] is not None) != has_goal:
                raise DatasetError(f"{_where(where)}: key 'goal' must be present in every episode or in none")
            n = len(ep["obs"])
            if n == 0:
                raise DatasetError(f"{_where(where)}: key 'obs' has 0 steps")
            lengths[i] = n
            for key in (*required, "terminal", "timeout", *(("goal",) if has_goal else ())):
                if key in ("terminal", "timeout") and key not in ep:
                    arr = np.zeros(n, dtype=bool)
                else:
                    arr = np.asarray(ep[key])
                check_rows(arr, key, n, "obs", where)
                parts[key].append(arr)
        cat = {k: np.concatenate(v) for k, v in parts.items() if v}
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return cls(
            obs=cat["obs"],
            act=cat["act"],
            rew=cat["rew"],
            terminal=cat["terminal"],
            timeout=cat["timeout"],
            next_obs=cat["next_obs"],
            starts=starts,
            lengths=lengths,
            goal=cat.get("goal"),
            source=source,
            metadata=dict(metadata or {}),
        )

    def __repr__(self) -> str:  # the default dataclass repr would print megabytes of arrays
        return (
            f"Episodes(source={self.source!r}, episodes={self.num_episodes}, steps={self.num_steps}, "
            f"obs_dim={self.obs_dim}, act_dim={self.act_dim}, goal_dim={self.goal_dim})"
        )
