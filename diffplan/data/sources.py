"""Load offline data from any supported source into :class:`~diffplan.data.episodes.Episodes`.

Accepted ``source`` strings::

    minari:<dataset-id>        a Minari dataset in the local Minari root (download=True fetches it)
    d4rl:<path.hdf5>           a D4RL-layout HDF5 file, read with h5py (no d4rl package needed)
    <dir>                      a Minari dataset directory (<dir>/data/{main_data.hdf5, metadata.json})
    <file.hdf5 | file.h5>      a D4RL-layout HDF5 file (or a Minari main_data.hdf5 next to its metadata.json)

Everything that can go wrong raises :class:`DatasetError` with one line naming the source, the key and the
fix. Minari is imported lazily: it is only needed for Minari sources.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

import h5py
import numpy as np

from diffplan.checkpoint import CheckpointError, write_bytes_atomic
from diffplan.data.d4rl_maze import maze2d_maze, to_pointmaze_frame
from diffplan.data.d4rl_refs import canonical_d4rl_name, d4rl_ref_scores
from diffplan.data.episodes import DatasetError, Episodes, check_finite, check_rows

VALID_FORMS = (
    "'minari:<dataset-id>', 'd4rl:<path.hdf5>', a Minari dataset directory, or a D4RL .hdf5/.h5 file"
)

# D4RL maze2d success radius: reward 1 when the point is within 0.5 of the goal
# (d4rl/pointmaze/maze_model.py, scripts/generation/relabel_maze2d_rewards.py).
MAZE2D_GOAL_RADIUS = 0.5

_NETWORK_TIMEOUT_S = 2.0


def load_episodes(source: str, *, download: bool = False, allow_zero_rewards: bool = False) -> Episodes:
    """Load ``source`` (see the module docstring for the forms) as validated :class:`Episodes`.

    Args:
        source: ``minari:<id>``, ``d4rl:<file>``, or a plain path.
        download: for ``minari:`` ids missing from the local root, fetch them from the Minari remote.
        allow_zero_rewards: accept a D4RL file whose rewards are all zero and that has no goals to
            recompute them from (see :func:`load_d4rl`).
    """
    source = str(source)
    scheme_match = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*):", source)
    if scheme_match:
        scheme, rest = scheme_match.group(1), source[scheme_match.end() :]
        if scheme == "minari":
            if not rest:
                raise DatasetError(f"dataset source {source!r}: missing dataset id after 'minari:'")
            return load_minari(rest, download=download)
        if scheme == "d4rl":
            if not rest:
                raise DatasetError(f"dataset source {source!r}: missing file path after 'd4rl:'")
            return load_d4rl(rest, allow_zero_rewards=allow_zero_rewards)
        # A one-letter "scheme" is a Windows drive; an existing path with a colon in its name is a path.
        if len(scheme) > 1 and not Path(source).expanduser().exists():
            raise DatasetError(
                f"dataset source {source!r}: unknown scheme {scheme + ':'!r}; valid forms: {VALID_FORMS}"
            )
    return _load_path(Path(source).expanduser(), allow_zero_rewards=allow_zero_rewards)


def _load_path(path: Path, *, allow_zero_rewards: bool) -> Episodes:
    """Plain path: a Minari dataset directory, a Minari ``main_data.hdf5`` or a D4RL HDF5 file."""
    if path.is_dir():
        for data_dir in (path / "data", path):  # the dataset root or its data/ folder itself
            if (data_dir / "main_data.hdf5").is_file() and (data_dir / "metadata.json").is_file():
                return _load_minari_dir_cached(data_dir, source=str(path))
        raise DatasetError(
            f"dataset {str(path)!r}: directory is not a Minari dataset (no data/main_data.hdf5 with "
            f"data/metadata.json); valid forms: {VALID_FORMS}"
        )
    if path.is_file():
        if path.suffix.lower() not in (".hdf5", ".h5"):
            raise DatasetError(
                f"dataset {str(path)!r}: unsupported file type {path.suffix!r}; valid forms: {VALID_FORMS}"
            )
        if path.name == "main_data.hdf5" and (path.parent / "metadata.json").is_file():
            return _load_minari_dir_cached(path.parent, source=str(path))
        return load_d4rl(path, allow_zero_rewards=allow_zero_rewards)
    raise DatasetError(f"dataset {str(path)!r}: no such file or directory; valid forms: {VALID_FORMS}")


# ====================================================================== Minari


def minari_root() -> Path:
    """The local Minari root, resolved like Minari does: ``$MINARI_DATASETS_PATH`` or
    ``~/.minari/datasets``."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env) if env else Path.home() / ".minari" / "datasets"


