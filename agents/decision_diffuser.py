"""Decision Diffuser (Ajay et al., 2023): return-conditioned state-sequence diffusion plus inverse dynamics.

The model denoises a sequence of H states ``x = [s_{t-k}, ..., s_t, s_{t+1}, ..., s_{t+H-k-1}]`` of shape
(B, H, O): the first k + 1 entries are the last k observed states and the current one, written in by inpainting
(history conditioning; before an episode's k-th step the missing past is its first state, and training windows
that start up to k steps before an episode are padded the same way), the rest is the plan. The sequence is conditioned on the normalized return-to-go y
from the current step with classifier-free guidance: during training the condition is dropped (replaced by the
network's null condition) with probability ``condition_dropout``; at sampling the denoiser output is
``uncond + w * (cond - uncond)`` with ``w = guidance_weight``, which the core's
:func:`~diffplan.diffusion.classifier_free` computes; this agent only chooses it. Actions come from an
inverse-dynamics MLP ``a_t = f(s_t, s_{t+1})`` trained on the dataset's consecutive states, applied to the
current state and the first planned one; it is EMA-averaged like the denoiser, and its EMA copy acts. The policy
replans at every step, as in the paper.

Returns are normalized by ``returns_scale`` (0: the dataset's largest discounted return-to-go), and the test
condition is ``target_return`` in those units (Decision Diffuser evaluates at 0.9).

Tianshou integration: :class:`DecisionDiffuserPolicy` keeps each env's state history in Tianshou's ``state``
as a ``Batch`` (``hist`` (N, k + 1, O) and the number of valid entries ``count``); the Collector zeroes a row
when its env resets, which clears that env's history. :class:`DecisionDiffuserAlgorithm` is an
``OfflineAlgorithm`` whose update is the denoising loss with condition dropout plus the inverse-dynamics loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tianshou.algorithm.algorithm_base import TrainingStats
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Batch

from diffplan.agent import Agent, DiffusionAgentConfig, DiffusionAlgorithm, DiffusionPolicy
from diffplan.config import ConfigError
from diffplan.data import (
    Episodes,
    NormalizerModule,
    SequenceDataset,
    WindowSampler,
    observation_arrays,
    split_observation_space,
)
from diffplan.data.conditioning import fit_normalizers
from diffplan.diffusion import Inpaint, classifier_free, denoising_loss, loss_weights, sample
from diffplan.nets import MLP, TemporalUnet1d


@dataclass
class DecisionDiffuserConfig(DiffusionAgentConfig):
    """Decision Diffuser. Defaults follow the public locomotion config (anuragajay/decision-diffuser,
    ``code/config/locomotion_config.py``) where a 2-core CPU allows, and say where they differ."""

    agent: str = "decision_diffuser"
    horizon: int = 32
    """Sequence length H, history included (public config: 100; 32 keeps replanning every step affordable on a
    CPU). Must be divisible by 2**(len(dim_mults)-1) and at least history + 2."""
    history: int = 4
    """k: past states inpainted before the current one (0: the current state only, as the public code)."""
    diffusion_steps: int = 200
    """Training diffusion steps T (public config: 200; it predicts the noise, predict_epsilon=True)."""
    loss_discount: float = 1.0
    """Per-step loss weight discount**t over the horizon."""
    dim: int = 32
    """Base channel width of the temporal U-Net (public config: 128)."""
    dim_mults: list[int] = field(default_factory=lambda: [1, 4, 8])
    """Channel multipliers per U-Net level (public config: 1, 4, 8)."""
    activation: str = "silu"
    """U-Net activation: silu | mish | gelu (SiLU is faster on CPU)."""
    normalizer: str = "limits"
    """Per-dimension normalizer of states and actions: limits (min-max to [-1, 1]) | cdf (the public config's:
    the empirical CDF to [-1, 1]) | gaussian."""
    clip_sample: float = 1.0
    """Clamp x0 estimates to +-clip_sample while sampling (public config: clip_denoised); 0: off."""
    use_padding: bool = True
    """Let training windows run past an episode's end (the last state repeated)."""
    loss_on_padding: bool = False
    """Train the denoiser on padded steps too (False: only on real steps)."""
    condition_dropout: float = 0.25
    """Probability of training a sample with the null condition (public config: 0.25)."""
    guidance_weight: float = 1.2
    """Classifier-free guidance weight w at sampling: 0 unconditional, 1 conditional, >1 extrapolated
    (public config: 1.2)."""
    target_return: float = 0.9
    """Return condition at evaluation, in units of returns_scale (public config: test_ret 0.9)."""
    returns_scale: float = 0.0
    """Divides returns-to-go into the condition y; 0: the dataset's largest discounted return-to-go (the public
    config hand-sets 400 for D4RL hopper)."""
    discount: float = 0.99
    """Discount of the conditioning return-to-go (public config: 0.99)."""
    termination_penalty: float = -100.0
    """Added to terminal rewards in the returns-to-go (public config: -100)."""
    inv_hidden: int = 256
    """Hidden width of the inverse-dynamics MLP (public config: 256)."""
    inv_depth: int = 2
    """Hidden layers of the inverse-dynamics MLP (public config: 2)."""
    sampler: str = "ddim"
    """Sampler: ddim (deterministic, eta=0; few steps) | ddpm (all T steps, as the public code)."""
    sampling_steps: int = 20
    """Denoising steps per plan with ddim."""

    def validate(self) -> None:
        super().validate()
        divisor = 2 ** (len(self.dim_mults) - 1)
        if self.horizon % divisor:
            raise ConfigError(
                f"horizon={self.horizon} must be divisible by {divisor} (2**(len(dim_mults)-1) with "
                f"dim_mults={list(self.dim_mults)})"
            )
        if self.history < 0 or self.horizon < self.history + 2:
            raise ConfigError(
                f"history={self.history} must be >= 0 and leave room for a planned step: horizon={self.horizon} "
                f"must be >= history + 2"
            )
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ConfigError(f"condition_dropout={self.condition_dropout} must be in [0, 1)")
        if self.returns_scale < 0 or self.clip_sample < 0:
            raise ConfigError("returns_scale and clip_sample must be >= 0 (0: automatic / off)")
        if self.sampling_steps < 1 or self.sampling_steps > self.diffusion_steps:
            raise ConfigError(
                f"sampling_steps={self.sampling_steps} must be in [1, diffusion_steps={self.diffusion_steps}]"
            )


