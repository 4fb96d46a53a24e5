"""DPPO: fine-tuning a pre-trained diffusion policy online with PPO over its denoising chain (Ren et al., 2024,
"Diffusion Policy Policy Optimization").

The denoising chain is an inner MDP inside the environment's: each of the last K denoising steps of a sampled
action chunk is an action of a Gaussian policy N(mu_theta(x_k, t_k, s), sigma_k^2), whose log-probability is
exact, so PPO's clipped objective applies step by step. As the paper does:

* the policy starts from a ``diffusion_bc`` run (``diffplan finetune dppo --from RUN`` or ``init_from=RUN``);
  the fine-tuned network ``model`` denoises the last ``ft_denoising_steps`` steps, a frozen copy of the
  pre-trained weights (``ema.model``, which DPPO never updates) the earlier ones;
* exploration and scoring share one std floor (``min_logprob_std``): the chain is sampled with
  std_k = max(sigma_k, floor) and scored with the same std, so the log-probability is the density of the
  chain that was executed (the core's ``sample(min_std=)`` and ``step_log_prob``);
* the executed chunk is the chain's end clamped to ``clip_sample`` (denoised action clipping); the chain keeps
  the unclamped value, whose density is the one scored;
* the environment MDP is the decision MDP of action chunks: the online loop steps the training envs one
  decision at a time (:class:`diffplan.envs.ActionChunks`, ``execute_steps`` actions, rewards summed), so
  Tianshou's Collector, buffer and GAE (``compute_episodic_return`` via ``ActorCriticOnPolicyAlgorithm``) see
  one transition per decision; the critic V(s) sees the environment observation only;
* the loss is PPO's clipped surrogate over (decision, denoising step) pairs, the advantage of a decision
  discounted by ``gamma_denoising`` per denoising step before the chain's end, the clip range growing from
  ``clip_ploss_coef_base`` (noisiest step) to ``clip_ploss_coef`` (last step) exponentially at rate
  ``clip_ploss_coef_rate``; per-entry log-probabilities clamped to [-5, 2] and averaged over the chunk
  (DPPO's surrogate ratio); advantages normalized per minibatch; optional BC regularisation (``bc_coef``:
  the log-probability, under the fine-tuned steps, of chains the frozen pre-trained policy samples);
* rewards are divided by the running standard deviation of their discounted sums along each env's trajectory,
  DPPO's ``RunningRewardScaler`` (:class:`~diffplan.agent.RunningRewardScaling`; Tianshou's own return scaling
  runs away from a pre-trained policy's first returns, see there).

Evaluation and deployment act one env step at a time like ``diffusion_bc`` (receding horizon over the chunk),
sampling the same split chain with the scheduler's own noise, as DPPO evaluates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from tianshou.algorithm.algorithm_base import TrainingStats
from tianshou.algorithm.modelfree.a2c import ActorCriticOnPolicyAlgorithm
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Batch, ReplayBuffer
from torch import nn

from diffplan.agent import Agent, OnlineConfig, RunningRewardScaling
from diffplan.agents.diffusion_bc import DiffusionBCConfig, DiffusionBCPolicy, make_denoiser
from diffplan.checkpoint import load_checkpoint
from diffplan.config import ConfigError
from diffplan.data import Episodes, observation_arrays
from diffplan.data.conditioning import ConditionEncoder, action_level_data
from diffplan.diffusion import sample, step_log_prob
from diffplan.nets.critic import ValueNet

LOGPROB_RANGE = (-5.0, 2.0)
"""DPPO clamps every entry's log-probability to this range before the ratio (its ``get_logprobs`` callers)."""

PRETRAINED_KEYS: tuple[str, ...] = (
    "task", "maze", "chunk", "execute_steps", "obs_history", "goal_conditioned", "diffusion_steps", "beta_schedule",
    "objective", "predict_epsilon", "clip_sample", "denoiser", "hidden", "depth", "time_dim", "activation",
    "unet_dim", "unet_dim_mults", "normalizer",
)
"""Fields a fine-tuning run takes from its ``diffusion_bc`` run (the network, its noise process and how it acts)."""


