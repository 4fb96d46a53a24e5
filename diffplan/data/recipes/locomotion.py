"""D4RL-style locomotion datasets (hopper / walker2d / halfcheetah) made locally on Gymnasium's v5 MuJoCo envs.

D4RL (Fu et al. 2020, section 5 and appendix C) built its MuJoCo datasets from one online SAC run per env:

* ``expert``: 1M steps of the fully trained SAC policy;
* ``medium``: 1M steps of a policy "trained to approximately 1/3 the performance of the expert" (the same run,
  stopped early);
* ``medium-replay``: "all samples in the replay buffer observed during training until the policy reaches the
  medium level of performance";
* ``medium-expert``: the medium and expert datasets concatenated;
* ``random``: 1M steps of a randomly initialised policy (here: uniform random actions).

This module is that recipe on Gymnasium's ``Hopper-v5`` / ``Walker2d-v5`` / ``HalfCheetah-v5`` (1000-step limit),
with Tianshou's own SAC (:class:`tianshou.algorithm.SAC`) set up like Tianshou's ``examples/mujoco/mujoco_sac.py``
with ``--auto-alpha``: two 256x256 critics and a 256x256 tanh-Gaussian actor, automatic entropy tuning (target
-|A|), batch 256, one gradient step per env step, 10k uniform random steps first, gamma 0.99, tau 0.005. The
learning rate is the SAC paper's 3e-4 for actor, critics and alpha (Tianshou's example defaults to 1e-3).

Two stages, because training is slow (hours on 2 CPU cores) and rolling out is fast:

1. :func:`train_behaviour` trains SAC, evaluating and checkpointing the actor every ``epoch_steps`` env steps
   (``log.jsonl`` + ``checkpoints/``), and keeps the whole replay buffer. :func:`finalize_behaviour` then picks
   the *expert* (the last checkpoint) and the *medium* policy (the checkpoint whose evaluated return is closest to
   one third of the expert's, as D4RL did), measures the reference scores, and writes the shipped files
   ``policies/<env>-{expert,medium}.safetensors`` (actor weights), ``policies/<env>-medium-replay.safetensors``
   (the replay buffer up to the medium checkpoint) and ``policies/<env>.json`` (returns, seeds, steps, refs).
2. :func:`make_dataset` rolls the shipped policies out into a Minari dataset, bit-for-bit reproducible for a
   given seed (one torch thread, seeded env resets and a seeded torch generator for the actor's samples).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffplan.data.episodes import DatasetError
from diffplan.envs import LOCOMOTION_ENVS, make_locomotion_env

RECIPE = "d4rl-locomotion-sac"
POLICY_DIR = Path(__file__).resolve().parent / "policies"


@dataclass
class SACTrainConfig:
    """Tianshou's mujoco SAC example settings, plus the checkpointing this recipe needs."""

    seed: int = 0
    max_env_steps: int = 1_000_000
    """Stop after this many env steps (D4RL's SAC ran 1M; fewer are fine, the returns reached are recorded)."""
    time_limit_s: float | None = None
    """Also stop at the first evaluation after this much wall time (None: no limit)."""
    start_steps: int = 10_000
    """Uniform random actions before the first update (Tianshou example: ``--start-timesteps 10000``)."""
    epoch_steps: int = 5_000
    """Env steps between evaluations/checkpoints: the granularity at which the medium policy is chosen."""
    eval_episodes: int = 5
    """Deterministic (mean-action) episodes per evaluation."""
    hidden: tuple[int, ...] = (256, 256)
    lr: float = 3e-4
    alpha_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    batch_size: int = 256
    torch_threads: int = 1
    show_progress: bool = True


def _env_dims(env: str) -> tuple[int, int]:
    e = make_locomotion_env(env, seed=None)
    try:
        return int(np.prod(e.observation_space.shape)), int(np.prod(e.action_space.shape))
    finally:
        e.close()


