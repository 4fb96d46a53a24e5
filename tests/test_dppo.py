"""DPPO (fine-tuning a diffusion policy with PPO over its denoising chain) and ``diffplan finetune``.

The chain's log-probability against a hand computation that replays the sampler's noise, the PPO ratio before the
first update, where the gradients go, a fine-tuning run that must raise the return of a deliberately bad start on
a 1-D task registered here, exact resume, the chunk decision MDP, deployment through the sim deploy path, and the
finetune command for DPPO (from diffusion_bc) and the Gaussian baseline (PPO from bc), with its bad-input errors.
"""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from tianshou.data import Collector, VectorReplayBuffer
from tianshou.utils.torch_utils import policy_within_training_step

from diffplan.agents import AGENTS
from diffplan.agents.dppo import chain_pairs
from diffplan.cli import main
from diffplan.compose import load_config
from diffplan.config import ConfigError
from diffplan.deploy.runner import ChunkPlanner, run_in_process
from diffplan.diffusion import make_betas
from diffplan.envs import ActionChunks, make_env, make_vector_env
from diffplan.training import load_trained, run_experiment, setup, train

from .conftest import TINY_DIFFUSION_BC, TINY_DPPO, tiny_baseline

POINT = "DiffplanTestPoint1D-v0"


class Point1D(gym.Env):
    """A point on a line pushed by its action (0.25 a per step) toward a goal at +3 from a start near 0 (4-step episodes); the reward
    is the step's progress |x - 3| - |x' - 3|, so a return says how far the point got."""

    observation_space = gym.spaces.Box(-4.0, 4.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.x = 0.1 * float(self.np_random.uniform(-1, 1))
        return np.array([self.x], np.float32), {}

    def step(self, action):
        x = self.x
        self.x = float(np.clip(x + 0.25 * float(np.clip(action[0], -1, 1)), -4.0, 4.0))
        return np.array([self.x], np.float32), abs(x - 3.0) - abs(self.x - 3.0), False, False, {}


if POINT not in gym.registry:
    gym.register(POINT, entry_point=Point1D, max_episode_steps=4)

POINT_RUN = [
    "agent=dppo", f"task={POINT}", "chunk=2", "execute_steps=2", "goal_conditioned=false", "diffusion_steps=4",
    "sampling_steps=2", "ft_denoising_steps=2", "predict_epsilon=false", "hidden=16", "depth=1", "time_dim=4",
    "critic_hidden=16", "critic_depth=1", "train_envs=2", "subproc_envs=false", "env_steps_per_update=96",
    "update_epochs=4", "batch_size=48", "lr=0.01", "critic_lr=0.01", "clip_ploss_coef=0.2", "clip_ploss_coef_base=0.2",
    "min_logprob_std=0.2", "eval_every=0", "checkpoint_every=0", "eval_episodes=4", "eval_envs=2",
    "final_eval_episodes=4", "plot_plans=0", "torch_threads=1",
]
"""DPPO on the 1-D point: chunks of 2 actions, 4 DDPM steps of which the last 2 are fine-tuned."""


def _push_left(policy) -> None:
    """A deliberately bad pre-trained policy: the x0-predicting denoiser always says -0.6 (away from
    the goal); the frozen base copy too."""
    last = [m for m in policy.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-0.6)
    policy.ema.model.load_state_dict(policy.model.state_dict())


def _point_exp(tmp_path, *extra):
    return setup(load_config(None, [*POINT_RUN, f"run_dir={tmp_path / 'run'}", *extra]), progress=False)


def _collected_batch(exp, n_step=16):
    """Decisions collected the way the online loop collects them (chunk env, training mode), preprocessed."""
    policy, algorithm = exp.agent.policy, exp.agent.algorithm
    chunk, act_steps = policy.decision_chunk()
    venv = make_vector_env(exp.cfg.task, 2, 0, wrapper=lambda e: ActionChunks(e, chunk, act_steps))
    collector = Collector(policy, venv, VectorReplayBuffer(64, 2), exploration_noise=True)
    collector.reset()
    with policy_within_training_step(policy):
        collector.collect(n_step=n_step)
    buffer = collector.buffer
    idx = buffer.sample_indices(0)
    return algorithm._preprocess_batch(buffer[idx], buffer, idx)


# -------------------------------------------------------------------------------------------- the chain
def test_chain_log_prob_is_the_density_of_the_sampled_chain(tmp_path):
    """Replay the sampler by hand (DDPM posterior from the betas, base network before the fine-tuned steps, std
    floored at min_logprob_std): the sampled chain is exactly those steps, and its log-probability their density."""
    exp = _point_exp(tmp_path, "predict_epsilon=true", "diffusion_steps=5", "ft_denoising_steps=3")
    policy, cfg = exp.agent.policy, exp.cfg
    with torch.no_grad():  # make the frozen base differ from the fine-tuned network
        for p in policy.ema.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    cond = policy.encoder.encode(np.array([[-0.4], [0.3], [1.2]], np.float32), None)
    x0, chain, logp = policy.denoising_chain(cond, torch.Generator().manual_seed(3))
    K, T = cfg.ft_denoising_steps, cfg.diffusion_steps
    assert chain.shape == (3, K + 1, cfg.chunk, 1) and logp.shape == (3, K) and logp.requires_grad
    torch.testing.assert_close(chain[:, -1], x0)

    replay = torch.Generator().manual_seed(3)
    a_bar = torch.cumprod(1 - make_betas(cfg.beta_schedule, T), 0)
    x = torch.randn(x0.shape, generator=replay).double()
    expected_chain, expected_logp = [], []
    for t in range(T - 1, -1, -1):
        net = policy.model if t < K else policy.ema.model  # DDPM over all T: the last K steps are t = K-1 .. 0
        with torch.no_grad():
            eps = net(x.float(), torch.full((3,), t), cond).double()
        ab, ab_prev = a_bar[t], (a_bar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64))
        x0_hat = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
        beta = 1 - ab / ab_prev
        mean = ab_prev.sqrt() * beta / (1 - ab) * x0_hat + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * x
        std = (beta * (1 - ab_prev) / (1 - ab)).sqrt() if t > 0 else torch.tensor(0.0, dtype=torch.float64)
        std = std.clamp(min=cfg.min_logprob_std)  # the sampler's std, which must be the scorer's
        if t == K - 1:
            expected_chain.append(x)
        x = mean + std * torch.randn(x0.shape, generator=replay).double()
        if t < K:
            expected_chain.append(x)
            expected_logp.append(torch.distributions.Normal(mean, std).log_prob(x).flatten(1).sum(1))
    torch.testing.assert_close(chain.double(), torch.stack(expected_chain, 1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logp.double(), torch.stack(expected_logp, 1), rtol=1e-4, atol=1e-3)


def test_ppo_ratio_is_one_before_the_first_update_and_only_finetuned_steps_learn(tmp_path):
    exp = _point_exp(tmp_path, "predict_epsilon=true")
    policy, algorithm = exp.agent.policy, exp.agent.algorithm
    batch = _collected_batch(exp)
    assert batch.chain.shape == (len(batch), exp.cfg.ft_denoising_steps + 1, 2, 1)
    x_t, x_next, k, rows = chain_pairs(batch.chain)
    new = algorithm._surrogate_log_prob(batch.cond[rows], x_t, x_next, k).reshape(len(batch), -1)
    assert torch.equal(torch.exp(new - batch.logp_old), torch.ones_like(new))  # exactly 1

    # gradients of the chain's log-probability reach the fine-tuned network only; the base is frozen
    policy.chain_log_prob(batch.cond, batch.chain).sum().backward()
    assert all(p.grad is None for p in policy.ema.model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.model.parameters())
    policy.model.zero_grad()

    base = {k: v.clone() for k, v in policy.ema.model.state_dict().items()}
    ft = {k: v.clone() for k, v in policy.model.state_dict().items()}
    stats = algorithm._update_with_batch(batch, batch_size=10_000, repeat=1)  # one minibatch: ratio before a step
    assert stats.ratio_mean == pytest.approx(1.0, abs=1e-6) and stats.clip_fraction == 0.0
    assert stats.approx_kl == pytest.approx(0.0, abs=1e-7) and len(stats.denoising_std) == exp.cfg.ft_denoising_steps
    assert all(torch.equal(base[k], v) for k, v in policy.ema.model.state_dict().items())
    assert any(not torch.equal(ft[k], v) for k, v in policy.model.state_dict().items())


def test_rewards_are_scaled_by_the_running_std_of_their_discounted_sums_per_env():
    """DPPO's reward scaler on a real Tianshou vector buffer: per env, in time order, a discounted sum that restarts
    after an episode's end and carries over into the next update; the batch is in the statistics before it is
    scaled; the statistics and the sums survive a state-dict round trip."""
    from tianshou.data import Batch

    from diffplan.agent import RunningRewardScaling

    class Base:
        def _preprocess_batch(self, batch, buffer, indices):
            return batch

    class Scaled(RunningRewardScaling, Base):
        gamma = 0.5

    buffer = VectorReplayBuffer(8, 2)
    rewards = {0: [1.0, 2.0, 4.0], 1: [3.0, 1.0]}
    ends = {0: [False, True, False], 1: [False, False]}
    for t in range(3):
        envs = [e for e in (0, 1) if t < len(rewards[e])]
        buffer.add(Batch(obs=np.zeros((len(envs), 1)), act=np.zeros((len(envs), 1)),
                         rew=np.array([rewards[e][t] for e in envs]), terminated=np.array([ends[e][t] for e in envs]),
                         truncated=np.zeros(len(envs), bool), obs_next=np.zeros((len(envs), 1)), info=Batch()),
                   buffer_ids=envs)
    algo = Scaled()
    algo.init_reward_scaling(True)
    indices = buffer.sample_indices(0)
    out = algo._preprocess_batch(buffer[indices], buffer, indices)
    # env 0: 1, 0.5*1+2 = 2.5 (episode ends), 4; env 1: 3, 0.5*3+1 = 2.5
    sums = np.array([1.0, 2.5, 4.0, 3.0, 2.5])
    np.testing.assert_allclose(out.rew, np.array([1, 2, 4, 3, 1]) / np.sqrt(sums.var() + 1e-8), rtol=1e-6)
    assert algo.running_sum.tolist() == [4.0, 2.5]  # env 0 restarted after its end; env 1 still running
    state = algo.get_extra_state()
    again = Scaled()
    again.init_reward_scaling(True)
    again.set_extra_state(state)
    assert again.running_sum.tolist() == [4.0, 2.5] and again.reward_rms.count == 5
    assert np.isclose(again.reward_rms.var, sums.var())
    # the next update continues each env's sum: env 1's next reward 2 adds to 0.5 * 2.5
    buffer.reset()
    buffer.add(Batch(obs=np.zeros((1, 1)), act=np.zeros((1, 1)), rew=np.array([2.0]), terminated=np.array([False]),
                     truncated=np.array([False]), obs_next=np.zeros((1, 1)), info=Batch()), buffer_ids=[1])
    indices = buffer.sample_indices(0)
    again._preprocess_batch(buffer[indices], buffer, indices)
    assert again.running_sum.tolist() == [4.0, 3.25]
    off = Scaled()
    off.init_reward_scaling(False)
    assert off._preprocess_batch(buffer[indices], buffer, indices).rew.tolist() == [2.0]


def test_decisions_execute_chunks_and_count_env_steps(tmp_path):
    exp = _point_exp(tmp_path)
    batch = _collected_batch(exp, n_step=12)
    assert batch.act.shape == (len(batch), 2)  # one flat chunk of 2 actions per transition
    assert set(np.asarray(batch.info["env_steps"]).tolist()) == {2}
    env = ActionChunks(make_env(POINT, seed=0), chunk=3, act_steps=2)
    (x0,), _ = env.reset(seed=0)
    (x,), reward, *_, info = env.step(np.array([1.0, 1.0, -1.0], np.float32))
    # two actions ran (the third is past act_steps), their rewards summed: 0.25 + 0.25 of progress
    assert info["env_steps"] == 2 and x == pytest.approx(x0 + 0.5) and reward == pytest.approx(0.5)
    with pytest.raises(ValueError, match="act_steps"):
        ActionChunks(make_env(POINT), chunk=2, act_steps=3)


# ------------------------------------------------------------------------------------------- learning
def test_finetuning_raises_the_return_of_a_bad_start(tmp_path):
    """From a policy that pushes away from the goal, a few DPPO updates (fixed seed) must turn it around."""
    exp = _point_exp(tmp_path, "train_steps=8")
    _push_left(exp.agent.policy)
    before = exp.evaluate(4).to_dict()["return_mean"]
    results = run_experiment(exp)
    after = results["final"]["return_mean"]
    assert before < -0.5 and after > before + 0.5, (before, after)
    assert results["env_steps"] == 8 * 96


def test_resume_mid_finetuning_is_exact(tmp_path):
    n = 4
    straight, halves = tmp_path / "straight", tmp_path / "halves"

    def cfg(run_dir, *extra):
        return load_config(None, [*POINT_RUN, f"run_dir={run_dir}", "final_eval_episodes=1", *extra])

    train(cfg(straight, f"train_steps={n}", f"checkpoint_every={n // 2}", "bc_coef=0.1"), progress=False)
    train(cfg(halves, f"train_steps={n // 2}", "bc_coef=0.1"), progress=False)
    train(cfg(halves, f"train_steps={n}", f"checkpoint_every={n // 2}", "bc_coef=0.1"), resume=halves, progress=False)
    a = load_trained(straight).agent.algorithm.state_dict()
    b = load_trained(halves).agent.algorithm.state_dict()
    tensors = [k for k in a if isinstance(a[k], torch.Tensor)]
    assert tensors and a.keys() == b.keys()
    for key in tensors:
        assert torch.equal(a[key], b[key]), key
    assert a["_extra_state"]["count"] == b["_extra_state"]["count"] > 0  # return-scaling statistics too


def test_finetuned_policy_deploys_through_the_sim_path(tmp_path):
    exp = _point_exp(tmp_path, "train_steps=1")
    run_experiment(exp)
    policy = load_trained(tmp_path / "run").agent.policy
    assert isinstance(policy, ChunkPlanner)
    chunk = policy.plan_chunk(np.array([0.1], np.float32), np.array([[0.5]], np.float32))
    assert chunk.shape == (2, 1) and chunk[0, 0] == pytest.approx(0.5)
    ret = run_in_process(make_env(POINT, seed=0), policy, execute_ticks=2, seed=0)
    assert np.isfinite(ret)


# ------------------------------------------------------------------------------------- diffplan finetune
def _run_settings(run_dir):
    """The run settings of TINY_DPPO, without the network fields (finetune takes those from the run)."""
    net = ("chunk=", "execute_steps=", "diffusion_steps=", "sampling_steps=", "hidden=", "depth=", "time_dim=", "task=")
    return [o for o in TINY_DPPO[1:] if not o.startswith(net)] + [f"run_dir={run_dir}", "train_steps=1",
                                                                   "final_eval_episodes=1", "sampling_steps=3"]


def test_finetune_dppo_from_a_diffusion_bc_run(tiny_maze_dataset, tmp_path, capsys):
    bc_dir = tmp_path / "bc"
    train(load_config(None, [*TINY_DIFFUSION_BC, f"dataset={tiny_maze_dataset}", f"run_dir={bc_dir}",
                             "final_eval_episodes=1"]), progress=False)
    ft_dir = tmp_path / "ft"
    assert main(["finetune", "dppo", "--from", str(bc_dir), *_run_settings(ft_dir), "--no-progress"]) == 0
    saved = json.loads((ft_dir / "results.json").read_text())
    assert saved["agent"] == "dppo" and saved["env_steps"] >= 16
    bc = load_trained(bc_dir)
    cfg = load_trained(ft_dir).cfg
    assert (cfg.chunk, cfg.hidden, cfg.diffusion_steps, cfg.init_from) == (4, 16, 10, str(bc_dir))
    assert saved["final"]["normalized_score"] == saved["final"]["normalized_score"]  # the BC run's reference scores

    # warm start: before any update both networks are the BC policy's acting (EMA) weights
    exp = setup(load_config(None, ["agent=dppo", "task=pointmaze-umaze", *TINY_DPPO[2:],
                                   "diffusion_steps=10", "ft_denoising_steps=3", f"init_from={bc_dir}"]),
                progress=False)
    exp.agent.algorithm.warm_start(str(bc_dir))
    for net in (exp.agent.policy.model, exp.agent.policy.ema.model):
        for key, value in bc.agent.policy.ema.model.state_dict().items():
            assert torch.equal(net.state_dict()[key], value), key

    # bad sources: one clear line, exit 2
    capsys.readouterr()
    for source, message in ((tmp_path / "nowhere", "no such run directory"),
                            (ft_dir, "is a 'dppo' run; dppo fine-tunes a 'diffusion_bc' run")):
        assert main(["finetune", "dppo", "--from", str(source), *_run_settings(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert main(["finetune", "dppo", "--from", str(bc_dir), "task=Hopper-v5", *_run_settings(tmp_path / "y")]) == 2
    assert "was trained on task 'pointmaze-umaze'" in capsys.readouterr().err
    assert main(["finetune", "diffusion_bc", "--from", str(bc_dir), f"run_dir={tmp_path / 'z'}"]) == 2
    assert "does not fine-tune" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="other settings: diffusion_steps=6"):  # init_from with another network
        train(load_config(None, [*TINY_DPPO, f"init_from={bc_dir}", f"run_dir={tmp_path / 'w'}"]), progress=False)


def test_finetune_gaussian_ppo_from_a_bc_run(tiny_hopper_dataset, tmp_path):
    """The Gaussian baseline through the same command: PPO takes the bc run's layer sizes and task."""
    bc_dir = tmp_path / "bc"
    train(load_config(None, [*tiny_baseline("bc"), "task=Hopper-v5", f"dataset={tiny_hopper_dataset}",
                             f"run_dir={bc_dir}", "final_eval_episodes=1"]), progress=False)
    ft_dir = tmp_path / "ppo"
    args = ["train_envs=2", "subproc_envs=false", "env_steps_per_update=64", "update_epochs=1", "batch_size=32",
            "train_steps=1", "eval_every=0", "checkpoint_every=0", "final_eval_episodes=1", "eval_envs=1",
            f"run_dir={ft_dir}", "torch_threads=1", "--no-progress"]
    assert main(["finetune", "ppo", "--from", str(bc_dir), *args]) == 0
    cfg = load_trained(ft_dir).cfg
    assert cfg.hidden == [16, 16] and cfg.task == "Hopper-v5" and cfg.init_from == str(bc_dir)
    assert AGENTS["ppo"].CONFIG.PRETRAINED_AGENT == "bc"
    # fine-tuning starts gently (configs/ppo/finetune.yaml: DPPO's Gaussian recipe); the command line still wins
    # over it, and PPO from scratch keeps its own exploration noise and clip range
    assert (cfg.init_log_std, cfg.eps_clip, cfg.lr) == (-2.3, 0.01, 1e-4) and cfg.batch_size == 32
    scratch = load_config("ppo", ["task=Hopper-v5"])
    assert (scratch.init_log_std, scratch.eps_clip) == (-0.5, 0.2)
    log_std = load_trained(ft_dir).agent.algorithm.policy.actor.sigma_param  # (A, 1), one update from -2.3
    assert log_std.numel() == 3 and torch.allclose(log_std, torch.full_like(log_std, -2.3), atol=0.01)


def test_a_finetuning_file_is_checked_like_a_method_file(tmp_path):
    from diffplan.compose import finetune_layer, method_layer

    assert finetune_layer("dppo") is None  # DPPO only fine-tunes: its method files are its fine-tuning settings
    (tmp_path / "ppo").mkdir()
    (tmp_path / "ppo" / "finetune.yaml").write_text("task: hopper-medium\n")
    with pytest.raises(ConfigError, match="finetune.yaml: a fine-tuning file must not set 'task'"):
        finetune_layer("ppo", tmp_path)
    (tmp_path / "ppo" / "finetune.yaml").write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match="finetune.yaml"):
        finetune_layer("ppo", tmp_path)
    # the method file beside it is read by the same reader, with the same rule
    (tmp_path / "ppo" / "default.yaml").write_text("agent: bc\nlr: 0.001\n")
    with pytest.raises(ConfigError, match="default.yaml: a method file must not set 'agent'"):
        method_layer("ppo", "locomotion", tmp_path)


def test_bench_dppo_runs_resumes_and_refuses_a_run_another_process_trains(tiny_hopper_dataset, tmp_path, capsys):
    """``diffplan bench dppo`` end to end at tiny sizes on real Hopper physics: both pre-trainings, both
    fine-tunings with their start evaluation, one JSON; run again it trains nothing; a run whose lock another
    process holds stops the command with one line."""
    import fcntl

    runs, out = tmp_path / "runs", tmp_path / "dppo.json"
    data = f"dataset={tiny_hopper_dataset}"
    online = ["train_envs=2", "subproc_envs=false", "env_steps_per_update=16", "update_epochs=1", "batch_size=8"]
    args = ["bench", "dppo", "task=Hopper-v5", "seeds=0", "bc_steps=2", "env_steps=32", "evals=2", f"runs={runs}",
            "minutes=0",
            *[f"diffusion_bc.{kv}" for kv in (data, "hidden=16", "depth=2", "time_dim=8", "chunk=4", "execute_steps=2",
                                               "diffusion_steps=6", "sampling_steps=3", "batch_size=8", "eval_envs=1")],
            *[f"bc.{kv}" for kv in (data, "hidden=[16,16]", "batch_size=8", "eval_envs=1")],
            *[f"dppo.{kv}" for kv in (*online, "ft_denoising_steps=2", "sampling_steps=3", "critic_hidden=16", "critic_depth=1",
                                       "eval_envs=1")],
            *[f"ppo.{kv}" for kv in (*online, "eval_envs=1")],
            "--episodes", "1", "--out", str(out)]
    # a second process can train the baseline beside the first one's DPPO; the run over both reads its runs
    assert main([*args, "methods=ppo"]) == 0
    only_ppo = json.loads(out.read_text())
    assert only_ppo["curves"]["dppo"] == [] and len(only_ppo["curves"]["ppo"]) == 1
    assert sorted(p.parent.name for p in runs.glob("*/results.json")) == ["bc-s0", "ppo-s0"]
    ppo_stamp = (runs / "ppo-s0" / "results.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (runs / "ppo-s0" / "results.json").stat().st_mtime_ns == ppo_stamp
    result = json.loads(out.read_text())
    for agent in ("dppo", "ppo"):
        (curve,) = result["curves"][agent]
        assert curve["updates"] == 2 and curve["env_steps"] > 16 and curve["points"][0]["env_steps"] == 0 and len(curve["points"]) >= 2
    assert [r["seed"] for r in result["pretrained"]["diffusion_bc"]] == [0]
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/results.json")}
    assert len(stamps) == 4
    assert main(args) == 0  # everything finished: read, not trained again
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/results.json")} == stamps
    (runs / "ppo-s0" / "results.json").unlink()
    capsys.readouterr()
    with open(runs / "ppo-s0.lock", "w") as lock:  # another process training ppo-s0
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another process is training this run" in err[0]
    assert main([*args, "methods=ppo,sac"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "methods='ppo,sac': give dppo, ppo or dppo,ppo" in err[0]
