"""The shipped behaviour policies of the locomotion recipes: which they are, loading them, measuring them.

Files in ``diffplan/behaviour/policies/`` (package data, written by :func:`convert_zoo` from the RL Baselines3
Zoo's exported weights, see :mod:`diffplan.behaviour.zoo`): ``<env>-<algo>.safetensors`` for the expert (TQC)
and the medium policy of each env, ``LICENSE-rl-trained-agents`` (MIT, the Zoo's) beside them, and
``<env>.json``: the source (repository, commit, folder), each policy's architecture and its measured returns
(stochastic actions as the datasets sample them, and the deterministic mean), and the uniform random policy's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffplan.behaviour.zoo import (
    ZOO_ALGOS,
    ZOO_COMMIT,
    ZOO_ENV_NAMES,
    ZOO_LICENSE,
    ZOO_REPO,
    BehaviourPolicyError,
    ZooActor,
    convert_policy,
    load_policy_file,
    zoo_arch,
    zoo_folder,
)
from diffplan.envs import LOCOMOTION_ENVS, make_locomotion_env

RECIPE = "d4rl-locomotion-zoo"
"""Name of the behaviour recipe, recorded in every shipped summary and in the datasets rolled out from them."""
POLICY_DIR = Path(__file__).resolve().parent / "policies"
POLICY_KINDS = ("medium", "expert")

MEDIUM_TARGETS = {"hopper": 1400.0, "walker2d": 2900.0, "halfcheetah": 4800.0}
"""Mean return of D4RL's medium datasets (a SAC policy stopped at about a third to two thirds of expert): the
medium policy is the Zoo candidate whose stochastic return is nearest."""
EXPERT_ALGO = "tqc"
"""D4RL's expert level: the Zoo's TQC policies return 3256 / 4500 / 12047 on v5 (D4RL: 3234 / 4592 / 12135)."""


def env_dims(env: str) -> tuple[int, int]:
    """(observation size, action size) of a locomotion env."""
    e = make_locomotion_env(env, seed=None)
    try:
        return int(np.prod(e.observation_space.shape)), int(np.prod(e.action_space.shape))
    finally:
        e.close()


def policy_file(env: str, algo: str, policy_dir: str | Path | None = None) -> Path:
    return (Path(policy_dir) if policy_dir is not None else POLICY_DIR) / f"{env}-{algo}.safetensors"


def info_path(env: str, policy_dir: str | Path | None = None) -> Path:
    return (Path(policy_dir) if policy_dir is not None else POLICY_DIR) / f"{env}.json"


def load_info(env: str, policy_dir: str | Path | None = None) -> dict[str, Any]:
    """The summary json of ``env``'s shipped policies (source, architectures, measured returns)."""
    path = info_path(env, policy_dir)
    if not path.exists():
        raise BehaviourPolicyError(
            f"no behaviour policies for {env!r} in {path.parent} ({path.name} missing); run "
            "`diffplan data convert-zoo <behaviour-policies dir>` to write them"
        )
    try:
        info = json.loads(path.read_text())
        for kind in POLICY_KINDS:
            info[kind]["file"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BehaviourPolicyError(f"corrupt behaviour-policy summary {path}: {exc!r}") from exc
    return info


def load_actor(env: str, kind: str, policy_dir: str | Path | None = None) -> ZooActor:
    """The shipped ``kind`` (medium|expert) actor of ``env``, in eval mode."""
    if kind not in POLICY_KINDS:
        raise ValueError(f"unknown behaviour policy {kind!r}; expected one of {POLICY_KINDS}")
    info = load_info(env, policy_dir)
    actor = load_policy_file(info_path(env, policy_dir).parent / info[kind]["file"])
    if actor.arch.env != env:
        raise BehaviourPolicyError(f"{info[kind]['file']} holds a {actor.arch.env} policy, not a {env} one")
    return actor


def policy_sha256(env: str, kind: str, policy_dir: str | Path | None = None) -> str:
    """sha256 of the file behind ``env``'s ``kind`` policy (recorded in datasets, to know when to remake them)."""
    import hashlib

    info = load_info(env, policy_dir)
    return hashlib.sha256((info_path(env, policy_dir).parent / info[kind]["file"]).read_bytes()).hexdigest()


@torch.no_grad()
def episode_returns(env: str, actor: ZooActor | None, n_episodes: int, seed: int,
                    deterministic: bool = False) -> np.ndarray:
    """(n_episodes,) returns of ``actor`` (None: uniform random actions) over full 1000-step-limit episodes.

    One env per episode, all stepped together (one batched forward per step); episode ``i`` starts from reset
    seed ``seed + i``, so a deterministic and a stochastic measurement see the same start states. Stochastic
    actions come from a torch generator seeded with ``seed``.
    """
    envs = [make_locomotion_env(env, seed=None) for _ in range(n_episodes)]
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)])
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    returns = np.zeros(n_episodes)
    alive = np.ones(n_episodes, dtype=bool)
    t = np.zeros(n_episodes, dtype=np.int64)
    act_dim = envs[0].action_space.shape[0]
    while alive.any():
        idx = np.flatnonzero(alive)
        if actor is None:
            act = rng.uniform(-1.0, 1.0, size=(len(idx), act_dim)).astype(np.float32)
        else:
            act = actor.act(torch.as_tensor(obs[idx]), torch.as_tensor(t[idx]), gen, deterministic).numpy()
        for j, i in enumerate(idx):
            o, r, term, trunc, _ = envs[i].step(act[j])
            returns[i] += float(r)
            obs[i] = o
            t[i] += 1
            alive[i] = not (term or trunc)
    for e in envs:
        e.close()
    return returns