class DecisionDiffuserPolicy(DiffusionPolicy[DecisionDiffuserConfig]):
    """Plans a return-conditioned state sequence with CFG every step; inverse dynamics gives the action."""

    def __init__(
        self,
        *,
        model: TemporalUnet1d,
        inv_dyn: torch.nn.Module,
        cfg: DecisionDiffuserConfig,
        obs_norm: NormalizerModule,
        act_norm: NormalizerModule,
        observation_space: gym.Space,
        action_space: gym.spaces.Box,
    ) -> None:
        super().__init__(model=model, cfg=cfg, observation_space=observation_space, action_space=action_space)
        self.inv_dyn = inv_dyn
        self.track_ema("inv_dyn")  # the EMA copy acts, as the public code's EMA model holds both networks
        self.obs_norm, self.act_norm = obs_norm, act_norm
        self.obs_dim = split_observation_space(observation_space)[0]
        self.register_buffer("returns_scale", torch.ones(()))
        """Divisor of returns-to-go into the condition; fitted on the dataset, saved with the weights."""

    def action(self, s: torch.Tensor, s_next: torch.Tensor, *, averaged: bool = False) -> torch.Tensor:
        """Inverse dynamics on normalized states (..., O) x2 -> normalized actions (..., A); ``averaged``: with
        the EMA copy (what acts) instead of the trained network."""
        net = self.averaged("inv_dyn") if averaged else self.inv_dyn
        return net(torch.cat([s, s_next], dim=-1))

    @torch.inference_mode()
    def plan(
        self,
        obs: np.ndarray,
        goal: np.ndarray | None = None,
        hist: np.ndarray | None = None,
        count: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Plan for M envs in one batched call.

        Args:
            obs: (M, O) current states; goal: ignored (the condition is the return).
            hist: (M, k + 1, O) raw states, the current one last; None: no history (obs only).
            count: (M,) how many of the last entries of ``hist`` are real (1 .. k + 1); the entries before
                them are taken to be the episode's first state (the first real entry), as the training windows
                that start before an episode's first step are padded (``front_padding``), and all k + 1 are
                inpainted.
        Returns:
            plan (M, H, O) raw states (history included) and actions (M, A) in env units.
        """
        cfg, k = self.cfg, self.cfg.history
        M, H, O = len(obs), cfg.horizon, self.obs_dim
        device = next(self.model.parameters()).device
        if hist is None:
            hist = np.zeros((M, k + 1, O), np.float32)
            hist[:, -1] = obs
            count = np.ones(M, np.int64)
        with self.latency.time(M):
            known = torch.zeros(M, H, O, device=device)
            mask = torch.zeros(M, H, O, dtype=torch.bool, device=device)
            past = torch.as_tensor(hist, device=device)
            first = k + 1 - torch.as_tensor(count, device=device).clamp(1, k + 1)  # (M,) slot of the first real one
            slots = torch.maximum(torch.arange(k + 1, device=device)[None], first[:, None])  # (M, k + 1)
            past = torch.gather(past, 1, slots[..., None].expand(-1, -1, O))  # before the episode: its first state
            known[:, : k + 1] = self.obs_norm.normalize(past)
            mask[:, : k + 1] = True
            y = torch.full((M, 1), cfg.target_return, device=device)
            x = sample(
                self.ema.model,
                self.sampling_scheduler,
                (M, H, O),
                cond=y,
                inpaint=Inpaint(mask, known),
                generator=self.generator,
                device=device,
                model_fn=classifier_free(self.ema.model, cfg.guidance_weight, one_call=True),
            )
            act = self.act_norm.unnormalize(self.action(x[:, k], x[:, k + 1], averaged=True))
            plan = self.obs_norm.unnormalize(x).cpu().numpy()
            act = act.cpu().numpy()
        low, high = self.action_space.low, self.action_space.high
        return plan.astype(np.float32), np.clip(act, low, high).astype(np.float32)

    def initial_state(self, n: int) -> Batch:
        return Batch(
            hist=np.zeros((n, self.cfg.history + 1, self.obs_dim), np.float32), count=np.zeros(n, np.int64)
        )

    def forward(self, batch: Batch, state: Batch | None = None, **kwargs: Any) -> Batch:
        """One action per env. ``batch.obs``: (N, O) observations (or a Batch with ``observation``)."""
        obs, _ = observation_arrays(batch.obs)
        n = len(obs)
        if state is None or len(state) == 0:
            state = self.initial_state(n)
        # New arrays (the Collector keeps references to earlier states): drop the oldest entry, append obs.
        # A row the Collector reset has count 0, so its stale entries are masked out.
        hist = np.concatenate([np.asarray(state.hist)[:, 1:], obs[:, None]], axis=1)
        count = np.minimum(np.asarray(state.count) + 1, self.cfg.history + 1)
        _, act = self.plan(obs, None, hist, count)
        return Batch(act=act, state=Batch(hist=hist, count=count))


@dataclass(kw_only=True)
class DecisionDiffuserTrainingStats(TrainingStats):
    loss: float
    inv_loss: float


class DecisionDiffuserAlgorithm(DiffusionAlgorithm[DecisionDiffuserPolicy]):
    """Denoising loss with condition dropout on state windows, and the inverse-dynamics regression."""

    def __init__(self, *, policy: DecisionDiffuserPolicy, generator: torch.Generator) -> None:
        super().__init__(policy=policy, generator=generator)
        cfg = policy.cfg
        self.register_buffer(
            "weights", loss_weights(cfg.horizon, policy.obs_dim, 0, discount=cfg.loss_discount).float()
        )
        self.inv_optim = self._create_optimizer(
            policy.inv_dyn, AdamOptimizerFactory(lr=cfg.lr), max_grad_norm=cfg.grad_clip or None
        )

    def train_step(self, batch: Batch, step: int) -> DecisionDiffuserTrainingStats:
        policy, cfg, A, k = self.policy, self.cfg, self.policy.act_dim, self.cfg.history
        traj = torch.as_tensor(batch.traj)
        states, actions = traj[..., A:], traj[..., :A]  # (B, H, O), (B, H, A)
        valid = torch.as_tensor(batch.mask)  # (B, H)
        B = len(traj)
        # Known entries: the k past states and the current one. Windows that start before an episode's first
        # step hold its first state there (front padding), as the planner's history does in an episode's first
        # k steps, so the model sees states 0..k-1 in the current-state slot too.
        steps = torch.arange(cfg.horizon, device=traj.device)[None]
        known = (steps <= k).expand(B, -1)
        drop = torch.rand(B, generator=self.generator).to(traj.device) < cfg.condition_dropout
        y = torch.as_tensor(batch.returns) / policy.returns_scale

        def denoiser(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            return policy.model(x, t, cond, drop_cond=drop)

        loss, _ = denoising_loss(
            denoiser,
            policy.train_scheduler,
            states,
            cond=y,
            inpaint=Inpaint(known[..., None].expand_as(states), states),
            weights=self.weights,
            mask=None if cfg.loss_on_padding else valid,
            generator=self.generator,
        )
        self.optim.step(loss)

        # Inverse dynamics on consecutive real steps of the window (normalized units).
        pair = valid[:, :-1] & valid[:, 1:]
        pred = policy.action(states[:, :-1][pair], states[:, 1:][pair])
        inv_loss = torch.nn.functional.mse_loss(pred, actions[:, :-1][pair])
        self.inv_optim.step(inv_loss)

        return DecisionDiffuserTrainingStats(loss=float(loss.detach()), inv_loss=float(inv_loss.detach()))


CONFIG = DecisionDiffuserConfig


def build(
    cfg: DecisionDiffuserConfig,
    observation_space: gym.Space,
    action_space: gym.spaces.Box,
    episodes: Episodes | None = None,
) -> Agent:
    """Build the policy and algorithm; ``episodes=None`` builds an empty shell to load weights into."""
    torch.manual_seed(cfg.seed)
    obs_dim, _ = split_observation_space(observation_space)
    act_dim = int(action_space.shape[0])
    obs_norm, act_norm = fit_normalizers(cfg.normalizer, observation_space, action_space, episodes)
    model = TemporalUnet1d(
        obs_dim, dim=cfg.dim, dim_mults=tuple(cfg.dim_mults), cond_dim=1, activation=cfg.activation
    ).to(cfg.device)
    inv_dyn = MLP(2 * obs_dim, act_dim, hidden=cfg.inv_hidden, depth=cfg.inv_depth).to(cfg.device)
    policy = DecisionDiffuserPolicy(
        model=model,
        inv_dyn=inv_dyn,
        cfg=cfg,
        obs_norm=obs_norm,
        act_norm=act_norm,
        observation_space=observation_space,
        action_space=action_space,
    ).to(cfg.device)
    generator = torch.Generator().manual_seed(cfg.seed)
    algorithm = DecisionDiffuserAlgorithm(policy=policy, generator=generator)
    source = None
    if episodes is not None:
        dataset = SequenceDataset(
            episodes, cfg.horizon, obs_norm.normalizer, act_norm.normalizer,
            use_padding=cfg.use_padding, discount=cfg.discount, termination_penalty=cfg.termination_penalty,
            returns_offset=cfg.history, front_padding=cfg.history, device=cfg.device,
        )
        rtg = dataset.returns_to_go
        top = float(rtg.max()) if float(rtg.max()) > 0 else float(rtg.abs().max())
        scale = cfg.returns_scale or max(top, 1e-6)
        policy.returns_scale.fill_(scale)
        source = WindowSampler(dataset, generator)
    return Agent(policy=policy, algorithm=algorithm, batch_source=source)