@dataclass
class DPPOConfig(DiffusionBCConfig, OnlineConfig):
    """DPPO fine-tuning. Defaults: DPPO's Gym recipe (``ft_ppo_diffusion_mlp.yaml``: 20 DDPM steps, the last 10
    fine-tuned, actor lr 1e-4, critic lr 1e-3, 5 epochs, GAE 0.99/0.95) with a CPU-sized collection.
    The network fields (``chunk``, ``hidden``, ...) are the pre-trained run's (:data:`PRETRAINED_KEYS`)."""

    agent: str = "dppo"
    PRETRAINED_AGENT: ClassVar[str] = "diffusion_bc"
    PRETRAINED_KEYS: ClassVar[tuple[str, ...]] = PRETRAINED_KEYS
    sampler: str = "ddpm"
    """Chain sampled and fine-tuned: ddpm (every one of the ``diffusion_steps``, DPPO's Gym default) | ddim
    (``sampling_steps`` DDIM steps with ``ddim_eta``: fine-tuning few steps)."""
    ft_denoising_steps: int = 10
    """K, the last denoising steps fine-tuned; the earlier ones use the frozen pre-trained network."""
    gamma_denoising: float = 0.99
    """Discount over denoising steps: the advantage of step k of K is scaled by gamma_denoising^(K-1-k)."""
    clip_ploss_coef: float = 0.01
    """PPO clip range of the last denoising step."""
    clip_ploss_coef_base: float = 0.01
    """PPO clip range of the first fine-tuned (noisiest) step."""
    clip_ploss_coef_rate: float = 3.0
    """Rate of the exponential interpolation of the clip range from base to ``clip_ploss_coef`` over the steps."""
    gamma: float = 0.99
    """Discount per decision (one executed chunk)."""
    gae_lambda: float = 0.95
    """GAE lambda over decisions."""
    lr: float = 1e-4
    """Adam learning rate of the fine-tuned denoiser (DPPO's actor_lr)."""
    critic_lr: float = 1e-3
    """Adam learning rate of the critic."""
    critic_hidden: int = 256
    """Critic MLP width (DPPO: 256)."""
    critic_depth: int = 3
    """Critic MLP hidden layers (DPPO: 3)."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    target_kl: float = 1.0
    """Stop an update's epochs once the approximate KL of a minibatch exceeds this (0: never)."""
    bc_coef: float = 0.0
    """Weight of the BC regularisation (0: off): minus the fine-tuned log-probability of chains sampled by the
    frozen pre-trained policy at the minibatch's observations."""
    return_scaling: bool = True
    """Divide rewards by the running std of their discounted sums (DPPO's reward_scale_running)."""
    advantage_normalization: bool = True
    """Normalize advantages per minibatch (DPPO's norm_adv)."""
    max_grad_norm: float = 0.0
    """Clip the gradient norm of each network's update (0: off, as DPPO's Gym configs)."""
    batch_size: int = 5000
    """Minibatch size in (decision, denoising step) pairs. DPPO's Gym recipe draws 5000 decisions with all their
    K steps out of 20000; 5000 pairs out of our 2000 decisions x 10 keeps its 4 minibatches per epoch."""
    update_epochs: int = 5
    """Passes over the collected pairs per update (DPPO: 5)."""
    train_envs: int = 8
    env_steps_per_update: int = 8000
    """Env steps collected before each update (DPPO's Gym recipe: 40 envs x 500 decisions x 4 = 80k)."""
    train_steps: int = 100
    eval_every: int = 10
    checkpoint_every: int = 10
    log_every: int = 1

    def validate(self) -> None:
        super().validate()
        if self.objective != "diffusion" or self.sampler not in ("ddpm", "ddim"):
            raise ConfigError(
                f"DPPO fine-tunes a diffusion chain: objective=diffusion and sampler ddpm | ddim (got "
                f"objective={self.objective}, sampler={self.sampler})"
            )
        if self.obs_history != 1:
            raise ConfigError(f"obs_history={self.obs_history}: DPPO decides chunks from the current observation (1)")
        steps = self.diffusion_steps if self.sampler == "ddpm" else self.sampling_steps
        if not 1 <= self.ft_denoising_steps <= steps:
            raise ConfigError(f"ft_denoising_steps={self.ft_denoising_steps} must be in [1, {steps}] (the chain's steps)")
        if min(self.clip_ploss_coef, self.clip_ploss_coef_base) <= 0 or not 0 < self.gamma_denoising <= 1:
            raise ConfigError("clip_ploss_coef and clip_ploss_coef_base must be > 0, gamma_denoising in (0, 1]")
        if not 0.0 <= self.gae_lambda <= 1.0 or not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"gae_lambda={self.gae_lambda} must be in [0, 1] and gamma={self.gamma} in (0, 1]")
        if self.train_envs < 1 or self.env_steps_per_update < self.train_envs or self.update_epochs < 1:
            raise ConfigError("train_envs >= 1, env_steps_per_update >= train_envs and update_epochs >= 1 required")
        if self.batch_size < 1 or self.bc_coef < 0 or self.target_kl < 0:
            raise ConfigError("batch_size >= 1, bc_coef >= 0 and target_kl >= 0 required")


