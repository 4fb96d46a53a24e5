"""The shared agent tester (d3rlpy's ``algo_tester`` is the model), run over every registered agent, offline or
online: built from its config, trained a few steps through the real training loop, acting through a Tianshou
Collector, saved, and loaded into a fresh object that must act identically.

Plus the Diffuser planner's per-env plan memory: plans live in Tianshou's state as a Batch, are made in one
batched call, and a reset env replans alone.
"""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from tianshou.data import Batch, Collector, VectorReplayBuffer
from tianshou.env import DummyVectorEnv

from diffplan.agent import Planner, Reseedable, TimedPolicy
from diffplan.agents import AGENTS
from diffplan.compose import load_config
from diffplan.data import load_episodes
from diffplan.envs import make_env, make_vector_env
from diffplan.envs.maze import make_maze_env
from diffplan.training import load_trained, run_experiment, setup

from .conftest import (
    TINY_DECISION_DIFFUSER,
    TINY_DIFFUSER,
    TINY_DIFFUSION_BC,
    TINY_DIFFUSION_QL,
    TINY_DPPO,
    TINY_HIERARCHICAL,
    TINY_IDQL,
    TINY_PPO,
    TINY_VALUE_DIFFUSER,
    TINY_VALUE_HIERARCHICAL,
    tiny_baseline,
)

TINY = {
    "diffuser": TINY_DIFFUSER,
    "decision_diffuser": TINY_DECISION_DIFFUSER,
    "diffusion_bc": TINY_DIFFUSION_BC,
    "diffusion_ql": TINY_DIFFUSION_QL,
    "hierarchical": TINY_HIERARCHICAL,
    "idql": TINY_IDQL,
    "ppo": TINY_PPO,
    "dppo": TINY_DPPO,
    **{name: tiny_baseline(name) for name in ("bc", "td3bc", "cql")},
}
DATASET = {"decision_diffuser": "tiny_hopper_dataset", "ppo": None, "dppo": None}
"""Dataset fixture of each agent's test (default: tiny_maze_dataset; None: an online agent without data)."""
VARIANTS = {
    "diffuser-value-guided": (TINY_VALUE_DIFFUSER, "tiny_hopper_dataset"),
    "hierarchical-value-guided": (TINY_VALUE_HIERARCHICAL, "tiny_hopper_dataset"),
    "diffuser-dit-flow": (
        [*TINY_DIFFUSER, "backbone=dit", "dit_width=16", "dit_depth=1", "dit_heads=2", "dit_patch=4",
         "objective=flow", "sampler=heun", "replan_every=4", "warm_start_level=0.5"],
        "tiny_maze_dataset",
    ),
    "diffuser-dpmsolver": ([*TINY_DIFFUSER, "sampler=dpmsolver++", "latency_budget_ms=1000"], "tiny_maze_dataset"),
    "decision_diffuser-dpmsolver": ([*TINY_DECISION_DIFFUSER, "sampler=dpmsolver++"], "tiny_hopper_dataset"),
    "decision_diffuser-cdf": ([*TINY_DECISION_DIFFUSER, "normalizer=cdf"], "tiny_hopper_dataset"),
    "diffusion_ql-flow": ([*TINY_DIFFUSION_QL, "objective=flow", "sampler=euler", "sampling_steps=3"], "tiny_maze_dataset"),
    "idql-flow-heun": ([*TINY_IDQL, "objective=flow", "sampler=heun", "sampling_steps=3"], "tiny_maze_dataset"),
    "dppo-ddim": ([*TINY_DPPO, "sampler=ddim", "sampling_steps=3", "ft_denoising_steps=2", "bc_coef=0.1"], None),
    "diffusion_bc-flow": ([*TINY_DIFFUSION_BC, "objective=flow", "sampler=euler", "sampling_steps=3"], "tiny_maze_dataset"),
}
"""Further settings of an agent that the tester also covers: id -> (overrides, dataset fixture)."""
CASES = {
    **{name: (TINY[name], DATASET.get(name, "tiny_maze_dataset")) for name in sorted(AGENTS)},
    **VARIANTS,
}


def _build(name, dataset, extra=()):
    cfg = load_config(None, [*TINY[name], f"dataset={dataset}", *extra])
    env = make_env(cfg.task)
    agent = AGENTS[name].build(cfg, env.observation_space, env.action_space, load_episodes(dataset))
    return cfg, env, agent