def build_actor(obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256)) -> torch.nn.Module:
    """Tianshou's SAC actor: MLP trunk -> (mean, std) of a Gaussian over pre-tanh actions, each (B, act_dim)."""
    from tianshou.utils.net.common import Net
    from tianshou.utils.net.continuous import ContinuousActorProbabilistic

    trunk = Net(state_shape=obs_dim, hidden_sizes=list(hidden))
    return ContinuousActorProbabilistic(
        preprocess_net=trunk, action_shape=act_dim, unbounded=True, conditioned_sigma=True
    )


def _build_sac(env: str, cfg: SACTrainConfig) -> Any:
    from tianshou.algorithm import SAC
    from tianshou.algorithm.modelfree.sac import SACPolicy
    from tianshou.algorithm.optim import AdamOptimizerFactory

    from diffplan.offline_rl import auto_alpha, twin_critics

    probe = make_locomotion_env(env, seed=None)
    obs_dim, act_dim = _env_dims(env)
    actor = build_actor(obs_dim, act_dim, cfg.hidden)
    policy = SACPolicy(actor=actor, action_space=probe.action_space, observation_space=probe.observation_space)
    probe.close()
    return SAC(
        policy=policy,
        policy_optim=AdamOptimizerFactory(lr=cfg.lr),
        **twin_critics(obs_dim, act_dim, cfg.hidden, cfg.lr),
        tau=cfg.tau,
        gamma=cfg.gamma,
        alpha=auto_alpha(act_dim, cfg.alpha_lr),
    )


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomic safetensors write (temp file + rename), so a killed run never leaves a half-written file."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.chmod(0o644)  # shipped as package data: readable by everyone, like the rest of the package
    tmp.replace(path)


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def train_behaviour(env: str, run_dir: str | Path, cfg: SACTrainConfig | None = None) -> Path:
    """Train SAC on ``env`` online, checkpointing the actor and its evaluated return every ``epoch_steps``.

    Writes into ``run_dir``: ``config.json``, ``log.jsonl`` (one row per evaluation: env_step, buffer_len,
    return_mean/std, wall_s), ``checkpoints/step-<env_step>.safetensors`` (actor weights) and, at the end,
    ``buffer.safetensors`` (every transition collected, in order). Returns ``run_dir``.
    """
    from tianshou.data import Collector, CollectStats, ReplayBuffer
    from tianshou.env import DummyVectorEnv
    from tianshou.trainer import OffPolicyTrainerParams

    cfg = cfg or SACTrainConfig()
    if env not in LOCOMOTION_ENVS:
        raise ValueError(f"unknown locomotion env {env!r}; expected one of {sorted(LOCOMOTION_ENVS)}")
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    if (run / "log.jsonl").exists():
        raise FileExistsError(f"{run} already holds a training run (log.jsonl); pick another directory")
    (run / "config.json").write_text(json.dumps({"env": env, "recipe": RECIPE, **asdict(cfg)}, indent=1))
    torch.set_num_threads(cfg.torch_threads)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    algo = _build_sac(env, cfg)
    train_envs = DummyVectorEnv([lambda: make_locomotion_env(env, cfg.seed)])
    test_envs = DummyVectorEnv(
        [lambda i=i: make_locomotion_env(env, cfg.seed + 10_000 + i) for i in range(cfg.eval_episodes)]
    )
    buffer = ReplayBuffer(cfg.max_env_steps + cfg.start_steps)
    train_collector = Collector[CollectStats](algo, train_envs, buffer, exploration_noise=True)
    test_collector = Collector[CollectStats](algo, test_envs)
    train_collector.reset()
    train_collector.collect(n_step=cfg.start_steps, random=True)

    start = time.monotonic()
    pending: dict[str, Any] = {}

    def test_fn(epoch: int, env_step: int | None) -> None:
        # Called just before each evaluation: the weights evaluated next are these.
        step = int(env_step or 0)
        name = f"step-{step:08d}.safetensors"
        _save_tensors(run / "checkpoints" / name, algo.policy.actor.state_dict())
        pending.update(epoch=epoch, env_step=step, buffer_len=len(buffer), checkpoint=name)

    def score_fn(stats: CollectStats) -> float:
        assert stats.returns_stat is not None
        row = {
            **pending,
            "return_mean": float(stats.returns_stat.mean),
            "return_std": float(stats.returns_stat.std),
            "returns": [float(r) for r in stats.returns],
            "wall_s": round(time.monotonic() - start, 1),
        }
        _append_jsonl(run / "log.jsonl", row)
        print(
            f"[{env} sac] env_step={row['env_step']} return={row['return_mean']:.1f}±{row['return_std']:.1f} "
            f"wall={row['wall_s']:.0f}s",
            flush=True,
        )
        return float(stats.returns_stat.mean)

    def stop_fn(_best: float) -> bool:
        return cfg.time_limit_s is not None and time.monotonic() - start > cfg.time_limit_s

    params = OffPolicyTrainerParams(
        training_collector=train_collector,
        test_collector=test_collector,
        max_epochs=max(1, math.ceil(cfg.max_env_steps / cfg.epoch_steps)),
        epoch_num_steps=cfg.epoch_steps,
        collection_step_num_env_steps=1,
        update_step_num_gradient_steps_per_sample=1.0,
        test_step_num_episodes=cfg.eval_episodes,
        batch_size=cfg.batch_size,
        test_fn=test_fn,
        compute_score_fn=score_fn,
        stop_fn=stop_fn,
        show_progress=cfg.show_progress,
    )
    algo.run_training(params)
    n = len(buffer)
    data = buffer[np.arange(n)]
    _save_tensors(
        run / "buffer.safetensors",
        {
            "obs": torch.as_tensor(np.asarray(data.obs)),
            "act": torch.as_tensor(np.asarray(data.act)),
            "rew": torch.as_tensor(np.asarray(data.rew)),
            "terminated": torch.as_tensor(np.asarray(data.terminated, dtype=np.uint8)),
            "truncated": torch.as_tensor(np.asarray(data.truncated, dtype=np.uint8)),
            "obs_next": torch.as_tensor(np.asarray(data.obs_next)),
        },
    )
    (run / "done.json").write_text(json.dumps({"wall_s": round(time.monotonic() - start, 1), "buffer_len": n}))
    train_envs.close()
    test_envs.close()
    return run


