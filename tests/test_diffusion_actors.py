"""Diffusion actors: diffusion BC (chunks, DPPO-facing chain log-probs), Diffusion-QL and IDQL.

Critic targets and the expectile loss on hand-made numbers, the Q gradient reaching the actor through the
sampling chain, candidate selection, receding-horizon chunk execution in a real Collector, transitions with
history/chunk padding, and a locomotion (Hopper-v5) run on a tiny Minari dataset written here.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from tianshou.data import Batch, Collector, VectorReplayBuffer
from tianshou.env import DummyVectorEnv
from tianshou.utils.torch_utils import policy_within_training_step
from torch import nn

from diffplan.agents import AGENTS
from diffplan.agents.diffusion_ql import (
    expectile_loss,
    pessimistic_next_value,
    select_candidates,
    td_target,
)
from diffplan.compose import load_config
from diffplan.config import ConfigError
from diffplan.data import Episodes, TransitionDataset, load_episodes, make_normalizer
from diffplan.diffusion import make_betas
from diffplan.envs import make_env
from diffplan.envs.maze import make_maze_env
from diffplan.training import load_trained, train
from diffplan.training.lr import cosine_factor, run_progress

from .conftest import TINY_DIFFUSION_BC, TINY_DIFFUSION_QL, TINY_IDQL

TINY = {"diffusion_bc": TINY_DIFFUSION_BC, "diffusion_ql": TINY_DIFFUSION_QL, "idql": TINY_IDQL}


def _build(name, dataset, extra=()):
    cfg = load_config(None, [*TINY[name], f"dataset={dataset}", *extra])
    env = make_env(cfg.task)
    agent = AGENTS[name].build(cfg, env.observation_space, env.action_space, load_episodes(dataset))
    return cfg, env, agent


def _constant_head(mlp: nn.Sequential, value: float) -> None:
    """Make an MLP output ``value`` for every input (last layer: zero weights, bias = value)."""
    last = mlp[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(value)


# ------------------------------------------------------------------------------------------ critic math
def test_td_target_with_twin_constant_target_critics(tiny_maze_dataset):
    _, _, agent = _build("diffusion_ql", tiny_maze_dataset, ["discount=0.9"])
    _constant_head(agent.policy.critic_target.q1, 2.0)
    _constant_head(agent.policy.critic_target.q2, 3.0)
    next_cond = torch.randn(3, agent.policy.encoder.dim)
    reward = torch.tensor([1.0, 0.5, -1.0])
    done = torch.tensor([0.0, 1.0, 0.0])
    target = agent.algorithm.td_critic_target(next_cond, reward, done)
    # min(2, 3) = 2: r + 0.9 * (1 - done) * 2
    torch.testing.assert_close(target, torch.tensor([2.8, 0.5, 0.8]))
    assert not target.requires_grad


def test_max_q_backup_takes_max_per_head_then_min():
    q1 = torch.tensor([[1.0, 4.0, 2.0], [0.0, -1.0, 0.5]])
    q2 = torch.tensor([[3.0, 3.5, 0.0], [2.0, 1.0, 1.5]])
    torch.testing.assert_close(pessimistic_next_value(q1, q2), torch.tensor([3.5, 0.5]))
    target = td_target(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]), 0.5, pessimistic_next_value(q1, q2))
    torch.testing.assert_close(target, torch.tensor([2.75, 1.25]))


def test_expectile_loss_hand_case():
    diff = torch.tensor([-2.0, 1.0, 0.0, 3.0])
    torch.testing.assert_close(expectile_loss(diff, 0.7), torch.tensor([0.3 * 4, 0.7 * 1, 0.0, 0.7 * 9]))
    # tau = 0.5 is half the squared error
    torch.testing.assert_close(expectile_loss(diff, 0.5), 0.5 * diff**2)


def test_iql_critic_target_and_value_step(tiny_maze_dataset):
    _, _, agent = _build("idql", tiny_maze_dataset, ["discount=0.5"])
    policy, algo = agent.policy, agent.algorithm
    _constant_head(policy.value.net, 4.0)
    cond = torch.randn(2, policy.encoder.dim)
    target = algo.iql_critic_target(cond, torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(target, torch.tensor([3.0, 2.0]))
    # value regression toward min(Q') = 1 from V = 4 with tau 0.7: diff = -3 -> weight 0.3 -> loss 2.7
    _constant_head(policy.critic_target.q1, 1.0)
    _constant_head(policy.critic_target.q2, 6.0)
    loss = algo.iql_value_step(cond, torch.zeros(2, policy.act_dim))
    assert loss == pytest.approx(0.3 * 9.0)


def test_lr_schedule_follows_the_runs_budget():
    assert cosine_factor(0.0) == pytest.approx(1.0)
    assert cosine_factor(0.5) == pytest.approx(0.5)
    assert cosine_factor(1.0) == pytest.approx(0.0) and cosine_factor(5.0) == pytest.approx(0.0)  # held at 0
    inf = float("inf")
    assert run_progress(25, 100, 3.0, inf) == pytest.approx(0.25)  # no time budget: by steps
    assert run_progress(25, 10**6, 30.0, 60.0) == pytest.approx(0.5)  # a time budget ends it first: by time
    assert run_progress(90, 100, 30.0, 60.0) == pytest.approx(0.9)  # the steps run out first
    assert run_progress(200, 100, 90.0, 60.0) == 1.0


def test_lr_decay_anneals_over_a_time_budget_not_unreached_train_steps(tiny_maze_dataset, tmp_path):
    """Pins the schedule's horizon: a run stopped by ``max_train_minutes`` long before ``train_steps`` has
    annealed its learning rates (actor, critic, value: every optimizer, by the shared loop mechanism) to near 0
    by its end. Before, Diffusion-QL's schedule ran over the unreached train_steps and ended at ~the base lr."""
    cfg = load_config(None, [*TINY_IDQL, f"dataset={tiny_maze_dataset}", "lr_decay=true", "train_steps=1000000",
                             "max_train_minutes=0.02", "lr=0.001", "final_eval_episodes=1",
                             f"run_dir={tmp_path / 'run'}"])
    results = train(cfg, progress=False)
    assert 5 < results["gradient_steps"] < 1_000_000
    algo = load_trained(tmp_path / "run").agent.algorithm
    for optim, base in ((algo.actor_optim, 0.001), (algo.critic_optim, cfg.critic_lr), (algo.value_optim, cfg.critic_lr)):
        group = optim._optim.param_groups[0]
        assert group["initial_lr"] == pytest.approx(base)
        assert group["lr"] < 0.05 * base, (group["lr"], base)


