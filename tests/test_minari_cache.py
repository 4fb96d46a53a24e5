"""The flat cache beside a Minari dataset: same episodes, rebuilt when the dataset changes, never trusted blindly."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from diffplan.data import load_episodes

FIELDS = ("obs", "act", "rew", "terminal", "timeout", "next_obs", "starts", "lengths", "goal")


def test_cache_round_trip_and_invalidation(tiny_maze_dataset, tmp_path):
    path = Path(shutil.copytree(tiny_maze_dataset, tmp_path / "ds"))
    cache = path / "data" / ".diffplan-episodes.npz"
    first = load_episodes(str(path))
    assert cache.exists()
    second = load_episodes(str(path))
    for key in FIELDS:
        np.testing.assert_array_equal(getattr(first, key), getattr(second, key))
    assert second.metadata["ref_max_score"] == first.metadata["ref_max_score"]

    # a changed dataset file makes the cache stale: it is rebuilt, not used
    stamp = os.stat(cache).st_mtime_ns
    hdf5 = path / "data" / "main_data.hdf5"
    os.utime(hdf5, ns=(hdf5.stat().st_atime_ns, hdf5.stat().st_mtime_ns + 10**9))
    load_episodes(str(path))
    assert os.stat(cache).st_mtime_ns != stamp

    # a corrupt cache is ignored and replaced
    cache.write_bytes(b"garbage")
    again = load_episodes(str(path))
    np.testing.assert_array_equal(again.obs, first.obs)
    assert np.load(cache, allow_pickle=False)["obs"].shape == first.obs.shape
