"""Reward-driven planners: value-guided Diffuser and Decision Diffuser (CFG, inverse dynamics, history).

The shared smoke test (tests/test_agents.py) runs both on a tiny Hopper-v5 dataset in a real Collector; here are
the pieces whose sign or wiring a smoke test cannot see.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from tianshou.data import Batch, Collector, VectorReplayBuffer
from tianshou.env import DummyVectorEnv
from tianshou.utils.torch_utils import policy_within_training_step

from diffplan.agents import AGENTS
from diffplan.compose import load_config
from diffplan.config import ConfigError
from diffplan.data import Episodes, load_episodes
from diffplan.diffusion import ValueGuide, make_scheduler, noised, sample
from diffplan.envs import make_env
from diffplan.nets import TemporalUnet1d, TemporalValueNet

from .conftest import TINY_DECISION_DIFFUSER, TINY_VALUE_DIFFUSER

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LOCOMOTION = {"hopper": "Hopper-v5", "walker2d": "Walker2d-v5", "halfcheetah": "HalfCheetah-v5"}


def _agent(overrides, dataset, extra=()):
    cfg = load_config(None, [*overrides, f"dataset={dataset}", *extra])
    env = make_env(cfg.task)
    return cfg, env, AGENTS[cfg.agent].build(cfg, env.observation_space, env.action_space, load_episodes(dataset))


# ------------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("agent", ["diffuser", "decision_diffuser"])
def test_locomotion_configs_build_on_their_envs(agent):
    """The agent's config on all 9 tasks (its experiment file where one exists, else the composed method + task
    files) loads and builds (architecture, horizon, value net) on the env's spaces."""
    tasks = sorted(f"{env}-{kind}" for env in LOCOMOTION for kind in ("medium", "medium-replay", "medium-expert"))
    built_envs = set()
    for task in tasks:
        experiment = CONFIGS / "experiments" / f"{agent}-{task}.yaml"
        if experiment.exists():
            cfg = load_config(experiment, ["torch_threads=1"])
        else:
            cfg = load_config(agent, [f"task={task}", "torch_threads=1"])
        assert cfg.task == task
        if cfg.task.split("-")[0] in built_envs:  # the architecture is per env: one build each keeps it fast
            continue
        built_envs.add(cfg.task.split("-")[0])
        env = gym.make(LOCOMOTION[cfg.task.split("-")[0]])
        built = AGENTS[agent].build(cfg, env.observation_space, env.action_space, None)
        if agent == "diffuser":
            assert built.policy.value_net is not None and cfg.replan_every == 1 and cfg.n_candidates == 64
            x = torch.zeros(2, cfg.horizon, env.action_space.shape[0] + env.observation_space.shape[0])
            assert built.policy.value_net(x, torch.zeros(2, dtype=torch.long)).shape == (2,)


def test_diffuser_locomotion_recipe_is_the_papers():
    """Pins Diffuser's locomotion recipe in the method config: the start state conditions the plan by
    inpainting only (``embed_conditions`` off; it stays on for mazes, where it is ours and helps), and value
    guidance in Diffuser's form with its plan settings (scale 0.1, 2 guide steps, t_stopgrad 2, std scaling)."""
    cfg = load_config("diffuser", ["task=hopper-medium"])
    assert not cfg.embed_conditions
    assert (cfg.guidance_form, cfg.guide_scale, cfg.n_guide_steps, cfg.t_stopgrad, cfg.scale_grad_by_std) == (
        "diffuser", 0.1, 2, 2, True
    )
    assert load_config("diffuser", ["task=pointmaze-umaze"]).embed_conditions
    with pytest.raises(ConfigError, match="guidance_form"):
        load_config(None, [*TINY_VALUE_DIFFUSER, "guidance_form=mean"])