# --------------------------------------------------------------------------------------- shipped policies

POLICY_KINDS = ("medium", "expert")
DEFAULT_STEPS = 1_000_000
REF_EPISODES = 20
"""Protocol episodes behind each reference score (D4RL's refs are per env, so they are measured once at
finalization and shared by every dataset of the env)."""


class BehaviourPolicyError(DatasetError):
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


def _load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
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
    tensors, meta = _load_tensors(path)
    obs_dim, act_dim = _env_dims(env)
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


def _random_policy(action_space: Any, seed: int) -> Any:
    """A Tianshou policy of seeded uniform random actions: the reference minimum score's policy."""
    from tianshou.algorithm.algorithm_base import Policy
    from tianshou.data import Batch

    class _Random(Policy):
        def __init__(self) -> None:
            super().__init__(action_space=action_space)
            self.rng = np.random.default_rng(seed)

        def forward(self, batch: Any, state: Any = None, **kwargs: Any) -> Batch:
            n = len(batch.obs)
            low, high = action_space.low, action_space.high
            return Batch(act=self.rng.uniform(low, high, size=(n, *low.shape)).astype(np.float32))

    return _Random()


def _sac_eval_policy(actor: torch.nn.Module, env: str) -> Any:
    """Tianshou's SACPolicy around ``actor``: outside training steps it acts with tanh(mean), as in evaluation."""
    from tianshou.algorithm.modelfree.sac import SACPolicy

    probe = make_locomotion_env(env, seed=None)
    try:
        return SACPolicy(actor=actor, action_space=probe.action_space, observation_space=probe.observation_space)
    finally:
        probe.close()