def load_minari(dataset_id: str, *, download: bool = False) -> Episodes:
    """Load a Minari dataset by id from the local root, optionally downloading it first.

    Minari's own failure modes are slow or verbose (a multi-line hint, or 5 retries and ~23 s before a
    network error surfaces), so the local check and a 2 s reachability probe happen here first.
    """
    source = f"minari:{dataset_id}"
    root = minari_root()
    local = root / dataset_id / "data"
    if not local.is_dir():
        if not download:
            raise DatasetError(
                f"dataset {source!r} is not in the local Minari root {root} (set by MINARI_DATASETS_PATH, "
                "default ~/.minari/datasets); fetch a remote dataset with `minari download "
                f"{dataset_id}` (or load_episodes(..., download=True)), make one of diffplan's with "
                "`diffplan data make <task>`"
            )
        reason = _network_unavailable_reason()
        if reason is not None:
            raise DatasetError(f"dataset {source!r}: cannot download into {root}: {reason}")
        import minari

        try:
            minari.load_dataset(dataset_id, download=True)
        except Exception as err:  # any network/remote failure becomes one clear line
            raise DatasetError(
                f"dataset {source!r}: download into {root} failed: {type(err).__name__}: {_first_line(err)}"
            ) from err
        if not local.is_dir():  # a version-less id is stored under its newest version's folder
            local = _newest_local_version(root, dataset_id) / "data"
    return _load_minari_dir_cached(local, source=source)


_CACHE_FILE = ".diffplan-episodes.npz"
_ARRAY_KEYS = ("obs", "act", "rew", "terminal", "timeout", "next_obs", "starts", "lengths", "goal")


def _load_minari_dir_cached(data_dir: Path, *, source: str) -> Episodes:
    """:func:`_load_minari_dir` with a flat ``.npz`` copy beside the dataset for fast reloads.

    A Minari hdf5 file stores one group per episode, and reading 10k+ groups costs tens of seconds with h5py;
    the flat copy loads in about a second. It is keyed by the hdf5 file's size and mtime and rebuilt when they
    change; it holds plain arrays only (loaded with allow_pickle=False). A cache that cannot be written
    (read-only dataset) is skipped.
    """
    hdf5_file = data_dir / "main_data.hdf5"
    try:
        stat = hdf5_file.stat()
        key = f"{stat.st_size}-{stat.st_mtime_ns}-{(data_dir / 'metadata.json').stat().st_mtime_ns}"
    except OSError:
        return _load_minari_dir(data_dir, source=source)
    cache = data_dir / _CACHE_FILE
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as npz:
                if str(npz["key"]) == key:
                    arrays = {k: npz[k] for k in _ARRAY_KEYS if k in npz.files}
                    metadata = json.loads(str(npz["metadata"]))
                    return Episodes(**arrays, source=source, metadata=metadata)
        except (OSError, ValueError, KeyError):
            pass  # unreadable or stale cache: rebuild it from the dataset below
    episodes = _load_minari_dir(data_dir, source=source)
    arrays = {k: getattr(episodes, k) for k in _ARRAY_KEYS if getattr(episodes, k) is not None}
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(key), metadata=np.array(json.dumps(episodes.metadata, default=str)), **arrays)
    try:
        write_bytes_atomic(cache, buffer.getvalue())  # usual permissions, no half-written cache
    except (OSError, CheckpointError):  # read-only dataset or a full disk: the cache is only an optimisation
        pass
    return episodes


def _newest_local_version(root: Path, dataset_id: str) -> Path:
    """``root/<id>-v<N>`` with the largest N (Minari stores version-less downloads under the full id)."""
    versions = []
    for candidate in root.glob(f"{dataset_id}-v*"):
        match = re.fullmatch(r".*-v(\d+)", candidate.name)
        if match and (candidate / "data").is_dir():
            versions.append((int(match.group(1)), candidate))
    if not versions:
        raise DatasetError(f"dataset 'minari:{dataset_id}': downloaded, but no local copy found under {root}")
    return max(versions)[1]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


