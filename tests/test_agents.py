"""Every registered agent: build, two updates, act in a real Tianshou Collector, save/load round trip.

Plus the Diffuser planner's per-env plan memory: plans live in Tianshou's state as a Batch, are made in one
batched call, and a reset env replans alone.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from tianshou.data import Batch, Collector, VectorReplayBuffer
from tianshou.env import DummyVectorEnv
from tianshou.utils.torch_utils import policy_within_training_step

from diffplan.agents import AGENTS
from diffplan.config import load_config
from diffplan.data import load_episodes
from diffplan.envs import make_env, make_vector_env
from diffplan.envs.maze import make_maze_env

from .conftest import (
    TINY_DECISION_DIFFUSER,
    TINY_DIFFUSER,
    TINY_DIFFUSION_BC,
    TINY_DIFFUSION_QL,
    TINY_IDQL,
    TINY_VALUE_DIFFUSER,
    tiny_baseline,
)

TINY = {
    "diffuser": TINY_DIFFUSER,
    "decision_diffuser": TINY_DECISION_DIFFUSER,
    "diffusion_bc": TINY_DIFFUSION_BC,
    "diffusion_ql": TINY_DIFFUSION_QL,
    "idql": TINY_IDQL,
    **{name: tiny_baseline(name) for name in ("bc", "td3bc", "cql")},
}
PLANNERS = ("diffuser", "decision_diffuser")
"""Agents that time their planning calls (``policy.latency``)."""
DATASET = {"decision_diffuser": "tiny_hopper_dataset"}
"""Dataset fixture of each agent's smoke test (default: tiny_maze_dataset)."""
VARIANTS = {"diffuser-value-guided": (TINY_VALUE_DIFFUSER, "tiny_hopper_dataset")}
"""Further settings of an agent that the smoke test also covers: id -> (overrides, dataset fixture)."""
CASES = {
    **{name: (TINY[name], DATASET.get(name, "tiny_maze_dataset")) for name in sorted(AGENTS)},
    **VARIANTS,
}


def _build(name, dataset, extra=()):
    cfg = load_config(None, [*TINY[name], f"dataset={dataset}", *extra])
    env = make_env(cfg.task)
    agent = AGENTS[name].build(cfg, env.observation_space, env.action_space, load_episodes(dataset))
    return cfg, env, agent


def test_every_agent_has_a_tiny_setting():
    assert set(AGENTS) <= set(TINY)


@pytest.mark.parametrize("case", sorted(CASES))
def test_agent_smoke(case, request, tmp_path):
    overrides, fixture = CASES[case]
    dataset = request.getfixturevalue(fixture)
    cfg = load_config(None, [*overrides, f"dataset={dataset}"])
    name = cfg.agent
    env = make_env(cfg.task)
    agent = AGENTS[name].build(cfg, env.observation_space, env.action_space, load_episodes(dataset))
    before = {k: v.clone() for k, v in agent.policy.model.state_dict().items()}
    with policy_within_training_step(agent.policy):
        for _ in range(2):
            stats = agent.algorithm.update(buffer=agent.batch_source, sample_size=cfg.batch_size)
    assert np.isfinite(stats.get_loss_stats_dict()["loss"])
    after = agent.policy.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "two updates changed nothing"

    venv = make_vector_env(cfg.task, 3, seed=0)
    collector = Collector(agent.policy, venv, VectorReplayBuffer(300, 3))
    collector.reset()
    result = collector.collect(n_step=30)
    assert result.n_collected_steps == 30
    acts = collector.buffer.act[:30]
    assert np.all(np.abs(acts) <= 1.0 + 1e-6)
    if name in PLANNERS:  # decision latency is measured, per planning call
        latency = agent.policy.latency.summary()
        assert latency["plan_ms_median"] > 0 and latency["plans"] >= 3

    # save / load round trip: a fresh shell loaded from the state dict acts identically
    torch.save(agent.algorithm.state_dict(), tmp_path / "a.pt")
    shell = AGENTS[name].build(cfg, env.observation_space, env.action_space, None)
    shell.algorithm.load_state_dict(torch.load(tmp_path / "a.pt", weights_only=True))
    obs, _ = make_env(cfg.task, seed=3).reset(seed=3)
    batch = Batch(obs=Batch({k: v[None] for k, v in obs.items()}) if isinstance(obs, dict) else obs[None])
    agent.policy.reseed(0), shell.policy.reseed(0)
    np.testing.assert_allclose(agent.policy(batch).act, shell.policy(batch).act, atol=1e-6)


class _CountingDiffuser:
    """Wraps DiffuserPolicy.plan to record which rows each planning call covers."""

    def __init__(self, policy):
        self.calls: list[int] = []
        self._plan = policy.plan

        def plan(obs, goal):
            self.calls.append(len(obs))
            return self._plan(obs, goal)

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
