"""D4RL reference scores (random / expert returns) for normalized scores, copied from ``d4rl/infos.py``.

The ``d4rl`` package does not import on a modern stack (mujoco-py), so we keep its constants. Normalized
score = 100 * (return - ref_min) / (ref_max - ref_min), as in the D4RL paper.

Locomotion refs are per environment, the same for every dataset kind (random, medium, expert, ...) and
version (v0/v1/v2), exactly as ``infos.py`` assigns them.
"""

from __future__ import annotations

import re

# maze2d (sparse and dense reward variants), keyed by D4RL env name.
_MAZE2D: dict[str, tuple[float, float]] = {
    "maze2d-open-v0": (0.01, 20.66),
    "maze2d-umaze-v1": (23.85, 161.86),
    "maze2d-medium-v1": (13.13, 277.39),
    "maze2d-large-v1": (6.7, 273.99),
    "maze2d-open-dense-v0": (11.17817, 27.166538620695782),
    "maze2d-umaze-dense-v1": (68.537689, 193.66285642381482),
    "maze2d-medium-dense-v1": (44.264742, 297.4552547777125),
    "maze2d-large-dense-v1": (30.569041, 303.4857382709002),
}

# Gym-MuJoCo locomotion: (random-policy return, expert return) per environment.
_LOCOMOTION: dict[str, tuple[float, float]] = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}
_LOCOMOTION_KINDS = ("random", "medium", "expert", "medium-replay", "medium-expert", "full-replay")

D4RL_REF_SCORES: dict[str, tuple[float, float]] = dict(_MAZE2D)
for _env, _refs in _LOCOMOTION.items():
    for _kind in _LOCOMOTION_KINDS:
        for _version in ("v0", "v1", "v2"):
            D4RL_REF_SCORES[f"{_env}-{_kind}-{_version}"] = _refs
"""D4RL dataset name -> (ref_min_score, ref_max_score)."""


def d4rl_locomotion_refs(env: str) -> tuple[float, float]:
    """D4RL's ``(ref_min_score, ref_max_score)`` of a locomotion env (``"hopper"``), the same for every kind."""
    return _LOCOMOTION[env]


def canonical_d4rl_name(stem: str) -> str:
    """Map a D4RL file stem to its env name.

    D4RL file names differ from env names: ``maze2d-umaze-sparse-v1.hdf5`` is env ``maze2d-umaze-v1`` and
    ``hopper_medium_replay-v2.hdf5`` is ``hopper-medium-replay-v2``.
    """
    name = stem.lower().replace("_", "-")
    return re.sub(r"-sparse(?=-v\d+$)", "", name)


def d4rl_ref_scores(stem: str) -> tuple[str, float, float] | None:
    """``(name, ref_min_score, ref_max_score)`` for a known D4RL file stem or env name, else None."""
    name = canonical_d4rl_name(stem)
    refs = D4RL_REF_SCORES.get(name)
    return None if refs is None else (name, refs[0], refs[1])