class DPPOPolicy(DiffusionBCPolicy):
    """The split chain: ``model`` (fine-tuned) for the last K steps, ``ema.model`` (frozen pre-trained) before.

    Collecting for training (inside Tianshou's training step) it decides one whole chunk per call from the
    current observation and hands its chain to the buffer (``policy.chain``); otherwise it acts one step at a
    time like :class:`DiffusionBCPolicy` (evaluation, deployment).
    """

    cfg: DPPOConfig

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        cfg = self.cfg
        self.chain_scheduler = self.make_sampling_scheduler()  # the acting chain: ddpm over all T, else sampling_steps
        ft = self.chain_scheduler.timesteps[-cfg.ft_denoising_steps:].clone()
        self.register_buffer("ft_timesteps", ft, persistent=False)
        """(K,) long: timesteps of the fine-tuned steps, in chain order."""
        self._ft = frozenset(ft.tolist())
        self.ema.model.requires_grad_(False)

    def decision_chunk(self) -> tuple[int, int]:
        return self.cfg.chunk, self.cfg.execute_steps

    def denoiser(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The split chain's network at timestep t (every row at one t, as in the sampling loop)."""
        model = self.model if int(t[0]) in self._ft else self.ema.model
        return model(x, t, cond)

    def sample_chain(
        self, cond: torch.Tensor, min_std: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample chunks through the core loop. cond: (B, cond_dim). Returns x0 (B, C, A) (normalized, unclamped)
        and the fine-tuned part of the chain (B, K + 1, C, A): its entry 0 is the input of the first fine-tuned
        step, entry K = x0."""
        shape = (cond.shape[0], self.cfg.chunk, self.act_dim)
        x0, chain = sample(
            self.model, self.chain_scheduler, shape, cond=cond, generator=generator or self.generator,
            device=cond.device, return_chain=True, model_fn=self.denoiser, min_std=min_std,
        )
        return x0, chain[:, -(self.cfg.ft_denoising_steps + 1):]

    def entry_log_probs(
        self, cond: torch.Tensor, x_t: torch.Tensor, x_next: torch.Tensor, k: torch.Tensor
    ) -> torch.Tensor:
        """Per-entry log-densities (N, C, A) of fine-tuned steps x_t -> x_next, rows at fine-tuned step k (N,)
        (0..K-1), under the fine-tuned network with the sampling floor; differentiable in ``model`` only."""
        return step_log_prob(
            self.model, self.chain_scheduler, x_t, x_next, self.ft_timesteps[k], cond=cond,
            min_std=self.cfg.min_logprob_std,
        )

    def chain_log_prob(self, cond: torch.Tensor, chain: torch.Tensor) -> torch.Tensor:
        """log-density of each fine-tuned step of ``chain`` (B, K + 1, C, A) (from :meth:`sample_chain`): (B, K),
        summed over the chunk's entries; the exact density of the steps taken."""
        x_t, x_next, k, rows = chain_pairs(chain)
        return self.entry_log_probs(cond[rows], x_t, x_next, k).flatten(1).sum(-1).reshape(chain.shape[0], -1)

    def denoising_chain(
        self, cond: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The exploring chain: x0 (B, C, A), fine-tuned chain (B, K + 1, C, A), its log-probs (B, K)."""
        x0, chain = self.sample_chain(cond, self.cfg.min_logprob_std, generator)
        return x0, chain, self.chain_log_prob(cond, chain)

    def _executed(self, x0: torch.Tensor) -> np.ndarray:
        """Denoised chunk (B, C, A) -> actions in env units, clamped first (DPPO's final action clip)."""
        if self.cfg.clip_sample:
            x0 = x0.clamp(-self.cfg.clip_sample, self.cfg.clip_sample)
        return self.act_norm.unnormalize(x0).cpu().numpy().astype(np.float32)

    @torch.inference_mode()
    def plan(self, obs: np.ndarray, goal: np.ndarray | None) -> np.ndarray:
        """One chunk per env (evaluation, deployment): the split chain with the scheduler's own noise (no floor),
        as DPPO evaluates. obs (M, K, O) or (M, O), goal (M, G) | None -> (M, C, A) env units."""
        with self.latency.time(len(obs)):
            cond = self.encoder.encode(self._history(obs), goal, self.device)
            x0, _ = self.sample_chain(cond, 0.0)
            return self._executed(x0)

    def forward(self, batch: Batch, state: Batch | None = None, **kwargs: Any) -> Batch:
        if not self.is_within_training_step:
            return super().forward(batch, state, **kwargs)
        obs, goal = observation_arrays(batch.obs)
        with torch.no_grad():
            cond = self.encoder.encode(obs, goal, self.device)
            x0, chain = self.sample_chain(cond, self.cfg.min_logprob_std)
        return Batch(act=self._executed(x0).reshape(len(obs), -1), policy=Batch(chain=chain.cpu().numpy()))


def chain_pairs(chain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, K + 1, C, A) chains -> their B*K steps: x_t, x_next (B*K, C, A), step k (B*K,) and row b (B*K,)."""
    B, K = chain.shape[0], chain.shape[1] - 1
    k = torch.arange(K, device=chain.device).repeat(B)
    rows = torch.arange(B, device=chain.device).repeat_interleave(K)
    return chain[:, :-1].reshape(B * K, *chain.shape[2:]), chain[:, 1:].reshape(B * K, *chain.shape[2:]), k, rows


class ObsCritic(nn.Module):
    """V(s) on the environment observation: the policy's condition encoder (normalized observation [and goal])
    into an MLP. ``forward(obs)`` takes raw observations (what Tianshou's GAE helper passes), ``value(cond)`` the
    encoded ones."""

    def __init__(self, encoder: ConditionEncoder, hidden: int, depth: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.net = ValueNet(encoder.dim, hidden=hidden, depth=depth)

    def value(self, cond: torch.Tensor) -> torch.Tensor:
        """cond (B, cond_dim) -> (B,)."""
        return self.net(cond)

    def forward(self, obs: Any) -> torch.Tensor:
        o, g = observation_arrays(obs)
        return self.value(self.encoder.encode(o, g, next(self.net.parameters()).device))


@dataclass(kw_only=True)
class DPPOTrainingStats(TrainingStats):
    loss: float
    pg_loss: float
    v_loss: float
    bc_loss: float
    approx_kl: float
    clip_fraction: float
    explained_variance: float
    ratio_mean: float
    gradient_steps: int
    denoising_std: list[float]
    """Sampling std of each fine-tuned step (floor included), first to last."""
    ratio_per_step: list[float]
    """Mean probability ratio of each fine-tuned step over the update."""

    def get_loss_stats_dict(self) -> dict[str, float]:
        stats = super().get_loss_stats_dict()
        for name in ("denoising_std", "ratio_per_step"):
            for k, value in enumerate(stats.pop(name)):
                stats[f"{name}/k{k}"] = value
        return stats


class DPPOAlgorithm(RunningRewardScaling, ActorCriticOnPolicyAlgorithm):
    """PPO over the denoising chain. Tianshou's actor-critic base computes V and GAE over decisions
    (``_add_returns_and_advantages``) on rewards scaled as DPPO does (:class:`~diffplan.agent.RunningRewardScaling`);
    this class adds the chain's old log-probabilities and the loss."""

    policy: DPPOPolicy
    critic: ObsCritic

    def __init__(self, *, policy: DPPOPolicy, critic: ObsCritic, cfg: DPPOConfig) -> None:
        grad_norm = cfg.max_grad_norm or None
        super().__init__(
            policy=policy, critic=critic, optim=AdamOptimizerFactory(lr=cfg.critic_lr), optim_include_actor=False,  # type: ignore[arg-type]
            max_grad_norm=grad_norm, gae_lambda=cfg.gae_lambda, gamma=cfg.gamma, return_scaling=False,
        )
        self.init_reward_scaling(cfg.return_scaling)
        self.cfg = cfg
        self.actor_optim = self._create_optimizer(policy.model, AdamOptimizerFactory(lr=cfg.lr), max_grad_norm=grad_norm)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        """Minibatch shuffling and the BC regulariser's chains (checkpointed)."""
        K = cfg.ft_denoising_steps
        self.register_buffer(
            "advantage_discount", cfg.gamma_denoising ** torch.arange(K - 1, -1, -1, dtype=torch.float32),
            persistent=False,
        )
        frac = torch.arange(K, dtype=torch.float32) / max(K - 1, 1)
        base, top, rate = cfg.clip_ploss_coef_base, cfg.clip_ploss_coef, cfg.clip_ploss_coef_rate
        clip = base + (top - base) * (torch.exp(rate * frac) - 1) / (math.exp(rate) - 1) if K > 1 else torch.tensor([top])
        self.register_buffer("clip_range", clip, persistent=False)
        """(K,) PPO clip range of each fine-tuned step, first (noisiest) to last."""

    # ------------------------------------------------------------------------------------------ warm start
    def warm_start(self, path: str) -> None:
        """Start from a ``diffusion_bc`` run: its acting (EMA) weights become both the fine-tuned network and the
        frozen base, its normalizers the encoder's and the action normalizer's. Other agents and other network
        settings are refused with one clear message."""
        import yaml

        if not Path(path).exists():
            raise ConfigError(f"init_from={path!r}: no such run directory or checkpoint")
        state, config_yaml = load_checkpoint(path)
        saved = yaml.safe_load(config_yaml) or {}
        if saved.get("agent") != "diffusion_bc":
            raise ConfigError(f"init_from={path!r} is a {saved.get('agent')!r} run; DPPO starts from a 'diffusion_bc' run")
        defaults = DiffusionBCConfig()
        differ = [
            f"{k}={getattr(self.cfg, k)!r} (run: {saved.get(k, getattr(defaults, k))!r})"
            for k in PRETRAINED_KEYS
            if k not in ("task", "maze", "execute_steps") and saved.get(k, getattr(defaults, k)) != getattr(self.cfg, k)
        ]
        if saved.get("task") != self.cfg.task:
            differ.insert(0, f"task={self.cfg.task!r} (run: {saved.get('task')!r})")
        if differ:
            raise ConfigError(
                f"init_from={path!r} was trained with other settings: {', '.join(differ)}; "
                f"`diffplan finetune dppo --from {path}` takes them from the run"
            )
        weights = {k[len("policy."):]: v for k, v in state["algorithm"].items() if k.startswith("policy.")}
        for key in [k for k in weights if k.startswith("model.")]:
            weights[key] = weights["ema." + key]  # fine-tune what the BC policy acted with
        self.policy.load_state_dict(weights)

    # -------------------------------------------------------------------------------------------- update
    def _preprocess_batch(self, batch: Any, buffer: ReplayBuffer, indices: np.ndarray) -> Any:
        batch = super()._preprocess_batch(batch, buffer, indices)  # the rewards scaled
        batch = self._add_returns_and_advantages(batch, buffer, indices)
        policy = self.policy
        obs, goal = observation_arrays(batch.obs)
        batch.cond = policy.encoder.encode(obs, goal, policy.device)
        batch.chain = torch.as_tensor(np.asarray(batch.policy.chain), device=policy.device)
        x_t, x_next, k, rows = chain_pairs(batch.chain)
        old = []
        with torch.no_grad():  # in slices: N*K model rows at once would hold large activations
            for s in range(0, len(k), self.cfg.batch_size):
                sl = slice(s, s + self.cfg.batch_size)
                old.append(self._surrogate_log_prob(batch.cond[rows[sl]], x_t[sl], x_next[sl], k[sl]))
        batch.logp_old = torch.cat(old).reshape(len(batch), -1)
        return batch

    def _surrogate_log_prob(
        self, cond: torch.Tensor, x_t: torch.Tensor, x_next: torch.Tensor, k: torch.Tensor
    ) -> torch.Tensor:
        """DPPO's per-step log-probability for the ratio: entries clamped to LOGPROB_RANGE, averaged. (N,)"""
        return self.policy.entry_log_probs(cond, x_t, x_next, k).clamp(*LOGPROB_RANGE).flatten(1).mean(-1)

    def _bc_loss(self, cond: torch.Tensor) -> torch.Tensor:
        """Minus the fine-tuned steps' log-probability of chains the frozen pre-trained policy samples (B,)."""
        policy = self.policy
        with torch.no_grad():
            _, chain = sample(
                policy.ema.model, policy.chain_scheduler, (cond.shape[0], policy.cfg.chunk, policy.act_dim),
                cond=cond, generator=self.generator, device=cond.device, return_chain=True,
                min_std=self.cfg.min_logprob_std,
            )
        x_t, x_next, k, rows = chain_pairs(chain[:, -(self.cfg.ft_denoising_steps + 1):])
        return -self._surrogate_log_prob(cond[rows], x_t, x_next, k).mean()

    def _update_with_batch(self, batch: Any, batch_size: int | None, repeat: int) -> DPPOTrainingStats:  # type: ignore[override]
        cfg, K, N = self.cfg, self.cfg.ft_denoising_steps, len(batch)
        chain, cond, logp_old = batch.chain, batch.cond, batch.logp_old
        adv_all, returns = batch.adv.float(), batch.returns.float()
        v_old = batch.v_s.float()
        explained = float(1 - torch.var(returns - v_old) / torch.var(returns).clamp(min=1e-8))
        pairs, size = N * K, batch_size or N * K
        sums: dict[str, float] = {"loss": 0.0, "pg": 0.0, "v": 0.0, "bc": 0.0, "kl": 0.0, "clip": 0.0, "ratio": 0.0}
        ratio_sum, ratio_count = torch.zeros(K), torch.zeros(K)
        steps, stop = 0, False
        for _ in range(repeat):
            perm = torch.randperm(pairs, generator=self.generator).to(chain.device)
            for start in range(0, pairs, size):
                idx = perm[start:start + size]
                n, k = idx // K, idx % K
                new = self._surrogate_log_prob(cond[n], chain[n, k], chain[n, k + 1], k)
                logratio = new - logp_old[n, k]
                ratio = logratio.exp()
                adv = adv_all[n]
                if cfg.advantage_normalization and len(adv) > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                adv = adv * self.advantage_discount[k]
                clip = self.clip_range[k]
                pg_loss = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip, 1 + clip)).mean()
                bc_loss = self._bc_loss(cond[n]) if cfg.bc_coef > 0 else torch.zeros(())
                # DPPO evaluates V once per pair; a decision's pairs share its observation, so V runs once per
                # distinct decision of the minibatch (~40% of its rows) and is gathered back: the same loss and
                # gradient for less than half the critic's work.
                decisions, row = torch.unique(n, return_inverse=True)
                v_loss = 0.5 * ((self.critic.value(cond[decisions])[row] - returns[n]) ** 2).mean()
                # Disjoint graphs (the critic reads the encoded observation, not the denoiser): two optimizer steps
                # equal DPPO's one step on the summed loss.
                self.actor_optim.step(pg_loss + cfg.bc_coef * bc_loss)
                self.optim.step(cfg.vf_coef * v_loss)
                with torch.no_grad():
                    pg_loss, bc_loss, v_loss = pg_loss.detach(), bc_loss.detach(), v_loss.detach()
                    kl = float(((ratio - 1) - logratio).mean())
                    sums["kl"] += kl
                    sums["clip"] += float(((ratio - 1).abs() > clip).float().mean())
                    sums["ratio"] += float(ratio.mean())
                    ratio_sum.index_add_(0, k.cpu(), ratio.detach().cpu())
                    ratio_count.index_add_(0, k.cpu(), torch.ones(len(k)))
                    sums["pg"] += float(pg_loss)
                    sums["v"] += float(v_loss)
                    sums["bc"] += float(bc_loss)
                    sums["loss"] += float(pg_loss + cfg.bc_coef * bc_loss + cfg.vf_coef * v_loss)
                steps += 1
                if cfg.target_kl and kl > cfg.target_kl:
                    stop = True
                    break
            if stop:
                break
        mean = {key: value / max(steps, 1) for key, value in sums.items()}
        policy = self.policy
        std = policy.chain_scheduler._gather("std", policy.ft_timesteps, torch.zeros(K, 1)).flatten()
        return DPPOTrainingStats(
            loss=mean["loss"], pg_loss=mean["pg"], v_loss=mean["v"], bc_loss=mean["bc"], approx_kl=mean["kl"],
            clip_fraction=mean["clip"], explained_variance=explained, ratio_mean=mean["ratio"], gradient_steps=steps,
            denoising_std=std.clamp(min=cfg.min_logprob_std).tolist(),
            ratio_per_step=(ratio_sum / ratio_count.clamp(min=1)).tolist(),
        )


CONFIG = DPPOConfig


def build(
    cfg: DPPOConfig, observation_space: gym.Space, action_space: gym.spaces.Box, episodes: Episodes | None = None
) -> Agent:
    """Build the DPPO policy (a shell of the pre-trained network, filled by ``warm_start`` or a checkpoint) and its
    PPO algorithm. ``episodes`` (optional for an online agent) only fits the normalizers of a run from scratch."""
    torch.manual_seed(cfg.seed)
    data = action_level_data(
        cfg, observation_space, action_space, episodes, goal_conditioned=cfg.goal_conditioned,
        history=cfg.obs_history, chunk=cfg.chunk,
    )
    policy = DPPOPolicy(
        model=make_denoiser(cfg, data.act_dim, data.encoder.dim), cfg=cfg, encoder=data.encoder,
        act_norm=data.act_norm, observation_space=observation_space, action_space=action_space,
    )
    critic = ObsCritic(policy.encoder, cfg.critic_hidden, cfg.critic_depth)
    algorithm = DPPOAlgorithm(policy=policy, critic=critic, cfg=cfg).to(cfg.device)
    return Agent(policy=policy, algorithm=algorithm)