def test_budget_clock_cpu_stops_on_this_processs_cpu_time(tiny_maze_dataset, tmp_path, monkeypatch):
    """``budget_clock=cpu`` measures the budget with the process's CPU clock, not wall time: with a fake CPU clock
    that advances 0.5 s per reading (one reading before and one after each update), a 0.05-minute (3 s) budget
    ends the run after exactly 6 updates; the wall clock is left alone, so a wall budget would have let it run far longer. A bad clock name
    is one config error."""
    from diffplan.training import loop

    ticks = iter(range(10**6))
    monkeypatch.setattr(loop.time, "process_time", lambda: float(next(ticks)) / 2)
    cfg = load_config(None, [*TINY_IDQL, f"dataset={tiny_maze_dataset}", "train_steps=1000000", "eval_every=0",
                             "max_train_minutes=0.05", "budget_clock=cpu", "final_eval_episodes=1",
                             f"run_dir={tmp_path / 'run'}"])
    results = train(cfg, progress=False)
    assert results["gradient_steps"] == 6  # 0.5 s of fake CPU per update: 3 s after 6 updates
    with pytest.raises(ConfigError, match="budget_clock='gpu'"):
        load_config(None, [*TINY_IDQL, f"dataset={tiny_maze_dataset}", "budget_clock=gpu"])


def test_lr_decay_over_steps_and_exact_resume(tiny_maze_dataset, tmp_path):
    """Without a time budget the schedule runs over train_steps (cosine of the update count, before each
    update), and resuming mid-run from a checkpoint continues it exactly: same weights as the straight run."""
    def cfg(run_dir):
        return load_config(None, [*TINY_IDQL, f"dataset={tiny_maze_dataset}", "lr_decay=true", "train_steps=6",
                                  "checkpoint_every=3", "lr=0.001", "final_eval_episodes=1", f"run_dir={run_dir}"])

    train(cfg(tmp_path / "straight"), progress=False)
    straight = load_trained(tmp_path / "straight").agent.algorithm
    # the last (6th) update ran with the lr of progress 5/6
    assert straight.actor_optim._optim.param_groups[0]["lr"] == pytest.approx(0.001 * cosine_factor(5 / 6))
    resumed_dir = tmp_path / "resumed"
    train(cfg(resumed_dir), resume=tmp_path / "straight" / "checkpoints" / "step_00000003", progress=False)
    resumed = load_trained(resumed_dir).agent.algorithm
    a, b = straight.state_dict(), resumed.state_dict()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key