def reference_returns(env: str, n_episodes: int = REF_EPISODES, policy_dir: str | Path | None = None,
                      actor: torch.nn.Module | None = None) -> dict[str, np.ndarray]:
    """Returns of the random policy and the expert under diffplan's evaluation protocol.

    The protocol is :func:`diffplan.envs.evaluation.evaluate` on ``make_vector_env("<env>-expert", ...)`` with the
    runner's evaluation seed: the same envs, seeds and 1000-step limit every agent is scored on.
    """
    from diffplan.envs import EVAL_SEED, make_vector_env
    from diffplan.envs.evaluation import evaluate

    task = f"{env}-expert"
    probe = make_locomotion_env(env, seed=None)
    space = probe.action_space
    probe.close()
    expert = actor if actor is not None else load_actor(env, "expert", policy_dir)
    out = {}
    for name, policy in (("random", _random_policy(space, EVAL_SEED)), ("expert", _sac_eval_policy(expert, env))):
        with torch.no_grad():
            res = evaluate(policy, lambda n, s: make_vector_env(task, n, s), n_episodes, n_envs=5, seed=EVAL_SEED)
        out[name] = res.returns
    return out


EXPERT_RULES = ("last", "best")


def finalize_behaviour(env: str, run_dir: str | Path, policy_dir: str | Path | None = None,
                       ref_episodes: int = REF_EPISODES, buffer_limit_mb: float = 20.0,
                       expert: str = "last") -> dict[str, Any]:
    """Pick the expert and medium checkpoints of a training run and write the shipped policy files.

    Expert: the last checkpoint (``expert="last"``, D4RL's fully trained policy) or, for a short and still
    unstable run, the best-evaluated one (``"best"``). Medium: among the checkpoints before the expert, the one
    whose evaluated return is closest to one third of the expert's (D4RL, section 5). Medium-replay: the run's
    replay buffer up to the medium checkpoint, stored if under ``buffer_limit_mb`` (else the summary records
    that it must be regenerated by retraining).
    """
    if expert not in EXPERT_RULES:
        raise ValueError(f"expert={expert!r}; expected one of {EXPERT_RULES}")
    run = Path(run_dir)
    if not (run / "done.json").exists():
        raise FileNotFoundError(f"{run} holds no finished training run (no done.json)")
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    cfg = json.loads((run / "config.json").read_text())
    done = json.loads((run / "done.json").read_text())
    expert_idx = len(rows) - 1 if expert == "last" else max(range(len(rows)), key=lambda i: rows[i]["return_mean"])
    expert_row = rows[expert_idx]
    target = expert_row["return_mean"] / 3.0
    # Only checkpoints trained past the random warm-up count: the untrained actor is no 'medium' policy.
    earlier = rows[:expert_idx]
    candidates = [r for r in earlier if r["env_step"] > 0] or earlier or rows
    medium_row = min(candidates, key=lambda r: abs(r["return_mean"] - target))
    paths = policy_paths(env, policy_dir)
    for kind, row in (("expert", expert_row), ("medium", medium_row)):
        tensors, _ = _load_tensors(run / "checkpoints" / row["checkpoint"])
        meta = {"env": env, "kind": kind, "env_step": str(row["env_step"]), "hidden": json.dumps(list(cfg["hidden"])),
                "train_return": f"{row['return_mean']:.3f}", "seed": str(cfg["seed"]), "recipe": RECIPE}
        _save_tensors(paths[kind], tensors, metadata=meta)

    buf, _ = _load_tensors(run / "buffer.safetensors")
    n = int(medium_row["buffer_len"])
    done_mask = (buf["terminated"][:n] | buf["truncated"][:n]).bool()
    ends = torch.nonzero(done_mask).flatten()
    if len(ends) == 0 or int(ends[-1]) != n - 1:
        ends = torch.cat([ends, torch.tensor([n - 1])])  # the cut at the medium checkpoint ends an episode
    replay = {
        "obs": buf["obs"][:n],
        "act": buf["act"][:n].float(),
        "rew": buf["rew"][:n],
        "terminated": buf["terminated"][:n],
        "truncated": buf["truncated"][:n],
        # Only the last next-observation of each episode is needed; the others are the next row's obs.
        "end_index": ends.long(),
        "end_next_obs": buf["obs_next"][ends],
    }
    size_mb = sum(t.numel() * t.element_size() for t in replay.values()) / 1e6
    stored = size_mb <= buffer_limit_mb
    if stored:
        _save_tensors(paths["medium-replay"], replay, metadata={"env": env, "seed": str(cfg["seed"]), "recipe": RECIPE})
    refs = reference_returns(env, ref_episodes, policy_dir)
    info = {
        "env": env,
        "gym_id": LOCOMOTION_ENVS[env],
        "recipe": RECIPE,
        "sac": cfg,
        "train_wall_s": done["wall_s"],
        "train_env_steps": rows[-1]["env_step"],
        "expert": {"env_step": expert_row["env_step"], "train_return": expert_row["return_mean"], "rule": expert},
        "medium": {"env_step": medium_row["env_step"], "train_return": medium_row["return_mean"],
                   "target_return": target},
        "medium_replay": {"transitions": n, "stored": stored, "size_mb": round(size_mb, 2)},
        "ref_protocol": {"episodes": ref_episodes, "deterministic_expert": True, "eval": "diffplan.envs.evaluation"},
        "ref_min_score": float(refs["random"].mean()),
        "ref_max_score": float(refs["expert"].mean()),
        "ref_min_score_std": float(refs["random"].std()),
        "ref_max_score_std": float(refs["expert"].std()),
        "curve": [{"env_step": r["env_step"], "return_mean": r["return_mean"], "return_std": r["return_std"],
                   "wall_s": r["wall_s"]} for r in rows],
    }
    from diffplan.checkpoint import write_text_atomic

    write_text_atomic(paths["info"], json.dumps(info, indent=1))
    paths["info"].chmod(0o644)  # package data: readable by everyone (the atomic writer creates 0600)
    return info


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
    _, act_dim = _env_dims(env)
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


