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
with Tianshou's own SAC (:class:`tianshou.algorithm.SAC`, the hyperparameters of Tianshou's
``examples/mujoco/mujoco_sac.py``: two 256x256 critics and a 256x256 tanh-Gaussian actor, Adam 3e-4, automatic
entropy tuning, batch 256, one gradient step per env step, uniform random actions for the first steps).

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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
    from tianshou.algorithm.modelfree.sac import AutoAlpha, SACPolicy
    from tianshou.algorithm.optim import AdamOptimizerFactory
    from tianshou.utils.net.common import Net
    from tianshou.utils.net.continuous import ContinuousCritic

    probe = make_locomotion_env(env, seed=None)
    obs_dim, act_dim = _env_dims(env)
    actor = build_actor(obs_dim, act_dim, cfg.hidden)

    def critic() -> ContinuousCritic:
        net = Net(state_shape=obs_dim, action_shape=act_dim, hidden_sizes=list(cfg.hidden), concat=True)
        return ContinuousCritic(preprocess_net=net)

    policy = SACPolicy(actor=actor, action_space=probe.action_space, observation_space=probe.observation_space)
    probe.close()
    return SAC(
        policy=policy,
        policy_optim=AdamOptimizerFactory(lr=cfg.lr),
        critic=critic(),
        critic_optim=AdamOptimizerFactory(lr=cfg.lr),
        critic2=critic(),
        critic2_optim=AdamOptimizerFactory(lr=cfg.lr),
        tau=cfg.tau,
        gamma=cfg.gamma,
        # Target entropy -|A| and log(alpha)=0 at start, as Tianshou's example with --auto-alpha.
        alpha=AutoAlpha(target_entropy=-float(act_dim), log_alpha=0.0, optim=AdamOptimizerFactory(lr=cfg.alpha_lr)),
    )


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomic safetensors write (temp file + rename), so a killed run never leaves a half-written file."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
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


def _main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="train a locomotion behaviour policy with Tianshou SAC")
    p.add_argument("env", choices=sorted(LOCOMOTION_ENVS))
    p.add_argument("run_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-env-steps", type=int, default=1_000_000)
    p.add_argument("--time-limit-min", type=float, default=None)
    p.add_argument("--start-steps", type=int, default=10_000)
    p.add_argument("--epoch-steps", type=int, default=5_000)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = SACTrainConfig(
        seed=a.seed,
        max_env_steps=a.max_env_steps,
        time_limit_s=None if a.time_limit_min is None else a.time_limit_min * 60,
        start_steps=a.start_steps,
        epoch_steps=a.epoch_steps,
        show_progress=not a.no_progress,
    )
    train_behaviour(a.env, a.run_dir, cfg)


if __name__ == "__main__":
    _main()
