"""Hierarchical Diffuser (Chen et al., 2024, "Simple Hierarchical Planning with Diffusion"): a jumpy high-level
planner of subgoals and a short low-level planner between consecutive subgoals.

* High level: a temporal U-Net denoises N states ``[s_0, s_K, s_2K, ..., s_(N-1)K]`` (B, N, O), every K-th
  state of a real trajectory (``jump`` K, ``horizon`` N), trained on strided windows of the core dataset
  (:class:`~diffplan.data.SequenceDataset` with ``stride=K``). Planning inpaints the current state at subgoal 0
  and, for goal tasks, the goal state (goal position, zero velocity) at subgoal N-1.
* Low level: a second U-Net denoises dense K+1-step segments ``[a_t, s_t]`` (B, K+1, A+O) with both ends
  inpainted (and embedded as the condition): its start and end state. At planning time segment i runs from
  subgoal i to subgoal i+1; the N-1 segments of every env are sampled in one batch through the core's one
  sampling loop, and stitched into one plan of ``(N-1) * K + 1`` env steps. Inpainted entries are exact, so
  the plan passes through every subgoal exactly and is continuous at the joints.
* Reward tasks (HD-DA, ``value_guided``): a value net on the jumpy trajectory (B, N, O), trained on noisy
  strided windows to predict the discounted return-to-go from the window start, guides the high level through
  the core's :class:`~diffplan.diffusion.ValueGuide` hook and picks the best of ``n_candidates`` subgoal plans;
  the low level is unguided.

Execution is the Diffuser agent's (this policy is a :class:`~agents.diffuser.DiffuserPolicy` whose planner is
two-level): PD tracking of the next planned state or the planned actions, the park switch near the goal
(``park_radius``), what happens after the plan (``after_plan``), per-env plans in Tianshou's state, plan
recording for pictures (with the subgoals) and ``plan_chunk`` for the robot bridge. Warm-started replanning
and the latency budget are the flat planner's only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tianshou.data import Batch
from torch import nn

from diffplan.agent import Agent
from diffplan.agents.diffuser import (
    DiffuserAlgorithm,
    DiffuserConfig,
    DiffuserPolicy,
    DiffuserTrainingStats,
    check_tracking,
)
from diffplan.config import ConfigError
from diffplan.data import (
    Episodes,
    SequenceDataset,
    WindowSampler,
    observation_arrays,
    split_observation_space,
)
from diffplan.data.conditioning import fit_normalizers
from diffplan.diffusion import SCHEDULERS, Inpaint, ValueGuide, denoising_loss, loss_weights, sample
from diffplan.nets import TemporalUnet1d, TemporalValueNet


@dataclass
class HierarchicalConfig(DiffuserConfig):
    """Hierarchical Diffuser. Every Diffuser field keeps its meaning (execution, guidance, sampling); ``horizon``,
    ``dim`` and ``dim_mults`` describe the high level, ``low_dim`` / ``low_dim_mults`` the low level."""

    agent: str = "hierarchical"
    horizon: int = 8
    """N: subgoals per plan (the high-level denoiser's horizon), start and goal included; a plan spans
    ``(N - 1) * jump`` env steps. Must be divisible by 2**(len(dim_mults)-1)."""
    jump: int = 15
    """K: env steps between consecutive subgoals; the low level plans K+1 states (both ends inpainted), so
    K+1 must be divisible by 2**(len(low_dim_mults)-1). The paper's maze setting is 15."""
    low_dim: int = 32
    """Base channel width of the low-level U-Net."""
    low_dim_mults: list[int] = field(default_factory=lambda: [1, 2, 4])
    """Channel multipliers of the low-level U-Net's levels."""
    low_sampling_steps: int = 0
    """Solver steps of the low level when acting (0: ``sampling_steps``, as the high level). The segments are
    short with both ends inpainted, so they need fewer steps than the subgoals: this is the planner's main
    latency knob (strided samplers only: ddim, dpmsolver++, euler, heun)."""

    def validate(self) -> None:
        super().validate()
        if self.backbone != "unet":
            raise ConfigError(f"backbone={self.backbone!r}: the hierarchical planner has unet levels only")
        if self.jump < 1:
            raise ConfigError(f"jump={self.jump} must be >= 1")
        if not self.low_dim_mults:
            raise ConfigError("low_dim_mults must not be empty")
        divisor = 2 ** (len(self.low_dim_mults) - 1)
        if (self.jump + 1) % divisor:
            raise ConfigError(
                f"jump + 1 = {self.jump + 1} (the low level's horizon) must be divisible by {divisor} "
                f"(2**(len(low_dim_mults)-1) with low_dim_mults={list(self.low_dim_mults)})"
            )
        if self.low_sampling_steps < 0:
            raise ConfigError(f"low_sampling_steps={self.low_sampling_steps} must be >= 0 (0: sampling_steps)")
        if self.low_sampling_steps and not SCHEDULERS[self.sampler].strided:
            raise ConfigError(f"low_sampling_steps needs a strided sampler (sampler={self.sampler!r} runs all T steps)")
        if self.low_sampling_steps > self.diffusion_steps:
            raise ConfigError(f"low_sampling_steps={self.low_sampling_steps} > diffusion_steps={self.diffusion_steps}")
        if self.warm_start_level > 0 or self.latency_budget_ms > 0:
            raise ConfigError(
                "warm_start_level and latency_budget_ms are the flat diffuser's; the hierarchical planner needs 0"
            )


class TwoLevelDenoiser(nn.Module):
    """The two denoisers as one module, so the base classes' one model, EMA copy and optimizer cover both:
    ``high(x (B, N, O), t, cond (B, O or 2O))`` and ``low(x (B, K+1, A+O), t, cond (B, 2O))``."""

    def __init__(self, high: nn.Module, low: nn.Module) -> None:
        super().__init__()
        self.high, self.low = high, low


class HierarchicalPolicy(DiffuserPolicy):
    """Plans subgoals, fills the segments between them in one batch, executes like the Diffuser policy."""

    model: TwoLevelDenoiser

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        cfg = self.cfg
        assert isinstance(cfg, HierarchicalConfig)
        self.jump = cfg.jump
        self.plan_horizon = (cfg.horizon - 1) * cfg.jump + 1
        self.low_scheduler = (
            self.make_sampling_scheduler(cfg.low_sampling_steps) if cfg.low_sampling_steps else self.sampling_scheduler
        )

    def set_latency_budget(self, budget_ms: float | None) -> None:
        if budget_ms:
            raise ConfigError("the hierarchical planner has no latency budget (the flat diffuser has)")
        self.budget = None

    # ------------------------------------------------------------------------------------------- conditions
    def condition_vector(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, O) subgoal sequences (or inpaint values) -> (B, O or 2O): start [and goal] state."""
        parts = [x[:, 0]]
        if self.goal_dim and self.cfg.goal_conditioned:
            parts.append(x[:, -1])
        return torch.cat(parts, dim=-1)

    def low_condition(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K+1, A+O) segments (or inpaint values) -> (B, 2O): their start and end states."""
        return torch.cat([x[:, 0, self.act_dim :], x[:, -1, self.act_dim :]], dim=-1)

    # ---------------------------------------------------------------------------------------------- levels
    def plan_subgoals(self, obs: np.ndarray, goal: np.ndarray | None) -> torch.Tensor:
        """(M, O) states [and (M, G) goals] -> (M, N, O) normalized subgoals: ``n_candidates`` sampled per env
        in one call (value-guided if there is a value net), the best kept (highest value, else the earliest to
        come within ``park_radius`` of the goal, else the first)."""
        cfg, C, N, O = self.cfg, self.cfg.n_candidates, self.cfg.horizon, self.obs_dim
        M, device = len(obs), self.device
        values = torch.zeros(M * C, N, O, device=device)
        mask = torch.zeros_like(values, dtype=torch.bool)
        values[:, 0] = self.obs_norm.normalize(torch.as_tensor(obs, device=device)).repeat_interleave(C, 0)
        mask[:, 0] = True
        goal_cond = goal is not None and cfg.goal_conditioned
        if goal_cond:
            target = torch.as_tensor(self.goal_state(goal), device=device)
            values[:, -1], mask[:, -1] = self.obs_norm.normalize(target).repeat_interleave(C, 0), True
        inpaint = Inpaint(mask, values)
        guide = None
        if self.value_net is not None and cfg.guide_scale and cfg.n_guide_steps:
            guide = ValueGuide(  # the value net's EMA copy guides and ranks, as in the flat planner
                self.averaged("value_net"), cfg.guide_scale, cfg.n_guide_steps, cfg.t_stopgrad,
                cfg.scale_grad_by_std, inpaint=inpaint, form=cfg.guidance_form,  # type: ignore[arg-type]
            )
        x = sample(
            self.ema.model.high, self.sampling_scheduler, values.shape,
            cond=self.condition_vector(values) if cfg.embed_conditions else None,
            inpaint=inpaint, guide=guide, generator=self.generator, device=device,
        )
        if self.value_net is not None:
            value = self.averaged("value_net")
            self.last_values = value(x, torch.zeros(len(x), dtype=torch.long, device=device))
            best = self.last_values.reshape(M, C).argmax(1).cpu().numpy()
        elif goal_cond and C > 1:
            subgoals = self.obs_norm.unnormalize(x).cpu().numpy()
            best = self.park_lengths(subgoals, np.repeat(goal, C, axis=0)).reshape(M, C).argmin(1)
        else:
            best = np.zeros(M, dtype=np.int64)
        return x[torch.as_tensor(best + np.arange(M) * C, device=device)]

    def fill_segments(self, subgoals: torch.Tensor, committed: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized subgoals (M, N, O) -> the stitched plan (M, (N-1)K+1, A+O), normalized: :meth:`segments`
        then :meth:`stitch`."""
        return self.stitch(self.segments(subgoals, committed))

    def segments(self, subgoals: torch.Tensor, committed: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized subgoals (M, N, O) -> low-level segments (M, N-1, K+1, A+O), normalized.

        The M (N-1) segments (subgoal i -> subgoal i+1, both inpainted, so exact) are one batch of the core's
        sampler. ``committed`` (M, k, A) normalized actions are inpainted into the first k action slots of the
        stitched plan (the robot bridge's committed prefix): plan step j is step j % K of segment j // K.
        """
        A, K = self.act_dim, self.jump
        M, N, O = subgoals.shape
        S, L, D = N - 1, K + 1, A + O
        values = torch.zeros(M, S, L, D, device=subgoals.device)
        mask = torch.zeros_like(values, dtype=torch.bool)
        values[:, :, 0, A:], mask[:, :, 0, A:] = subgoals[:, :-1], True
        values[:, :, -1, A:], mask[:, :, -1, A:] = subgoals[:, 1:], True
        if committed is not None:
            for j in range(min(committed.shape[1], S * K + 1)):  # the plan's last step is the last segment's end
                seg, step = (j // K, j % K) if j < S * K else (S - 1, K)
                values[:, seg, step, :A], mask[:, seg, step, :A] = committed[:, j], True
        values, mask = values.reshape(M * S, L, D), mask.reshape(M * S, L, D)
        return sample(
            self.ema.model.low, self.low_scheduler, values.shape,
            cond=self.low_condition(values) if self.cfg.embed_conditions else None,
            inpaint=Inpaint(mask, values), generator=self.generator, device=subgoals.device,
        ).reshape(M, S, L, D)

    def stitch(self, segments: torch.Tensor) -> torch.Tensor:
        """Segments (M, S, K+1, D) -> one plan (M, S K + 1, D): steps 0..K-1 of every segment, then the last
        segment's end. Segment i's end and segment i+1's start are both subgoal i+1, so plan step iK is it."""
        M, S, L, D = segments.shape
        return torch.cat([segments[:, :, : L - 1].reshape(M, S * (L - 1), D), segments[:, -1, L - 1 :]], dim=1)

    # ----------------------------------------------------------------------------------------------------- plan
    @torch.inference_mode()
    def plan(
        self, obs: np.ndarray, goal: np.ndarray | None, init: torch.Tensor | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Two-level plans for M envs: subgoals (one batched call), then every segment (one batched call).

        Args:
            obs: (M, O) current states; goal: (M, G) goal positions or None. ``init`` (warm start) is refused.
        Returns:
            plan_obs (M, P, O), plan_act (M, P, A) in env units, P = (N-1) K + 1, and lengths (M,): plan steps
            used before holding (P unless the plan reached the goal earlier, see park_radius).
        """
        if init is not None:
            raise ConfigError("the hierarchical planner does not warm-start plans")
        A = self.act_dim
        with self.latency.time(len(obs)):
            subgoals = self.plan_subgoals(obs, goal)
            x = self.fill_segments(subgoals)
            plan_act = self.act_norm.unnormalize(x[..., :A]).cpu().numpy().astype(np.float32)
            plan_obs = self.obs_norm.unnormalize(x[..., A:]).cpu().numpy().astype(np.float32)
            goal_cond = goal is not None and self.cfg.goal_conditioned
            lengths = self.park_lengths(plan_obs, goal if goal_cond else None)
        high, low = self.sampling_scheduler, self.low_scheduler
        self.last_plan = {"steps": high.num_steps, "low_steps": low.num_steps, "candidates": self.cfg.n_candidates,
                          "calls": high.model_calls + low.model_calls, "warm": 0}
        self.record(plan_obs, lengths, goal, subgoals=self.obs_norm.unnormalize(subgoals).cpu().numpy())
        return plan_obs, plan_act, lengths

    @torch.inference_mode()
    def plan_chunk(self, obs: Any, committed: np.ndarray) -> np.ndarray:
        """Chunk-planning protocol of the robot bridge: (P, A) planned actions in env units for the next P ticks,
        rows :k equal to ``committed`` (k, A), which is inpainted into the low level's first action slots."""
        batch = {key: np.asarray(v)[None] for key, v in obs.items()} if isinstance(obs, dict) else np.asarray(obs)[None]
        o, goal = observation_arrays(batch)  # (1, O), (1, G) | None
        k = min(len(committed), self.plan_horizon)
        prefix = None
        if k:
            prefix = self.act_norm.normalize(torch.as_tensor(np.asarray(committed[:k], np.float32), device=self.device))
        with self.latency.time(1):
            x = self.fill_segments(self.plan_subgoals(o, goal), None if prefix is None else prefix[None])
        actions = self.act_norm.unnormalize(x[0, :, : self.act_dim]).cpu().numpy().astype(np.float32)
        actions[:k] = committed[:k]  # exact, not normalize/unnormalize round-tripped
        return actions


@dataclass(kw_only=True)
class HierarchicalTrainingStats(DiffuserTrainingStats):
    high_loss: float = 0.0
    low_loss: float = 0.0


class TwoLevelWindows:
    """Training windows of both levels, drawn independently: strided N-state windows (every K-th state of a
    real window) for the high level and dense K+1-step windows for the low level, both from the core
    :class:`~diffplan.data.SequenceDataset` (same padding rules as the flat planner's windows).

    ``sample(n, generator)`` -> ``traj`` (n, N, O) high-level states, ``mask`` (n, N), ``returns`` (n, 1) from
    the high window's start, ``low_traj`` (n, K+1, A+O), ``low_mask`` (n, K+1) and ``indices`` (n,).
    """

    def __init__(self, high: SequenceDataset, low: SequenceDataset) -> None:
        self.high, self.low = high, low

    def __len__(self) -> int:
        return len(self.high)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        hi = self.high.sample(batch_size, generator)
        lo = self.low.sample(batch_size, generator)
        return {
            "traj": hi["traj"][..., self.high.action_dim :], "mask": hi["mask"], "returns": hi["returns"],
            "low_traj": lo["traj"], "low_mask": lo["mask"], "indices": hi["indices"],
        }


class HierarchicalAlgorithm(DiffuserAlgorithm):
    """One Adam step on the sum of both levels' denoising losses (each its own batch of windows), plus the
    value regression on noisy jumpy windows when value-guided (the Diffuser algorithm's ``value_update``)."""

    policy: HierarchicalPolicy

    def __init__(self, *, policy: HierarchicalPolicy, generator: torch.Generator) -> None:
        super().__init__(policy=policy, generator=generator)
        cfg, A, O = policy.cfg, policy.act_dim, policy.obs_dim
        # The high level has no actions: per-step weights over its (N, O) subgoal states only.
        self.weights = loss_weights(cfg.horizon, O, 0, 1.0, cfg.loss_discount).float()
        self.register_buffer(
            "low_weights", loss_weights(policy.jump + 1, A + O, A, cfg.action_weight, cfg.loss_discount).float()
        )

    def train_step(self, batch: Batch, step: int) -> HierarchicalTrainingStats:
        policy, cfg, A = self.policy, self.cfg, self.policy.act_dim
        high, low = torch.as_tensor(batch.traj), torch.as_tensor(batch.low_traj)
        high_mask = torch.zeros_like(high, dtype=torch.bool)
        high_mask[:, 0] = True
        if policy.goal_dim and cfg.goal_conditioned:
            high_mask[:, -1] = True
        high_inpaint = Inpaint(high_mask, high)
        low_mask = torch.zeros_like(low, dtype=torch.bool)
        low_mask[:, 0, A:] = low_mask[:, -1, A:] = True
        valid = not cfg.loss_on_padding
        high_loss, _ = denoising_loss(
            policy.model.high, policy.train_scheduler, high,
            cond=policy.condition_vector(high) if cfg.embed_conditions else None, inpaint=high_inpaint,
            weights=self.weights, mask=torch.as_tensor(batch.mask) if valid else None, generator=self.generator,
        )
        low_loss, info = denoising_loss(
            policy.model.low, policy.train_scheduler, low,
            cond=policy.low_condition(low) if cfg.embed_conditions else None, inpaint=Inpaint(low_mask, low),
            weights=self.low_weights, mask=torch.as_tensor(batch.low_mask) if valid else None,
            generator=self.generator, action_dim=A,
        )
        loss = high_loss + low_loss
        self.optim.step(loss)
        value_loss = None
        if policy.value_net is not None and self.value_optim is not None:
            value_loss = float(self.value_update(high, torch.as_tensor(batch.returns), high_inpaint))
        return HierarchicalTrainingStats(
            loss=float(loss.detach()), high_loss=float(high_loss.detach()), low_loss=float(low_loss.detach()),
            a0_loss=float(info.get("a0_loss", 0.0)), value_loss=value_loss,
        )


CONFIG = HierarchicalConfig


def build(
    cfg: HierarchicalConfig,
    observation_space: gym.Space,
    action_space: gym.spaces.Box,
    episodes: Episodes | None = None,
) -> Agent:
    """Build the two-level policy and algorithm; ``episodes=None`` builds an empty shell to load weights into."""
    torch.manual_seed(cfg.seed)
    obs_dim, goal_dim = split_observation_space(observation_space)
    act_dim = int(action_space.shape[0])
    obs_norm, act_norm = fit_normalizers(cfg.normalizer, observation_space, action_space, episodes)
    check_tracking(cfg, obs_dim, act_dim)
    goal_cond = bool(goal_dim) and cfg.goal_conditioned
    high_cond = (2 if goal_cond else 1) * obs_dim if cfg.embed_conditions else 0
    low_cond = 2 * obs_dim if cfg.embed_conditions else 0
    model = TwoLevelDenoiser(
        TemporalUnet1d(obs_dim, dim=cfg.dim, dim_mults=tuple(cfg.dim_mults), cond_dim=high_cond,
                       activation=cfg.activation),
        TemporalUnet1d(act_dim + obs_dim, dim=cfg.low_dim, dim_mults=tuple(cfg.low_dim_mults), cond_dim=low_cond,
                       activation=cfg.activation),
    ).to(cfg.device)
    value_net = None
    if cfg.value_guided:  # HD-DA: the value of the jumpy trajectory (B, N, O)
        value_net = TemporalValueNet(
            obs_dim, cfg.horizon, dim=cfg.value_dim, dim_mults=tuple(cfg.value_dim_mults), activation=cfg.activation,
        ).to(cfg.device)
    policy = HierarchicalPolicy(
        model=model, value_net=value_net, cfg=cfg, obs_norm=obs_norm, act_norm=act_norm,
        observation_space=observation_space, action_space=action_space, goal_dim=goal_dim if goal_cond else 0,
    ).to(cfg.device)
    generator = torch.Generator().manual_seed(cfg.seed)
    algorithm = HierarchicalAlgorithm(policy=policy, generator=generator)
    source = None
    if episodes is not None:
        common: dict[str, Any] = {"use_padding": cfg.use_padding, "device": cfg.device}
        high = SequenceDataset(
            episodes, cfg.horizon, obs_norm.normalizer, act_norm.normalizer, stride=cfg.jump,
            discount=cfg.value_discount, termination_penalty=cfg.termination_penalty, **common,
        )
        low = SequenceDataset(episodes, cfg.jump + 1, obs_norm.normalizer, act_norm.normalizer, **common)
        if value_net is not None:  # every step starts a window (with padding): these are the value targets
            value_net.set_target_stats(high.returns_to_go)
            policy.averaged("value_net").set_target_stats(high.returns_to_go)
        source = WindowSampler(TwoLevelWindows(high, low), generator)
    return Agent(policy=policy, algorithm=algorithm, batch_source=source)


__all__ = ["CONFIG", "HierarchicalAlgorithm", "HierarchicalConfig", "HierarchicalPolicy", "build"]