def _network_unavailable_reason(timeout: float = _NETWORK_TIMEOUT_S) -> str | None:
    """Why the Minari remote cannot be reached, or None if it seems reachable (or a proxy decides)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return "HF_HUB_OFFLINE is set (offline mode); unset it or copy the dataset into the root"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a direct socket probe says nothing about a proxied connection
    remote = os.environ.get("MINARI_REMOTE", "hf://farama-minari")
    if remote.startswith(("gcp://", "gs://")):
        host = "storage.googleapis.com"
    else:
        host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(f"cannot reach {host}:443 ({err})")

    # DNS resolution ignores the socket timeout, so bound the whole probe with a thread join.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return f"no answer from {host}:443 within {timeout:.0f} s"
    return outcome[0]


def _load_minari_dir(data_dir: Path, *, source: str) -> Episodes:
    """Read a Minari ``data`` directory (main_data.hdf5 + metadata.json) into :class:`Episodes`."""
    from minari.dataset.minari_dataset import MinariDataset
    from minari.dataset.minari_storage import MinariStorage

    try:
        dataset = MinariDataset(data_dir)
        raw_metadata = MinariStorage.read_raw_metadata(data_dir)
    except Exception as err:  # corrupt or foreign files: report where, in one line
        raise DatasetError(
            f"dataset {source!r}: cannot read Minari dataset at {data_dir}: "
            f"{type(err).__name__}: {_first_line(err)}"
        ) from err

    episodes: list[dict[str, np.ndarray]] = []
    stale_goals_fixed = skipped_empty = 0
    hdf5_file = data_dir / "main_data.hdf5"
    fast = raw_metadata.get("data_format", "hdf5") == "hdf5" and hdf5_file.exists()
    for ep in (_iter_minari_hdf5(hdf5_file, source) if fast else dataset.iterate_episodes()):
        steps = len(ep.rewards)
        if steps == 0:
            skipped_empty += 1
            continue
        where = f"dataset {source!r} episode {ep.id}"
        obs_all, goal_all = _split_minari_observations(ep.observations, where)
        if len(obs_all) != steps + 1:
            raise DatasetError(
                f"{where}: key 'observations' has {len(obs_all)} rows, expected {steps + 1} (rewards + 1)"
            )
        if isinstance(ep.actions, (dict, tuple)):
            raise DatasetError(
                f"{where}: key 'actions' is a {type(ep.actions).__name__}; only Box actions work"
            )
        act = np.asarray(ep.actions).reshape(steps, -1)
        terminal = np.asarray(ep.terminations, dtype=bool).copy()
        timeout = np.asarray(ep.truncations, dtype=bool).copy()
        # Every episode ends flagged: data that stops without termination was cut, i.e. a timeout.
        if not terminal[-1]:
            timeout[-1] = True
        goal = None
        if goal_all is not None:
            goal = goal_all[:-1].copy()
            # PointMaze datasets recorded with continuing_task carry the previous target in the first
            # observation of every episode but the first (Minari issue #265): the env switched targets after
            # building that observation. The agent's real target from step 0 on is the one at step 1.
            if steps >= 2 and not np.array_equal(goal[0], goal[1]):
                goal[0] = goal[1]
                stale_goals_fixed += 1
        episodes.append(
            {
                "obs": obs_all[:-1],
                "act": act,
                "rew": np.asarray(ep.rewards),
                "terminal": terminal,
                "timeout": timeout,
                "next_obs": obs_all[1:],
                **({"goal": goal} if goal is not None else {}),
            }
        )

    metadata: dict[str, Any] = dict(
        raw_metadata
    )  # keeps custom keys our recipes store (maze, seed, recipe, ...)
    metadata.setdefault("ref_min_score", None)
    metadata.setdefault("ref_max_score", None)
    for prefix, key in (("env", "env_spec"), ("eval_env", "eval_env_spec")):
        spec = _parse_env_spec(raw_metadata.get(key))
        metadata[f"{prefix}_id"] = spec.get("id")
        metadata[f"{prefix}_kwargs"] = spec.get("kwargs", {})
        metadata[f"{prefix}_max_episode_steps"] = spec.get("max_episode_steps")
    metadata.update(
        source_format="minari",
        path=str(data_dir),
        stale_first_goals_fixed=stale_goals_fixed,
        skipped_empty_episodes=skipped_empty,
    )
    return Episodes.from_list(episodes, source=source, metadata=metadata)


def _iter_minari_hdf5(path: Path, source: str) -> Iterator[SimpleNamespace]:
    """Episodes of a Minari hdf5 file read with h5py directly.

    ``MinariDataset.iterate_episodes`` decodes the spaces again for every episode, which made a 1M-step,
    11k-episode maze dataset take over two minutes to load; plain h5py reads take seconds.
    """
    import h5py

    def read(node: Any) -> Any:
        if isinstance(node, h5py.Group):
            return {key: read(node[key]) for key in node}
        return node[()]

    try:
        with h5py.File(path, "r") as fh:
            names = sorted(fh.keys(), key=lambda k: int(k.rsplit("_", 1)[-1]) if k.rsplit("_", 1)[-1].isdigit() else -1)
            for name in names:
                group = fh[name]
                try:
                    yield SimpleNamespace(
                        id=group.attrs.get("id", name),
                        observations=read(group["observations"]),
                        actions=read(group["actions"]),
                        rewards=group["rewards"][()],
                        terminations=group["terminations"][()],
                        truncations=group["truncations"][()],
                    )
                except KeyError as err:
                    raise DatasetError(
                        f"dataset {source!r}: {path} group {name!r} lacks key {err.args[0] if err.args else '?'}"
                    ) from err
    except OSError as err:
        raise DatasetError(f"dataset {source!r}: cannot read {path}: {_first_line(err)}") from err


def _split_minari_observations(observations: Any, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(T+1, O) observations and (T+1, G) desired goals (or None) from a Minari episode's observations."""
    if isinstance(observations, dict):
        if "observation" not in observations:
            raise DatasetError(
                f"{where}: dict observations lack the 'observation' key (keys: {sorted(observations)})"
            )
        obs = np.asarray(observations["observation"])
        goal = observations.get("desired_goal")
        goal = None if goal is None else np.asarray(goal).reshape(len(goal), -1)
        return obs.reshape(len(obs), -1), goal
    if isinstance(observations, np.ndarray):
        return observations.reshape(len(observations), -1), None
    raise DatasetError(
        f"{where}: observations of type {type(observations).__name__} are not supported (Box or Dict with "
        "'observation')"
    )


