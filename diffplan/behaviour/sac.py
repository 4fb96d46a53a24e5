"""The medium-replay dataset's online SAC run: D4RL's replay buffer, redone with Tianshou.

D4RL (Fu et al. 2020, section 5 and appendix C) defines ``medium-replay`` as "all samples in the replay buffer
observed during training until the policy reaches the medium level of performance". The medium policy here is
a trained policy of the RL Baselines3 Zoo (:mod:`diffplan.behaviour.shipped`), so this module trains SAC from
scratch on Gymnasium's v5 env until its evaluated return reaches that policy's (or a step / wall-time budget
runs out: the run records how far it got) and keeps every transition it collected.

Tianshou's own SAC (:class:`tianshou.algorithm.SAC`) set up like Tianshou's ``examples/mujoco/mujoco_sac.py``
with ``--auto-alpha``: two 256x256 critics and a 256x256 tanh-Gaussian actor, automatic entropy tuning (target
-|A|), batch 256, one gradient step per env step, 10k uniform random steps first, gamma 0.99, tau 0.005. The
learning rate is the SAC paper's 3e-4 for actor, critics and alpha (Tianshou's example defaults to 1e-3).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffplan.behaviour.shipped import RECIPE, env_dims
from diffplan.envs import LOCOMOTION_ENVS, make_locomotion_env
from diffplan.nets.sac import auto_alpha, mlp_trunk, twin_critics


@dataclass
class SACTrainConfig:
    """Tianshou's mujoco SAC example settings, plus the medium-replay stopping rule."""

    seed: int = 0
    target_return: float = float("inf")
    """Stop at the first evaluation whose mean return reaches this (the medium policy's)."""
    max_env_steps: int = 1_000_000
    """Stop after this many env steps (D4RL's SAC ran 1M)."""
    time_limit_s: float | None = None
    """Also stop at the first evaluation after this much wall time (None: no limit)."""
    start_steps: int = 10_000
    """Uniform random actions before the first update (Tianshou example: ``--start-timesteps 10000``)."""
    epoch_steps: int = 5_000
    """Env steps between evaluations: the granularity at which reaching the target is noticed."""
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


def build_sac_actor(obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256)) -> torch.nn.Module:
    """Tianshou's SAC actor: MLP trunk -> (mean, std) of a Gaussian over pre-tanh actions, each (B, act_dim)."""
    from tianshou.utils.net.continuous import ContinuousActorProbabilistic

    return ContinuousActorProbabilistic(
        preprocess_net=mlp_trunk(obs_dim, hidden), action_shape=act_dim, unbounded=True, conditioned_sigma=True
    )


def _build_sac(env: str, cfg: SACTrainConfig) -> Any:
    from tianshou.algorithm import SAC
    from tianshou.algorithm.modelfree.sac import SACPolicy
    from tianshou.algorithm.optim import AdamOptimizerFactory

    probe = make_locomotion_env(env, seed=None)
    obs_dim, act_dim = env_dims(env)
    actor = build_sac_actor(obs_dim, act_dim, cfg.hidden)
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


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Atomic safetensors write, so a killed run never leaves a half-written buffer."""
    from safetensors.torch import save

    from diffplan.checkpoint import write_bytes_atomic

    write_bytes_atomic(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def train_replay(env: str, run_dir: str | Path, cfg: SACTrainConfig | None = None) -> dict[str, Any]:
    """Train SAC on ``env`` from scratch until its evaluated return reaches ``cfg.target_return`` (or a budget
    runs out), keeping every transition collected.

    Writes into ``run_dir``: ``config.json``, ``log.jsonl`` (one row per evaluation: env_step, return_mean/std,
    wall_s), ``buffer.safetensors`` (every transition, in collection order: obs, act, rew, terminated, truncated,
    obs_next) and ``done.json`` (env steps, wall time, best evaluated return, whether the target was reached, why
    the run stopped). Returns ``done.json``'s content.
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
    buffer = ReplayBuffer(cfg.max_env_steps + cfg.epoch_steps)  # the last epoch may pass max_env_steps
    train_collector = Collector[CollectStats](algo, train_envs, buffer, exploration_noise=True)
    test_collector = Collector[CollectStats](algo, test_envs)
    train_collector.reset()
    start_steps = min(cfg.start_steps, cfg.max_env_steps)
    train_collector.collect(n_step=start_steps, random=True)

    start = time.monotonic()
    pending: dict[str, Any] = {}

    def test_fn(epoch: int, env_step: int | None) -> None:
        pending.update(epoch=epoch, env_step=int(env_step or 0), buffer_len=len(buffer))

    def score_fn(stats: CollectStats) -> float:
        assert stats.returns_stat is not None
        row = {
            **pending,
            "return_mean": float(stats.returns_stat.mean),
            "return_std": float(stats.returns_stat.std),
            "wall_s": round(time.monotonic() - start, 1),
        }
        _append_jsonl(run / "log.jsonl", row)
        print(f"[{env} sac] env_step={row['env_step']} buffer={row['buffer_len']} return={row['return_mean']:.1f}"
              f"±{row['return_std']:.1f} (target {cfg.target_return:.0f}) wall={row['wall_s']:.0f}s", flush=True)
        return float(stats.returns_stat.mean)

    def stop_fn(best: float) -> bool:  # Tianshou passes the best evaluated score so far
        return best >= cfg.target_return or (
            cfg.time_limit_s is not None and time.monotonic() - start > cfg.time_limit_s
        )

    params = OffPolicyTrainerParams(
        training_collector=train_collector,
        test_collector=test_collector,
        max_epochs=max(1, math.ceil(max(cfg.max_env_steps - start_steps, 1) / cfg.epoch_steps)),
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
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    best = max((r["return_mean"] for r in rows), default=float("-inf"))
    wall = round(time.monotonic() - start, 1)
    reached = best >= cfg.target_return
    done = {
        "env_steps": n, "wall_s": wall, "best_return": best, "target_return": cfg.target_return,
        "reached_target": reached,
        "stopped_by": "target" if reached else (
            "time_limit" if cfg.time_limit_s is not None and wall > cfg.time_limit_s else "max_env_steps"),
        "evaluations": len(rows),
    }
    (run / "done.json").write_text(json.dumps(done, indent=1))
    train_envs.close()
    test_envs.close()
    return done
