"""Hierarchical Diffuser: strided windows of the core dataset, exact subgoals, continuous stitched plans, value
guidance of the high level, the execution option without the goal-directed switch, plans drawn with subgoals.
(The shared agent tester in test_agents.py covers training, acting, saving and loading.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffplan.agent import ChunkPlanner, PlanRecorder
from diffplan.agents import AGENTS
from diffplan.compose import load_config
from diffplan.config import ConfigError
from diffplan.data import SequenceDataset, load_episodes
from diffplan.data.conditioning import fit_normalizers
from diffplan.envs import make_env

from .conftest import TINY_DIFFUSER, TINY_HIERARCHICAL, TINY_VALUE_HIERARCHICAL


def _build(overrides, dataset, extra=()):
    cfg = load_config(None, [*overrides, f"dataset={dataset}", *extra])
    env = make_env(cfg.task)
    episodes = load_episodes(dataset)
    return cfg, AGENTS[cfg.agent].build(cfg, env.observation_space, env.action_space, episodes), episodes


@pytest.mark.parametrize("padding", [True, False])
def test_strided_windows_are_every_kth_state_of_a_real_window(tiny_maze_dataset, padding):
    episodes = load_episodes(tiny_maze_dataset)
    env = make_env("pointmaze-umaze")
    obs_norm, act_norm = fit_normalizers("limits", env.observation_space, env.action_space, episodes)
    N, K = 5, 7
    strided = SequenceDataset(episodes, N, obs_norm.normalizer, act_norm.normalizer, stride=K, use_padding=padding)
    dense = SequenceDataset(episodes, (N - 1) * K + 1, obs_norm.normalizer, act_norm.normalizer, use_padding=padding)
    assert len(strided) == len(dense)  # the same windows: the span decides which starts exist
    ids = torch.randperm(len(dense), generator=torch.Generator().manual_seed(0))[:64]
    ids = torch.cat([ids, torch.tensor([len(dense) - 1])])  # the last window: padded past its episode's end
    s, d = strided.get(ids), dense.get(ids)
    assert torch.equal(s["traj"], d["traj"][:, ::K]) and torch.equal(s["mask"], d["mask"][:, ::K])
    assert torch.equal(s["returns"], d["returns"])
    # and they are the dataset's own states: raw observation at env step start + h K (clamped to the episode)
    start, last = strided.window_start[ids].numpy(), strided.window_last[ids].numpy()
    steps = np.minimum(start[:, None] + K * np.arange(N), last[:, None])
    raw = obs_norm.normalizer.unnormalize(s["traj"][..., episodes.act_dim :].numpy())
    np.testing.assert_allclose(raw, episodes.obs[steps], atol=1e-5)
    if padding:
        assert not s["mask"][-1].all()  # the last window runs past its episode
    else:
        assert s["mask"].all()


def test_strided_window_errors(tiny_maze_dataset):
    episodes = load_episodes(tiny_maze_dataset)
    env = make_env("pointmaze-umaze")
    obs_norm, act_norm = fit_normalizers("limits", env.observation_space, env.action_space, episodes)
    with pytest.raises(ValueError, match="stride"):
        SequenceDataset(episodes, 4, obs_norm.normalizer, act_norm.normalizer, stride=0)
    from diffplan.data import DatasetError

    with pytest.raises(DatasetError, match="stride 1000"):
        SequenceDataset(episodes, 8, obs_norm.normalizer, act_norm.normalizer, stride=1000, use_padding=False)


def test_segments_meet_their_subgoals_and_the_plan_is_continuous(tiny_maze_dataset):
    cfg, agent, _ = _build(TINY_HIERARCHICAL, tiny_maze_dataset, ["park_radius=0"])
    policy = agent.policy
    A, K, N = policy.act_dim, cfg.jump, cfg.horizon
    obs = np.array([[-1.0, 1.0, 0.2, -0.1], [0.5, -1.0, 0.0, 0.0]], np.float32)
    goal = np.array([[1.0, 1.0], [-1.0, -1.0]], np.float32)
    with torch.inference_mode():
        subgoals = policy.plan_subgoals(obs, goal)  # (M, N, O) normalized
        segments = policy.segments(subgoals)  # (M, N-1, K+1, A+O)
        plan = policy.stitch(segments)
    assert subgoals.shape == (2, N, 4) and segments.shape == (2, N - 1, K + 1, A + 4)
    # start and goal inpainted into the high level, exactly
    assert torch.equal(subgoals[:, 0], policy.obs_norm.normalize(torch.as_tensor(obs)))
    assert torch.equal(subgoals[:, -1], policy.obs_norm.normalize(torch.as_tensor(policy.goal_state(goal))))
    # every segment starts and ends at its subgoals, bit for bit
    assert torch.equal(segments[:, :, 0, A:], subgoals[:, :-1])
    assert torch.equal(segments[:, :, -1, A:], subgoals[:, 1:])
    # the stitched plan passes through every subgoal at steps 0, K, 2K, ... and joins without a gap:
    # segment i's end is segment i+1's start, and the plan holds every other step of every segment
    assert plan.shape == (2, (N - 1) * K + 1, A + 4)
    assert torch.equal(plan[:, ::K, A:], subgoals)
    for i in range(N - 1):
        assert torch.equal(plan[:, i * K : (i + 1) * K], segments[:, i, :K])
        assert torch.equal(segments[:, i, -1, A:], plan[:, (i + 1) * K, A:])
    # the policy's plan (env units) is the same plan, and it records the subgoals for pictures
    policy.record_plans, policy.recorded_plans = 1, []
    plan_obs, plan_act, lengths = policy.plan(obs, goal)
    assert plan_obs.shape == (2, policy.plan_horizon, 4) and plan_act.shape == (2, policy.plan_horizon, 2)
    assert (lengths == policy.plan_horizon).all()
    assert isinstance(policy, PlanRecorder) and len(policy.recorded_plans) == 1
    recorded = policy.recorded_plans[0]
    np.testing.assert_array_equal(recorded["plan"][::K], recorded["subgoals"])
    np.testing.assert_allclose(recorded["subgoals"][0], obs[0], atol=1e-5)
    np.testing.assert_allclose(recorded["subgoals"][-1, :2], goal[0], atol=1e-5)


def test_the_low_level_runs_its_own_solver_steps(tiny_maze_dataset):
    """low_sampling_steps: the segments take that many model calls, the subgoals keep sampling_steps, and the
    segments still meet their subgoals exactly."""
    _, agent, _ = _build(TINY_HIERARCHICAL, tiny_maze_dataset, ["sampler=ddim", "sampling_steps=4", "low_sampling_steps=2"])
    policy, goal = agent.policy, np.array([[1.0, 1.0]], np.float32)
    calls = {"high": 0, "low": 0}
    for name in calls:
        getattr(policy.ema.model, name).register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    obs = np.array([[-1.0, 1.0, 0.2, -0.1]], np.float32)
    with torch.inference_mode():
        subgoals = policy.plan_subgoals(obs, goal)
        segments = policy.segments(subgoals)
    assert calls == {"high": 4, "low": 2}
    assert torch.equal(segments[:, :, 0, policy.act_dim :], subgoals[:, :-1])
    assert torch.equal(segments[:, :, -1, policy.act_dim :], subgoals[:, 1:])
    policy.plan(obs, goal)
    assert (policy.last_plan["steps"], policy.last_plan["low_steps"], policy.last_plan["calls"]) == (4, 2, 6)


def test_value_guidance_moves_the_high_level_toward_higher_value(tiny_hopper_dataset):
    values = {}
    for scale in (0.0, 1.0):
        _, agent, _ = _build(TINY_VALUE_HIERARCHICAL, tiny_hopper_dataset, [f"guide_scale={scale}", "n_candidates=16"])
        policy = agent.policy
        policy.reseed(0)
        obs = np.zeros((2, policy.obs_dim), np.float32)
        with torch.inference_mode():
            policy.plan_subgoals(obs, None)
        values[scale] = policy.last_values.reshape(2, 16)  # every candidate's value, before the best is kept
    assert (values[1.0].mean(1) > values[0.0].mean(1)).all(), values


def test_plan_chunk_keeps_the_committed_actions(tiny_maze_dataset):
    cfg, agent, _ = _build(TINY_HIERARCHICAL, tiny_maze_dataset)
    policy = agent.policy
    assert isinstance(policy, ChunkPlanner)
    committed = np.array([[0.3, -0.2]] * (cfg.jump + 2), np.float32)  # reaches into the second segment
    obs = {"observation": np.array([0.0, 0.5, 0.0, 0.0]), "desired_goal": np.array([1.0, -1.0])}
    actions = policy.plan_chunk(obs, committed)
    assert actions.shape == (policy.plan_horizon, 2)
    np.testing.assert_array_equal(actions[: len(committed)], committed)


def test_after_plan_stop_brakes_instead_of_driving_to_the_goal(tiny_maze_dataset):
    for agent_overrides in (TINY_DIFFUSER, TINY_HIERARCHICAL):
        _, agent, _ = _build(agent_overrides, tiny_maze_dataset, ["after_plan=stop", "hold_kd=2"])
        policy = agent.policy
        state = policy.initial_state(1)
        state.plan_len[0], state.t[0] = 3, 5  # plan used up
        obs = np.array([[0.5, 0.0, 0.1, -0.2]], np.float32)
        act = policy.track(obs, np.array([[-1.0, 1.0]], np.float32), state)
        np.testing.assert_allclose(act[0], [-0.2, 0.4], atol=1e-6)  # -hold_kd * velocity, no pull to the goal


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("jump=4", "jump \\+ 1 = 5"),
        ("backbone=dit", "unet levels only"),
        ("warm_start_level=0.5", "hierarchical planner needs 0"),
        ("after_plan=coast", "after_plan='coast'"),
        ("low_dim_mults=[]", "low_dim_mults must not be empty"),
        ("low_sampling_steps=-1", "low_sampling_steps=-1 must be >= 0"),
        ("low_sampling_steps=1000", "low_sampling_steps=1000 > diffusion_steps"),
        ("sampler=ddpm low_sampling_steps=2", "needs a strided sampler"),
    ],
)
def test_bad_hierarchical_config_is_one_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*TINY_HIERARCHICAL, *override.split()])


def test_plans_are_drawn_with_their_subgoals():
    from diffplan.viz import figure_to_array, plot_plans

    plans = np.stack([np.linspace([-1, -1], [1, 1], 10)] * 2)
    subgoals = [plans[0, ::3], None]
    fig = plot_plans("pointmaze-umaze", plans, starts=plans[:, 0], goals=plans[:, -1], subgoals=subgoals)
    with_marks = figure_to_array(fig)
    without = figure_to_array(plot_plans("pointmaze-umaze", plans, starts=plans[:, 0], goals=plans[:, -1]))
    assert with_marks.shape == without.shape and not np.array_equal(with_marks, without)


def test_execution_is_described_in_words():
    from diffplan.bench import PLAN_TO_END, execution_text
    from diffplan.config import config_to_dict

    shipped = execution_text(config_to_dict(load_config(None, TINY_HIERARCHICAL)))
    assert "cut within 0.2 of the goal" in shipped and "then PD to the goal (kp 10, kd 1)" in shipped
    to_end = execution_text(config_to_dict(load_config(None, [*TINY_HIERARCHICAL, *PLAN_TO_END])))
    assert "cut" not in to_end and "then brake (no goal-directed PD)" in to_end