def _parse_env_spec(spec: Any) -> dict[str, Any]:
    if not spec:
        return {}
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError:
            return {}
    return spec if isinstance(spec, dict) else {}


# ====================================================================== D4RL

_D4RL_REQUIRED = ("observations", "actions", "rewards", "terminals")
_D4RL_OPTIONAL = ("timeouts", "next_observations", "infos/goal")
_D4RL_STEP_KEYS = ("rewards", "terminals", "timeouts")  # (N,) per step; (N, 1) is flattened


def _read_d4rl(path: Path, source: str) -> dict[str, np.ndarray]:
    """The D4RL arrays present in ``path``, shape-normalized; raises naming the file and key."""
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise DatasetError(f"dataset {source!r}: cannot open as HDF5: {_first_line(err)}") from err
    with handle:
        for key in _D4RL_REQUIRED:
            if key not in handle:
                raise DatasetError(
                    f"dataset {source!r}: required D4RL key {key!r} missing "
                    f"(top-level keys: {sorted(handle)})"
                )
        raw: dict[str, np.ndarray] = {}
        for key in (*_D4RL_REQUIRED, *_D4RL_OPTIONAL):
            if key not in handle:
                continue
            node = handle[key]
            if not isinstance(node, h5py.Dataset):
                raise DatasetError(f"dataset {source!r}: key {key!r} is a group, expected an array")
            arr = np.asarray(node[()])
            if arr.dtype != bool and not np.issubdtype(arr.dtype, np.number):
                raise DatasetError(
                    f"dataset {source!r}: key {key!r} has dtype {arr.dtype} ({arr.dtype.kind!r} kind); "
                    "D4RL arrays must be numbers or booleans"
                )
            raw[key] = arr
    for key, arr in raw.items():
        if key in _D4RL_STEP_KEYS:
            if arr.ndim == 2 and arr.shape[1] == 1:
                arr = arr[:, 0]
            if arr.ndim != 1:
                raise DatasetError(f"dataset {source!r}: key {key!r} must be (N,) or (N, 1), got {arr.shape}")
        else:
            if arr.ndim == 1:
                arr = arr[:, None]
            if arr.ndim != 2:
                raise DatasetError(f"dataset {source!r}: key {key!r} must be (N, D), got {arr.shape}")
        raw[key] = arr
    n = len(raw["observations"])
    if n == 0:
        raise DatasetError(f"dataset {source!r} is empty: key 'observations' has 0 rows")
    for key, arr in raw.items():
        check_rows(arr, key, n, "observations", source)
        check_finite(arr, key, source)
    return raw