def _collect_actions(policy, task, n_steps=24, n_envs=2):
    """(n_steps, A) actions of ``policy`` acting through a Collector on freshly seeded envs."""
    policy.eval()
    if isinstance(policy, Reseedable):
        policy.reseed(0)
    collector = Collector(policy, make_vector_env(task, n_envs, seed=7), VectorReplayBuffer(4 * n_steps, n_envs))
    collector.reset()
    stats = collector.collect(n_step=n_steps)
    assert stats.n_collected_steps == n_steps
    return np.concatenate([collector.buffer.buffers[i].act[: n_steps // n_envs] for i in range(n_envs)])


def test_every_agent_has_a_tiny_setting():
    assert set(AGENTS) <= set(TINY)


@pytest.mark.parametrize("case", sorted(CASES))
def test_agent_contract(case, request, tmp_path):
    overrides, fixture = CASES[case]
    data = [] if fixture is None else [f"dataset={request.getfixturevalue(fixture)}"]
    run_dir = tmp_path / "run"
    cfg = load_config(None, [*overrides, *data, f"run_dir={run_dir}", "train_steps=2", "log_every=1",
                             "checkpoint_every=0", "eval_every=0", "final_eval_episodes=2"])
    exp = setup(cfg, progress=False)
    initial = {k: v.clone() for k, v in exp.agent.algorithm.state_dict().items() if torch.is_tensor(v)}

    results = run_experiment(exp)  # the real loop: offline batches or online collection, checkpoint, final eval

    assert results["updates"] == 2 and results["final"]["episodes"] == 2
    assert np.isfinite(results["final"]["return_mean"])
    trained = exp.agent.algorithm.state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in initial if k in trained), "training changed nothing"
    if isinstance(exp.agent.policy, Planner):  # planners time their batched planning calls
        assert isinstance(exp.agent.policy, TimedPolicy)
        assert results["final"]["plan_ms_median"] > 0

    acts = _collect_actions(exp.agent.policy, cfg.task)
    low, high = exp.agent.policy.action_space.low, exp.agent.policy.action_space.high
    assert np.all(acts >= low - 1e-6) and np.all(acts <= high + 1e-6)

    shell = load_trained(run_dir)  # a fresh build from the saved run only (no dataset), as another process would
    assert type(shell.agent.policy) is type(exp.agent.policy)
    np.testing.assert_allclose(_collect_actions(shell.agent.policy, cfg.task), acts, atol=1e-6)
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["agent"] == cfg.agent and saved["updates"] == 2


class _CountingDiffuser:
    """Wraps DiffuserPolicy.plan to record which rows each planning call covers."""

    def __init__(self, policy):
        self.calls: list[int] = []
        self.warm: list[bool] = []
        self._plan = policy.plan

        def plan(obs, goal, init=None):
            self.calls.append(len(obs))
            self.warm.append(init is not None)
            return self._plan(obs, goal, init)

        policy.plan = plan


def test_diffuser_replans_only_reset_envs(tiny_maze_dataset):
    cfg, _env, agent = _build("diffuser", tiny_maze_dataset)
    policy = agent.policy
    counter = _CountingDiffuser(policy)
    # env 0 ends after 5 steps, env 1 after 12: the Collector zeroes row 0 of the Batch state -> replan row 0 only
    venv = DummyVectorEnv(
        [lambda: gym.wrappers.TimeLimit(make_maze_env(cfg.task, seed=0), 5),
         lambda: gym.wrappers.TimeLimit(make_maze_env(cfg.task, seed=1), 12)]
    )
    collector = Collector(policy, venv, VectorReplayBuffer(100, 2))
    collector.reset()
    collector.collect(n_step=2 * 12)  # 12 steps per env
    # step 0: both envs in one call; env 0 resets at steps 5 and 10 and replans alone
    assert counter.calls == [2, 1, 1]
    state = collector.buffer.policy.hidden_state
    assert isinstance(state, Batch) and state.plan_obs.shape[1:] == (cfg.horizon, 4)


def test_diffuser_replan_every_k(tiny_maze_dataset):
    cfg, _env, agent = _build("diffuser", tiny_maze_dataset, ["replan_every=4"])
    counter = _CountingDiffuser(agent.policy)
    venv = make_vector_env(cfg.task, 2, seed=0)
    collector = Collector(agent.policy, venv, VectorReplayBuffer(100, 2))
    collector.reset()
    collector.collect(n_step=2 * 10)
    assert counter.calls == [2, 2, 2]  # steps 0, 4, 8


def test_diffuser_plan_is_inpainted_with_start_and_goal(tiny_maze_dataset):
    cfg, _env, agent = _build("diffuser", tiny_maze_dataset, ["park_radius=0"])
    obs = np.array([[-1.0, 1.0, 0.2, -0.1], [0.5, -1.0, 0.0, 0.0]], np.float32)
    goal = np.array([[1.0, 1.0], [-1.0, -1.0]], np.float32)
    plan_obs, plan_act, lengths = agent.policy.plan(obs, goal)
    assert plan_obs.shape == (2, cfg.horizon, 4) and plan_act.shape == (2, cfg.horizon, 2)
    np.testing.assert_allclose(plan_obs[:, 0], obs, atol=1e-5)
    np.testing.assert_allclose(plan_obs[:, -1, :2], goal, atol=1e-5)
    np.testing.assert_allclose(plan_obs[:, -1, 2:], 0.0, atol=1e-5)
    assert (lengths == cfg.horizon).all()


def test_diffuser_pd_tracking_follows_the_plan(tiny_maze_dataset):
    cfg, _env, agent = _build("diffuser", tiny_maze_dataset, ["kp=1.0", "kd=1.0"])
    policy = agent.policy
    state = policy.initial_state(1)
    state.plan_obs[0, :, 0] = np.linspace(0, 0.5, cfg.horizon)  # x moves right, y stays
    state.plan_len[0] = cfg.horizon
    state.t[0] = 3
    obs = np.array([[state.plan_obs[0, 3, 0], 0.0, 0.0, 0.0]], np.float32)
    act = policy.track(obs, np.array([[0.5, 0.0]], np.float32), state)
    assert act[0, 0] > 0 and abs(act[0, 1]) < 1e-6
    # past the plan's end it holds at the goal
    state.t[0] = cfg.horizon
    act = policy.track(np.array([[0.6, 0.0, 0.0, 0.0]], np.float32), np.array([[0.5, 0.0]], np.float32), state)
    assert act[0, 0] < 0


def test_dataset_action_dim_mismatch_is_refused(tiny_maze_dataset):
    cfg = load_config(None, [*TINY_DIFFUSER, f"dataset={tiny_maze_dataset}"])
    env = make_env(cfg.task)
    bad_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    from diffplan.data import DatasetError

    with pytest.raises(DatasetError, match="action"):
        AGENTS["diffuser"].build(cfg, env.observation_space, bad_space, load_episodes(tiny_maze_dataset))
