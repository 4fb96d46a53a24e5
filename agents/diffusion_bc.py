"""Diffusion behaviour cloning over action chunks (Chi et al., 2023, "Diffusion Policy", low-dim variant).

The model denoises a chunk of C future actions ``x = a_{t..t+C-1}`` of shape (B, C, A), conditioned on the
K most recent observations (and, for goal tasks such as PointMaze, the goal) flattened into one vector. It
is trained with the DDPM denoising loss and samples with DDIM at evaluation. Execution is receding-horizon:
the first ``execute_steps`` actions of a chunk are played, then a new chunk is sampled.

Tianshou integration: :class:`DiffusionBCPolicy` keeps each env's chunk, its observation history and a step
counter in Tianshou's ``state`` as a ``Batch``; the Collector zeroes a row when its env resets, and a zero
counter means "new episode: fill the history with the current observation and sample a chunk". All envs
that need a chunk at a step are sampled in one batched call.

DPPO-facing: :meth:`DiffusionBCPolicy.denoising_chain` runs the stochastic (DDPM) chain through the core
sampler, every step's std floored at ``min_logprob_std``, and returns every intermediate chunk;
:meth:`DiffusionBCPolicy.chain_log_prob` gives the per-step Gaussian log-likelihoods
log N(x_{k+1}; mu_theta(x_k, t_k, s), max(sigma_k, min_logprob_std)^2) with gradients (the core's
``step_log_prob``): with the same floor on both sides they are the density of the chain that was sampled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tianshou.algorithm.algorithm_base import TrainingStats
from tianshou.data import Batch

from diffplan.agent import Agent, DiffusionAgentConfig, DiffusionAlgorithm, DiffusionPolicy
from diffplan.config import ConfigError
from diffplan.data import Episodes, NormalizerModule, observation_arrays, split_observation_space
from diffplan.data.conditioning import ConditionEncoder, action_level_data
from diffplan.diffusion import denoising_loss, make_scheduler, sample, step_log_prob
from diffplan.nets import MLPDenoiser, TemporalUnet1d

DENOISERS = ("mlp", "unet")


@dataclass
class DiffusionBCConfig(DiffusionAgentConfig):
    """Diffusion BC policy. Defaults: Diffusion Policy's low-dim recipe shrunk to a 2-core CPU."""

    agent: str = "diffusion_bc"
    batch_size: int = 256
    lr: float = 3e-4
    chunk: int = 8
    """C, actions per sampled chunk (Diffusion Policy's prediction horizon; 16 there)."""
    execute_steps: int = 4
    """Actions of a chunk executed before sampling a new one (Diffusion Policy's action horizon; 8 there)."""
    obs_history: int = 1
    """K, observations the policy is conditioned on (Diffusion Policy uses 2)."""
    goal_conditioned: bool = True
    """Condition on the goal too (needs a Dict observation with desired_goal)."""
    sampling_steps: int = 10
    """DDIM steps per chunk when acting (beta_schedule cosine is Diffusion Policy's squaredcos_cap_v2); also the
    steps of the stochastic chain of ``denoising_chain``."""
    denoiser: str = "mlp"
    """mlp (MLPDenoiser over the flattened chunk) | unet (TemporalUnet1d over the chunk's time axis)."""
    hidden: int = 256
    """MLP width."""
    depth: int = 3
    """MLP hidden layers."""
    time_dim: int = 32
    """MLP timestep-embedding width."""
    activation: str = "silu"
    """MLP activation: silu | mish (Diffusion Policy's) | gelu. PyTorch's CPU Mish made a training step ~2x slower."""
    unet_dim: int = 32
    """U-Net base channels (denoiser=unet)."""
    unet_dim_mults: list[int] = field(default_factory=lambda: [1, 2])
    """U-Net channel multipliers per level; chunk must be divisible by 2**(len-1)."""
    normalizer: str = "limits"
    """Normalizer of observations, goals and actions: limits (to [-1, 1]) | gaussian | cdf (empirical CDF)."""
    loss_on_padding: bool = True
    """Train on chunk steps past an episode's end (zero action): teaches "arrive, then stop"."""
    ema_every: int = 1
    min_logprob_std: float = 0.1
    """Floor of the step std of the stochastic chain, applied alike when ``denoising_chain`` samples it and when
    ``chain_log_prob`` scores it (DPPO's min_sampling_denoising_std = min_logprob_denoising_std), so every step,
    the last one too, has a finite density and the score is the density of the sampled chain. Must be > 0."""

    def validate(self) -> None:
        super().validate()
        if self.min_logprob_std <= 0:
            raise ConfigError(f"min_logprob_std={self.min_logprob_std} must be > 0 (the last step's density)")
        if self.denoiser not in DENOISERS:
            raise ConfigError(f"denoiser={self.denoiser!r}; valid: {DENOISERS}")
        if self.chunk < 1 or self.obs_history < 1 or self.sampling_steps < 1:
            raise ConfigError("chunk, obs_history and sampling_steps must be >= 1")
        if not 1 <= self.execute_steps <= self.chunk:
            raise ConfigError(f"execute_steps={self.execute_steps} must be in [1, chunk={self.chunk}]")
        if self.sampling_steps > self.diffusion_steps:
            raise ConfigError(f"sampling_steps={self.sampling_steps} > diffusion_steps={self.diffusion_steps}")
        if self.denoiser == "unet" and self.chunk % 2 ** (len(self.unet_dim_mults) - 1):
            raise ConfigError(
                f"chunk={self.chunk} must be divisible by 2**(len(unet_dim_mults)-1) for denoiser=unet"
            )