def _stats(x: np.ndarray) -> dict[str, Any]:
    return {"mean": float(x.mean()), "std": float(x.std()), "episodes": len(x), "returns": [float(v) for v in x]}


def measure_zoo(zoo_dir: str | Path, envs: list[str] | None = None, algos: list[str] | None = None,
                n_episodes: int = 5, seed: int = 0) -> dict[str, Any]:
    """Every Zoo candidate's return on the v5 envs, stochastic (as the datasets sample) and deterministic.

    Each candidate is converted first (into a temporary directory) and measured from that file: the numbers are
    those of exactly what :func:`convert_zoo` ships. The uniform random policy is measured the same way.
    """
    import tempfile

    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for env in envs or list(LOCOMOTION_ENVS):
            rows: dict[str, Any] = {"random": {"stochastic": _stats(episode_returns(env, None, n_episodes, seed))}}
            for algo in algos or list(ZOO_ALGOS):
                actor = load_policy_file(convert_policy(zoo_dir, algo, env, Path(tmp) / f"{env}-{algo}.safetensors"))
                rows[algo] = {
                    "folder": zoo_folder(algo, env),
                    "stochastic": _stats(episode_returns(env, actor, n_episodes, seed)),
                    "deterministic": _stats(episode_returns(env, actor, n_episodes, seed, deterministic=True)),
                }
                print(f"[{env}] {algo}: stochastic {rows[algo]['stochastic']['mean']:.0f}, deterministic "
                      f"{rows[algo]['deterministic']['mean']:.0f}", flush=True)
            out[env] = rows
    return out


def choose_medium(candidates: dict[str, Any], env: str) -> str:
    """The non-expert candidate whose stochastic return is nearest D4RL's medium level for ``env``.

    Only policies with a stochastic action distribution are eligible: D4RL sampled its medium data from a SAC
    policy's distribution, and ARS's deterministic linear policy would give a dataset without action noise."""
    rows = {a: r for a, r in candidates[env].items()
            if a not in ("random", EXPERT_ALGO) and zoo_arch(a, env).family != "linear"}
    return min(rows, key=lambda a: abs(rows[a]["stochastic"]["mean"] - MEDIUM_TARGETS[env]))


def convert_zoo(zoo_dir: str | Path, candidates: dict[str, Any], policy_dir: str | Path | None = None,
                medium: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Write the shipped files: per env the expert (TQC) and the medium policy (``medium[env]``, default
    :func:`choose_medium` on ``candidates``, the output of :func:`measure_zoo`), the license and ``<env>.json``.

    Files of earlier choices that are no longer used are removed, so only what the recipes use is shipped.
    """
    from diffplan.checkpoint import write_text_atomic

    out = Path(policy_dir) if policy_dir is not None else POLICY_DIR
    out.mkdir(parents=True, exist_ok=True)
    license_src = Path(zoo_dir) / ZOO_LICENSE
    if not license_src.exists():
        raise BehaviourPolicyError(f"{license_src} is missing: the Zoo's weights are shipped with their license only")
    shutil.copyfile(license_src, out / ZOO_LICENSE)
    infos = {}
    for env in candidates:
        if env not in LOCOMOTION_ENVS:
            raise BehaviourPolicyError(f"candidates name an unknown env {env!r}")
        chosen = {"expert": EXPERT_ALGO, "medium": (medium or {}).get(env) or choose_medium(candidates, env)}
        info: dict[str, Any] = {
            "env": env, "gym_id": LOCOMOTION_ENVS[env], "recipe": RECIPE,
            "source": {"repo": ZOO_REPO, "commit": ZOO_COMMIT, "license": ZOO_LICENSE,
                       "trained_on": f"{ZOO_ENV_NAMES[env]}-v3 (mujoco-py), 1M env steps, the Zoo's defaults"},
            "random": {"algo": "uniform", **candidates[env]["random"]},
            "medium_target": MEDIUM_TARGETS[env],
        }
        for kind, algo in chosen.items():
            path = convert_policy(zoo_dir, algo, env, policy_file(env, algo, out))
            arch = zoo_arch(algo, env)
            info[kind] = {"algo": algo, "file": path.name, "folder": zoo_folder(algo, env),
                          "family": arch.family, "activation": arch.activation, "time_feature": arch.time_feature,
                          "stochastic": candidates[env][algo]["stochastic"],
                          "deterministic": candidates[env][algo]["deterministic"]}
        keep = {info[k]["file"] for k in POLICY_KINDS}
        for old in out.glob(f"{env}-*.safetensors"):
            if old.name not in keep:
                old.unlink()
        write_text_atomic(info_path(env, out), json.dumps(info, indent=1))
        infos[env] = info
    return infos
