"""Fast planning in the Diffuser: warm-started replanning and latency budgets (the solvers: test_fast_sampling.py).

Model calls are counted with a forward hook on the acting (EMA) denoiser; the latency budget is driven by a
fake clock that advances a fixed amount per model call, so the tests are deterministic on any machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tianshou.data import Collector, VectorReplayBuffer

from diffplan.config import ConfigError
from diffplan.diffusion.budget import StepBudget
from diffplan.envs import make_vector_env

from .test_agents import _build, _CountingDiffuser


class _ModelCalls:
    """Counts forward calls of the policy's acting denoiser; optionally advances a fake clock per call."""

    def __init__(self, policy, ms_per_call: float = 0.0) -> None:
        self.n = 0
        self.now = 0.0
        self.ms_per_call = ms_per_call
        policy.ema.model.register_forward_hook(self._hook)
        if ms_per_call:
            policy.clock = lambda: self.now

    def _hook(self, *_: object) -> None:
        self.n += 1
        self.now += self.ms_per_call / 1000.0

    def take(self) -> int:
        n, self.n = self.n, 0
        return n


def test_warm_replans_start_from_the_shifted_plan_with_fewer_calls(tiny_maze_dataset):
    cfg, _env, agent = _build(
        "diffuser", tiny_maze_dataset,
        ["replan_every=3", "sampling_steps=8", "sampler=dpmsolver++", "warm_start_level=0.25"],
    )
    policy = agent.policy
    counter, calls = _CountingDiffuser(policy), _ModelCalls(policy)
    per_plan: list[int] = []
    orig = policy._denoise

    def denoise(*args):
        out = orig(*args)
        per_plan.append(calls.take())
        return out

    policy._denoise = denoise
    collector = Collector(policy, make_vector_env(cfg.task, 2, seed=0), VectorReplayBuffer(100, 2))
    collector.reset()
    collector.collect(n_step=2 * 7)  # plans at steps 0 (cold), 3 and 6 (warm)
    assert counter.warm == [False, True, True] and counter.calls == [2, 2, 2]
    assert per_plan == [8, 2, 2]  # a warm plan runs a quarter of the 8 solver steps
    # a warm plan keeps the inpainted start and goal (to the normalizer's round-off)
    obs = np.array([[-1.0, 1.0, 0.2, -0.1], [0.5, -1.0, 0.0, 0.0]], np.float32)
    goal = np.array([[1.0, 1.0], [-1.0, -1.0]], np.float32)
    guess = torch.zeros(2, cfg.horizon, 6)
    plan_obs, _, _ = policy.plan(obs, goal, guess)
    assert policy.last_plan["warm"] == 1
    np.testing.assert_allclose(plan_obs[:, 0], obs, atol=1e-5)
    np.testing.assert_allclose(plan_obs[:, -1, :2], goal, atol=1e-5)


def test_warm_start_guess_is_the_previous_plan_shifted(tiny_maze_dataset):
    from diffplan.agent import LatencyBudgeted, WarmPlanner

    _cfg, _env, agent = _build("diffuser", tiny_maze_dataset, ["warm_start_level=0.5"])
    policy = agent.policy
    assert isinstance(policy, WarmPlanner) and isinstance(policy, LatencyBudgeted)
    plan_obs, plan_act = np.random.default_rng(0).uniform(-1, 1, (2, 2, 16, 4)).astype(np.float32)
    guess = policy.warm_guess(plan_obs, plan_act[..., :2], 3)
    np.testing.assert_allclose(policy.obs_norm.unnormalize(guess[:, :13, 2:]).numpy(), plan_obs[:, 3:], atol=1e-5)
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    out = policy._shifted(x, torch.tensor([2, 0]))
    assert torch.equal(out[0, :3], x[0, 2:]) and torch.equal(out[0, 3:], x[0, [4, 4]])
    assert torch.equal(out[1], x[1])


def test_plan_chunk_warm_start_keeps_the_committed_prefix_exact(tiny_maze_dataset):
    _cfg, env, agent = _build(
        "diffuser", tiny_maze_dataset, ["sampling_steps=6", "sampler=ddim", "warm_start_level=0.34"]
    )
    policy = agent.policy
    calls = _ModelCalls(policy)
    obs, _ = env.reset(seed=0)
    first = policy.plan_chunk(obs, np.zeros((0, 2)))
    assert calls.take() == 6 and policy.last_plan["warm"] == 0
    # 3 ticks later the runner commits the next 4 planned actions: the planner finds them 3 rows in
    committed = first[3:7].astype(np.float64)
    second = policy.plan_chunk(obs, committed)
    assert calls.take() == 2 and policy.last_plan["warm"] == 1  # round(0.34 * 6) solver steps
    assert np.array_equal(second[:4], committed.astype(np.float32))
    # a prefix that is not in the last plan (a new episode) plans from noise
    policy.plan_chunk(obs, np.full((2, 2), 0.123))
    assert calls.take() == 6 and policy.last_plan["warm"] == 0
    # the warm plan's un-committed rows come from the denoiser, not copied from the guess
    assert not np.array_equal(second[4:8], first[7:11])