class DiffusionBCPolicy(DiffusionPolicy[DiffusionBCConfig]):
    """Samples action chunks with the EMA denoiser and plays them receding-horizon; memory in ``state``."""

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        cfg: DiffusionBCConfig,
        encoder: ConditionEncoder,
        act_norm: NormalizerModule,
        observation_space: gym.Space,
        action_space: gym.spaces.Box,
    ) -> None:
        super().__init__(model=model, cfg=cfg, observation_space=observation_space, action_space=action_space)
        self.encoder, self.act_norm = encoder, act_norm
        self.obs_dim = split_observation_space(observation_space)[0]
        # The chain a fine-tuner explores with must be stochastic at every step but the last: the strided
        # DDPM posterior over the same K steps. A flow model has no such posterior: its chain is the Euler
        # ODE, every step deterministic (min_logprob_std then sets the exploration noise, sampled and scored).
        self.chain_scheduler = make_scheduler(
            "ddpm" if cfg.objective == "diffusion" else "euler", cfg.diffusion_steps,
            beta_schedule=cfg.beta_schedule, prediction_type=self.prediction_type,
        )
        self.chain_scheduler.set_timesteps(cfg.sampling_steps)

    # ---------------------------------------------------------------------------------------------- sample
    def _history(self, obs: np.ndarray) -> np.ndarray:
        """(M, O) or (M, K, O) observations -> (M, K, O), a single observation repeated K times."""
        if obs.ndim == 2:
            return np.repeat(obs[:, None], self.cfg.obs_history, axis=1)
        return obs

    @torch.inference_mode()
    def plan(self, obs: np.ndarray, goal: np.ndarray | None) -> np.ndarray:
        """Sample one chunk per env with DDIM and the EMA weights.

        Args:
            obs: (M, K, O) observation histories (or (M, O): the current one, repeated); goal: (M, G) or None.
        Returns:
            (M, C, A) actions in env units.
        """
        M, C, A = len(obs), self.cfg.chunk, self.act_dim
        with self.latency.time(M):
            cond = self.encoder.encode(self._history(obs), goal, self.device)
            x = sample(
                self.ema.model, self.sampling_scheduler, (M, C, A), cond=cond, generator=self.generator,
                device=self.device,
            )
            return self.act_norm.unnormalize(x).cpu().numpy().astype(np.float32)

    def plan_chunk(self, obs: Any, committed: np.ndarray) -> np.ndarray:
        """Chunk-planning protocol of the robot bridge (:class:`diffplan.deploy.runner.ChunkPlanner`): one chunk
        sampled at ``obs`` (a dict with observation (O,) [and desired_goal (G,)], or an (O,) array).

        ``committed`` (k, A), the actions that run while this plan is made, are copied into the first k rows (a
        chunk policy cannot inpaint them: its chunk is conditioned on the observation only); the chunk's own
        actions for the ticks after them follow. Returns (max(C, k + 1), A) actions in env units.
        """
        batch = {key: np.asarray(v)[None] for key, v in obs.items()} if isinstance(obs, dict) else np.asarray(obs)[None]
        o, goal = observation_arrays(batch)  # (1, O), (1, G) | None
        chunk = np.clip(self.plan(o, goal)[0], self.action_space.low, self.action_space.high)
        k = len(committed)
        rest = chunk[k:] if k < len(chunk) else chunk[-1:]
        return np.concatenate([np.asarray(committed, np.float32).reshape(k, self.act_dim), rest])

    def denoising_chain(
        self, cond: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the stochastic DDPM chain (``sampling_steps`` steps, each std floored at ``min_logprob_std``) of the
        trained model (not the EMA).

        Args:
            cond: (B, cond_dim) condition from ``encoder`` (normalized observations [and goal]).
        Returns:
            x0 (B, C, A) normalized actions, chain (B, K + 1, C, A) with chain[:, 0] the initial noise and
            chain[:, -1] = x0, and log_probs (B, K): the log-likelihood of each step (see :meth:`chain_log_prob`).
        """
        shape = (cond.shape[0], self.cfg.chunk, self.act_dim)
        x0, chain = sample(
            self.model, self.chain_scheduler, shape, cond=cond, generator=generator or self.generator,
            device=cond.device, return_chain=True, min_std=self.cfg.min_logprob_std,
        )
        return x0, chain, self.chain_log_prob(cond, chain)

    def chain_log_prob(self, cond: torch.Tensor, chain: torch.Tensor) -> torch.Tensor:
        """Per-step log N(chain[:, k+1]; mean_k, max(std_k, min_logprob_std)^2 I), differentiable in the model: the
        density of the steps :meth:`denoising_chain` took (it samples with the same floor).

        Args:
            cond: (B, cond_dim); chain: (B, K + 1, C, A) as returned by :meth:`denoising_chain`.
        Returns:
            (B, K) log-probabilities, summed over the chunk's entries. All K steps go through the model in one
            batched call (rows at different timesteps: ``step_distribution`` takes per-row t).
        """
        sched = self.chain_scheduler
        B, K = chain.shape[0], sched.num_steps
        if chain.shape[1] != K + 1:
            raise ValueError(f"chain has {chain.shape[1] - 1} steps, the chain scheduler takes {K}")
        x_t = chain[:, :-1].reshape(B * K, *chain.shape[2:])
        x_next = chain[:, 1:].reshape(B * K, *chain.shape[2:])
        t = sched.timesteps.to(chain.device).repeat(B)  # row b*K + k is at timesteps[k]
        lp = step_log_prob(
            self.model, sched, x_t, x_next, t, cond=cond.repeat_interleave(K, dim=0), min_std=self.cfg.min_logprob_std
        )
        return lp.flatten(1).sum(-1).reshape(B, K)

    # ------------------------------------------------------------------------------------------------- act
    def initial_state(self, n: int) -> Batch:
        return Batch(
            t=np.zeros(n, dtype=np.int64),
            chunk=np.zeros((n, self.cfg.chunk, self.act_dim), dtype=np.float32),
            history=np.zeros((n, self.cfg.obs_history, self.obs_dim), dtype=np.float32),
        )

    def forward(self, batch: Batch, state: Batch | None = None, **kwargs: Any) -> Batch:
        """One action per env. ``batch.obs``: Batch with observation (N, O) [and desired_goal (N, G)], or (N, O)."""
        obs, goal = observation_arrays(batch.obs)
        n = len(obs)
        state = self.initial_state(n) if state is None or len(state) == 0 else Batch(
            t=np.array(state.t), chunk=np.array(state.chunk), history=np.array(state.history)
        )  # fresh arrays: the Collector keeps references to earlier states in its buffer
        fresh = state.t == 0
        state.history = np.where(
            fresh[:, None, None], obs[:, None], np.concatenate([state.history[:, 1:], obs[:, None]], axis=1)
        )
        k = state.t % self.cfg.execute_steps
        if (need := k == 0).any():
            idx = np.flatnonzero(need)
            state.chunk[idx] = self.plan(state.history[idx], None if goal is None else goal[idx])
        act = state.chunk[np.arange(n), k]
        state.t = state.t + 1
        return Batch(act=np.clip(act, self.action_space.low, self.action_space.high), state=state)


@dataclass(kw_only=True)
class DiffusionBCTrainingStats(TrainingStats):
    loss: float


class DiffusionBCAlgorithm(DiffusionAlgorithm[DiffusionBCPolicy]):
    """DDPM denoising loss on (observation history [, goal]) -> action chunk samples."""

    def train_step(self, batch: Batch, step: int) -> DiffusionBCTrainingStats:
        policy = self.policy
        loss, _ = denoising_loss(
            policy.model,
            policy.train_scheduler,
            torch.as_tensor(batch.act),
            cond=policy.encoder(torch.as_tensor(batch.obs), batch.get("goal", None)),
            mask=None if self.cfg.loss_on_padding else torch.as_tensor(batch.mask),
            generator=self.generator,
        )
        self.optim.step(loss)
        return DiffusionBCTrainingStats(loss=float(loss.detach()))


CONFIG = DiffusionBCConfig


def make_denoiser(cfg: DiffusionBCConfig, act_dim: int, cond_dim: int) -> torch.nn.Module:
    """The chunk denoiser ``(x (B, C, A), t (B,), cond (B, cond_dim)) -> (B, C, A)`` the config describes (also
    what a DPPO fine-tuning run rebuilds from a diffusion BC run's config)."""
    if cfg.denoiser == "mlp":
        return MLPDenoiser(
            cfg.chunk * act_dim, cond_dim, hidden=cfg.hidden, depth=cfg.depth, time_dim=cfg.time_dim,
            activation=cfg.activation,
        )
    return TemporalUnet1d(
        act_dim, dim=cfg.unet_dim, dim_mults=tuple(cfg.unet_dim_mults), cond_dim=cond_dim, activation=cfg.activation,
    )


def build(
    cfg: DiffusionBCConfig,
    observation_space: gym.Space,
    action_space: gym.spaces.Box,
    episodes: Episodes | None = None,
) -> Agent:
    """Build the diffusion BC policy and algorithm; ``episodes=None`` builds a shell to load weights into."""
    torch.manual_seed(cfg.seed)
    data = action_level_data(
        cfg, observation_space, action_space, episodes,
        goal_conditioned=cfg.goal_conditioned, history=cfg.obs_history, chunk=cfg.chunk,
    )
    policy = DiffusionBCPolicy(
        model=make_denoiser(cfg, data.act_dim, data.encoder.dim), cfg=cfg, encoder=data.encoder,
        act_norm=data.act_norm, observation_space=observation_space, action_space=action_space,
    ).to(cfg.device)
    algorithm = DiffusionBCAlgorithm(policy=policy, generator=data.generator)
    return Agent(policy=policy, algorithm=algorithm, batch_source=data.batch_source)