def _spaces(cfg):
    env = make_env(cfg.task)
    return env.observation_space, env.action_space


# ------------------------------------------------------------------------------------------- gradient
def test_q_gradient_reaches_the_actor_through_the_sampler(tiny_maze_dataset):
    _, _, agent = _build("diffusion_ql", tiny_maze_dataset)
    policy, algo = agent.policy, agent.algorithm
    cond = torch.randn(4, policy.encoder.dim)
    policy.model.zero_grad(set_to_none=True)
    algo.q_term(cond).backward()
    grads = [p.grad for p in policy.model.parameters()]
    assert all(g is not None for g in grads), "some actor parameter got no gradient from Q"
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # the time-embedding MLP only influences the output through the chain's steps: it must get gradient too
    assert float(policy.model.time_mlp[1].weight.grad.abs().sum()) > 0
    # without enable_grad the chain is cut
    assert not policy.sample_actions(cond).requires_grad


# ------------------------------------------------------------------------------------------- selection
def test_select_candidates_modes():
    q = torch.tensor([[0.1, 5.0, -1.0], [2.0, 1.0, 0.0]])
    assert select_candidates(q, "argmax").tolist() == [1, 0]
    gen = torch.Generator().manual_seed(0)
    # a Q gap of 1000 at temperature 1 leaves no mass elsewhere
    assert select_candidates(q * 1000, "softmax", generator=gen).tolist() == [1, 0]
    # expectile weights: candidates below V get 1 - tau; with tau -> 1 only those above V are drawn
    picks = {int(select_candidates(q, "expectile", value=torch.tensor([3.0, 1.5]), expectile=0.999999,
                                   generator=gen)[0]) for _ in range(20)}
    assert picks == {1}
    with pytest.raises(ValueError, match="state values"):
        select_candidates(q, "expectile")
    with pytest.raises(ValueError, match="unknown selection"):
        select_candidates(q, "best")


class _ScaledTwinQ(nn.Module):
    """Twin heads Q_j(s, a) = c_j * (a[0] + 5): positive, increasing in the first action entry."""

    def __init__(self, c1: float, c2: float) -> None:
        super().__init__()
        self.c1, self.c2 = c1, c2

    def forward(self, cond, act):
        g = act[:, 0] + 5.0
        return self.c1 * g, self.c2 * g


def test_q_term_sign_and_normalization(tiny_maze_dataset):
    """Pins Diffusion-QL's policy-improvement term -Q_i(s, a_new) / mean|Q_j(s, a_new)| (j the other head, its
    magnitude detached): its value is -c_i / c_j for heads c_j * g, its gradient does not change when Q is
    scaled (the 1/mean|Q| normalization, so eta means the same on any reward scale), and a gradient step on it
    raises Q of the actor's actions (the sign: minimizing the loss maximizes Q)."""
    _, _, agent = _build("diffusion_ql", tiny_maze_dataset)
    policy, algo = agent.policy, agent.algorithm
    cond = torch.randn(16, policy.encoder.dim)
    start = algo.generator.get_state()

    def term(c1: float, c2: float) -> tuple[float, list[torch.Tensor]]:
        policy.critic = _ScaledTwinQ(c1, c2)
        algo.generator.set_state(start)
        policy.model.zero_grad(set_to_none=True)
        loss = algo.q_term(cond)
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in policy.model.parameters()]

    value, _ = term(1.0, 4.0)
    assert value == pytest.approx(-0.25, rel=1e-5) or value == pytest.approx(-4.0, rel=1e-5), value
    _, grads = term(1.0, 1.0)
    _, scaled = term(100.0, 100.0)
    for g, h in zip(grads, scaled, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-7)  # no 100x: normalized by mean|Q|
    assert sum(float(g.abs().sum()) for g in grads) > 0

    def mean_q() -> float:
        algo.generator.set_state(start)
        with torch.no_grad():
            act = policy.sample_actions(cond, generator=algo.generator)
        return float(policy.critic(cond, act)[0].mean())

    before = mean_q()
    with torch.no_grad():
        for p, g in zip(policy.model.parameters(), grads, strict=True):
            p.sub_(1e-2 * g)  # one plain gradient-descent step on the loss
    assert mean_q() > before + 1e-4, (before, mean_q())