def test_bad_planner_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="sampler=ddpm"):
        load_config(None, [*TINY_VALUE_DIFFUSER, "sampler=ddim"])
    # DDIM with eta > 0 has stochastic steps (eta 1: the strided DDPM posterior), so std-scaled guidance applies
    cfg = load_config(None, [*TINY_VALUE_DIFFUSER, "sampler=ddim", "ddim_eta=1", "sampling_steps=3"])
    assert cfg.stochastic_steps and cfg.scale_grad_by_std
    with pytest.raises(ConfigError, match="ddim_eta=1.5 must be in"):
        load_config(None, [*TINY_VALUE_DIFFUSER, "sampler=ddim", "ddim_eta=1.5"])
    with pytest.raises(ConfigError, match="tracking=action"):
        load_config(None, [*TINY_VALUE_DIFFUSER, "tracking=pd"])
    with pytest.raises(ConfigError, match="history \\+ 2"):
        load_config(None, [*TINY_DECISION_DIFFUSER, "history=7"])
    with pytest.raises(ConfigError, match="condition_dropout"):
        load_config(None, [*TINY_DECISION_DIFFUSER, "condition_dropout=1.0"])
    with pytest.raises(ConfigError, match="sampling_steps"):
        load_config(None, [*TINY_DECISION_DIFFUSER, "sampling_steps=7"])


# ------------------------------------------------------------------------------------------ value guidance
def test_learned_value_guides_toward_higher_value():
    """A value net trained on noisy x_t (the agent's recipe) steers sampling up; a flipped sign steers it down."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    B, H, D = 64, 8, 2
    s = make_scheduler("ddpm", 10)
    data = torch.rand(512, H, D, generator=g) * 2 - 1
    value = data[..., 0].mean(1)  # the return of a window: its mean first coordinate
    net = TemporalValueNet(D, H, dim=8, dim_mults=(1, 2), activation="silu")
    net.set_target_stats(value)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(100):
        idx = torch.randint(0, 512, (64,), generator=g)
        x_t, t, _ = noised(s, data[idx], generator=g)
        loss = ((net.standardized(x_t, t) - (value[idx] - net.target_mean) / net.target_std) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.requires_grad_(False)

    def denoiser(x: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        return 0.5 * x  # x0 prediction that keeps the chain sensitive to the guide

    def run(scale: float) -> torch.Tensor:
        guide = ValueGuide(net, scale=scale, n_guide_steps=2, t_stopgrad=1) if scale else None
        with torch.inference_mode():
            return sample(denoiser, s, (B, H, D), guide=guide, generator=torch.Generator().manual_seed(1))

    plain, up, down = (float(run(k)[..., 0].mean()) for k in (0.0, 30.0, -30.0))
    assert up > plain + 0.1 and down < plain - 0.1, (down, plain, up)


class _FirstActionValue(torch.nn.Module):
    """Value of a plan = the mean of its first action dimension (normalized units), so the sign is visible."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x[..., 0].mean(1)


def test_diffuser_guidance_sign_and_best_candidate(tiny_hopper_dataset):
    # An untrained x0-predicting denoiser would wash the guidance out (Diffuser's form moves x_t, and the plan
    # is the model's x0 estimate of it); with epsilon prediction x0_hat follows x_t, so the sign stays visible.
    _cfg, env, agent = _agent(
        TINY_VALUE_DIFFUSER, tiny_hopper_dataset, ["n_candidates=6", "t_stopgrad=0", "predict_epsilon=true"]
    )
    policy = agent.policy
    policy.value_net = _FirstActionValue()
    policy.track_ema("value_net")  # planning uses the value net's EMA copy
    obs = np.stack([env.reset(seed=i)[0] for i in range(3)]).astype(np.float32)

    def planned_first_dim(scale: float) -> float:
        policy.cfg.guide_scale = scale
        policy.reseed(0)
        _, plan_act, _ = policy.plan(obs, None)
        return float(policy.act_norm.normalize(torch.as_tensor(plan_act))[..., 0].mean())

    plain, up, down = planned_first_dim(0.0), planned_first_dim(20.0), planned_first_dim(-20.0)
    assert up > plain > down, (down, plain, up)
    # the executed plan of each env is its candidate of highest value
    policy.cfg.guide_scale = 0.0
    policy.reseed(0)
    _, plan_act, _ = policy.plan(obs, None)
    values = policy.last_values.reshape(3, 6)
    chosen = policy.act_norm.normalize(torch.as_tensor(plan_act))[..., 0].mean(1)
    torch.testing.assert_close(chosen, values.max(1).values, atol=1e-4, rtol=1e-4)