def test_latency_budget_cuts_steps_then_candidates_with_a_fake_slow_model(tiny_maze_dataset):
    _cfg, _env, agent = _build(
        "diffuser", tiny_maze_dataset,
        ["sampling_steps=10", "n_candidates=4", "latency_budget_ms=50", "budget_min_steps=3"],
    )
    policy = agent.policy
    calls = _ModelCalls(policy, ms_per_call=10.0)  # every model call "takes" 10 ms on the fake clock
    obs = np.zeros((1, 4), np.float32)
    goal = np.ones((1, 2), np.float32)
    policy.plan(obs, goal)  # nothing measured yet: the configured 10 steps, 4 candidates, and a measurement
    assert (policy.last_plan["calls"], policy.last_plan["candidates"]) == (10, 4)
    policy.plan(obs, goal)
    assert policy.last_plan["calls"] == 5 and policy.last_plan["candidates"] == 4  # 5 x 10 ms = the budget
    calls.ms_per_call = 25.0  # the machine gets slower: 3 steps (the floor) do not fit either
    for _ in range(25):  # the median of the window follows
        policy.plan(obs, goal)
    assert policy.last_plan["calls"] == 3 and policy.last_plan["candidates"] < 4
    assert calls.take() > 0


def test_step_budget_rules():
    b = StepBudget(100.0, max_steps=10, max_candidates=8, min_steps=2)
    assert b.choose() == (10, 8)  # nothing measured: the probe runs the full setting
    b.record(200.0, 10, 8)  # 20 ms per call at 8 candidates
    assert b.choose() == (5, 8)
    b2 = StepBudget(30.0, max_steps=10, max_candidates=8, min_steps=2)
    b2.record(200.0, 10, 8)  # 20 ms/call: 2 steps (40 ms) miss at any count (fewer candidates est. as no cheaper)
    assert b2.choose() == (2, 1)
    heun = StepBudget(100.0, max_steps=10, calls_for_steps=lambda k: 2 * k - 1)
    heun.record(100.0, 10, 1)  # 10 ms/call -> at most 10 calls -> 5 steps (9 calls)
    assert heun.choose() == (5, 1) and heun.steps_within(1, 8) == 5
    with pytest.raises(ValueError):
        StepBudget(0.0, max_steps=3)


def test_fast_planning_config_errors(tiny_maze_dataset):
    for bad in (["warm_start_level=1.5"], ["latency_budget_ms=-1"], ["budget_min_steps=0"],
                ["value_guided=true", "tracking=action", "sampler=dpmsolver++"]):
        with pytest.raises(ConfigError):
            _build("diffuser", tiny_maze_dataset, bad)


def test_deploy_runner_sets_the_planners_latency_budget(tiny_maze_dataset):
    from types import SimpleNamespace

    from diffplan.deploy.runner import LatencyAwareRunner

    from .test_robot import GoToGoalChunks

    _cfg, _env, agent = _build("diffuser", tiny_maze_dataset, ["sampling_steps=6"])
    policy = agent.policy
    env = SimpleNamespace(robot_spec=SimpleNamespace(dt=0.02))  # the constructor reads only the control period
    assert policy.budget is None
    LatencyAwareRunner(env, policy, latency_budget_ms=40.0)
    assert policy.budget is not None and policy.budget.budget_ms == 40.0
    LatencyAwareRunner(env, policy)  # None: the planner keeps its setting
    assert policy.budget.budget_ms == 40.0
    with pytest.raises(TypeError, match="latency budget"):
        LatencyAwareRunner(env, GoToGoalChunks(), latency_budget_ms=40.0)
    with pytest.raises(ConfigError, match="latency budget"):  # `deploy --latency-budget-ms -5`: one error line
        LatencyAwareRunner(env, policy, latency_budget_ms=-5.0)
    LatencyAwareRunner(env, policy, latency_budget_ms=0.0)  # 0: off
    assert policy.budget is None


def test_bench_fastgen_measures_each_setting_once_and_keeps_what_it_measured(tiny_maze_dataset, tmp_path, capsys):
    """``diffplan bench fastgen`` on a trained run: one row per setting (model calls, latency, score); run again
    with one setting more, only that one is measured and the others are kept exactly; a setting whose overrides
    changed is measured again; an --out file that is not this run's result is refused in one line, untouched."""
    import json

    from diffplan.cli import main
    from diffplan.compose import load_config
    from diffplan.training import train

    from .conftest import TINY_DIFFUSER

    run = tmp_path / "run"
    train(load_config(None, [*TINY_DIFFUSER, f"dataset={tiny_maze_dataset}", f"run_dir={run}"]), progress=False)
    out = tmp_path / "fg.json"
    common = ["--episodes", "1", "--repeats", "1", "--out", str(out)]
    assert main(["bench", "fastgen", str(run), "ddim-2:sampler=ddim,sampling_steps=2", *common]) == 0
    first = json.loads(out.read_text())
    assert first["agent"] == "diffuser" and first["settings"]["ddim-2"]["model_calls"] == {"cold": 2}
    assert main(["bench", "fastgen", str(run), "ddim-2:sampler=ddim,sampling_steps=2",
                 "ddim-3:sampler=ddim,sampling_steps=3", *common]) == 0
    second = json.loads(out.read_text())
    assert second["settings"]["ddim-2"] == first["settings"]["ddim-2"]  # kept, not re-measured
    assert second["settings"]["ddim-3"]["model_calls"] == {"cold": 3}
    assert "ddim-2:sampler=ddim,sampling_steps=2 ddim-3:sampler=ddim,sampling_steps=3" in second["command"]
    assert main(["bench", "fastgen", str(run), "ddim-2:sampler=ddim,sampling_steps=4", *common]) == 0
    third = json.loads(out.read_text())
    assert third["settings"]["ddim-2"]["model_calls"] == {"cold": 4}  # changed overrides: measured again
    assert third["settings"]["ddim-3"] == second["settings"]["ddim-3"]  # not asked for: still there
    other = tmp_path / "other.json"
    other.write_text('{"benchmark": "maze"}')
    capsys.readouterr()
    assert main(["bench", "fastgen", str(run), "ddim-2:sampler=ddim", "--episodes", "1", "--out", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a `bench fastgen` result" in err[0]
    assert other.read_text() == '{"benchmark": "maze"}'
