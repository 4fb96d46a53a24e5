"""D4RL-style locomotion datasets (hopper / walker2d / halfcheetah) made locally on Gymnasium's v5 MuJoCo envs.

D4RL (Fu et al. 2020, section 5 and appendix C) built its MuJoCo datasets from one online SAC run per env:
``random`` (uniform random actions here), ``medium`` and ``expert`` (1M steps of the medium / fully trained
policy), ``medium-replay`` (the replay buffer up to the medium checkpoint) and ``medium-expert`` (medium and
expert concatenated, 2M steps). The policies are trained once and shipped (:mod:`diffplan.behaviour`: training
in :mod:`diffplan.behaviour.sac`, the files and their loaders in :mod:`diffplan.behaviour.shipped`); this module
rolls them out into Minari datasets, bit-for-bit reproducible for a given seed (one torch thread, seeded env
resets and a seeded torch generator for the actor's samples).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from diffplan.behaviour.shipped import (
    POLICY_KINDS,
    RECIPE,
    BehaviourPolicyError,
    actor_sampler,
    env_dims,
    load_actor,
    load_info,
    policy_paths,
    replay_episodes,
)
from diffplan.data import recipes
from diffplan.data.episodes import DatasetError
from diffplan.envs import LOCOMOTION_ENVS, make_locomotion_env, split_locomotion_task

DEFAULT_STEPS = recipes.DEFAULT_STEPS


@contextmanager
def _behaviour_errors() -> Iterator[None]:
    """A missing or corrupt shipped policy file is bad dataset input here: one DatasetError line."""
    try:
        yield
    except BehaviourPolicyError as exc:
        raise DatasetError(str(exc)) from exc


# ---------------------------------------------------------------------------------------------- rollouts


def rollout(
    env: str,
    act_fn: Callable[[np.ndarray, torch.Generator], np.ndarray] | None,
    num_steps: int,
    seed: int,
    n_envs: int = 10,
    progress: bool = True,
    desc: str = "",
) -> list[dict[str, np.ndarray]]:
    """Roll ``act_fn`` out for exactly ``num_steps`` env steps over ``n_envs`` envs; return the episodes.

    ``act_fn(obs (K, O) float64, generator) -> act (K, A) float32``; None means uniform random actions. The
    loop is ours rather than a Tianshou Collector: the dataset needs exact step counts and whole episodes in
    order of completion, and the Collector's vector buffer would have to be un-interleaved afterwards.
    Episodes still running when the step budget is spent are cut there (``truncated`` at their last step).
    Each dict holds ``observations`` (L+1, O), ``actions`` (L, A), ``rewards``/``terminations``/
    ``truncations`` (L,), ``seed``.
    """
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    envs = [make_locomotion_env(env, seed=None) for _ in range(n_envs)]
    _, act_dim = env_dims(env)
    ep_seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=n_envs)]
    cur_obs = np.stack([e.reset(seed=s)[0] for e, s in zip(envs, ep_seeds)])
    traj: list[dict[str, list]] = [{"obs": [cur_obs[i]], "act": [], "rew": [], "term": [], "trunc": []} for i in range(n_envs)]
    episodes: list[dict[str, np.ndarray]] = []

    def close(i: int, seed_i: int) -> None:
        t = traj[i]
        episodes.append({
            "observations": np.asarray(t["obs"], dtype=np.float64),
            "actions": np.asarray(t["act"], dtype=np.float32),
            "rewards": np.asarray(t["rew"], dtype=np.float64),
            "terminations": np.asarray(t["term"], dtype=bool),
            "truncations": np.asarray(t["trunc"], dtype=bool),
            "seed": seed_i,
        })

    done_steps = 0
    with tqdm(total=num_steps, desc=desc or f"{env} rollout", disable=not progress, unit="step") as bar:
        while done_steps < num_steps:
            k = min(n_envs, num_steps - done_steps)
            if act_fn is None:
                act = rng.uniform(-1.0, 1.0, size=(k, act_dim)).astype(np.float32)
            else:
                act = act_fn(cur_obs[:k], gen)
            for i in range(k):
                o, r, te, tr, _ = envs[i].step(act[i])
                t = traj[i]
                t["act"].append(act[i])
                t["rew"].append(float(r))
                t["term"].append(bool(te))
                t["trunc"].append(bool(tr))
                t["obs"].append(o)
                if te or tr:
                    close(i, ep_seeds[i])
                    ep_seeds[i] = int(rng.integers(0, 2**31 - 1))
                    o = envs[i].reset(seed=ep_seeds[i])[0]
                    traj[i] = {"obs": [o], "act": [], "rew": [], "term": [], "trunc": []}
                cur_obs[i] = o
            done_steps += k
            bar.update(k)
    for i in range(n_envs):
        if traj[i]["act"]:
            traj[i]["trunc"][-1] = True
            close(i, ep_seeds[i])
    for e in envs:
        e.close()
    return episodes


def _part_episodes(env: str, kind: str, steps: int | None, seed: int, n_envs: int, progress: bool,
                   policy_dir: str | Path | None) -> list[dict[str, np.ndarray]]:
    """The episodes of ``<env>-<kind>`` for ``(steps, seed)``: read back from its dataset when that was already
    made by this recipe with the same policies, else rolled out (the same bytes either way)."""
    dataset_id = recipes.dataset_id(f"{env}-{kind}", steps)
    meta_path = recipes.dataset_dir(dataset_id) / "data" / "metadata.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        policy_file = policy_paths(env, policy_dir)[kind]
        if (meta.get("recipe"), meta.get("seed"), meta.get("requested_steps"), meta.get("policy_sha256")) == (
            RECIPE, seed, steps, _sha256(policy_file)
        ):
            import minari

            ds = minari.load_dataset(dataset_id)
            ids = list(ds.episode_indices)
            seeds = [m.get("seed", -1) for m in ds.storage.get_episode_metadata(ids)]
            return [
                {"observations": ep.observations, "actions": ep.actions, "rewards": ep.rewards,
                 "terminations": ep.terminations, "truncations": ep.truncations, "seed": int(seed)}
                for ep, seed in zip(ds.iterate_episodes(ids), seeds, strict=True)
            ]
    n = steps if steps is not None else DEFAULT_STEPS
    return rollout(env, actor_sampler(load_actor(env, kind, policy_dir)), n, seed, n_envs, progress,
                   f"{env}-medium-expert ({kind})")


def _sha256(path: Path) -> str | None:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _normalize_steps(steps: int | None) -> int | None:
    """None for the default (D4RL) size, so ``--steps 1000000`` and no ``--steps`` name the same dataset."""
    if steps is not None and steps < 1:
        raise DatasetError(f"steps must be >= 1, got {steps}")
    return None if steps == DEFAULT_STEPS else steps


def make_dataset(
    task: str,
    steps: int | None = None,
    seed: int = 0,
    dataset_id: str | None = None,
    progress: bool = True,
    policy_dir: str | Path | None = None,
    n_envs: int = 10,
) -> str:
    """Roll the shipped behaviour policies out into the Minari dataset of ``task``; return its id.

    Args:
        task: ``<env>-<kind>``, env in hopper|walker2d|halfcheetah, kind in random|medium|medium-replay|
            medium-expert|expert.
        steps: env steps (default D4RL's 1M; medium-expert takes this many from each policy, 2M in all as in
            D4RL; medium-replay defaults to the whole recorded buffer and ``steps`` truncates it).
        seed: rollout seed (env resets, action sampling). The same seed gives the same bytes.
        dataset_id: Minari id (default :func:`diffplan.data.recipes.dataset_id`); must not exist yet.
        policy_dir: where the behaviour policies are (default: the shipped ones).

    A missing or corrupt policy file is a :class:`DatasetError` naming the file and the command that remakes it.
    """
    import minari
    from minari.data_collector import EpisodeBuffer

    parts = split_locomotion_task(task)
    if parts is None:
        raise DatasetError(
            f"unknown locomotion task {task!r}; expected <env>-<kind> with env in {sorted(LOCOMOTION_ENVS)} and "
            "kind in random|medium|medium-replay|medium-expert|expert"
        )
    env, kind = parts
    steps = _normalize_steps(steps)
    torch.set_num_threads(1)  # one thread: the bit-for-bit guarantee and the shared-CPU etiquette
    dataset_id = dataset_id or recipes.dataset_id(task, steps)
    if recipes.dataset_dir(dataset_id).exists():
        raise DatasetError(f"Minari dataset {dataset_id!r} already exists at {recipes.dataset_dir(dataset_id)}")
    n = steps if steps is not None else DEFAULT_STEPS
    t0 = time.perf_counter()
    with _behaviour_errors():
        info = load_info(env, policy_dir)
        if kind == "random":
            episodes = rollout(env, None, n, seed, n_envs, progress, f"{task}")
        elif kind in POLICY_KINDS:
            episodes = rollout(env, actor_sampler(load_actor(env, kind, policy_dir)), n, seed, n_envs, progress, task)
        elif kind == "medium-expert":
            episodes = []
            for part in POLICY_KINDS:
                episodes += _part_episodes(env, part, steps, seed, n_envs, progress, policy_dir)
        else:  # medium-replay
            episodes = replay_episodes(env, steps, policy_dir)
    rollout_s = time.perf_counter() - t0

    buffers = [
        EpisodeBuffer(id=i, seed=int(e["seed"]) if e["seed"] >= 0 else None, observations=e["observations"],
                      actions=e["actions"], rewards=e["rewards"], terminations=e["terminations"],
                      truncations=e["truncations"])
        for i, e in enumerate(episodes)
    ]
    spec_env = make_locomotion_env(env, seed=None)
    t1 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"minari\..*")
        minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=spec_env,
            eval_env=spec_env,
            algorithm_name=f"{RECIPE}-{kind}",
            author="diffplan",
            description=(
                f"D4RL-style {env}-{kind} on {LOCOMOTION_ENVS[env]} (1000-step limit): {kind} data of a Tianshou "
                f"SAC run (seed {info['sac']['seed']}, {info['train_env_steps']} env steps, expert return "
                f"{info['expert']['train_return']:.0f}, medium return {info['medium']['train_return']:.0f}), "
                f"rollout seed {seed}. Reference scores: uniform random policy (min) and the expert's mean action "
                f"(max), {info['ref_protocol']['episodes']} episodes under diffplan's evaluation protocol."
            ),
            ref_min_score=float(info["ref_min_score"]),
            ref_max_score=float(info["ref_max_score"]),
            num_episodes_average_score=int(info["ref_protocol"]["episodes"]),
        )
    write_s = time.perf_counter() - t1
    spec_env.close()
    total = int(sum(len(e["rewards"]) for e in episodes))
    recipes.merge_metadata(dataset_id, {
        "recipe": RECIPE,
        "task": task,
        "env": env,
        "kind": kind,
        "seed": int(seed),
        "num_steps": total,
        "requested_steps": steps,
        "policy_sha256": _sha256(policy_paths(env, policy_dir)[kind]) if kind in POLICY_KINDS else None,
        "behaviour": {
            "sac_seed": info["sac"]["seed"],
            "train_env_steps": info["train_env_steps"],
            "expert": info["expert"],
            "medium": info["medium"],
            "medium_replay": info["medium_replay"],
            "stochastic_actions": kind in ("medium", "expert", "medium-expert"),
        },
        "ref_protocol": info["ref_protocol"],
        "ref_min_score_std": info["ref_min_score_std"],
        "ref_max_score_std": info["ref_max_score_std"],
        "timing": {"rollout_s": round(rollout_s, 2), "write_s": round(write_s, 2)},
    })
    return dataset_id


def ensure_dataset(task: str, steps: int | None = None, seed: int = 0, dataset_id: str | None = None,
                   progress: bool = True) -> str:
    """The id of ``task``'s dataset, generated first if it is not on disk; an existing one must have been made
    by this recipe with the same task, seed and size (:func:`diffplan.data.recipes.check_existing`)."""
    steps = _normalize_steps(steps)
    dataset_id = dataset_id or recipes.dataset_id(task, steps)
    if recipes.check_existing(dataset_id, RECIPE, {"task": task, "seed": int(seed), "requested_steps": steps}):
        return dataset_id
    return make_dataset(task, steps, seed, dataset_id, progress)