def _drop_stale_rows_at_cuts(
    arrays: dict[str, np.ndarray | None], metadata: dict[str, Any]
) -> dict[str, np.ndarray | None]:
    """Remove the two rows around every goal change of a D4RL maze2d stream that records a stale state.

    D4RL's ``generate_maze2d_datasets.py`` steps the env at the row where the goal is reached (``timeouts``) but
    does not keep the resulting state: the next row repeats that row's observation exactly while the simulator
    has moved on. So the cut row's successor is unknown and the row after it starts from a state the ball was
    no longer in; both are dropped and the row before the cut ends its episode (a timeout). Detected by the
    exact repeat, so data without the artefact is left alone; the count goes to
    ``metadata['dropped_stale_rows']``. Arrays are ``(N, ...)``; returns them without the dropped rows.
    """
    obs, timeout = arrays["obs"], arrays["timeout"]
    assert obs is not None and timeout is not None
    stale = np.flatnonzero(timeout[:-1] & (obs[1:] == obs[:-1]).all(axis=1))
    if not len(stale):
        return arrays
    keep = np.ones(len(obs), dtype=bool)
    keep[stale] = keep[stale + 1] = False
    metadata["dropped_stale_rows"] = int((~keep).sum())
    # Successors are taken from the stream before rows go (the row before a cut is followed by the cut row's
    # state, the one the ball really reached); the file's last row has none and goes too.
    succ = np.empty_like(obs)
    succ[:-1] = obs[1:]
    keep[-1] = False
    metadata["dropped_transitions"] = 1
    timeout = timeout.copy()
    timeout[np.flatnonzero(keep[:-1] & ~keep[1:])] = True  # the row before each dropped block ends an episode
    out = {**arrays, "timeout": timeout, "next_obs": succ}
    return {k: None if v is None else v[keep] for k, v in out.items()}


