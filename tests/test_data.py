"""Data layer: Episodes validation, Minari/D4RL/path loading, normalizers and SequenceDataset windows.

Everything is built in the test (tiny Minari datasets via EpisodeBuffer, D4RL-layout files via h5py); the
conftest gives each test its own MINARI_DATASETS_PATH and sets HF_HUB_OFFLINE=1, so nothing touches the
network.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import gymnasium as gym
import gymnasium_robotics
import h5py
import minari
import numpy as np
import pytest
import torch
from minari.data_collector import EpisodeBuffer

from diffplan.data import (
    NORMALIZERS,
    CDFNormalizer,
    DatasetError,
    Episodes,
    GaussianNormalizer,
    LimitsNormalizer,
    SequenceDataset,
    d4rl_ref_scores,
    discounted_returns_to_go,
    load_episodes,
    make_normalizer,
)

gym.register_envs(gymnasium_robotics)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# ====================================================================== helpers


@pytest.fixture(scope="module")
def maze_env() -> gym.Env:
    env = gym.make("PointMaze_UMaze-v3", continuing_task=False)
    yield env
    env.close()


def _maze_episode(rng: np.random.Generator, i: int, steps: int, terminated: bool) -> EpisodeBuffer:
    goal = rng.normal(size=2)
    desired = np.tile(goal, (steps + 1, 1))
    terminations = np.zeros(steps, dtype=bool)
    truncations = np.zeros(steps, dtype=bool)
    (terminations if terminated else truncations)[-1] = True
    return EpisodeBuffer(
        id=i,
        seed=i,
        observations={
            "observation": rng.normal(size=(steps + 1, 4)),
            "achieved_goal": rng.normal(size=(steps + 1, 2)),
            "desired_goal": desired,
        },
        actions=rng.uniform(-1, 1, size=(steps, 2)).astype(np.float32),
        rewards=rng.normal(size=steps),
        terminations=terminations,
        truncations=truncations,
        infos={"success": np.zeros(steps + 1, dtype=bool)},
    )


_AUTHOR = {
    "author": "diffplan tests",
    "author_email": "tests@example.com",
    "code_permalink": "https://example.com",
}


def _write_h5(path: Path, **arrays: np.ndarray) -> Path:
    """D4RL-layout file; a key 'infos__goal' is written as 'infos/goal'."""
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key.replace("__", "/"), data=value)
    return path


def _locomotion_arrays(rng: np.random.Generator, n: int = 20, obs_dim: int = 3, act_dim: int = 2) -> dict:
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, dtype=bool),
    }


def _episodes(lengths: list[int], obs_dim: int = 2, act_dim: int = 1, goal: bool = False) -> Episodes:
    """Hand-made episodes whose values encode (episode, step) so windows can be checked by eye."""
    parts = []
    for e, length in enumerate(lengths):
        t = np.arange(length, dtype=np.float32)
        obs = np.stack([100 * e + t + k / 10 for k in range(obs_dim)], axis=1)
        parts.append(
            {
                "obs": obs,
                "next_obs": obs + 1,
                "act": np.stack([-(100 * e + t) - k / 10 for k in range(act_dim)], axis=1),
                "rew": t + 1,
                "timeout": t == length - 1,
                **({"goal": np.full((length, 2), e, dtype=np.float32)} if goal else {}),
            }
        )
    return Episodes.from_list(parts, source="handmade")


# ====================================================================== Minari


def test_minari_round_trip(maze_env):
    rng = np.random.default_rng(0)
    buffers = [_maze_episode(rng, i, n, terminated=(i == 0)) for i, n in enumerate([5, 3, 7])]
    # Episode 2 carries the stale previous goal in its first observation (Minari issue #265).
    buffers[2].observations["desired_goal"][0] = buffers[1].observations["desired_goal"][0]
    ds = minari.create_dataset_from_buffers(
        "test/umaze-v0",
        buffers,
        env=maze_env,
        algorithm_name="test",
        ref_min_score=0.5,
        ref_max_score=2.0,
        description="round trip",
        **_AUTHOR,
    )
    ds.storage.update_metadata({"recipe": "scout", "maze": "umaze", "seed": 7})

    ep = load_episodes("minari:test/umaze-v0")
    assert ep.num_episodes == 3 and ep.num_steps == 15
    np.testing.assert_array_equal(ep.lengths, [5, 3, 7])
    np.testing.assert_array_equal(ep.starts, [0, 5, 8])
    assert (ep.obs_dim, ep.act_dim, ep.goal_dim) == (4, 2, 2)
    for i, buf in enumerate(buffers):
        part = ep.episode(i)
        o = buf.observations["observation"]
        np.testing.assert_allclose(part["obs"], o[:-1], rtol=1e-6)
        np.testing.assert_allclose(part["next_obs"], o[1:], rtol=1e-6)  # final observation only in next_obs
        np.testing.assert_allclose(part["act"], buf.actions, rtol=1e-6)
        np.testing.assert_allclose(part["rew"], buf.rewards, rtol=1e-6)
        np.testing.assert_array_equal(part["terminal"], buf.terminations)
        np.testing.assert_array_equal(part["timeout"], buf.truncations)
        # goal at every step = this episode's target (the stale first entry of episode 2 is repaired)
        np.testing.assert_allclose(part["goal"], buf.observations["desired_goal"][1:], rtol=1e-6)
    np.testing.assert_allclose(ep.returns(), [b.rewards.sum() for b in buffers], rtol=1e-5)

    md = ep.metadata
    assert (md["ref_min_score"], md["ref_max_score"]) == (0.5, 2.0)
    assert (md["recipe"], md["maze"], md["seed"]) == ("scout", "umaze", 7)
    assert md["env_id"] == "PointMaze_UMaze-v3" and md["env_kwargs"]["continuing_task"] is False
    assert md["description"] == "round trip" and md["stale_first_goals_fixed"] == 1
    assert ep.source == "minari:test/umaze-v0"
    ep.check_spaces(maze_env.observation_space, maze_env.action_space)  # Dict obs space: no error


def test_minari_box_observations_and_plain_paths(tmp_path):
    rng = np.random.default_rng(1)
    buffers = []
    for i, n in enumerate([4, 6]):
        truncations = np.zeros(n, dtype=bool)
        truncations[-1] = True
        buffers.append(
            EpisodeBuffer(
                id=i,
                observations=rng.normal(size=(n + 1, 3)).astype(np.float32),
                actions=rng.normal(size=(n, 2)).astype(np.float32),
                rewards=rng.normal(size=n),
                terminations=np.zeros(n, dtype=bool),
                truncations=truncations,
            )
        )
    minari.create_dataset_from_buffers(
        "test/box-v0",
        buffers,
        observation_space=gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
        action_space=gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
        algorithm_name="test",
        **_AUTHOR,
    )
    ep = load_episodes("minari:test/box-v0")
    assert ep.goal is None and ep.goal_dim == 0
    np.testing.assert_allclose(ep.obs[:4], buffers[0].observations[:-1])
    np.testing.assert_allclose(ep.next_obs[4:], buffers[1].observations[1:])
    assert ep.metadata["ref_min_score"] is None and ep.metadata["ref_max_score"] is None

    root = Path(minari.storage.get_dataset_path("test/box-v0"))
    for form in (root, root / "data", root / "data" / "main_data.hdf5"):
        same = load_episodes(str(form))
        np.testing.assert_array_equal(same.obs, ep.obs)
        np.testing.assert_array_equal(same.lengths, ep.lengths)


def test_minari_missing_local_id_is_one_fast_line(_isolated_minari_root):
    start = time.perf_counter()
    with pytest.raises(DatasetError) as err:
        load_episodes("minari:D4RL/pointmaze/umaze-v2")
    assert time.perf_counter() - start < 2.0
    msg = str(err.value)
    assert "\n" not in msg
    assert "D4RL/pointmaze/umaze-v2" in msg and str(_isolated_minari_root) in msg
    assert "download=True" in msg and "minari download D4RL/pointmaze/umaze-v2" in msg
    assert "--download" not in msg  # no diffplan command has such a flag


def test_minari_download_without_network_fails_fast(monkeypatch):
    # HF_HUB_OFFLINE=1 (set by the conftest): refuse at once instead of minari's ~23 s retry loop.
    start = time.perf_counter()
    with pytest.raises(DatasetError, match="HF_HUB_OFFLINE") as err:
        load_episodes("minari:D4RL/pointmaze/umaze-v2", download=True)
    assert "D4RL/pointmaze/umaze-v2" in str(err.value) and "\n" not in str(err.value)

    # Online mode but the remote is unreachable: the 2 s probe answers, minari is never asked.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)

    def unreachable(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(minari, "load_dataset", lambda *a, **k: pytest.fail("minari must not be called"))
    with pytest.raises(DatasetError, match=r"cannot reach huggingface\.co:443") as err:
        load_episodes("minari:D4RL/pointmaze/umaze-v2", download=True)
    assert "\n" not in str(err.value)
    assert time.perf_counter() - start < 2.0


def test_minari_download_error_is_rewrapped(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("diffplan.data.sources._network_unavailable_reason", lambda: None)

    def broken(*args, **kwargs):
        raise ConnectionError("remote hung up\nwith a long traceback-ish text")

    monkeypatch.setattr(minari, "load_dataset", broken)
    with pytest.raises(DatasetError, match="download into .* failed: ConnectionError: remote hung up$"):
        load_episodes("minari:D4RL/pointmaze/umaze-v2", download=True)


# ====================================================================== D4RL


def test_d4rl_with_timeouts_and_next_observations(tmp_path):
    rng = np.random.default_rng(2)
    arr = _locomotion_arrays(rng, n=12)
    arr["terminals"][3] = True
    arr["timeouts"] = np.zeros(12, dtype=bool)
    arr["timeouts"][8] = True
    arr["next_observations"] = rng.normal(size=(12, 3)).astype(np.float32)
    ep = load_episodes(f"d4rl:{_write_h5(tmp_path / 'loco.hdf5', **arr)}")
    np.testing.assert_array_equal(ep.lengths, [4, 5, 3])  # cut after 3 (terminal), 8 (timeout), file end
    np.testing.assert_array_equal(ep.obs, arr["observations"])
    np.testing.assert_array_equal(ep.next_obs, arr["next_observations"])
    np.testing.assert_array_equal(np.flatnonzero(ep.terminal), [3])
    np.testing.assert_array_equal(np.flatnonzero(ep.timeout), [8, 11])  # file end = cut without termination
    assert ep.goal is None and ep.metadata["dropped_transitions"] == 0


def test_d4rl_without_timeouts_or_next_observations(tmp_path):
    rng = np.random.default_rng(3)
    arr = _locomotion_arrays(rng, n=10)
    arr["terminals"][[2, 6]] = True
    arr["rewards"] = arr["rewards"][:, None]  # (N, 1) is flattened
    ep = load_episodes(str(_write_h5(tmp_path / "noto.h5", **arr)))
    # Split on terminals only; the final step (no successor, not terminal) is dropped.
    np.testing.assert_array_equal(ep.lengths, [3, 4, 2])
    np.testing.assert_array_equal(ep.obs, arr["observations"][:9])
    np.testing.assert_array_equal(ep.rew, arr["rewards"][:9, 0])
    obs = arr["observations"]
    np.testing.assert_array_equal(ep.next_obs[:2], obs[1:3])
    np.testing.assert_array_equal(ep.next_obs[2], obs[2])  # terminal: placeholder, never bootstrapped
    np.testing.assert_array_equal(ep.next_obs[7], obs[8])
    assert ep.timeout[-1] and not ep.terminal[-1] and ep.metadata["dropped_transitions"] == 1
    assert not ep.metadata["has_timeouts"]

    # No terminals at all: one episode.
    one = _locomotion_arrays(rng, n=6)
    ep = load_episodes(str(_write_h5(tmp_path / "one.hdf5", **one)))
    np.testing.assert_array_equal(ep.lengths, [5])


def test_d4rl_timeout_without_next_observations_drops_cut_step(tmp_path):
    rng = np.random.default_rng(4)
    arr = _locomotion_arrays(rng, n=8)
    arr["timeouts"] = np.zeros(8, dtype=bool)
    arr["timeouts"][3] = True  # observations[4] is the next episode's reset, not step 3's successor
    arr["terminals"][7] = True
    ep = load_episodes(str(_write_h5(tmp_path / "to.hdf5", **arr)))
    np.testing.assert_array_equal(ep.lengths, [3, 4])
    np.testing.assert_array_equal(ep.obs, np.delete(arr["observations"], 3, axis=0))
    np.testing.assert_array_equal(np.flatnonzero(ep.timeout), [2])
    np.testing.assert_array_equal(np.flatnonzero(ep.terminal), [6])
    np.testing.assert_array_equal(ep.next_obs[:2], arr["observations"][1:3])


def test_d4rl_maze2d_stream_is_cut_at_timeouts(tmp_path):
    rng = np.random.default_rng(5)
    n = 12
    obs = rng.normal(size=(n, 4)).astype(np.float32)
    goal = np.repeat(rng.normal(size=(3, 2)), [4, 5, 3], axis=0).astype(np.float32)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[[3, 8]] = True  # goal reached -> new target, the stream goes on
    path = _write_h5(
        tmp_path / "my-stream.hdf5",  # not a D4RL name: kept in its own frame (see test_reliability for maze2d)
        observations=obs,
        actions=rng.normal(size=(n, 2)),
        rewards=rng.uniform(size=n),
        terminals=np.zeros(n, dtype=bool),
        timeouts=timeouts,
        infos__goal=goal,
        infos__qpos=obs[:, :2],
    )
    ep = load_episodes(f"d4rl:{path}")
    assert ep.metadata["maze2d_stream"]
    np.testing.assert_array_equal(ep.lengths, [4, 5, 2])  # last transition dropped: no successor in the file
    np.testing.assert_array_equal(ep.next_obs, obs[1:])  # crosses the cuts: next_obs[3] == obs[4]
    np.testing.assert_array_equal(ep.obs, obs[:-1])
    np.testing.assert_array_equal(ep.goal, goal[:-1])
    np.testing.assert_array_equal(np.flatnonzero(ep.timeout), [3, 8, 10])
    assert not ep.terminal.any()
    md = ep.metadata
    assert (md["dataset_name"], md["ref_min_score"], md["ref_max_score"]) == (None, None, None)
    assert md["rewards_recomputed"] is None


def test_d4rl_double_terminals(tmp_path):
    rng = np.random.default_rng(6)
    arr = _locomotion_arrays(rng, n=12)
    # Steps 3 and 4 both terminal, step 4 continues step 3: one episode ending at 4 (spurious flag at 3).
    arr["terminals"][[3, 4]] = True
    # Step 8 is an exact duplicate log row of terminal step 7: dropped.
    arr["terminals"][[7, 8]] = True
    arr["observations"][8] = arr["observations"][7]
    arr["actions"][8] = arr["actions"][7]
    arr["terminals"][11] = True
    ep = load_episodes(str(_write_h5(tmp_path / "dbl.hdf5", **arr)))
    np.testing.assert_array_equal(ep.lengths, [5, 3, 3])
    assert ep.metadata["merged_double_terminals"] == 1 and ep.metadata["dropped_duplicate_rows"] == 1
    np.testing.assert_array_equal(np.flatnonzero(ep.terminal), [4, 7, 10])
    np.testing.assert_array_equal(ep.obs, np.delete(arr["observations"], 8, axis=0))
    np.testing.assert_array_equal(
        ep.next_obs[3], arr["observations"][4]
    )  # merged: step 3 now has a successor

    # A duplicate inside a chain of three terminals: drop the copy, then merge the remaining pair.
    arr = _locomotion_arrays(rng, n=6)
    arr["terminals"][[2, 3, 4]] = True
    arr["observations"][3], arr["actions"][3] = arr["observations"][2], arr["actions"][2]
    ep = load_episodes(str(_write_h5(tmp_path / "chain.hdf5", **arr)))
    np.testing.assert_array_equal(ep.lengths, [4])  # rows 0, 1, 2, 4; row 5 (file end, no successor) dropped
    np.testing.assert_array_equal(np.flatnonzero(ep.terminal), [3])

    # With next_observations, a discontinuous pair is a genuine 1-step episode after a reset: kept.
    arr = _locomotion_arrays(rng, n=6)
    arr["terminals"][[2, 3, 5]] = True
    arr["next_observations"] = rng.normal(size=(6, 3)).astype(np.float32)  # not continuous anywhere
    ep = load_episodes(str(_write_h5(tmp_path / "genuine.hdf5", **arr)))
    np.testing.assert_array_equal(ep.lengths, [3, 1, 2])
    assert ep.metadata["merged_double_terminals"] == 0


def test_d4rl_zero_rewards(tmp_path):
    rng = np.random.default_rng(7)
    n = 6
    obs = np.zeros((n, 4), dtype=np.float32)
    obs[:, 0] = [0.0, 0.2, 0.45, 0.6, 1.0, 0.5]
    goal = np.zeros((n, 2), dtype=np.float32)
    base = {
        "observations": obs,
        "actions": rng.normal(size=(n, 2)),
        "rewards": np.zeros(n),
        "terminals": np.zeros(n, dtype=bool),
    }
    ep = load_episodes(str(_write_h5(tmp_path / "zero_goal.hdf5", **base, infos__goal=goal)))
    np.testing.assert_array_equal(ep.rew, [1, 1, 1, 0, 0])  # ||obs[:2] - goal|| <= 0.5, last step dropped
    assert "recomputed" in ep.metadata["rewards_recomputed"]

    path = _write_h5(tmp_path / "zero_nogoal.hdf5", **base)
    with pytest.raises(DatasetError) as err:
        load_episodes(str(path))
    msg = str(err.value)
    assert "'rewards'" in msg and str(path) in msg and "allow_zero_rewards" in msg
    ep = load_episodes(str(path), allow_zero_rewards=True)
    assert not ep.rew.any()


def test_d4rl_missing_key_and_length_mismatch(tmp_path):
    rng = np.random.default_rng(8)
    arr = _locomotion_arrays(rng)
    del arr["actions"]
    path = _write_h5(tmp_path / "nokey.hdf5", **arr)
    with pytest.raises(DatasetError, match="'actions'") as err:
        load_episodes(f"d4rl:{path}")
    assert str(path) in str(err.value)

    arr = _locomotion_arrays(rng, n=20)
    arr["actions"] = arr["actions"][:19]
    path = _write_h5(tmp_path / "short.hdf5", **arr)
    with pytest.raises(DatasetError) as err:
        load_episodes(f"d4rl:{path}")
    msg = str(err.value)
    assert "'actions'" in msg and "19" in msg and "20" in msg and str(path) in msg

    with pytest.raises(DatasetError, match="does not exist"):
        load_episodes(f"d4rl:{tmp_path / 'absent.hdf5'}")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_d4rl_non_finite(tmp_path, bad):
    rng = np.random.default_rng(9)
    arr = _locomotion_arrays(rng)
    arr["observations"][13, 1] = bad
    path = _write_h5(tmp_path / "nan.hdf5", **arr)
    with pytest.raises(DatasetError) as err:
        load_episodes(str(path))
    msg = str(err.value)
    assert "'observations'" in msg and "index 13" in msg and str(path) in msg


def test_d4rl_empty(tmp_path):
    path = _write_h5(
        tmp_path / "empty.hdf5",
        observations=np.zeros((0, 3)),
        actions=np.zeros((0, 2)),
        rewards=np.zeros(0),
        terminals=np.zeros(0, dtype=bool),
    )
    with pytest.raises(DatasetError, match="empty") as err:
        load_episodes(str(path))
    assert "'observations'" in str(err.value) and str(path) in str(err.value)


def test_d4rl_reference_scores_by_stem():
    assert d4rl_ref_scores("maze2d-medium-sparse-v1") == ("maze2d-medium-v1", 13.13, 277.39)
    assert d4rl_ref_scores("maze2d-large-sparse-v1") == ("maze2d-large-v1", 6.7, 273.99)
    assert d4rl_ref_scores("hopper_medium-v2") == ("hopper-medium-v2", -20.272305, 3234.3)
    assert d4rl_ref_scores("walker2d_expert-v2") == ("walker2d-expert-v2", 1.629008, 4592.3)
    assert d4rl_ref_scores("halfcheetah_random-v2") == ("halfcheetah-random-v2", -280.178953, 12135.0)
    assert d4rl_ref_scores("my-own-data") is None


def test_check_spaces_mismatches(tmp_path, maze_env):
    rng = np.random.default_rng(10)
    arr = _locomotion_arrays(rng, obs_dim=4, act_dim=3)
    path = _write_h5(tmp_path / "act3.hdf5", **arr)
    ep = load_episodes(str(path))
    with pytest.raises(DatasetError) as err:
        ep.check_spaces(maze_env.observation_space, maze_env.action_space)
    assert str(err.value) == f"action dim 3 in dataset {str(path)!r} does not match env action space (2,)"

    box = gym.spaces.Box(-1, 1, (5,))
    with pytest.raises(DatasetError, match=r"observation dim 4 .* observation space \(5,\)"):
        ep.check_spaces(box, gym.spaces.Box(-1, 1, (3,)))
    with pytest.raises(DatasetError, match="not a Box"):
        ep.check_spaces(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(3))
    ep.check_spaces(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Box(-1, 1, (3,)))

    goal_ep = _episodes([3], obs_dim=4, act_dim=2, goal=True)
    goal_space = gym.spaces.Dict(
        {"observation": gym.spaces.Box(-1, 1, (4,)), "desired_goal": gym.spaces.Box(-1, 1, (3,))}
    )
    with pytest.raises(DatasetError, match=r"goal dim 2 .* desired_goal space \(3,\)"):
        goal_ep.check_spaces(goal_space, gym.spaces.Box(-1, 1, (2,)))


# ====================================================================== source forms


def _raises_naming(source: str, pattern: str, path: Path | str) -> None:
    with pytest.raises(DatasetError, match=pattern) as err:
        load_episodes(source)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_plain_path_and_scheme_errors(tmp_path):
    with pytest.raises(DatasetError, match="unknown scheme 'hf:'") as err:
        load_episodes("hf:farama/pointmaze")
    assert "minari:<dataset-id>" in str(err.value) and "d4rl:<path.hdf5>" in str(err.value)
    assert "hf:farama/pointmaze" in str(err.value)

    _raises_naming(str(tmp_path / "nothing_here"), "no such file or directory", tmp_path / "nothing_here")
    (tmp_path / "notes.txt").write_text("hi")
    _raises_naming(str(tmp_path / "notes.txt"), "unsupported file type '.txt'", tmp_path / "notes.txt")
    (tmp_path / "empty_dir").mkdir()
    _raises_naming(str(tmp_path / "empty_dir"), "not a Minari dataset", tmp_path / "empty_dir")
    with h5py.File(tmp_path / "other.hdf5", "w") as f:
        f.create_dataset("pixels", data=np.zeros((3, 2)))
    _raises_naming(
        str(tmp_path / "other.hdf5"), "required D4RL key 'observations' missing", tmp_path / "other.hdf5"
    )
    (tmp_path / "garbage.hdf5").write_bytes(b"not hdf5")
    _raises_naming(str(tmp_path / "garbage.hdf5"), "cannot open as HDF5", tmp_path / "garbage.hdf5")
    _raises_naming("minari:", "missing dataset id", "minari:")

    # A broken Minari directory (metadata without data) is reported with its path.
    broken = tmp_path / "broken" / "data"
    broken.mkdir(parents=True)
    (broken / "main_data.hdf5").write_bytes(b"")
    (broken / "metadata.json").write_text("{}")
    _raises_naming(str(tmp_path / "broken"), "cannot read Minari dataset", broken)


# ====================================================================== Episodes validation


def _valid_fields(n: int = 6) -> dict:
    return {
        "obs": np.zeros((n, 2)),
        "act": np.zeros((n, 1)),
        "rew": np.zeros(n),
        "terminal": np.zeros(n, bool),
        "timeout": np.zeros(n, bool),
        "next_obs": np.zeros((n, 2)),
        "starts": np.array([0, 4]),
        "lengths": np.array([4, 2]),
        "source": "unit",
    }


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"act": np.zeros((5, 1))}, "'act' has 5 rows but 'obs' has 6"),
        ({"rew": np.zeros((6, 1))}, "'rew' must have 1 dims"),
        (
            {
                "obs": np.zeros((0, 2)),
                "next_obs": np.zeros((0, 2)),
                "act": np.zeros((0, 1)),
                "rew": np.zeros(0),
                "terminal": np.zeros(0, bool),
                "timeout": np.zeros(0, bool),
            },
            "empty",
        ),
        ({"lengths": np.array([4, 3])}, "'lengths' sums to 7 but there are 6 steps"),
        (
            {"starts": np.array([0, 4, 6]), "lengths": np.array([4, 2, 0])},
            "non-positive length 0 at episode 2",
        ),
        ({"starts": np.array([0, 3])}, "'starts' is 3 at episode 1, expected 4"),
        (
            {"goal": np.zeros((6, 2)) + np.array([[0, 0]] * 5 + [[0, np.inf]])},
            "'goal' has a non-finite value .* index 5",
        ),
        ({"terminal": np.eye(6, dtype=bool)[1]}, "'terminal' is set at step 1, inside episode 0"),
        ({"next_obs": np.zeros((6, 3))}, "'next_obs' has 3 dims but 'obs' has 2"),
    ],
)
def test_episodes_validation(change, pattern):
    fields = {**_valid_fields(), **change}
    with pytest.raises(DatasetError, match=pattern) as err:
        Episodes(**fields)
    assert "unit" in str(err.value)


def test_episodes_from_list_and_access():
    ep = _episodes([3, 2], goal=True)
    assert (ep.num_episodes, ep.num_steps, ep.obs_dim, ep.act_dim, ep.goal_dim) == (2, 5, 2, 1, 2)
    np.testing.assert_array_equal(ep.episode(1)["obs"][:, 0], [100, 101])
    np.testing.assert_array_equal(ep.episode(-1)["goal"], np.ones((2, 2)))
    np.testing.assert_allclose(ep.returns(), [6.0, 3.0])
    assert ep.obs.dtype == np.float32 and ep.terminal.dtype == bool and ep.starts.dtype == np.int64
    with pytest.raises(DatasetError, match="empty"):
        Episodes.from_list([], source="none")
    with pytest.raises(DatasetError, match="episode 0.*'act' missing"):
        Episodes.from_list([{"obs": np.zeros((2, 1)), "rew": np.zeros(2), "next_obs": np.zeros((2, 1))}])


# ====================================================================== normalizers


@pytest.mark.parametrize("kind", sorted(NORMALIZERS))
def test_normalizer_round_trip_numpy_and_torch(kind):
    rng = np.random.default_rng(11)
    data = rng.normal(3.0, [0.5, 4.0, 1.0], size=(500, 3)).astype(np.float32)
    data[:, 2] = 7.0  # a constant dimension must not divide by zero
    norm = make_normalizer(kind, data)
    z = norm.normalize(data)
    assert isinstance(z, np.ndarray) and np.isfinite(z).all()
    np.testing.assert_allclose(norm.unnormalize(z), data, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z[:, 2], 0.0, atol=1e-6)

    x = torch.as_tensor(data).reshape(50, 10, 3)  # any leading shape (..., D)
    zt = norm.normalize(x)
    assert isinstance(zt, torch.Tensor) and zt.shape == x.shape and zt.dtype == torch.float32
    np.testing.assert_allclose(zt.reshape(500, 3).numpy(), z, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm.unnormalize(zt), x, rtol=1e-5, atol=1e-5)
    assert norm.normalize(x.double()).dtype == torch.float64
    if kind in ("limits", "cdf"):
        assert z.min() >= -1 - 1e-6 and z.max() <= 1 + 1e-6
        np.testing.assert_allclose(z[:, :2].min(axis=0), -1, atol=1e-6)
        np.testing.assert_allclose(z[:, :2].max(axis=0), 1, atol=1e-6)
    if kind == "cdf":  # the data come out uniform on [-1, 1]: its quantiles are evenly spaced
        levels = np.linspace(0, 1, 11)
        np.testing.assert_allclose(np.quantile(z[:, :2], levels, axis=0), np.repeat(2 * levels[:, None] - 1, 2, 1), atol=0.01)
    elif kind == "gaussian":
        np.testing.assert_allclose(z[:, :2].mean(axis=0), 0, atol=1e-5)
        np.testing.assert_allclose(z[:, :2].std(axis=0), 1, atol=1e-4)


@pytest.mark.parametrize("cls", [GaussianNormalizer, LimitsNormalizer, CDFNormalizer])
def test_normalizer_state_dict_weights_only(tmp_path, cls):
    data = np.random.default_rng(12).uniform(-3, 5, size=(100, 4))
    norm = cls().fit(data)
    state = norm.state_dict()
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float32 for v in state.values())
    torch.save(state, tmp_path / "norm.pt")
    loaded = cls()
    loaded.load_state_dict(torch.load(tmp_path / "norm.pt", weights_only=True))
    np.testing.assert_array_equal(loaded.normalize(data), norm.normalize(data))
    with pytest.raises(ValueError, match="missing keys"):
        cls().load_state_dict({})
    with pytest.raises(RuntimeError, match="not fitted"):
        cls().normalize(data)
    with pytest.raises(ValueError, match="last dim 3"):
        norm.normalize(data[:, :3])
    with pytest.raises(ValueError, match="unknown normalizer"):
        make_normalizer("minmax", data)


def test_cdf_normalizer_spreads_heavy_tails_clamps_outside_and_survives_ties():
    rng = np.random.default_rng(13)
    data = rng.standard_t(2, size=(20_000, 2)).astype(np.float32)  # heavy tails, as velocities in locomotion data
    data[:8_000, 1] = 0.0  # 40% ties at one value
    cdf, limits = make_normalizer("cdf", data), make_normalizer("limits", data)

    def middle_half(z: np.ndarray) -> np.ndarray:
        return np.percentile(z, 75, axis=0) - np.percentile(z, 25, axis=0)

    # the middle half of the data spans half of [-1, 1] (a CDF is uniform); min-max squeezes it near 0
    np.testing.assert_allclose(middle_half(cdf.normalize(data))[0], 1.0, atol=0.01)
    assert middle_half(limits.normalize(data))[0] < 0.05
    # every tied value maps to one point and back
    z_tie = cdf.normalize(data[:8_000])[:, 1]
    assert np.ptp(z_tie) == 0 and np.all(cdf.unnormalize(cdf.normalize(data[:8_000]))[:, 1] == 0.0)
    # outside the data's range: clamped to +-1 and back to the range's ends, as the public normalizer
    far = np.array([[1e6, -1e6]], np.float32)
    np.testing.assert_array_equal(cdf.normalize(far), [[1.0, -1.0]])
    np.testing.assert_allclose(cdf.unnormalize(cdf.normalize(far)), [[data[:, 0].max(), data[:, 1].min()]])
    knots = cdf.state_dict()["knots"]
    assert knots.shape == (1001, 2) and bool((knots.diff(dim=0) > 0).all())
    with pytest.raises(ValueError, match="strictly increasing"):
        CDFNormalizer().load_state_dict({"knots": torch.zeros(5, 2)})
    with pytest.raises(ValueError, match=r"missing keys \['knots'\], unexpected keys \['min'\]"):
        CDFNormalizer().load_state_dict({"min": torch.zeros(2)})


# ====================================================================== SequenceDataset


def _identity_free_dataset(lengths: list[int], horizon: int, padding: bool, **kw) -> SequenceDataset:
    ep = _episodes(lengths, obs_dim=2, act_dim=1, goal=True)
    return SequenceDataset(
        ep,
        horizon,
        make_normalizer("limits", ep.obs),
        make_normalizer("gaussian", ep.act),
        use_padding=padding,
        **kw,
    )


def _raw(ds: SequenceDataset, traj: torch.Tensor, act_norm, obs_norm) -> tuple[np.ndarray, np.ndarray]:
    A = ds.action_dim
    return act_norm.unnormalize(traj[..., :A]).numpy(), obs_norm.unnormalize(traj[..., A:]).numpy()


def test_sequence_windows_match_raw_data_with_padding():
    ep = _episodes([4, 6, 2], obs_dim=2, act_dim=1, goal=True)
    obs_n, act_n = make_normalizer("limits", ep.obs), make_normalizer("gaussian", ep.act)
    ds = SequenceDataset(ep, 3, obs_n, act_n, use_padding=True)
    assert (ds.action_dim, ds.obs_dim, ds.transition_dim, len(ds)) == (1, 2, 3, 12)  # one window per step

    batch = ds.get([0, 5, 3, 11])
    assert batch["traj"].shape == (4, 3, 3) and batch["mask"].dtype == torch.bool
    act, obs = _raw(ds, batch["traj"], act_n, obs_n)
    # Window 0: episode 0 steps 0..2, all real.
    np.testing.assert_allclose(obs[0, :, 0], [0, 1, 2], atol=1e-5)
    np.testing.assert_allclose(obs[0, :, 1], [0.1, 1.1, 2.1], atol=1e-5)
    np.testing.assert_allclose(act[0, :, 0], [0, -1, -2], atol=1e-5)
    # Window 5: episode 1 steps 1..3.
    np.testing.assert_allclose(obs[1, :, 0], [101, 102, 103], atol=1e-4)
    np.testing.assert_allclose(act[1, :, 0], [-101, -102, -103], atol=1e-4)
    # Window 3: episode 0's last step, then two padded steps repeating obs 3 with zero action.
    np.testing.assert_allclose(obs[2, :, 0], [3, 3, 3], atol=1e-5)
    np.testing.assert_allclose(act[2, :, 0], [-3, 0, 0], atol=1e-5)
    # Window 11: episode 2's last step.
    np.testing.assert_allclose(obs[3, :, 0], [201, 201, 201], atol=1e-4)
    np.testing.assert_array_equal(batch["mask"].numpy(), [[1, 1, 1], [1, 1, 1], [1, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(
        batch["goal"].numpy(), [[0, 0], [1, 1], [0, 0], [2, 2]]
    )  # raw, at the start
    np.testing.assert_array_equal(batch["indices"].numpy(), [0, 5, 3, 11])
    # Padded and real windows are the same normalized tensor as the data for real steps.
    torch.testing.assert_close(batch["traj"][1], ds.data[5:8])


def test_sequence_windows_without_padding_never_cross_episodes():
    ds = _identity_free_dataset([4, 6, 2, 3], horizon=3, padding=False)
    assert len(ds) == 2 + 4 + 0 + 1  # episodes shorter than H give no window
    batch = ds.get(torch.arange(len(ds)))
    assert bool(batch["mask"].all())
    episode_of_step = np.repeat(np.arange(4), [4, 6, 2, 3])
    starts = ds.window_start.numpy()
    steps = starts[:, None] + np.arange(3)
    assert (episode_of_step[steps] == episode_of_step[starts][:, None]).all()
    torch.testing.assert_close(batch["traj"], ds.data[torch.as_tensor(steps)])

    with pytest.raises(DatasetError, match="horizon 7 is too long.*max length 6") as err:
        _identity_free_dataset([4, 6, 2], horizon=7, padding=False)
    assert "handmade" in str(err.value)
    assert len(_identity_free_dataset([4, 6, 2], horizon=7, padding=True)) == 12


def test_front_padded_windows_start_before_each_episode_with_its_first_state():
    """Pins ``front_padding`` (the Decision Diffuser's history slot): each episode gets k windows that start
    1..k steps before its first step, the steps before it repeating its first observation with the zero action
    and mask False, so a window's step k (the current-state slot) holds the episode's states 0..k-1 too."""
    ep = _episodes([4, 6], obs_dim=2, act_dim=1, goal=True)
    obs_n, act_n = make_normalizer("limits", ep.obs), make_normalizer("gaussian", ep.act)
    k, H = 2, 4
    ds = SequenceDataset(ep, H, obs_n, act_n, use_padding=True, front_padding=k, returns_offset=k)
    assert len(ds) == (4 + k) + (6 + k)
    first_of_window = ds.window_first.numpy()
    offsets = ds.window_start.numpy() - first_of_window  # start relative to the episode's first step
    assert sorted(offsets[first_of_window == 0].tolist()) == [-2, -1, 0, 1, 2, 3]
    assert sorted(offsets[first_of_window == 4].tolist()) == [-2, -1, 0, 1, 2, 3, 4, 5]
    ids = [i for i in range(len(ds)) if offsets[i] < 0]  # the front-padded windows
    batch = ds.get(ids)
    act, obs = _raw(ds, batch["traj"], act_n, obs_n)
    for row, i in enumerate(ids):
        j = -int(offsets[i])  # padded steps at the window's front
        first_obs = ep.obs[first_of_window[i]]
        np.testing.assert_allclose(obs[row, :j], np.repeat(first_obs[None], j, 0), atol=1e-4)
        np.testing.assert_allclose(act[row, :j, 0], 0.0, atol=1e-5)
        np.testing.assert_allclose(obs[row, j:, 0], ep.obs[first_of_window[i] : first_of_window[i] + H - j, 0],
                                   atol=1e-4)
        assert batch["mask"][row].tolist() == [False] * j + [True] * (H - j)
        # the current-state slot k holds episode step k - j < k, and the return is counted from there
        np.testing.assert_allclose(obs[row, k], ep.obs[first_of_window[i] + k - j], atol=1e-4)
        assert float(batch["returns"][row]) == pytest.approx(float(ds.returns_to_go[first_of_window[i] + k - j]))
        np.testing.assert_array_equal(batch["goal"][row].numpy(), ep.goal[first_of_window[i]])
    assert len(SequenceDataset(ep, H, obs_n, act_n, use_padding=False, front_padding=k)) == (1 + k) + (3 + k)
    with pytest.raises(ValueError, match="front_padding"):
        SequenceDataset(ep, H, obs_n, act_n, front_padding=H)


def test_returns_to_go():
    ep = Episodes.from_list(
        [
            {
                "obs": np.zeros((3, 1)),
                "next_obs": np.zeros((3, 1)),
                "act": np.zeros((3, 1)),
                "rew": np.array([1.0, 2.0, 3.0]),
                "terminal": np.array([0, 0, 1], bool),
            },
            {
                "obs": np.ones((2, 1)),
                "next_obs": np.ones((2, 1)),
                "act": np.zeros((2, 1)),
                "rew": np.array([4.0, 8.0]),
                "timeout": np.array([0, 1], bool),
            },
        ],
        source="rtg",
    )
    norm = make_normalizer("gaussian", np.zeros((2, 1)))
    ds = SequenceDataset(ep, 2, norm, norm, discount=0.5)
    # Episode 0: 1 + .5*2 + .25*3 = 2.75, 2 + .5*3 = 3.5, 3; episode 1 restarts: 4 + .5*8 = 8, 8.
    np.testing.assert_allclose(ds.returns_to_go.numpy(), [2.75, 3.5, 3.0, 8.0, 8.0])
    np.testing.assert_allclose(ds.get([0, 1, 3])["returns"].numpy(), [[2.75], [3.5], [8.0]])
    assert "goal" not in ds.get([0])
    # Terminal penalty (episode 0 ends terminal, episode 1 by timeout) and returns from a later window step.
    ds = SequenceDataset(ep, 2, norm, norm, discount=0.5, termination_penalty=-100.0, returns_offset=1)
    np.testing.assert_allclose(ds.returns_to_go.numpy(), [-22.25, -46.5, -97.0, 8.0, 8.0])
    np.testing.assert_allclose(ds.get([0, 2, 3, 4])["returns"].numpy(), [[-46.5], [-97.0], [8.0], [8.0]])
    with pytest.raises(ValueError, match="returns_offset"):
        SequenceDataset(ep, 2, norm, norm, returns_offset=2)

    # Long episodes: the doubling scan matches a plain reverse loop, and discount 0 / 1 are exact.
    rng = np.random.default_rng(13)
    lengths = np.array([1, 700, 2049, 33])
    rew = rng.normal(size=lengths.sum())
    for gamma in (0.0, 0.9, 0.99, 1.0):
        ref, pos = np.empty_like(rew), 0
        for length in lengths:
            acc = 0.0
            for k in range(pos + length - 1, pos - 1, -1):
                acc = rew[k] + gamma * acc
                ref[k] = acc
            pos += length
        np.testing.assert_allclose(discounted_returns_to_go(rew, lengths, gamma), ref, rtol=1e-9, atol=1e-9)


def test_sample_is_seeded_and_shaped():
    ds = _identity_free_dataset([40, 25, 60], horizon=8, padding=True)
    a = ds.sample(16, torch.Generator().manual_seed(0))
    b = ds.sample(16, torch.Generator().manual_seed(0))
    for key in ("traj", "mask", "returns", "goal", "indices"):
        torch.testing.assert_close(a[key], b[key])
    assert a["traj"].shape == (16, 8, 3) and a["mask"].shape == (16, 8)
    assert a["returns"].shape == (16, 1) and a["goal"].shape == (16, 2)
    torch.testing.assert_close(a["traj"], ds.get(a["indices"])["traj"])