def _part_episodes(env: str, kind: str, steps: int | None, seed: int, n_envs: int, progress: bool,
                   policy_dir: str | Path | None) -> list[dict[str, np.ndarray]]:
    """The episodes of ``<env>-<kind>`` for ``(steps, seed)``: read back from its dataset when that was already
    made by this recipe with the same policies, else rolled out (the same bytes either way)."""
    from diffplan.data.recipes.pointmaze import _dataset_dir

    dataset_id = dataset_id_for(f"{env}-{kind}", steps)
    meta_path = _dataset_dir(dataset_id) / "data" / "metadata.json"
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
    t, _ = _load_tensors(path)
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


# ----------------------------------------------------------------------------------------------- dataset


def _normalize_steps(steps: int | None) -> int | None:
    """None for the default (D4RL) size, so ``--steps 1000000`` and no ``--steps`` name the same dataset."""
    if steps is not None and steps < 1:
        raise DatasetError(f"steps must be >= 1, got {steps}")
    return None if steps == DEFAULT_STEPS else steps


def dataset_id_for(task: str, steps: int | None = None) -> str:
    """``diffplan/<task>[-<N>k]-v0``: no size suffix at the default (D4RL) size; ``-<N>steps`` for sizes that
    are not whole thousands (tests, quick looks)."""
    from diffplan.training import recipe_dataset_id

    if steps is not None and steps % 1000:
        return f"diffplan/{task}-{steps}steps-v0"
    return recipe_dataset_id(task, steps if steps is not None else DEFAULT_STEPS)


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
        dataset_id: Minari id (default ``diffplan/<task>[-<N>k]-v0``); must not exist yet.
    """
    import minari
    from minari.data_collector import EpisodeBuffer

    from diffplan.envs import split_locomotion_task

    parts = split_locomotion_task(task)
    if parts is None:
        raise DatasetError(
            f"unknown locomotion task {task!r}; expected <env>-<kind> with env in {sorted(LOCOMOTION_ENVS)} and "
            "kind in random|medium|medium-replay|medium-expert|expert"
        )
    env, kind = parts
    steps = _normalize_steps(steps)
    torch.set_num_threads(1)  # one thread: the bit-for-bit guarantee and the shared-CPU etiquette
    dataset_id = dataset_id or dataset_id_for(task, steps)
    from diffplan.data.recipes.pointmaze import _dataset_dir, _merge_metadata_atomically

    if _dataset_dir(dataset_id).exists():
        raise DatasetError(f"Minari dataset {dataset_id!r} already exists at {_dataset_dir(dataset_id)}")
    info = load_info(env, policy_dir)
    n = steps if steps is not None else DEFAULT_STEPS
    t0 = time.perf_counter()
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
    _merge_metadata_atomically(dataset_id, {
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
    """The id of ``task``'s dataset, generated first if it is not on disk (same checks as the maze recipe)."""
    from diffplan.data.recipes.pointmaze import _dataset_dir

    steps = _normalize_steps(steps)
    dataset_id = dataset_id or dataset_id_for(task, steps)
    meta_path = _dataset_dir(dataset_id) / "data" / "metadata.json"
    if not _dataset_dir(dataset_id).exists():
        return make_dataset(task, steps, seed, dataset_id, progress)
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta.get("recipe") != RECIPE:
        raise RuntimeError(
            f"{_dataset_dir(dataset_id)} exists but was not completed by the {RECIPE} recipe "
            "(interrupted run?); delete it and call again"
        )
    want = {"task": task, "seed": int(seed), "requested_steps": steps}
    have = {k: meta.get(k) for k in want}
    if have != want:
        raise ValueError(f"dataset {dataset_id!r} exists with {have}, not {want}; pass another dataset_id")
    return dataset_id


