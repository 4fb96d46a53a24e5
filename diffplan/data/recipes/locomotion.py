"""D4RL-style locomotion datasets (hopper / walker2d / halfcheetah) made locally on Gymnasium's v5 MuJoCo envs.

D4RL (Fu et al. 2020, section 5 and appendix C) built its MuJoCo datasets from SAC policies: ``random`` (here:
uniform random actions), ``medium`` and ``expert`` (1M steps sampled from the medium / fully trained policy's
stochastic action distribution), ``medium-replay`` (the replay buffer of a SAC run up to the medium level) and
``medium-expert`` (medium and expert concatenated, 2M steps). Here the expert and medium policies are the RL
Baselines3 Zoo's trained agents shipped in :mod:`diffplan.behaviour` (expert: TQC, D4RL's expert level; medium:
the Zoo policy nearest D4RL's medium return), and medium-replay is a Tianshou SAC run from scratch up to the
medium policy's return (:mod:`diffplan.behaviour.sac`). The datasets carry D4RL's reference scores, so
normalized scores are on D4RL's scale.

Rollouts are bit-for-bit reproducible for a given seed and ``n_envs``: one torch thread, seeded env resets and a
seeded torch generator for the actions. medium-replay is reproducible for a given step budget; a wall-time
budget makes its length depend on the machine.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffplan.behaviour import (
    POLICY_KINDS,
    RECIPE,
    BehaviourPolicyError,
    SACTrainConfig,
    ZooActor,
    env_dims,
    load_actor,
    load_info,
    policy_sha256,
    train_replay,
)
from diffplan.data import recipes
from diffplan.data.d4rl_refs import d4rl_locomotion_refs
from diffplan.data.episodes import DatasetError
from diffplan.envs import LOCOMOTION_ENVS, LOCOMOTION_MAX_STEPS, make_locomotion_env, split_locomotion_task

DEFAULT_STEPS = recipes.DEFAULT_STEPS
DEFAULT_N_ENVS = 16
"""Envs stepped together, the policy run once per step on all of them (one process, one torch thread)."""


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
    actor: ZooActor | None,
    num_steps: int,
    seed: int,
    n_envs: int = DEFAULT_N_ENVS,
    progress: bool = True,
    desc: str = "",
) -> list[dict[str, Any]]:
    """Roll ``actor`` (None: uniform random actions) out for exactly ``num_steps`` env steps over ``n_envs``
    envs, actions sampled from its stochastic distribution; return the episodes in order of completion.

    The loop is ours rather than a Tianshou Collector: the dataset needs exact step counts and whole episodes in
    order of completion, and the Collector's vector buffer would have to be un-interleaved afterwards.
    Episodes still running when the step budget is spent are cut there (``truncated`` at their last step).
    Each dict holds ``observations`` (L+1, O), ``actions`` (L, A), ``rewards``/``terminations``/
    ``truncations`` (L,), ``seed``.
    """
    from tqdm.auto import tqdm

    torch.set_num_threads(1)  # the bit-for-bit guarantee (and the shared-CPU etiquette)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_envs = max(1, min(n_envs, num_steps))
    envs = [make_locomotion_env(env, seed=None) for _ in range(n_envs)]
    obs_dim, act_dim = env_dims(env)
    cap = LOCOMOTION_MAX_STEPS
    # Per-env episode buffers, preallocated for the longest episode (the time limit).
    obs_buf = np.zeros((n_envs, cap + 1, obs_dim))
    act_buf = np.zeros((n_envs, cap, act_dim), dtype=np.float32)
    rew_buf = np.zeros((n_envs, cap))
    term_buf = np.zeros((n_envs, cap), dtype=bool)
    trunc_buf = np.zeros((n_envs, cap), dtype=bool)
    t = np.zeros(n_envs, dtype=np.int64)
    ep_seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=n_envs)]
    for i, e in enumerate(envs):
        obs_buf[i, 0] = e.reset(seed=ep_seeds[i])[0]
    episodes: list[dict[str, Any]] = []

    def close(i: int) -> None:
        n = int(t[i])
        episodes.append({
            "observations": obs_buf[i, : n + 1].copy(), "actions": act_buf[i, :n].copy(),
            "rewards": rew_buf[i, :n].copy(), "terminations": term_buf[i, :n].copy(),
            "truncations": trunc_buf[i, :n].copy(), "seed": ep_seeds[i],
        })

    done_steps = 0
    with tqdm(total=num_steps, desc=desc or f"{env} rollout", disable=not progress, unit="step",
              mininterval=2.0) as bar:
        while done_steps < num_steps:
            k = min(n_envs, num_steps - done_steps)
            cur = obs_buf[np.arange(k), t[:k]]
            if actor is None:
                act = rng.uniform(-1.0, 1.0, size=(k, act_dim)).astype(np.float32)
            else:
                act = actor.act(torch.as_tensor(cur), torch.as_tensor(t[:k]), gen).numpy()
            for i in range(k):
                o, r, te, tr, _ = envs[i].step(act[i])
                n = t[i]
                act_buf[i, n], rew_buf[i, n], term_buf[i, n], trunc_buf[i, n] = act[i], r, te, tr
                obs_buf[i, n + 1] = o
                t[i] += 1
                if te or tr:
                    close(i)
                    ep_seeds[i] = int(rng.integers(0, 2**31 - 1))
                    obs_buf[i, 0] = envs[i].reset(seed=ep_seeds[i])[0]
                    t[i] = 0
            done_steps += k
            bar.update(k)
    for i in range(n_envs):
        if t[i]:
            trunc_buf[i, t[i] - 1] = True
            close(i)
    for e in envs:
        e.close()
    return episodes


def _part_episodes(env: str, kind: str, steps: int | None, seed: int, n_envs: int, progress: bool,
                   policy_dir: str | Path | None) -> list[dict[str, Any]]:
    """The episodes of ``<env>-<kind>`` for ``(steps, seed)``: read back from its dataset when that was already
    made by this recipe with the same policy and settings, else rolled out (the same bytes either way)."""
    dataset_id = recipes.dataset_id(f"{env}-{kind}", steps)
    meta_path = recipes.dataset_dir(dataset_id) / "data" / "metadata.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if (meta.get("recipe"), meta.get("seed"), meta.get("requested_steps"), meta.get("n_envs"),
                meta.get("policy_sha256")) == (RECIPE, seed, steps, n_envs, policy_sha256(env, kind, policy_dir)):
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
    return rollout(env, load_actor(env, kind, policy_dir), n, seed, n_envs, progress, f"{env}-medium-expert ({kind})")


def replay_run_dir(env: str, seed: int) -> Path:
    """Where ``<env>-medium-replay``'s SAC run lives (a finished run there is reused, not trained again)."""
    return Path("runs") / "behaviour" / f"{env}-medium-replay-seed{seed}"