def test_diffuser_plans_with_the_value_nets_ema_copy(tiny_hopper_dataset):
    """Pins Diffuser's planning with its value function's EMA (``value_experiment.ema``): the guide and the
    best-of-K ranking both use ``policy.averaged("value_net")``, which the base class's EMA machinery updates
    after every update and saves with the weights; the online value net only trains. Today's code guided and
    ranked with the online net."""
    cfg, env, agent = _agent(TINY_VALUE_DIFFUSER, tiny_hopper_dataset, ["n_candidates=5", "t_stopgrad=0"])
    policy = agent.policy
    ema = policy.averaged("value_net")
    assert ema is not policy.value_net and "emas.value_net.model.target_std" in policy.state_dict()
    torch.testing.assert_close(ema.target_std, policy.value_net.target_std)  # target stats reach the copy
    # the copy follows the trained net through the base class's EMA step
    with policy_within_training_step(policy):
        agent.algorithm.update(buffer=agent.batch_source, sample_size=8)
    online = dict(policy.value_net.named_parameters())
    for name, p in ema.named_parameters():
        torch.testing.assert_close(p, online[name])  # before ema_start the EMA copies the net
    # a checkpoint from before the value EMA existed loads, its EMA starting from the saved value net
    old = {k: v.clone() if isinstance(v, torch.Tensor) else v
           for k, v in agent.algorithm.state_dict().items() if ".emas." not in k}
    for key in [k for k in old if k.startswith("policy.value_net.") and old[k].is_floating_point()]:
        old[key] += 1.0  # a value net no fresh build has
    shell = AGENTS["diffuser"].build(cfg, env.observation_space, env.action_space, None)
    shell.algorithm.load_state_dict(old)
    for name, p in shell.policy.averaged("value_net").state_dict().items():
        torch.testing.assert_close(p, old[f"policy.value_net.{name}"])
    # planning: guide and ranking read the EMA copy, not the online net
    obs = np.stack([env.reset(seed=i)[0] for i in range(2)]).astype(np.float32)
    policy.value_net = _FirstActionValue()  # must not be used when acting
    policy.emas["value_net"].model = _FirstActionValue()
    policy.reseed(0)
    _, plan_act, _ = policy.plan(obs, None)
    chosen = policy.act_norm.normalize(torch.as_tensor(plan_act))[..., 0].mean(1)
    torch.testing.assert_close(chosen, policy.last_values.reshape(2, 5).max(1).values, atol=1e-4, rtol=1e-4)


def test_diffuser_replans_every_step_and_executes_the_first_action(tiny_hopper_dataset):
    cfg, _env, agent = _agent(TINY_VALUE_DIFFUSER, tiny_hopper_dataset)
    policy, calls = agent.policy, []
    plan = policy.plan

    def recording(obs, goal):
        out = plan(obs, goal)
        calls.append(out[1][:, 0].copy())  # first planned action of each env
        return out

    policy.plan = recording
    venv = DummyVectorEnv([lambda i=i: make_env(cfg.task, seed=i) for i in range(2)])
    collector = Collector(policy, venv, VectorReplayBuffer(50, 2))
    collector.reset()
    collector.collect(n_step=8)
    assert len(calls) == 4  # one batched plan per step for both envs
    np.testing.assert_allclose(collector.buffer.act[:4], np.clip(np.stack([c[0] for c in calls]), -1, 1), atol=1e-6)


def test_value_net_learns_in_the_agent_update(tiny_hopper_dataset):
    _cfg, _env, agent = _agent(TINY_VALUE_DIFFUSER, tiny_hopper_dataset, ["lr=3e-3"])
    with policy_within_training_step(agent.policy):
        losses = [agent.algorithm.update(buffer=agent.batch_source, sample_size=32).value_loss for _ in range(40)]
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8]), losses


