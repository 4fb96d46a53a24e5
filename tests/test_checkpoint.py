"""Checkpoints: atomic layout, weights_only loading, clear errors for damaged files, RNG round trip."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from diffplan.checkpoint import (
    CheckpointError,
    load_checkpoint,
    resolve_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _state() -> dict:
    return {"w": torch.arange(6.0).reshape(2, 3), "step": 7, "nested": {"a": [1, 2], "s": "x", "n": None}}


def test_round_trip_and_latest(tmp_path):
    save_checkpoint(tmp_path, 5, _state(), "agent: x\n")
    path = save_checkpoint(tmp_path, 10, {**_state(), "step": 10}, "agent: x\n")
    assert resolve_checkpoint(tmp_path) == path
    state, cfg = load_checkpoint(tmp_path)
    assert state["step"] == 10 and torch.equal(state["w"], _state()["w"]) and cfg == "agent: x\n"
    assert state["nested"] == {"a": [1, 2], "s": "x", "n": None}
    # no temporary directories are left behind
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]


def test_keep_only_recent(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, _state(), "", keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert names == ["step_00000004", "step_00000005"]


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path, 1, _state(), "")
    data = (path / "state.pt").read_bytes()
    (path / "state.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_garbage_without_checksum_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path, 1, _state(), "")
    (path / "state.pt").write_bytes(b"not a zip file at all")
    (path / "meta.json").write_text('{"step": 1}')
    with pytest.raises(CheckpointError, match="cannot load state.pt"):
        load_checkpoint(path)


def test_arbitrary_objects_are_never_unpickled(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = save_checkpoint(tmp_path, 1, _state(), "")
    torch.save({"x": Evil()}, path / "state.pt", pickle_module=pickle)
    (path / "meta.json").write_text('{"step": 1}')
    with pytest.raises(CheckpointError, match="cannot load"):
        load_checkpoint(path)


def test_missing_pieces(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        load_checkpoint(tmp_path)
    path = save_checkpoint(tmp_path, 1, _state(), "")
    (path / "config.yaml").unlink()
    with pytest.raises(CheckpointError, match="config.yaml is missing"):
        load_checkpoint(path)
    (tmp_path / "checkpoints" / "latest").write_text("step_99999999")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path)


def test_rng_state_round_trip(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    save_checkpoint(tmp_path, 1, {"rng": rng_state()}, "")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    state, _ = load_checkpoint(tmp_path)
    set_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
