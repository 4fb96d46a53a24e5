"""Training the locomotion recipes' behaviour policies: D4RL's online SAC run, redone with Tianshou.

D4RL (Fu et al. 2020, section 5 and appendix C) built its MuJoCo datasets from one online SAC run per env:

* ``expert``: 1M steps of the fully trained SAC policy;
* ``medium``: 1M steps of a policy "trained to approximately 1/3 the performance of the expert" (the same run,
  stopped early);
* ``medium-replay``: "all samples in the replay buffer observed during training until the policy reaches the
  medium level of performance";
* ``medium-expert``: the medium and expert datasets concatenated;
* ``random``: 1M steps of a randomly initialised policy (here: uniform random actions).

This module is the training half on Gymnasium's ``Hopper-v5`` / ``Walker2d-v5`` / ``HalfCheetah-v5`` (1000-step
limit), with Tianshou's own SAC (:class:`tianshou.algorithm.SAC`) set up like Tianshou's
``examples/mujoco/mujoco_sac.py`` with ``--auto-alpha``: two 256x256 critics and a 256x256 tanh-Gaussian actor,
automatic entropy tuning (target -|A|), batch 256, one gradient step per env step, 10k uniform random steps
first, gamma 0.99, tau 0.005. The learning rate is the SAC paper's 3e-4 for actor, critics and alpha (Tianshou's
example defaults to 1e-3).

:func:`train_behaviour` trains SAC, evaluating and checkpointing the actor every ``epoch_steps`` env steps
(``log.jsonl`` + ``checkpoints/``), and keeps the whole replay buffer. :func:`finalize_behaviour` then picks the
*expert* (the last checkpoint) and the *medium* policy (the checkpoint whose evaluated return is closest to one
third of the expert's, as D4RL did), measures the reference scores, and writes the shipped files of
:mod:`diffplan.behaviour.shipped`. Rolling them out into datasets is the data layer's
(:mod:`diffplan.data.recipes.locomotion`).

The reference scores are measured with the evaluation protocol every agent is scored on
(:func:`diffplan.envs.evaluation.evaluate`); the caller passes it in (``evaluate``, see :class:`ProtocolEvaluator`),
so tests can measure with fewer episodes or a stub.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from diffplan.behaviour.shipped import (
    RECIPE,
    build_actor,
    env_dims,
    load_actor,
    load_tensors,
    policy_paths,
)
from diffplan.envs import EVAL_SEED, LOCOMOTION_ENVS, make_locomotion_env, make_vector_env
from diffplan.nets.sac import auto_alpha, mlp_trunk, twin_critics

REF_EPISODES = 20
"""Protocol episodes behind each reference score (D4RL's refs are per env, so they are measured once at
finalization and shared by every dataset of the env)."""


class EpisodeReturns(Protocol):
    """What :class:`ProtocolEvaluator` returns (:class:`diffplan.envs.evaluation.EvalResult` is one)."""

    returns: np.ndarray
    """(N,) return of each evaluated episode."""


class ProtocolEvaluator(Protocol):
    """The evaluation protocol (:func:`diffplan.envs.evaluation.evaluate`): ``n_episodes`` of ``policy`` over the vector
    env ``make_venv(n_envs, seed)``."""

    def __call__(self, policy: Any, make_venv: Callable[[int, int], Any], n_episodes: int, *, n_envs: int,
                 seed: int) -> EpisodeReturns: ...


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


def _build_sac(env: str, cfg: SACTrainConfig) -> Any:
    from tianshou.algorithm import SAC
    from tianshou.algorithm.modelfree.sac import SACPolicy
    from tianshou.algorithm.optim import AdamOptimizerFactory

    probe = make_locomotion_env(env, seed=None)
    obs_dim, act_dim = env_dims(env)
    actor = build_actor(obs_dim, act_dim, cfg.hidden)
    policy = SACPolicy(actor=actor, action_space=probe.action_space, observation_space=probe.observation_space)
    probe.close()
    return SAC(
        policy=policy,
        policy_optim=AdamOptimizerFactory(lr=cfg.lr),
        **twin_critics(lambda: mlp_trunk(obs_dim + act_dim, cfg.hidden), cfg.lr),
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


def reference_returns(env: str, evaluate: ProtocolEvaluator, n_episodes: int = REF_EPISODES,
                      policy_dir: str | Path | None = None, actor: torch.nn.Module | None = None) -> dict[str, np.ndarray]:
    """Returns of the random policy and the expert under diffplan's evaluation protocol.

    The protocol is ``evaluate`` (:func:`diffplan.envs.evaluation.evaluate`) on ``make_vector_env("<env>-expert",
    ...)`` with the evaluation seed: the same envs, seeds and 1000-step limit every agent is scored on.
    """
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
                       expert: str = "last", *, evaluate: ProtocolEvaluator) -> dict[str, Any]:
    """Pick the expert and medium checkpoints of a training run and write the shipped policy files.

    Expert: the last checkpoint (``expert="last"``, D4RL's fully trained policy) or, for a short and still
    unstable run, the best-evaluated one (``"best"``). Medium: among the checkpoints before the expert, the one
    whose evaluated return is closest to one third of the expert's (D4RL, section 5). Medium-replay: the run's
    replay buffer up to the medium checkpoint, stored if under ``buffer_limit_mb`` (else the summary records
    that it must be regenerated by retraining). Reference scores: ``ref_episodes`` episodes of ``evaluate``
    (the evaluation protocol, see :func:`reference_returns`).
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
        tensors, _ = load_tensors(run / "checkpoints" / row["checkpoint"])
        meta = {"env": env, "kind": kind, "env_step": str(row["env_step"]), "hidden": json.dumps(list(cfg["hidden"])),
                "train_return": f"{row['return_mean']:.3f}", "seed": str(cfg["seed"]), "recipe": RECIPE}
        _save_tensors(paths[kind], tensors, metadata=meta)

    buf, _ = load_tensors(run / "buffer.safetensors")
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
    refs = reference_returns(env, evaluate, ref_episodes, policy_dir)
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


def retrain(env: str, run_dir: str | Path | None = None, cfg: SACTrainConfig | None = None,
            policy_dir: str | Path | None = None, *, evaluate: ProtocolEvaluator, expert: str = "last") -> dict[str, Any]:
    """Train ``env``'s behaviour policies again (:func:`train_behaviour`) and replace the shipped files
    (:func:`finalize_behaviour`). A ``run_dir`` that already holds a finished run (``done.json``: trained
    earlier, e.g. in the background) is only finalized, so a long run and its finalization can be two steps."""
    run = Path(run_dir) if run_dir is not None else Path("runs") / "behaviour" / f"{env}-{time.strftime('%Y%m%d-%H%M%S')}"
    start = time.monotonic()
    trained = not (run / "done.json").exists()
    if trained:
        train_behaviour(env, run, cfg)
    info = finalize_behaviour(env, run, policy_dir, expert=expert, evaluate=evaluate)
    done = f"trained {info['train_env_steps']} env steps" if trained else f"finalized the finished run {run}"
    print(
        f"[{env}] {done} in {time.monotonic() - start:.0f}s: expert return "
        f"{info['expert']['train_return']:.1f}, medium {info['medium']['train_return']:.1f} "
        f"(step {info['medium']['env_step']}); policies in {policy_paths(env, policy_dir)['info'].parent}",
        flush=True,
    )
    return info