# -------------------------------------------------------------------------------- classifier-free guidance
def test_cfg_weights_through_the_unet_and_its_training_null():
    """w=0 samples the unconditional model, w=1 the conditional one; the null used in training (drop_cond)
    is the one sampling uses (cond=None)."""
    from diffplan.diffusion import classifier_free

    torch.manual_seed(0)
    net = TemporalUnet1d(3, dim=8, dim_mults=(1, 2), cond_dim=1)
    x, t, y = torch.randn(4, 8, 3), torch.randint(0, 10, (4,)), torch.rand(4, 1)
    torch.testing.assert_close(net(x, t, y, drop_cond=torch.ones(4, dtype=torch.bool)), net(x, t, None))
    s = make_scheduler("ddim", 10)
    s.set_timesteps(4)

    def draw(**kw):
        return sample(net, s, (4, 8, 3), generator=torch.Generator().manual_seed(3), **kw)

    assert torch.equal(draw(cond=y, model_fn=classifier_free(net, 0.0)), draw(cond=None))
    assert torch.equal(draw(cond=y, model_fn=classifier_free(net, 1.0)), draw(cond=y))
    assert not torch.allclose(draw(cond=y), draw(cond=None))
    two_calls, one_call = classifier_free(net, 1.7)(x, t, y), classifier_free(net, 1.7, one_call=True)(x, t, y)
    torch.testing.assert_close(one_call, two_calls, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(two_calls, net(x, t, None) + 1.7 * (net(x, t, y) - net(x, t, None)))


def test_decision_diffuser_guidance_weight(tiny_hopper_dataset):
    """At w=0 the plan ignores the return condition; at w=1 it follows it."""
    _cfg, env, agent = _agent(TINY_DECISION_DIFFUSER, tiny_hopper_dataset)
    policy = agent.policy
    with policy_within_training_step(policy):
        for _ in range(3):
            agent.algorithm.update(buffer=agent.batch_source, sample_size=8)
    obs = env.reset(seed=0)[0][None].astype(np.float32)

    def plan(w: float, target: float) -> np.ndarray:
        policy.cfg.guidance_weight, policy.cfg.target_return = w, target
        policy.reseed(0)
        return policy.plan(obs)[0]

    np.testing.assert_array_equal(plan(0.0, 0.1), plan(0.0, 0.9))
    assert not np.allclose(plan(1.0, 0.1), plan(1.0, 0.9))


# -------------------------------------------------------------------------------------- inverse dynamics
def test_inverse_dynamics_recovers_actions_of_a_linear_system():
    rng = np.random.default_rng(0)
    O, A = 4, 2
    Adyn = np.eye(O) + 0.1 * rng.normal(size=(O, O))
    Bdyn = rng.normal(size=(O, A))
    episodes = []
    for _ in range(20):
        s = rng.uniform(-1, 1, O)
        obs, act, nxt = [], [], []
        for _ in range(40):
            a = rng.uniform(-1, 1, A)
            s2 = np.clip(Adyn @ s + Bdyn @ a, -3, 3) * 0.9
            obs.append(s), act.append(a), nxt.append(s2)
            s = s2
        episodes.append({"obs": np.array(obs), "act": np.array(act), "next_obs": np.array(nxt), "rew": np.zeros(40)})
    data = Episodes.from_list(episodes, source="linear")
    cfg = load_config(
        None,
        [*TINY_DECISION_DIFFUSER, "horizon=4", "history=0", "inv_hidden=64", "lr=1e-2", "normalizer=gaussian"],
    )
    obs_space = gym.spaces.Box(-np.inf, np.inf, (O,), np.float32)
    act_space = gym.spaces.Box(-1, 1, (A,), np.float32)
    agent = AGENTS["decision_diffuser"].build(cfg, obs_space, act_space, data)
    with policy_within_training_step(agent.policy):
        for _ in range(60):
            agent.algorithm.update(buffer=agent.batch_source, sample_size=64)
    policy = agent.policy
    with torch.no_grad():
        s, s2 = (policy.obs_norm.normalize(torch.as_tensor(v)) for v in (data.obs, data.next_obs))
        pred = policy.act_norm.unnormalize(policy.action(s, s2)).numpy()
    err = np.abs(pred - data.act).mean()
    assert err < 0.1 * np.abs(data.act - data.act.mean(0)).mean(), err


# ------------------------------------------------------------------------------------ history in the state
def test_decision_diffuser_history_is_inpainted_and_cleared_on_reset(tiny_hopper_dataset):
    cfg, env, agent = _agent(TINY_DECISION_DIFFUSER, tiny_hopper_dataset)
    policy = agent.policy
    k = cfg.history
    # env 0 ends after 3 steps, env 1 runs on: row 0 of the Batch state is zeroed -> its history restarts
    venv = DummyVectorEnv(
        [lambda: gym.wrappers.TimeLimit(make_env(cfg.task, seed=0), 3), lambda: make_env(cfg.task, seed=1)]
    )
    collector = Collector(policy, venv, VectorReplayBuffer(40, 2))
    collector.reset()
    collector.collect(n_step=2 * 5)
    state = collector.buffer.policy.hidden_state
    assert isinstance(state, Batch) and state.hist.shape[1:] == (k + 1, env.observation_space.shape[0])
    counts_env0 = state.count[: 5].tolist()  # buffer 0 holds env 0's steps
    assert counts_env0 == [1, 2, 3, 1, 2], counts_env0
    # the plan starts with the history (inpainted exactly), then the planned states
    hist, count = state.hist[21:22], state.count[21:22]  # env 1 (buffer 1 starts at 20) at its 2nd step
    assert count.tolist() == [2]
    plan, _ = policy.plan(hist[:, -1], None, hist, count)
    np.testing.assert_allclose(plan[0, k - 1 : k + 1], hist[0, -2:], atol=1e-4)
    # before the history fills up, the missing past is the episode's first state, as in the training windows
    np.testing.assert_allclose(plan[0, : k - 1], np.repeat(hist[0, -2:-1], k - 1, 0), atol=1e-4)


def test_decision_diffuser_trains_on_front_padded_history_windows(tiny_hopper_dataset):
    """Pins the Decision Diffuser's history slot: its training windows include starts 1..k steps before an
    episode's first step, padded with the episode's first state, so the current-state slot (index k) has held
    states 0..k-1 of an episode, as it does at the start of every test episode. Before the fix every window
    started inside its episode and slot k never held an episode's first k states."""
    cfg, _env, agent = _agent(TINY_DECISION_DIFFUSER, tiny_hopper_dataset)
    k, A = cfg.history, agent.policy.act_dim
    data = agent.batch_source.dataset
    episodes = data.episodes
    ids = torch.arange(len(data))
    batch = data.get(ids)
    rel = (data.window_start - data.window_first).numpy()  # window start relative to the episode's start
    assert set(range(-k, 0)) <= set(rel.tolist())
    obs = batch["traj"][..., A:]
    first_state = data.data[data.window_first][:, A:]  # (W, O) normalized first state of each window's episode
    for j in range(1, k + 1):
        rows = np.flatnonzero(rel == -j)
        assert len(rows) == len(episodes.lengths)  # one such window per episode
        torch.testing.assert_close(obs[rows, :j], first_state[rows, None].expand(-1, j, -1))
        # slot k holds the episode's step k - j
        torch.testing.assert_close(obs[rows, k], data.data[data.window_first[rows] + k - j][:, A:])
    # and the training update runs on them (the inverse dynamics never pairs a padded step)
    with policy_within_training_step(agent.policy):
        stats = agent.algorithm.update(buffer=agent.batch_source, sample_size=16)
    assert np.isfinite(stats.loss) and np.isfinite(stats.inv_loss)


def test_decision_diffuser_acts_with_the_ema_inverse_dynamics(tiny_hopper_dataset):
    """Pins the EMA of the inverse-dynamics model (the public code's EMA model holds it with the denoiser): the
    base class's EMA step averages it, it is saved with the weights, and planning uses the averaged copy."""
    _cfg, env, agent = _agent(TINY_DECISION_DIFFUSER, tiny_hopper_dataset)
    policy = agent.policy
    assert any(key.startswith("emas.inv_dyn.model.") for key in policy.state_dict())
    obs = env.reset(seed=0)[0][None].astype(np.float32)
    policy.reseed(0)
    _, before = policy.plan(obs)
    with torch.no_grad():  # changing the trained network leaves the acting copy alone ...
        for p in policy.inv_dyn.parameters():
            p.add_(1.0)
    policy.reseed(0)
    np.testing.assert_array_equal(policy.plan(obs)[1], before)
    with torch.no_grad():  # ... changing the averaged one changes the action
        for p in policy.averaged("inv_dyn").parameters():
            p.add_(1.0)
    policy.reseed(0)
    assert not np.allclose(policy.plan(obs)[1], before)