def replay_episodes(run_dir: str | Path, num_steps: int | None = None) -> list[dict[str, Any]]:
    """The episodes of a finished SAC run's replay buffer (:func:`diffplan.behaviour.train_replay`), in order.

    ``num_steps`` keeps only the first transitions (the last kept episode is cut there, ``truncated``).
    """
    from safetensors.numpy import load_file

    path = Path(run_dir) / "buffer.safetensors"
    try:
        t = load_file(str(path))
    except FileNotFoundError:
        raise DatasetError(f"{run_dir} holds no finished SAC run (no buffer.safetensors)") from None
    except Exception as exc:  # safetensors raises its own error types for truncated/garbled headers
        raise DatasetError(f"corrupt replay buffer {path}: {str(exc).splitlines()[0]}") from exc
    n = len(t["rew"]) if num_steps is None else min(int(num_steps), len(t["rew"]))
    done = (t["terminated"][:n] | t["truncated"][:n]).astype(bool)
    ends = list(np.flatnonzero(done))
    if not ends or ends[-1] != n - 1:
        ends.append(n - 1)  # the cut at the end of the kept transitions ends an episode
    episodes, start = [], 0
    for end in ends:
        sl = slice(start, end + 1)
        trunc = t["truncated"][sl].astype(bool)
        term = t["terminated"][sl].astype(bool)
        if not (term[-1] or trunc[-1]):
            trunc[-1] = True
        episodes.append({
            "observations": np.concatenate([t["obs"][sl], t["obs_next"][end][None]]).astype(np.float64),
            "actions": t["act"][sl].astype(np.float32), "rewards": t["rew"][sl].astype(np.float64),
            "terminations": term, "truncations": trunc, "seed": -1,
        })
        start = end + 1
    return episodes


def _sac_replay(env: str, seed: int, info: dict[str, Any], time_limit_s: float | None,
                run_dir: str | Path | None, sac: SACTrainConfig | None) -> tuple[Path, dict[str, Any]]:
    """The medium-replay SAC run of ``env`` (trained now unless ``run_dir`` holds a finished one)."""
    run = Path(run_dir) if run_dir is not None else replay_run_dir(env, seed)
    if not (run / "done.json").exists():
        cfg = sac or SACTrainConfig(seed=seed)
        cfg.target_return = float(info["medium"]["deterministic"]["mean"])
        cfg.time_limit_s = time_limit_s if time_limit_s is not None else cfg.time_limit_s
        train_replay(env, run, cfg)
    return run, json.loads((run / "done.json").read_text())


def _normalize_steps(steps: int | None) -> int | None:
    """None for the default (D4RL) size, so ``--steps 1000000`` and no ``--steps`` name the same dataset."""
    if steps is not None and steps < 1:
        raise DatasetError(f"steps must be >= 1, got {steps}")
    return None if steps == DEFAULT_STEPS else steps


def _returns(episodes: list[dict[str, Any]]) -> dict[str, float]:
    r = np.array([e["rewards"].sum() for e in episodes if e["terminations"][-1] or len(e["rewards"]) == 1000])
    return {"mean": float(r.mean()) if len(r) else float("nan"), "std": float(r.std()) if len(r) else float("nan"),
            "episodes": len(r)}


