"""Shared test set-up: no network, one torch thread, datasets in a temporary Minari root."""

from __future__ import annotations

import os

# Set before minari / huggingface_hub are imported anywhere: tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Tianshou's buffer and return helpers are numba-jitted; compiling them cost ~80 s of the suite on a loaded 2-core
# box, while the tests' buffers are tiny enough for plain Python (measured: agents + locomotion tests 180 s -> 29 s).
os.environ.setdefault("NUMBA_DISABLE_JIT", "1")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_minari_root(tmp_path_factory, monkeypatch):
    """Every test writes Minari datasets under its own temporary root, never ~/.minari."""
    root = tmp_path_factory.mktemp("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    yield root


@pytest.fixture(autouse=True)
def _restore_maze_registry():
    """Loading a config with a user maze registers it (diffplan.compose); no test sees another test's mazes."""
    from diffplan.envs.maze import MAZE_TASKS

    before = dict(MAZE_TASKS)
    yield
    MAZE_TASKS.clear()
    MAZE_TASKS.update(before)


@pytest.fixture(scope="session")
def tiny_maze_dataset(tmp_path_factory) -> str:
    """A 4000-step pointmaze-umaze dataset made by the real recipe, as a plain path (shared by the session).

    Reference scores use 4 episodes each instead of 100 to keep the suite fast.
    """
    from diffplan.data.recipes.pointmaze import generate_pointmaze_dataset

    root = tmp_path_factory.mktemp("session-minari")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        dataset_id = generate_pointmaze_dataset(
            "pointmaze-umaze", num_steps=4000, seed=0, dataset_id="diffplan/pointmaze-umaze-tiny-v0",
            progress=False, ref_episodes=4,
        )
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    return str(root / dataset_id)


TINY_DIFFUSER = [
    "agent=diffuser",
    "task=pointmaze-umaze",
    "horizon=16",
    "dim=8",
    "dim_mults=[1,2]",
    "diffusion_steps=10",
    "sampling_steps=3",
    "batch_size=8",
    "train_steps=6",
    "eval_every=0",
    "checkpoint_every=0",
    "log_every=2",
    "eval_episodes=2",
    "eval_envs=2",
    "final_eval_episodes=2",
    "ema_start=2",
    "ema_every=1",
    "plot_plans=2",
    "torch_threads=1",
]
"""Overrides that make the Diffuser agent tiny enough for unit tests."""

TINY_HIERARCHICAL = [
    "agent=hierarchical",
    *[o for o in TINY_DIFFUSER if o.split("=")[0] not in ("agent", "horizon")],
    "horizon=4",
    "jump=3",
    "low_dim=8",
    "low_dim_mults=[1,2]",
]
"""Overrides that make the Hierarchical Diffuser tiny: 4 subgoals 3 steps apart (plans of 10 env steps)."""

_TINY_COMMON = [
    "task=pointmaze-umaze",
    "batch_size=8",
    "train_steps=6",
    "eval_every=0",
    "checkpoint_every=0",
    "log_every=2",
    "eval_episodes=2",
    "eval_envs=2",
    "final_eval_episodes=2",
    "ema_start=2",
    "ema_every=1",
    "torch_threads=1",
    "hidden=16",
    "depth=2",
]

TINY_DIFFUSION_BC = [
    "agent=diffusion_bc", *_TINY_COMMON, "chunk=4", "execute_steps=2", "diffusion_steps=10", "sampling_steps=3",
    "time_dim=8",
]
"""Overrides that make the diffusion BC agent tiny enough for unit tests."""

TINY_DIFFUSION_QL = ["agent=diffusion_ql", *_TINY_COMMON, "n_candidates=4", "time_dim=8"]
"""Overrides that make the Diffusion-QL agent tiny enough for unit tests."""

TINY_IDQL = ["agent=idql", *TINY_DIFFUSION_QL[1:]]
"""Overrides that make the IDQL agent tiny enough for unit tests."""

TINY_PPO = [
    "agent=ppo", "task=Hopper-v5", "hidden=[16,16]", "train_envs=2", "subproc_envs=false",
    "env_steps_per_update=64", "update_epochs=2", "batch_size=32", "train_steps=3", "eval_every=0",
    "checkpoint_every=0", "eval_episodes=2", "eval_envs=2", "final_eval_episodes=2", "plot_plans=0",
    "torch_threads=1",
]
"""Overrides that make the online PPO agent tiny enough for unit tests (envs in-process)."""

TINY_DPPO = [
    "agent=dppo", "task=pointmaze-umaze", "chunk=4", "execute_steps=2", "diffusion_steps=6", "sampling_steps=3", "ft_denoising_steps=3",
    "hidden=16", "depth=2", "time_dim=8", "critic_hidden=16", "critic_depth=1", "train_envs=2", "subproc_envs=false",
    "env_steps_per_update=16", "update_epochs=2", "batch_size=12", "train_steps=3", "eval_every=0",
    "checkpoint_every=0", "eval_episodes=2", "eval_envs=2", "final_eval_episodes=2", "plot_plans=0", "torch_threads=1",
]
"""Overrides that make DPPO tiny enough for unit tests (online, envs in-process; from scratch unless init_from)."""


@pytest.fixture(scope="session")
def tiny_hopper_dataset(tmp_path_factory) -> str:
    """Random-action Hopper-v5 rollouts (12 episodes, real MuJoCo) as a Minari dataset, as a plain path.

    Reference scores are fixed numbers (random min, an arbitrary max) so the normalized-score path is exercised.
    """
    import gymnasium as gym
    import minari
    import numpy as np
    from minari.data_collector import EpisodeBuffer

    env = gym.make("Hopper-v5")
    env.action_space.seed(0)
    buffers = []
    for i in range(12):
        obs, _ = env.reset(seed=i)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        for step in range(60):
            act = env.action_space.sample()
            obs, rew, term, trunc, _ = env.step(act)
            trunc = trunc or step == 59
            observations.append(obs), actions.append(act), rewards.append(rew)
            terms.append(term), truncs.append(trunc and not term)
            if term or trunc:
                break
        buffers.append(
            EpisodeBuffer(
                id=i, seed=i, observations=np.asarray(observations, np.float64),
                actions=np.asarray(actions, np.float32), rewards=np.asarray(rewards),
                terminations=np.asarray(terms), truncations=np.asarray(truncs),
            )
        )
    root = tmp_path_factory.mktemp("session-minari-hopper")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        minari.create_dataset_from_buffers(
            "diffplan/hopper-tiny-v0", buffers, env=env, eval_env=env, algorithm_name="random",
            description="random Hopper-v5 rollouts for tests", author="diffplan tests",
            author_email="tests@example.com", code_permalink="https://example.com",
            ref_min_score=-20.0, ref_max_score=3000.0,
        )
    finally:
        env.close()
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    return str(root / "diffplan" / "hopper-tiny-v0")


TINY_LOCOMOTION = [
    "task=Hopper-v5",
    "horizon=8",
    "dim=8",
    "dim_mults=[1,2]",
    "diffusion_steps=6",
    "sampling_steps=3",
    "batch_size=8",
    "ema_start=2",
    "ema_every=1",
    "torch_threads=1",
]
"""Overrides that make a locomotion planner tiny (with TINY_DIFFUSER's run settings for the rest)."""

TINY_VALUE_DIFFUSER = [
    *TINY_DIFFUSER,
    *TINY_LOCOMOTION,
    "value_guided=true",
    "tracking=action",
    "replan_every=1",
    "sampler=ddpm",
    "n_candidates=4",
    "normalizer=gaussian",
    "clip_sample=0",
    "action_weight=10",
    "value_dim=8",
    "value_dim_mults=[1,2]",
    "termination_penalty=-100",
]
"""Value-guided Diffuser on Hopper, tiny."""

TINY_DECISION_DIFFUSER = [
    "agent=decision_diffuser",
    *[o for o in TINY_DIFFUSER if o.split("=")[0] not in ("agent", "task", "plot_plans")],
    *TINY_LOCOMOTION,
    "history=2",
    "inv_hidden=16",
]
"""Decision Diffuser on Hopper, tiny."""


def tiny_baseline(agent: str) -> list[str]:
    """Overrides that make a Tianshou baseline (bc, td3bc, cql) tiny enough for unit tests."""
    return [
        f"agent={agent}", "task=pointmaze-umaze", "hidden=[16,16]", "batch_size=8", "train_steps=4",
        "eval_every=0", "checkpoint_every=0", "log_every=2", "eval_episodes=2", "eval_envs=2",
        "final_eval_episodes=2", "plot_plans=0", "torch_threads=1",
    ]


TINY_VALUE_HIERARCHICAL = [
    *TINY_HIERARCHICAL,
    *[o for o in TINY_VALUE_DIFFUSER if o.split("=")[0] not in ("agent", "horizon", "dim_mults")],
    "horizon=4",
    "dim_mults=[1,2]",
    "jump=2",
    "low_dim_mults=[1]",
]
"""Value-guided Hierarchical Diffuser (HD-DA) on Hopper, tiny: a 3-step low level (one U-Net level)."""