def retrain(env: str, run_dir: str | Path | None = None, cfg: SACTrainConfig | None = None,
            policy_dir: str | Path | None = None) -> dict[str, Any]:
    """Train ``env``'s behaviour policies again (:func:`train_behaviour`) and replace the shipped files."""
    run = Path(run_dir) if run_dir is not None else Path("runs") / "behaviour" / f"{env}-{time.strftime('%Y%m%d-%H%M%S')}"
    start = time.monotonic()
    train_behaviour(env, run, cfg)
    info = finalize_behaviour(env, run, policy_dir)
    print(
        f"[{env}] trained {info['train_env_steps']} env steps in {time.monotonic() - start:.0f}s: expert return "
        f"{info['expert']['train_return']:.1f}, medium {info['medium']['train_return']:.1f} "
        f"(step {info['medium']['env_step']}); policies in {policy_paths(env, policy_dir)['info'].parent}",
        flush=True,
    )
    return info


def _main(argv: list[str] | None = None) -> None:
    """``python -m diffplan.data.recipes.locomotion train|finalize ...``: the two halves of ``--retrain``,
    separately (train in the background for hours, finalize when it is done)."""
    import argparse

    p = argparse.ArgumentParser(description="locomotion behaviour policies (Tianshou SAC)")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train SAC, checkpointing the actor and its evaluated return")
    t.add_argument("env", choices=sorted(LOCOMOTION_ENVS))
    t.add_argument("run_dir")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max-env-steps", type=int, default=1_000_000)
    t.add_argument("--time-limit-min", type=float, default=None)
    t.add_argument("--start-steps", type=int, default=10_000)
    t.add_argument("--epoch-steps", type=int, default=5_000)
    t.add_argument("--no-progress", action="store_true")
    f = sub.add_parser("finalize", help="pick expert/medium, measure reference scores, write the shipped files")
    f.add_argument("env", choices=sorted(LOCOMOTION_ENVS))
    f.add_argument("run_dir")
    f.add_argument("--policy-dir", default=None, help="default: the package's policies/ directory")
    f.add_argument("--out", default=None, help="also write the summary (returns vs steps, refs) to this JSON file")
    f.add_argument("--expert", choices=EXPERT_RULES, default="last",
                   help="expert = last checkpoint (D4RL) or the best-evaluated one (short, unstable runs)")
    a = p.parse_args(argv)
    if a.cmd == "train":
        cfg = SACTrainConfig(
            seed=a.seed,
            max_env_steps=a.max_env_steps,
            time_limit_s=None if a.time_limit_min is None else a.time_limit_min * 60,
            start_steps=a.start_steps,
            epoch_steps=a.epoch_steps,
            show_progress=not a.no_progress,
        )
        train_behaviour(a.env, a.run_dir, cfg)
    else:
        torch.set_num_threads(1)
        info = finalize_behaviour(a.env, a.run_dir, a.policy_dir, expert=a.expert)
        if a.out:
            from diffplan.checkpoint import write_text_atomic

            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(Path(a.out), json.dumps(info, indent=1))
        print(json.dumps({k: v for k, v in info.items() if k != "curve"}, indent=1))


if __name__ == "__main__":
    _main()