class _FirstActionQ(nn.Module):
    """Q(s, a) = a[0]: the best candidate is the one with the largest first action entry."""

    def q_min(self, cond, act):
        return act[:, 0]


def test_plan_picks_the_max_q_candidate(tiny_maze_dataset):
    _, _, agent = _build("diffusion_ql", tiny_maze_dataset, ["selection=argmax", "n_candidates=16"])
    policy = agent.policy
    policy.critic_target = _FirstActionQ()
    obs = np.array([[0.5, -0.5, 0.0, 0.0], [-1.0, 1.0, 0.1, 0.2]], np.float32)
    goal = np.array([[1.0, 1.0], [-1.0, -1.0]], np.float32)
    policy.reseed(7)
    cond = policy.encoder.encode(obs, goal).repeat_interleave(16, dim=0)
    candidates = policy.sample_actions(cond, model=policy.ema.model).reshape(2, 16, -1)
    best = candidates[torch.arange(2), candidates[..., 0].argmax(1)]
    expected = policy.act_norm.unnormalize(best).numpy()
    policy.reseed(7)
    np.testing.assert_allclose(policy.plan(obs, goal), expected, atol=1e-6)


# ----------------------------------------------------------------------------------- DPPO-facing chain
def test_chain_log_prob_matches_hand_computation(tiny_maze_dataset):
    cfg, _, agent = _build("diffusion_bc", tiny_maze_dataset, ["min_logprob_std=0.05"])
    policy = agent.policy
    obs = np.array([[0.5, -0.5, 0.0, 0.0], [-1.0, 1.0, 0.1, 0.2]], np.float32)
    cond = policy.encoder.encode(obs[:, None], np.array([[1.0, 1.0], [-1.0, -1.0]], np.float32))
    x0, chain, logp = policy.denoising_chain(cond, torch.Generator().manual_seed(0))
    K = cfg.sampling_steps
    assert chain.shape == (2, K + 1, cfg.chunk, 2) and logp.shape == (2, K)
    torch.testing.assert_close(chain[:, -1], x0)
    assert logp.requires_grad  # differentiable in the model: what a policy-gradient fine-tuner needs

    # Hand computation from the betas: strided DDPM posterior between kept steps (Ho et al. eq. 6-7).
    replay = torch.Generator().manual_seed(0)
    noise = [torch.randn(chain[:, 0].shape, generator=replay) for _ in range(K + 1)]
    torch.testing.assert_close(chain[:, 0], noise[0])
    a_bar = torch.cumprod(1 - make_betas(cfg.beta_schedule, cfg.diffusion_steps), 0)
    steps = policy.chain_scheduler.timesteps.tolist()
    for k, t in enumerate(steps):
        prev = steps[k + 1] if k + 1 < K else -1
        ab, ab_prev = a_bar[t], (a_bar[prev] if prev >= 0 else torch.tensor(1.0, dtype=torch.float64))
        x_t = chain[:, k].double()
        with torch.no_grad():
            eps = policy.model(chain[:, k], torch.full((2,), t), cond).double()
        x0_hat = ((x_t - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
        beta = 1 - ab / ab_prev
        mean = ab_prev.sqrt() * beta / (1 - ab) * x0_hat + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * x_t
        std = (beta * (1 - ab_prev) / (1 - ab)).sqrt() if prev >= 0 else torch.tensor(0.0, dtype=torch.float64)
        std = std.clamp(min=0.05)
        expected = torch.distributions.Normal(mean, std).log_prob(chain[:, k + 1].double()).flatten(1).sum(1)
        torch.testing.assert_close(logp[:, k].double(), expected, rtol=1e-4, atol=1e-3)
        # The sampler took this very step with this std (the scorer's): replay the generator's noise draws
        # (the initial noise, then one per step) and rebuild x_{k+1} = mean + std * z.
        torch.testing.assert_close(chain[:, k + 1].double(), mean + std * noise[k + 1].double(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- receding-horizon chunks
class _CountingPlans:
    def __init__(self, policy):
        self.calls: list[int] = []
        plan = policy.plan

        def counted(obs, goal):
            self.calls.append(len(obs))
            return plan(obs, goal)

        policy.plan = counted


def test_bc_executes_chunks_and_a_reset_env_replans_alone(tiny_maze_dataset):
    cfg, _, agent = _build("diffusion_bc", tiny_maze_dataset, ["chunk=4", "execute_steps=3", "obs_history=2"])
    counter = _CountingPlans(agent.policy)
    venv = DummyVectorEnv(
        [lambda: gym.wrappers.TimeLimit(make_maze_env(cfg.task, seed=0), 4),
         lambda: gym.wrappers.TimeLimit(make_maze_env(cfg.task, seed=1), 12)]
    )
    collector = Collector(agent.policy, venv, VectorReplayBuffer(100, 2))
    collector.reset()
    collector.collect(n_step=2 * 7)
    # steps 0, 3, 6 for env 1; env 0 also resets at step 4 (new episode -> new chunk at once)
    assert counter.calls == [2, 2, 1, 1]
    state = collector.buffer.policy.hidden_state
    assert isinstance(state, Batch) and state.chunk.shape[1:] == (4, 2) and state.history.shape[1:] == (2, 4)


def test_bc_history_starts_with_the_first_observation_repeated(tiny_maze_dataset):
    cfg, _, agent = _build("diffusion_bc", tiny_maze_dataset, ["obs_history=3"])
    obs, _ = make_maze_env(cfg.task, seed=3).reset(seed=3)
    batch = Batch(obs=Batch({k: v[None] for k, v in obs.items()}))
    out = agent.policy(batch)
    np.testing.assert_allclose(out.state.history[0], np.repeat(obs["observation"][None], 3, 0).astype(np.float32))
    out2 = agent.policy(batch, out.state)
    assert out2.state.t[0] == 2


def test_transitions_pad_history_and_chunks_inside_episodes():
    # two episodes of lengths 3 and 2; obs = step index, act = 10 * step index
    n = 5
    obs = np.arange(n, dtype=np.float32)[:, None].repeat(2, 1)
    episodes = Episodes(
        obs=obs, act=10 * obs[:, :1], rew=np.ones(n), terminal=np.array([0, 0, 1, 0, 0]),
        timeout=np.array([0, 0, 0, 0, 1]), next_obs=obs + 1, starts=np.array([0, 3]), lengths=np.array([3, 2]),
    )
    ident = make_normalizer("gaussian", np.array([[-1.0, -1.0], [1.0, 1.0]]))
    ident1 = make_normalizer("gaussian", np.array([[-1.0], [1.0]]))
    ds = TransitionDataset(episodes, ident, ident1, history=2, chunk=3)
    b = ds.get([0, 2, 3])
    scale = float(ident.normalize(np.ones((1, 2), np.float32))[0, 0])
    # history: step 0 repeats itself, step 3 (an episode start) too
    np.testing.assert_allclose(b["obs"][:, :, 0] / scale, [[0, 0], [1, 2], [3, 3]], atol=1e-6)
    # chunks: past the episode end the zero action and mask False
    np.testing.assert_allclose(b["act"][:, :, 0] / scale, [[0, 10, 20], [20, 0, 0], [30, 40, 0]], atol=1e-5)
    assert b["mask"].tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    assert b["done"].tolist() == [0.0, 1.0, 0.0]


# ----------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("name", "override", "match"),
    [
        ("diffusion_bc", "execute_steps=9", "execute_steps"),
        ("diffusion_bc", "denoiser=transformer", "denoiser"),
        ("diffusion_ql", "selection=expectile", "critic=iql"),
        ("diffusion_ql", "critic=cql", "critic"),
        ("diffusion_ql", "obs_normalizer=minmax", "obs_normalizer"),
        ("idql", "critic=td", "needs critic=iql"),
    ],
)
def test_bad_config_is_refused_with_the_key(name, override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [*TINY[name], override])


def test_obs_normalizer_standardises_states_and_keeps_limits_actions(tiny_maze_dataset):
    """obs_normalizer=gaussian: the condition (states, goals) is standardised on the dataset, actions stay
    min-max scaled (so x0 clipping still bounds them to the data's range), training batches agree with the
    encoder, and a shell built without data loads the weights back with the same normalizers."""
    cfg, env, agent = _build("diffusion_ql", tiny_maze_dataset, ["obs_normalizer=gaussian"])
    episodes = load_episodes(tiny_maze_dataset)
    enc = agent.policy.encoder
    assert enc.obs_norm.kind == "gaussian" and enc.goal_norm is not None and enc.goal_norm.kind == "gaussian"
    assert agent.policy.act_norm.kind == "limits"
    obs_n = enc.obs_norm.normalize(torch.as_tensor(episodes.obs))
    torch.testing.assert_close(obs_n.mean(0), torch.zeros(obs_n.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(obs_n.std(0, unbiased=False), torch.ones(obs_n.shape[1]), atol=1e-3, rtol=0)
    act_n = agent.policy.act_norm.normalize(torch.as_tensor(episodes.act))
    assert float(act_n.min()) == pytest.approx(-1.0, abs=1e-5) and float(act_n.max()) == pytest.approx(1.0, abs=1e-5)
    batch, ids = agent.batch_source.sample(8)
    torch.testing.assert_close(batch.obs[:, 0], enc.obs_norm.normalize(torch.as_tensor(episodes.obs[ids])))
    shell = AGENTS["diffusion_ql"].build(cfg, env.observation_space, env.action_space, None)
    shell.policy.load_state_dict(agent.policy.state_dict())
    torch.testing.assert_close(shell.policy.encoder.obs_norm.normalize(torch.as_tensor(episodes.obs)), obs_n)


def test_goal_conditioned_policy_without_goal_is_refused(tiny_maze_dataset):
    _, _, agent = _build("diffusion_ql", tiny_maze_dataset)
    with pytest.raises(ValueError, match="goal-conditioned but got no goal"):
        agent.policy.plan(np.zeros((1, 4), np.float32), None)


# ------------------------------------------------------------------------------------------ locomotion
@pytest.fixture(scope="module")
def tiny_hopper_dataset(tmp_path_factory) -> str:
    """Random Hopper-v5 rollouts (about 300 steps) as a Minari dataset on disk; returns its path."""
    import os
    import warnings

    import minari
    from minari.data_collector import EpisodeBuffer

    root = tmp_path_factory.mktemp("hopper-minari")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        env = gym.make("Hopper-v5")
        rng = np.random.default_rng(0)
        buffers, steps, e = [], 0, 0
        while steps < 300:
            obs, _ = env.reset(seed=e)
            observations, actions, rewards, terms, truncs = [obs], [], [], [], []
            for _ in range(60):
                act = rng.uniform(-1, 1, 3).astype(np.float32)
                obs, rew, term, trunc, _ = env.step(act)
                observations.append(obs), actions.append(act), rewards.append(rew)
                terms.append(term), truncs.append(trunc)
                if term or trunc:
                    break
            truncs[-1] = truncs[-1] or not terms[-1]
            buffers.append(EpisodeBuffer(
                id=e, observations=np.asarray(observations), actions=np.asarray(actions),
                rewards=np.asarray(rewards), terminations=np.asarray(terms), truncations=np.asarray(truncs),
                infos={},
            ))
            steps, e = steps + len(actions), e + 1
        with warnings.catch_warnings():  # minari warns about every unset optional field (author email, ...)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"minari\..*")
            minari.create_dataset_from_buffers(
                "test/hopper-random-v0", buffers, env=env, eval_env=env, algorithm_name="random",
                ref_min_score=0.0, ref_max_score=100.0,
            )
        env.close()
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    return str(root / "test" / "hopper-random-v0")


@pytest.mark.parametrize("name", sorted(TINY))
def test_locomotion_train_and_act(name, tiny_hopper_dataset):
    cfg = load_config(None, [*TINY[name], "task=Hopper-v5", f"dataset={tiny_hopper_dataset}"])
    episodes = load_episodes(tiny_hopper_dataset)
    assert episodes.terminal.any() and episodes.goal is None
    env = make_env(cfg.task)
    agent = AGENTS[name].build(cfg, env.observation_space, env.action_space, episodes)
    with policy_within_training_step(agent.policy):
        for _ in range(2):
            stats = agent.algorithm.update(buffer=agent.batch_source, sample_size=cfg.batch_size)
    assert np.isfinite(stats.get_loss_stats_dict()["loss"])
    venv = DummyVectorEnv([lambda: gym.make("Hopper-v5") for _ in range(2)])
    collector = Collector(agent.policy, venv, VectorReplayBuffer(100, 2))
    collector.reset()
    result = collector.collect(n_step=10)
    assert result.n_collected_steps == 10
    assert collector.buffer.act[:10].shape == (10, 3) and np.all(np.abs(collector.buffer.act[:10]) <= 1.0)