def load_d4rl(path: str | Path, *, allow_zero_rewards: bool = False) -> Episodes:
    """Read a D4RL-layout HDF5 file into :class:`Episodes`.

    Layout: ``observations (N, O)``, ``actions (N, A)``, ``rewards (N,)``, ``terminals (N,)``, optional
    ``timeouts (N,)``, ``next_observations (N, O)`` and ``infos/goal (N, G)``; ``(N, 1)`` arrays are
    flattened.

    **Episodes.** An episode ends at every ``terminals | timeouts`` step and at the end of the file. Without
    ``timeouts`` the file is split on terminals only (no terminals at all: one episode). Every episode's last
    step is flagged: a cut without termination (file end, dropped successor) gets ``timeout=True``.

    **maze2d streams.** A file with ``infos/goal`` and no terminal at all is a maze2d-style continuous stream:
    ``timeouts`` mark a reached goal / new target, not a reset, so the episodes are cut at timeouts while
    ``next_obs[i] = observations[i + 1]`` keeps following the stream across the cut. Only the file's final
    transition, which has no successor, is dropped (unless ``next_observations`` exists). The two rows around a
    goal change that D4RL's generator recorded with a stale state are dropped (:func:`_drop_stale_rows_at_cuts`).

    **next_obs elsewhere.** With ``next_observations`` it is used as is. Without it, ``observations[i + 1]``
    inside an episode; at a terminal step ``next_obs`` repeats the step's observation (the successor is
    unknown, and a terminal transition is never bootstrapped from); a non-terminal episode end (timeout or
    file end) has an unknown successor that *would* be bootstrapped from, so that transition is dropped,
    as ``d4rl.qlearning_dataset`` does, and the previous step becomes the episode's (timeout) end.

    **Double terminals.** Some files set ``terminals`` on two consecutive steps of one episode, which would
    cut a spurious 1-step episode. Two passes over the pairs ``terminals[i] & terminals[i + 1]``:

    * first, a row ``i + 1`` that is an exact copy of row ``i`` (observation and action) is a duplicated log
      row and is dropped (so a copy inside a chain of terminals does not hide the pair after it);
    * then, for the pairs that remain: if the data continues from ``i`` to ``i + 1`` (always assumed without ``next_observations``;
      with it, ``next_observations[i] ≈ observations[i + 1]``), the flag at ``i`` is spurious: it is
      cleared, merging the 1-step remainder into its episode, which then ends at ``i + 1``;
    * a discontinuous pair is a genuine 1-step episode after a reset and is kept.

    Counts go to ``metadata['dropped_duplicate_rows']`` and ``metadata['merged_double_terminals']``.

    **All-zero rewards.** Early maze2d files store zeros (the generator wrote 0.0 and relabelled later). With
    ``infos/goal`` the sparse maze2d reward is recomputed as ``||observations[:, :2] - goal[:, :2]|| <= 0.5``
    (D4RL's ``relabel_maze2d_rewards.py`` uses the current observation and that radius) and
    ``metadata['rewards_recomputed']`` says so. Without goals the data cannot be rewarded, which would make
    every return-based method silently learn nothing, so it is refused unless ``allow_zero_rewards=True``.

    Reference scores come from :mod:`diffplan.data.d4rl_refs` when the file stem names a known D4RL dataset
    (``maze2d-umaze-sparse-v1.hdf5``, ``hopper_medium-v2.hdf5``, ...), else they are None.
    """
    path = Path(path).expanduser()
    source = str(path)
    if not path.is_file():
        raise DatasetError(f"dataset {source!r}: D4RL file does not exist")
    raw = _read_d4rl(path, source)
    refs = d4rl_ref_scores(path.stem)
    maze = maze2d_maze(refs[0] if refs else canonical_d4rl_name(path.stem))
    frame_meta: dict[str, Any] = {}
    if maze is not None:
        # D4RL's maze2d frame is not PointMaze's: convert before anything reads positions (see d4rl_maze).
        raw, frame_meta = to_pointmaze_frame(raw, maze, source)  # type: ignore[assignment]
    obs, act = raw["observations"], raw["actions"]
    rew = raw["rewards"].astype(np.float32)
    terminal = raw["terminals"].astype(bool)
    n = len(obs)
    timeout = raw["timeouts"].astype(bool) if "timeouts" in raw else np.zeros(n, dtype=bool)
    goal = raw.get("infos/goal")
    next_obs = raw.get("next_observations")
    if next_obs is not None and next_obs.shape[1] != obs.shape[1]:
        raise DatasetError(
            f"dataset {source!r}: key 'next_observations' has {next_obs.shape[1]} dims "
            f"but 'observations' has "
            f"{obs.shape[1]}"
        )
    if n > 1 and terminal.all():
        # The double-terminal repair below assumes isolated pairs inside continuing data; on a file whose every
        # row is terminal it would merge everything into one episode. Whether such rows are 1-step episodes or
        # a mislabelled 'terminals' key cannot be told from the data, so refuse rather than guess.
        raise DatasetError(
            f"dataset {source!r}: every one of the {n} rows has terminals=True (1-step episodes, or a "
            "'terminals' key that means something else); refusing to guess the episode boundaries"
        )
    stream = goal is not None and not terminal.any()
    metadata: dict[str, Any] = {
        "source_format": "d4rl",
        "path": source,
        "dataset_name": None,
        "ref_min_score": None,
        "ref_max_score": None,
        "env_id": None,
        "env_kwargs": {},
        "maze2d_stream": stream,
        "has_timeouts": "timeouts" in raw,
        "rewards_recomputed": None,
        "merged_double_terminals": 0,
        "dropped_duplicate_rows": 0,
        "dropped_transitions": 0,
        "dropped_stale_rows": 0,
    }
    if refs is not None:
        metadata["dataset_name"], metadata["ref_min_score"], metadata["ref_max_score"] = refs
    if maze is not None:
        # The evaluation runs diffplan's PointMaze protocol, whose reference scores differ from D4RL's (another
        # episode length, goal radius and start/goal draw): normalize with the protocol's own.
        from diffplan.data.recipes.pointmaze import protocol_reference_scores

        metadata["d4rl_ref_scores"] = list(refs[1:]) if refs is not None else None
        metadata["ref_min_score"], metadata["ref_max_score"] = protocol_reference_scores(frame_meta["task"])
        metadata["ref_scores_from"] = f"diffplan's {frame_meta['task']} protocol (random policy / waypoint controller)"
        metadata.update(frame_meta)

    # ---- rewards
    if not rew.any():
        if goal is not None and obs.shape[1] >= 2 and goal.shape[1] >= 2:
            dist = np.linalg.norm(obs[:, :2] - goal[:, :2], axis=1)
            rew = (dist <= MAZE2D_GOAL_RADIUS).astype(np.float32)
            metadata["rewards_recomputed"] = (
                f"'rewards' were all zero; recomputed the sparse maze2d reward ||obs[:2] - goal|| <= "
                f"{MAZE2D_GOAL_RADIUS} from 'infos/goal'"
            )
        elif not allow_zero_rewards:
            raise DatasetError(
                f"dataset {source!r}: key 'rewards' is all zero and there is no 'infos/goal' to recompute a "
                "sparse reward from; pass allow_zero_rewards=True if the data really has no reward"
            )

    # ---- double terminals (see docstring); maze2d streams have no terminals, so this is a no-op there.
    arrays: dict[str, np.ndarray | None] = {
        "obs": obs,
        "act": act,
        "rew": rew,
        "terminal": terminal,
        "timeout": timeout,
        "goal": goal,
        "next_obs": next_obs,
    }
    if stream and next_obs is None:
        arrays = _drop_stale_rows_at_cuts(arrays, metadata)
        obs, terminal, timeout = arrays["obs"], arrays["terminal"], arrays["timeout"]
    pairs = np.flatnonzero(terminal[:-1] & terminal[1:])
    if len(pairs):
        # First drop duplicated log rows, then look at the pairs that remain (a duplicate inside a chain of
        # terminals must not hide the merge that follows it).
        duplicate = pairs[
            (obs[pairs + 1] == obs[pairs]).all(axis=1) & (act[pairs + 1] == act[pairs]).all(axis=1)
        ]
        if len(duplicate):
            keep = np.ones(n, dtype=bool)
            keep[duplicate + 1] = False
            arrays = {k: None if v is None else v[keep] for k, v in arrays.items()}
            metadata["dropped_duplicate_rows"] = len(duplicate)
        obs, terminal, next_obs = arrays["obs"], arrays["terminal"], arrays["next_obs"]
        pairs = np.flatnonzero(terminal[:-1] & terminal[1:])
        if next_obs is None:
            continuous = np.ones(len(pairs), dtype=bool)
        else:
            continuous = np.isclose(next_obs[pairs], obs[pairs + 1], rtol=1e-4, atol=1e-5).all(axis=1)
        terminal[pairs[continuous]] = False
        metadata["merged_double_terminals"] = int(continuous.sum())

    # ---- next observations and transitions without a successor
    obs, terminal, timeout = arrays["obs"], arrays["terminal"], arrays["timeout"]
    if arrays["next_obs"] is None:
        n = len(obs)
        succ = np.empty_like(obs)
        succ[:-1] = obs[1:]
        succ[-1] = obs[-1]
        ends = terminal | timeout
        ends[-1] = True
        if stream:
            drop = np.zeros(n, dtype=bool)
            drop[-1] = True  # the stream crosses timeouts; only the very last step lacks a successor
        else:
            succ[terminal] = obs[terminal]  # placeholder, never bootstrapped from
            drop = ends & ~terminal
            prev = np.flatnonzero(drop) - 1
            prev = prev[(prev >= 0) & ~ends[np.maximum(prev, 0)]]
            timeout = timeout.copy()
            timeout[prev] = True  # the previous step is now the end of a cut (not terminated) episode
        arrays["next_obs"], arrays["timeout"] = succ, timeout
        arrays = {k: None if v is None else v[~drop] for k, v in arrays.items()}
        metadata["dropped_transitions"] = int(drop.sum())
        if len(arrays["obs"]) == 0:
            raise DatasetError(
                f"dataset {source!r} is empty after dropping transitions without a next observation "
                "(no 'next_observations' key and no step with a known successor)"
            )

    # ---- episode boundaries
    terminal, timeout = arrays["terminal"], arrays["timeout"].copy()
    if not terminal[-1]:
        timeout[-1] = True  # the file ends mid-episode: a cut without termination
    last = np.flatnonzero(terminal | timeout)
    lengths = np.diff(np.concatenate([[-1], last]))
    starts = last - lengths + 1
    return Episodes(
        obs=arrays["obs"],
        act=arrays["act"],
        rew=arrays["rew"],
        terminal=terminal,
        timeout=timeout,
        next_obs=arrays["next_obs"],
        starts=starts,
        lengths=lengths,
        goal=arrays["goal"],
        source=source,
        metadata=metadata,
    )