def make_dataset(
    task: str,
    steps: int | None = None,
    seed: int = 0,
    dataset_id: str | None = None,
    progress: bool = True,
    policy_dir: str | Path | None = None,
    n_envs: int = DEFAULT_N_ENVS,
    replay_time_limit_s: float | None = None,
    replay_run_dir: str | Path | None = None,
    replay_sac: SACTrainConfig | None = None,
) -> str:
    """Roll the shipped behaviour policies out into the Minari dataset of ``task``; return its id.

    Args:
        task: ``<env>-<kind>``, env in hopper|walker2d|halfcheetah, kind in random|medium|medium-replay|
            medium-expert|expert.
        steps: env steps (default D4RL's 1M; medium-expert takes this many from each policy, 2M in all as in
            D4RL; medium-replay keeps the whole buffer of its SAC run and ``steps`` truncates it).
        seed: rollout seed (env resets, action sampling; medium-replay: SAC's seed). The same seed gives the
            same bytes.
        dataset_id: Minari id (default :func:`diffplan.data.recipes.dataset_id`); must not exist yet.
        policy_dir: where the behaviour policies are (default: the shipped ones).
        n_envs: envs stepped together (part of what fixes the bytes).
        replay_time_limit_s: medium-replay: wall-time budget of the SAC run (None: until the medium return or
            ``replay_sac.max_env_steps``).
        replay_run_dir: medium-replay: the SAC run's directory (default ``runs/behaviour/<env>-medium-replay-
            seed<seed>``); a finished run there is used as it is.
        replay_sac: medium-replay: SAC settings (default :class:`SACTrainConfig`; the target is always the
            medium policy's deterministic return).

    A missing or corrupt policy file is a :class:`DatasetError` naming the file.
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
    if n_envs < 1:
        raise DatasetError(f"n_envs must be >= 1, got {n_envs}")
    dataset_id = dataset_id or recipes.dataset_id(task, steps)
    if recipes.dataset_dir(dataset_id).exists():
        raise DatasetError(f"Minari dataset {dataset_id!r} already exists at {recipes.dataset_dir(dataset_id)}")
    n = steps if steps is not None else DEFAULT_STEPS
    t0 = time.perf_counter()
    replay: dict[str, Any] | None = None
    with _behaviour_errors():
        info = load_info(env, policy_dir)
        if kind == "random":
            episodes = rollout(env, None, n, seed, n_envs, progress, task)
        elif kind in POLICY_KINDS:
            episodes = rollout(env, load_actor(env, kind, policy_dir), n, seed, n_envs, progress, task)
        elif kind == "medium-expert":
            episodes = []
            for part in POLICY_KINDS:
                episodes += _part_episodes(env, part, steps, seed, n_envs, progress, policy_dir)
        else:  # medium-replay
            run, replay = _sac_replay(env, seed, info, replay_time_limit_s, replay_run_dir, replay_sac)
            replay = {**replay, "run_dir": str(run)}
            episodes = replay_episodes(run, steps)
    rollout_s = time.perf_counter() - t0

    buffers = [
        EpisodeBuffer(id=i, seed=int(e["seed"]) if e["seed"] >= 0 else None, observations=e["observations"],
                      actions=e["actions"], rewards=e["rewards"], terminations=e["terminations"],
                      truncations=e["truncations"])
        for i, e in enumerate(episodes)
    ]
    ref_min, ref_max = d4rl_locomotion_refs(env)
    policies = {k: {key: info[k][key] for key in ("algo", "folder", "stochastic", "deterministic")}
                for k in POLICY_KINDS}
    source = f"{info['source']['repo']}@{info['source']['commit'][:12]}"
    what = {
        "random": "uniform random actions",
        "medium": f"actions sampled from the RL Zoo's {info['medium']['algo'].upper()} policy ({source})",
        "expert": f"actions sampled from the RL Zoo's TQC policy ({source})",
        "medium-expert": f"the medium ({info['medium']['algo'].upper()}) and expert (TQC) datasets concatenated",
        "medium-replay": "the replay buffer of a Tianshou SAC run from scratch up to the medium policy's return",
    }[kind]
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
                f"D4RL-style {env}-{kind} on {LOCOMOTION_ENVS[env]} (1000-step limit): {what}, seed {seed}. "
                "Reference scores: D4RL's (d4rl/infos.py)."
            ),
            ref_min_score=ref_min,
            ref_max_score=ref_max,
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
        "n_envs": int(n_envs),
        "num_steps": total,
        "requested_steps": steps,
        "policy_sha256": policy_sha256(env, kind, policy_dir) if kind in POLICY_KINDS else None,
        "ref_scores_from": "D4RL (d4rl/infos.py)",
        "behaviour": {
            "source": info["source"],
            "policies": policies,
            "stochastic_actions": kind in ("medium", "expert", "medium-expert"),
            "replay": replay,
        },
        # This recipe's own reference points on v5, beside D4RL's constants: the uniform random policy and the
        # expert, as measured when the policies were converted (``diffplan data measure-zoo``).
        "own_random_return": info["random"]["stochastic"]["mean"],
        "own_expert_return": info["expert"]["stochastic"]["mean"],
        "dataset_returns": _returns(episodes),
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
