"""The shipped behaviour policies of the locomotion recipes: where they are, loading them, sampling from them.

Files (written by :func:`diffplan.behaviour.sac.finalize_behaviour`, shipped as package data in
``diffplan/behaviour/policies/``): ``<env>-{medium,expert}.safetensors`` (Tianshou SAC actor weights),
``<env>-medium-replay.safetensors`` (the SAC run's replay buffer up to the medium checkpoint) and ``<env>.json``
(training returns, seeds, reference scores). Every bad file is a :class:`BehaviourPolicyError` naming the file
and the command that remakes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffplan.envs import make_locomotion_env
from diffplan.nets.sac import mlp_trunk

RECIPE = "d4rl-locomotion-sac"
"""Name of the behaviour recipe, recorded in every shipped file and in the datasets rolled out from them."""
POLICY_DIR = Path(__file__).resolve().parent / "policies"
POLICY_KINDS = ("medium", "expert")


def env_dims(env: str) -> tuple[int, int]:
    """(observation size, action size) of a locomotion env."""
    e = make_locomotion_env(env, seed=None)
    try:
        return int(np.prod(e.observation_space.shape)), int(np.prod(e.action_space.shape))
    finally:
        e.close()


def build_actor(obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256)) -> torch.nn.Module:
    """Tianshou's SAC actor: MLP trunk -> (mean, std) of a Gaussian over pre-tanh actions, each (B, act_dim)."""
    from tianshou.utils.net.continuous import ContinuousActorProbabilistic

    trunk = mlp_trunk(obs_dim, hidden)
    return ContinuousActorProbabilistic(
        preprocess_net=trunk, action_shape=act_dim, unbounded=True, conditioned_sigma=True
    )


class BehaviourPolicyError(ValueError):
    """A shipped behaviour-policy file is missing, unreadable or does not fit the env."""


def policy_paths(env: str, policy_dir: str | Path | None = None) -> dict[str, Path]:
    """Files of ``env``'s shipped behaviour policies: actors, the medium-replay buffer and the summary json."""
    d = Path(policy_dir) if policy_dir is not None else POLICY_DIR
    return {
        "medium": d / f"{env}-medium.safetensors",
        "expert": d / f"{env}-expert.safetensors",
        "medium-replay": d / f"{env}-medium-replay.safetensors",
        "info": d / f"{env}.json",
    }


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file; a missing or corrupt file is a BehaviourPolicyError."""
    from safetensors import safe_open

    if not path.exists():
        raise BehaviourPolicyError(
            f"behaviour-policy file {path} is missing; run `diffplan data train-behaviour "
            f"{path.name.split('-')[0].split('.')[0]}` (or `diffplan data make <task> --retrain`) to create it"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118 (safe_open is no mapping)
    except Exception as exc:  # safetensors raises its own error types for truncated/garbled headers
        raise BehaviourPolicyError(f"corrupt behaviour-policy file {path}: {str(exc).splitlines()[0]}") from exc


def load_info(env: str, policy_dir: str | Path | None = None) -> dict[str, Any]:
    """The summary json of ``env``'s shipped policies (training returns, seeds, reference scores)."""
    path = policy_paths(env, policy_dir)["info"]
    if not path.exists():
        raise BehaviourPolicyError(
            f"no behaviour policies for {env!r} in {path.parent} ({path.name} missing); run "
            f"`diffplan data train-behaviour {env}` to train them"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BehaviourPolicyError(f"corrupt behaviour-policy summary {path}: {exc}") from exc


def load_actor(env: str, kind: str, policy_dir: str | Path | None = None) -> torch.nn.Module:
    """The shipped ``kind`` (medium|expert) SAC actor of ``env``, in eval mode."""
    if kind not in POLICY_KINDS:
        raise ValueError(f"unknown behaviour policy {kind!r}; expected one of {POLICY_KINDS}")
    path = policy_paths(env, policy_dir)[kind]
    tensors, meta = load_tensors(path)
    obs_dim, act_dim = env_dims(env)
    hidden = tuple(int(h) for h in json.loads(meta.get("hidden", "[256, 256]")))
    actor = build_actor(obs_dim, act_dim, hidden)
    try:
        actor.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise BehaviourPolicyError(
            f"behaviour-policy file {path} does not fit {env} (obs {obs_dim}, act {act_dim}): "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    return actor.eval()


def actor_sampler(actor: torch.nn.Module) -> Callable[[np.ndarray, torch.Generator], np.ndarray]:
    """``act_fn`` drawing tanh(N(mean, std)) actions from a SAC actor, with the caller's generator.

    The behaviour data is sampled from the stochastic policy (not its mean), as D4RL's SAC datasets were.
    """

    @torch.no_grad()
    def act(obs: np.ndarray, gen: torch.Generator) -> np.ndarray:
        (mu, sigma), _ = actor(torch.as_tensor(obs, dtype=torch.float32))
        eps = torch.randn(mu.shape, generator=gen)
        return torch.tanh(mu + sigma * eps).numpy().astype(np.float32)

    return act


def replay_episodes(env: str, num_steps: int | None = None, policy_dir: str | Path | None = None) -> list[dict[str, np.ndarray]]:
    """The medium-replay episodes: the SAC run's replay buffer up to the medium checkpoint, in order.

    ``num_steps`` keeps only the first transitions (the last kept episode is cut there, ``truncated``).
    """
    path = policy_paths(env, policy_dir)["medium-replay"]
    info = load_info(env, policy_dir)
    if not path.exists() and not info.get("medium_replay", {}).get("stored", True):
        raise BehaviourPolicyError(
            f"{env}'s medium-replay buffer was too large to ship; run `diffplan data make {env}-medium-replay "
            "--retrain` to regenerate it by re-running the seeded SAC training"
        )
    t, _ = load_tensors(path)
    obs, act, rew = t["obs"].numpy(), t["act"].numpy(), t["rew"].numpy()
    term, trunc = t["terminated"].numpy().astype(bool), t["truncated"].numpy().astype(bool)
    ends, end_next = t["end_index"].numpy(), t["end_next_obs"].numpy()
    n = len(rew) if num_steps is None else min(int(num_steps), len(rew))
    episodes = []
    start = 0
    for e_idx, end in enumerate(ends):
        if start >= n:
            break
        stop = min(int(end), n - 1)
        last_next = end_next[e_idx] if stop == end else obs[stop + 1]
        tr = trunc[start : stop + 1].copy()
        te = term[start : stop + 1].copy()
        if not (te[-1] or tr[-1]):
            tr[-1] = True
        episodes.append({
            "observations": np.concatenate([obs[start : stop + 1], last_next[None]]).astype(np.float64),
            "actions": act[start : stop + 1].astype(np.float32),
            "rewards": rew[start : stop + 1].astype(np.float64),
            "terminations": te,
            "truncations": tr,
            "seed": -1,
        })
        start = stop + 1
    return episodes
