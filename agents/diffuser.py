"""Diffuser (Janner et al., 2022): plan a whole trajectory by denoising it, then execute the plan.

Two settings of the paper share this file:

* goal reaching (maze2d): start and goal inpainted, plan executed open loop or tracked (below);
* reward maximization (locomotion, ``value_guided=True``): a value function J(x_t, t) trained on noisy
  trajectories to predict the discounted return-to-go of the window; sampling ascends its gradient (the core's
  :class:`~diffplan.diffusion.ValueGuide`), ``n_candidates`` plans are drawn per decision and the one with the
  highest value is used, its first action executed, and the policy replans at every step (``replan_every=1``).

The model denoises a horizon-H trajectory ``x = [a_t, s_t]_{t=0..H-1}`` of shape (B, H, A + O) (actions
first, as in Diffuser). Planning is conditioning by inpainting: the current state is written into step 0
and, for goal-reaching tasks (Diffuser's maze2d setting), the goal state (goal position, zero velocity)
into step H-1 before every denoising step. The plan is then executed in the environment:

* ``tracking="pd"``: a PD controller on the next planned state (Diffuser's maze2d execution;
  needs observations laid out as ``[position (A), velocity (A), ...]``),
* ``tracking="action"``: the planned action itself (open-loop within the plan).

After the plan is used up (or, with ``park_radius > 0``, once the plan has reached the goal) the policy
drives to the goal with the same PD law and holds there. A new plan is made every ``replan_every`` steps
(0: once per episode, Diffuser's open-loop maze2d execution; ``replan_every == horizon`` is equivalent).

Tianshou integration: :class:`DiffuserPolicy` is a ``Policy`` whose per-env memory (the cached plan and a
step counter) lives in Tianshou's ``state`` as a ``Batch``; the Collector zeroes a row when its env resets,
and a zero counter means "plan now". All envs that need a plan at a step are planned in one batched call.
:class:`DiffuserAlgorithm` is an ``OfflineAlgorithm`` whose update is the denoising loss on trajectory
windows; the EMA copy of the denoiser is what plans.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
from diffplan.diffusion import (
    GUIDANCE_FORMS,
    Inpaint,
    NoiseScheduler,
    ValueGuide,
    denoising_loss,
    loss_weights,
    noised,
    sample,
)
from diffplan.diffusion.budget import StepBudget
from diffplan.nets import DiT1d, TemporalUnet1d, TemporalValueNet

TRACKING_MODES = ("pd", "action")
AFTER_PLAN_MODES = ("goal", "stop")


def _unet(cfg: DiffuserConfig, transition_dim: int, cond_dim: int) -> torch.nn.Module:
    return TemporalUnet1d(
        transition_dim, dim=cfg.dim, dim_mults=tuple(cfg.dim_mults), cond_dim=cond_dim, activation=cfg.activation
    )


def _dit(cfg: DiffuserConfig, transition_dim: int, cond_dim: int) -> torch.nn.Module:
    return DiT1d(
        transition_dim, width=cfg.dit_width, depth=cfg.dit_depth, heads=cfg.dit_heads, patch=cfg.dit_patch,
        cond_dim=cond_dim,
    )


BACKBONES: dict[str, Callable[[DiffuserConfig, int, int], torch.nn.Module]] = {"unet": _unet, "dit": _dit}
"""Denoiser network by ``backbone`` name: (config, transition dim A+O, condition dim) -> module."""


@dataclass
class DiffuserConfig(DiffusionAgentConfig):
    """Diffuser planner. Defaults are the maze2d settings of the paper scaled to a 2-core CPU."""

    agent: str = "diffuser"
    horizon: int = 128
    """Planning horizon H (env steps per plan); must be divisible by 2**(len(dim_mults)-1)."""
    diffusion_steps: int = 100
    """Training diffusion steps T."""
    predict_epsilon: bool = False
    """Model predicts the noise (True) or the clean trajectory x0 (False, Diffuser's maze2d choice)."""
    action_weight: float = 1.0
    """Loss weight of the first action (Diffuser uses 10 for locomotion, 1 for mazes)."""
    loss_discount: float = 1.0
    """Per-step loss weight discount**t over the horizon."""
    backbone: str = "unet"
    """Denoiser network: unet (Diffuser's temporal U-Net: dim, dim_mults) | dit (a 1-D diffusion transformer
    with adaLN-Zero conditioning on time and the start/goal vector: dit_width, dit_depth, dit_heads, dit_patch)."""
    dit_width: int = 128
    """DiT token width."""
    dit_depth: int = 4
    """DiT transformer blocks."""
    dit_heads: int = 4
    """DiT attention heads (must divide dit_width)."""
    dit_patch: int = 4
    """Horizon steps per DiT token (the horizon must be divisible by it)."""
    dim: int = 32
    """Base channel width of the temporal U-Net."""
    dim_mults: list[int] = field(default_factory=lambda: [1, 2, 4])
    """Channel multipliers per U-Net level (Diffuser maze2d: 1,4,8)."""
    activation: str = "silu"
    """U-Net activation: silu | mish (Diffuser's) | gelu. SiLU is ~28% faster per step on CPU."""
    normalizer: str = "limits"
    """Per-dimension normalizer of states and actions: limits (to [-1, 1]) | gaussian | cdf (empirical CDF to
    [-1, 1])."""
    use_padding: bool = True
    """Let training windows run past an episode's end (the last state repeated, actions zero)."""
    loss_on_padding: bool = True
    """Train on padded steps too. For goal reaching this teaches "arrive, then stay", which is what a plan
    with the goal inpainted at its last step must show; without it the model never learns the steps
    between arrival and the inpainted goal, and plans jump to the goal at the end."""
    goal_conditioned: bool = True
    """Inpaint the goal state at the last plan step (needs a Dict observation with desired_goal)."""
    embed_conditions: bool = True
    """Also give the U-Net the start (and goal) states as a global condition vector, besides inpainting them.
    Inpainting alone shows the condition only at the two ends of the sequence, and the conv net needs many
    updates to carry it across the horizon; with the embedding, plans follow start and goal after a few
    thousand CPU steps (the maze config keeps it). False: inpainting only, as in the paper (the locomotion
    config's setting)."""
    sampling_steps: int = 20
    """Denoising steps per plan with ddim (Diffuser's locomotion setting samples with ddpm and does not clip:
    sampler=ddpm clip_sample=0)."""
    replan_every: int = 0
    """Make a new plan every this many env steps; 0: once per episode (open loop, as in the paper)."""
    tracking: str = "pd"
    """How a plan is executed: pd (PD control toward the next planned state) | action (planned actions)."""
    kp: float = 1.0
    """PD position gain (Diffuser's maze2d controller uses 1)."""
    kd: float = 1.0
    """PD velocity gain."""
    hold_kp: float = 10.0
    """Position gain once the plan is used up or has reached the goal (drive to the goal and stay); the
    dataset's waypoint controller uses 10."""
    hold_kd: float = 1.0
    """Velocity damping gain for that final approach (the waypoint controller's 1)."""
    park_radius: float = 0.2
    """Cut a plan where it first comes within this distance of the goal, then hold at the goal (0: off)."""
    after_plan: str = "goal"
    """What the policy does once a plan is used up (or cut by ``park_radius``): goal (drive to the goal with
    hold_kp/hold_kd and stay: the go-to-goal controller finishes the episode) | stop (brake where it is, no
    goal-directed control: with park_radius=0 the plan alone must bring the agent to the goal, which isolates
    what the planner contributes)."""
    n_candidates: int = 1
    """Plans sampled per decision; the one executed is, with value guidance, the one of highest value, else
    (goal tasks) the one reaching the goal earliest. Diffuser samples 64 for locomotion."""
    value_guided: bool = False
    """Train a value function on noisy trajectories alongside the denoiser (same update) and guide sampling
    with its gradient: Diffuser's reward-maximizing planner for tasks without goals."""
    value_discount: float = 0.997
    """Discount of the return-to-go the value function predicts (Diffuser's locomotion planner: 0.997)."""
    termination_penalty: float = 0.0
    """Added to the reward of terminal steps in the value targets (Diffuser: -100, falling is costly)."""
    guide_scale: float = 0.1
    """Step size of each value-gradient step (Diffuser locomotion: 0.1; 0.0001 on hopper-medium-expert)."""
    n_guide_steps: int = 2
    """Value-gradient steps per denoising step."""
    t_stopgrad: int = 2
    """No guidance at diffusion timesteps t < t_stopgrad (the last, nearly clean steps)."""
    scale_grad_by_std: bool = True
    """Scale the value gradient by the step's variance std^2, as Diffuser (guidance fades as noise does);
    needs stochastic steps, so sampler=ddpm."""
    guidance_form: str = "diffuser"
    """How the value gradient steers a denoising step: diffuser (Diffuser's ``n_step_guided_p_sample``: x_t is
    moved up the gradient and the denoiser and the step run on the moved x) | mean_shift (the same displacement
    added to the unguided step's mean, classifier-guidance style; much stronger at the same guide_scale)."""
    warm_start_level: float = 0.0
    """Warm-started replanning: a replan (``replan_every`` > 0, or the robot bridge's ``plan_chunk``) starts
    from the previous plan shifted by the steps executed since, noised to this fraction of the sampler's
    solver steps, and runs only that fraction of them (at least one); the inpainted start (and committed
    prefix) stays exact. 0: every plan starts from pure noise. In (0, 1]."""
    latency_budget_ms: float = 0.0
    """Wall-clock budget of one plan in ms (0: off). Each plan's cost per model call is measured, and the next
    plan runs the most solver steps (down to ``budget_min_steps``), then the most candidates, that fit."""
    budget_min_steps: int = 2
    """Fewest solver steps the latency budget cuts to before it cuts candidates."""
    value_dim: int = 32
    """Base channel width of the value network."""
    value_dim_mults: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    """Channel multipliers of the value network's levels (each halves the horizon)."""

    def validate(self) -> None:
        super().validate()
        if self.tracking not in TRACKING_MODES:
            raise ConfigError(f"tracking={self.tracking!r}; valid: {TRACKING_MODES}")
        if self.after_plan not in AFTER_PLAN_MODES:
            raise ConfigError(f"after_plan={self.after_plan!r}; valid: {AFTER_PLAN_MODES}")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone={self.backbone!r}; valid: {sorted(BACKBONES)}")
        divisor = 2 ** (len(self.dim_mults) - 1)
        if self.backbone == "unet" and self.horizon % divisor:
            raise ConfigError(
                f"horizon={self.horizon} must be divisible by {divisor} (2**(len(dim_mults)-1) with "
                f"dim_mults={list(self.dim_mults)})"
            )
        if self.backbone == "dit" and (
            self.dit_patch < 1 or self.horizon % self.dit_patch or self.dit_width % (2 * self.dit_heads)
            or self.dit_depth < 1
        ):
            raise ConfigError(
                f"dit: horizon={self.horizon} must be divisible by dit_patch={self.dit_patch}, dit_width="
                f"{self.dit_width} by 2*dit_heads={2 * self.dit_heads}, and dit_depth={self.dit_depth} >= 1"
            )
        if self.n_candidates < 1 or self.sampling_steps < 1 or self.horizon < 2:
            raise ConfigError("n_candidates, sampling_steps must be >= 1 and horizon >= 2")
        if not 0.0 <= self.warm_start_level <= 1.0:
            raise ConfigError(f"warm_start_level={self.warm_start_level} must be in [0, 1] (0: off)")
        if self.latency_budget_ms < 0:
            raise ConfigError(f"latency_budget_ms={self.latency_budget_ms} must be >= 0 (0: off)")
        if self.budget_min_steps < 1:
            raise ConfigError(f"budget_min_steps={self.budget_min_steps} must be >= 1")
        if self.clip_sample < 0:
            raise ConfigError(f"clip_sample={self.clip_sample} must be >= 0 (0: no clipping)")
        if self.value_guided:
            if self.tracking != "action":
                raise ConfigError(
                    f"value_guided plans are executed by their actions: set tracking=action (got {self.tracking!r})"
                )
            if not self.stochastic_steps and self.scale_grad_by_std and self.guide_scale:
                raise ConfigError(
                    f"value guidance with scale_grad_by_std needs stochastic steps, but sampler={self.sampler!r} "
                    "steps have std 0 (no guidance at all); use sampler=ddpm, sampler=ddim with ddim_eta > 0, "
                    "or scale_grad_by_std=false"
                )
            if self.guidance_form not in GUIDANCE_FORMS:
                raise ConfigError(f"guidance_form={self.guidance_form!r}; valid: {list(GUIDANCE_FORMS)}")
            if self.n_guide_steps < 0 or self.t_stopgrad < 0:
                raise ConfigError("n_guide_steps and t_stopgrad must be >= 0")
            if not 0.0 <= self.value_discount <= 1.0:
                raise ConfigError(f"value_discount={self.value_discount} must be in [0, 1]")
            if not self.value_dim_mults:
                raise ConfigError("value_dim_mults must not be empty")


class DiffuserPolicy(DiffusionPolicy[DiffuserConfig]):
    """Plans with the EMA denoiser and tracks the plan; per-env plans travel in Tianshou's ``state``."""

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        cfg: DiffuserConfig,
        obs_norm: NormalizerModule,
        act_norm: NormalizerModule,
        observation_space: gym.Space,
        action_space: gym.spaces.Box,
        goal_dim: int,
        value_net: TemporalValueNet | None = None,
    ) -> None:
        super().__init__(model=model, cfg=cfg, observation_space=observation_space, action_space=action_space)
        self.value_net = value_net
        if value_net is not None:  # Diffuser plans with its value function's EMA copy, like the denoiser's
            self.track_ema("value_net")
        self.obs_norm, self.act_norm = obs_norm, act_norm
        self.obs_dim = split_observation_space(observation_space)[0]
        self.goal_dim = goal_dim
        self.plan_horizon = cfg.horizon
        """Env steps of an executed plan (the rows of ``plan_obs`` in the acting state); a planner whose model
        horizon is not its plan's length (the hierarchical one) sets it."""
        self.last_values: torch.Tensor | None = None
        """(M*K,) predicted values of the last call's candidates (value guidance only)."""
        self.record_plans = 0
        """How many of the next plans to keep in ``recorded_plans`` (for drawing)."""
        self.recorded_plans: list[dict[str, np.ndarray]] = []
        self._schedulers: dict[int, NoiseScheduler] = {self.sampling_scheduler.num_steps: self.sampling_scheduler}
        self.budget: StepBudget | None = None
        if cfg.latency_budget_ms > 0:
            self.set_latency_budget(cfg.latency_budget_ms)
        self.clock: Callable[[], float] = time.perf_counter
        """Seconds; what the latency budget measures plans with (tests put a fake clock here)."""
        self.last_plan: dict[str, int] = {}
        """What the last plan ran: steps (solver steps run), candidates, calls (model calls), warm (0/1)."""
        self._chunk_prev: tuple[torch.Tensor, np.ndarray] | None = None
        """The last ``plan_chunk`` plan: normalized trajectory (H, A+O) and its actions (H, A) as returned."""

    # ----------------------------------------------------------------------------------------- solver steps
    def scheduler_for(self, steps: int) -> NoiseScheduler:
        """The acting sampler over ``steps`` solver steps (cached; the configured one for ``sampling_steps``)."""
        if steps not in self._schedulers:
            self._schedulers[steps] = self.make_sampling_scheduler(steps)
        return self._schedulers[steps]

    def set_latency_budget(self, budget_ms: float | None) -> None:
        """Fit every plan into ``budget_ms`` (None or 0: off); the deploy runner sets it from its control rate."""
        if budget_ms is not None and budget_ms < 0:
            raise ConfigError(f"latency budget {budget_ms} ms must be >= 0 (0: off)")
        if not budget_ms:
            self.budget = None
            return
        self.budget = StepBudget(
            budget_ms, self.sampling_scheduler.num_steps, self.cfg.n_candidates,
            calls_for_steps=lambda k: self.scheduler_for(k).model_calls,
            min_steps=min(self.cfg.budget_min_steps, self.sampling_scheduler.num_steps),
        )

    def _denoise(
        self, values: torch.Tensor, mask: torch.Tensor, guide_ok: bool, steps: int, candidates: int,
        init: torch.Tensor | None,
    ) -> torch.Tensor:
        """Sample (B, H, A+O) plans with start/goal/prefix inpainted; cold over ``steps`` solver steps, or warm
        from ``init`` (B, H, A+O), normalized, over the tail of the configured schedule (see warm_start_level)."""
        cfg = self.cfg
        inpaint = Inpaint(mask, values)
        guide = None
        if guide_ok and self.value_net is not None and cfg.guide_scale and cfg.n_guide_steps:
            guide = ValueGuide(
                self.averaged("value_net"), cfg.guide_scale, cfg.n_guide_steps, cfg.t_stopgrad,
                cfg.scale_grad_by_std, inpaint=inpaint, form=cfg.guidance_form,  # type: ignore[arg-type]
            )
        start_index = 0
        if init is None:
            scheduler = self.scheduler_for(steps)
        else:
            scheduler = self.sampling_scheduler
            run = max(1, round(cfg.warm_start_level * scheduler.num_steps))
            if self.budget is not None:
                run = self.budget.steps_within(candidates, run)
            start_index = scheduler.num_steps - run
        t0 = self.clock()
        x = sample(
            self.ema.model, scheduler, values.shape,
            cond=self.condition_vector(values) if cfg.embed_conditions else None,
            inpaint=inpaint, guide=guide, generator=self.generator, device=values.device,
            start_from=init, start_index=start_index,
        )
        calls = scheduler.model_calls - scheduler.call_index(start_index)
        self.last_plan = {
            "steps": scheduler.num_steps - start_index, "candidates": candidates, "calls": calls,
            "warm": int(init is not None),
        }
        if self.budget is not None:
            self.budget.record((self.clock() - t0) * 1000.0, calls, candidates)
        return x

    def _shifted(self, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """Plans (B, H, D) moved ``shift`` (B,) long steps earlier, the tail filled with each plan's last step:
        the warm-start guess for a plan made ``shift`` steps after ``x``."""
        H = x.shape[1]
        idx = (torch.arange(H, device=x.device)[None] + shift.to(x.device)[:, None]).clamp(max=H - 1)
        return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))

    def warm_guess(self, plan_obs: np.ndarray, plan_act: np.ndarray, shift: int) -> torch.Tensor:
        """The ``init`` of ``plan`` (M, H, A+O) from plans (env units) made ``shift`` env steps ago."""
        prev = self._normalized_plans(plan_obs, plan_act)
        return self._shifted(prev, torch.full((len(prev),), shift, dtype=torch.long))

    def _normalized_plans(self, plan_obs: np.ndarray, plan_act: np.ndarray) -> torch.Tensor:
        """(M, H, O), (M, H, A) env units -> (M, H, A+O) normalized trajectories."""
        device = self.device
        return torch.cat([
            self.act_norm.normalize(torch.as_tensor(plan_act, device=device)),
            self.obs_norm.normalize(torch.as_tensor(plan_obs, device=device)),
        ], dim=-1)

    # ----------------------------------------------------------------------------------------------------- plan
    def goal_state(self, goal: np.ndarray) -> np.ndarray:
        """(M, G) goal positions -> (M, O) goal states: the position with every other entry (velocity) 0."""
        state = np.zeros((len(goal), self.obs_dim), dtype=np.float32)
        state[:, : self.goal_dim] = goal
        return state

    @torch.inference_mode()
    def plan(
        self, obs: np.ndarray, goal: np.ndarray | None, init: torch.Tensor | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample plans for M envs in one batched call (``n_candidates`` each, the best kept).

        Args:
            obs: (M, O) current states; goal: (M, G) goal positions or None.
            init: (M, H, A+O) normalized warm-start guesses (previous plans, shifted), or None: from noise.
        Returns:
            plan_obs (M, H, O), plan_act (M, H, A) in env units, and lengths (M,): how many plan steps are
            used before holding at the goal (H unless the plan reached the goal earlier, see park_radius).
        """
        cfg, A = self.cfg, self.act_dim
        steps, K = self.sampling_scheduler.num_steps, cfg.n_candidates
        if self.budget is not None:
            steps, K = self.budget.choose()
        M, H = len(obs), cfg.horizon
        device = self.device
        with self.latency.time(M):
            values = torch.zeros(M * K, H, A + self.obs_dim, device=device)
            mask = torch.zeros_like(values, dtype=torch.bool)
            start = self.obs_norm.normalize(torch.as_tensor(obs, device=device)).repeat_interleave(K, 0)
            values[:, 0, A:], mask[:, 0, A:] = start, True
            goal_cond = goal is not None and cfg.goal_conditioned
            if goal_cond:
                target = torch.as_tensor(self.goal_state(goal), device=device)
                values[:, -1, A:] = self.obs_norm.normalize(target).repeat_interleave(K, 0)
                mask[:, -1, A:] = True
            x = self._denoise(values, mask, True, steps, K, None if init is None else init.repeat_interleave(K, 0))
            plan_act = self.act_norm.unnormalize(x[..., :A]).cpu().numpy()
            plan_obs = self.obs_norm.unnormalize(x[..., A:]).cpu().numpy()
            lengths = self.park_lengths(plan_obs, np.repeat(goal, K, axis=0) if goal_cond else None)
            if self.value_net is not None:
                # Best of K as Diffuser (sort_by_values, first): the EMA value of each final guided plan at t=0.
                # (Diffuser sorts by the values its guide computed at the last step, on that step's input; the
                # returned plan differs from it only by the last, t=0 denoising step.)
                value = self.averaged("value_net")
                self.last_values = value(x, torch.zeros(len(x), dtype=torch.long, device=device))
                best = self.last_values.reshape(M, K).argmax(1).cpu().numpy() + np.arange(M) * K
            else:  # best of K: the plan that reaches the goal earliest (ties: the first sampled)
                best = lengths.reshape(M, K).argmin(1) + np.arange(M) * K
            plan_obs, plan_act, lengths = plan_obs[best], plan_act[best], lengths[best]
        self.record(plan_obs, lengths, goal)
        return plan_obs.astype(np.float32), plan_act.astype(np.float32), lengths

    def park_lengths(self, plan_obs: np.ndarray, goal: np.ndarray | None) -> np.ndarray:
        """(B,) plan steps used before holding: where each plan (B, H, O) first comes within ``park_radius``
        of its goal (B, G), else H (also without a goal or with park_radius 0)."""
        B, H = plan_obs.shape[:2]
        if goal is None or self.cfg.park_radius <= 0:
            return np.full(B, H, dtype=np.int64)
        dist = np.linalg.norm(plan_obs[..., : self.goal_dim] - goal[:, None], axis=-1)  # (B, H)
        arrived = dist < self.cfg.park_radius
        return np.where(arrived.any(1), arrived.argmax(1) + 1, H)

    def record(self, plan_obs: np.ndarray, lengths: np.ndarray, goal: np.ndarray | None, **extra: np.ndarray) -> None:
        """Keep the first of these plans (M, H, O) in ``recorded_plans`` while ``record_plans`` asks for more;
        ``extra`` arrays (M, ...) are kept per plan under their names (e.g. ``subgoals``)."""
        n = min(len(plan_obs), self.record_plans)
        for i in range(n):
            self.recorded_plans.append({
                "plan": plan_obs[i], "length": lengths[i], "goal": None if goal is None else goal[i],
                **{key: value[i] for key, value in extra.items()},
            })
        self.record_plans -= n

    def condition_vector(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, A+O) trajectories (or inpaint values) -> (B, cond_dim): normalized start [and goal] states."""
        A = self.act_dim
        parts = [x[:, 0, A:]]
        if self.goal_dim and self.cfg.goal_conditioned:
            parts.append(x[:, -1, A:])
        return torch.cat(parts, dim=-1)

    # ---------------------------------------------------------------------------------------------------- track
    def _pd(self, obs: np.ndarray, target: np.ndarray, kp: np.ndarray | float, kd: np.ndarray | float) -> np.ndarray:
        """PD law toward target states; obs/target (N, O) laid out [position (A), velocity (A), ...]."""
        A = self.act_dim
        return kp * (target[:, :A] - obs[:, :A]) + kd * (target[:, A : 2 * A] - obs[:, A : 2 * A])

    def track(self, obs: np.ndarray, goal: np.ndarray | None, state: Batch) -> np.ndarray:
        """Actions (N, A) executing each env's cached plan at its step counter ``state.t``."""
        N, H = len(obs), self.plan_horizon
        step = np.asarray(state.t)
        lengths = np.asarray(state.plan_len)
        rows = np.arange(N)
        following = step + 1 < lengths
        nxt = np.minimum(step + 1, H - 1)
        if self.cfg.after_plan == "stop":  # brake where it is: position target = position, velocity 0
            hold = obs.astype(np.float32, copy=True)
            hold[:, self.act_dim : 2 * self.act_dim] = 0.0
        elif goal is not None and self.cfg.goal_conditioned:
            hold = self.goal_state(goal)
        else:  # no goal: hold the plan's last state
            hold = state.plan_obs[rows, np.minimum(lengths - 1, H - 1)].copy()
            hold[:, self.act_dim : 2 * self.act_dim] = 0.0
        target = np.where(following[:, None], state.plan_obs[rows, nxt], hold)
        kp = np.where(following, self.cfg.kp, self.cfg.hold_kp)[:, None]
        kd = np.where(following, self.cfg.kd, self.cfg.hold_kd)[:, None]
        act = self._pd(obs, target, kp, kd)
        if self.cfg.tracking == "action":
            planned = state.plan_act[rows, np.minimum(step, H - 1)]
            act = np.where((step < lengths)[:, None], planned, act)
        return np.clip(act, self.action_space.low, self.action_space.high).astype(np.float32)

    def initial_state(self, n: int) -> Batch:
        H, A, O = self.plan_horizon, self.act_dim, self.obs_dim
        return Batch(
            t=np.zeros(n, dtype=np.int64),
            plan_len=np.zeros(n, dtype=np.int64),
            plan_obs=np.zeros((n, H, O), dtype=np.float32),
            plan_act=np.zeros((n, H, A), dtype=np.float32),
        )

    def forward(self, batch: Batch, state: Batch | None = None, **kwargs: Any) -> Batch:
        """One action per env. ``batch.obs``: Batch with observation (N, O) [and desired_goal (N, G)]."""
        obs, goal = observation_arrays(batch.obs)
        n = len(obs)
        state = self.initial_state(n) if state is None or len(state) == 0 else Batch(
            t=np.array(state.t), plan_len=np.array(state.plan_len),
            plan_obs=np.array(state.plan_obs), plan_act=np.array(state.plan_act),
        )  # fresh arrays: the Collector keeps references to earlier states in its buffer
        k = self.cfg.replan_every
        need = (state.t == 0) | ((k > 0) & (state.t >= k))
        if need.any():
            idx = np.flatnonzero(need)
            # Replans (t > 0: the env has a plan, t steps of it executed) warm-start from it, if configured;
            # fresh episodes (t == 0) plan from noise. One batched call per group.
            warm = state.t[idx] > 0 if self.cfg.warm_start_level > 0 else np.zeros(len(idx), dtype=bool)
            for rows, is_warm in ((idx[~warm], False), (idx[warm], True)):
                if not len(rows):
                    continue
                g = None if goal is None else goal[rows]
                if is_warm:
                    prev = self._normalized_plans(state.plan_obs[rows], state.plan_act[rows])
                    init = self._shifted(prev, torch.as_tensor(state.t[rows], dtype=torch.long))
                    plan_obs, plan_act, lengths = self.plan(obs[rows], g, init)
                else:  # the Planner protocol's call: plan(obs, goal)
                    plan_obs, plan_act, lengths = self.plan(obs[rows], g)
                state.plan_obs[rows], state.plan_act[rows], state.plan_len[rows] = plan_obs, plan_act, lengths
            state.t[idx] = 0
        act = self.track(obs, goal, state)
        state.t = state.t + 1
        return Batch(act=act, state=state)

    # ----------------------------------------------------------------------------------------- chunk planning
    @torch.inference_mode()
    def plan_chunk(self, obs: Any, committed: np.ndarray) -> np.ndarray:
        """Chunk-planning protocol of the robot bridge (:class:`diffplan.deploy.runner.ChunkPlanner`).

        Args:
            obs: one env observation: a dict with observation (O,) [and desired_goal (G,)], or an (O,) array.
            committed: (k, A) actions already scheduled for the next k ticks; inpainted into the plan's first
                k action slots, so the plan continues from what the robot will really do meanwhile.
        Returns:
            (H, A) planned actions in env units for the next H ticks; rows :k equal ``committed``.
        """
        batch = {key: np.asarray(v)[None] for key, v in obs.items()} if isinstance(obs, dict) else np.asarray(obs)[None]
        o, goal = observation_arrays(batch)  # (1, O), (1, G) | None
        A, H = self.act_dim, self.cfg.horizon
        k = min(len(committed), H)
        device = self.device
        values = torch.zeros(1, H, A + self.obs_dim, device=device)
        mask = torch.zeros_like(values, dtype=torch.bool)
        values[:, 0, A:], mask[:, 0, A:] = self.obs_norm.normalize(torch.as_tensor(o, device=device)), True
        if k:
            prefix = torch.as_tensor(np.asarray(committed[:k], np.float32), device=device)
            values[0, :k, :A], mask[0, :k, :A] = self.act_norm.normalize(prefix), True
        if goal is not None and self.cfg.goal_conditioned:
            target = torch.as_tensor(self.goal_state(goal), device=device)
            values[:, -1, A:], mask[:, -1, A:] = self.obs_norm.normalize(target), True
        init = None
        if self.cfg.warm_start_level > 0 and k and self._chunk_prev is not None:
            shift = self._chunk_shift(np.asarray(committed[:k], np.float32))
            if shift is not None:
                init = self._shifted(self._chunk_prev[0][None], torch.tensor([shift]))
        steps = self.budget.choose()[0] if self.budget is not None else self.sampling_scheduler.num_steps
        with self.latency.time(1):
            x = self._denoise(values, mask, False, steps, 1, init)
        actions = self.act_norm.unnormalize(x[0, :, :A]).cpu().numpy().astype(np.float32)
        actions[:k] = committed[:k]  # exact, not normalize/unnormalize round-tripped
        self._chunk_prev = (x[0].clone(), actions.copy())
        return actions

    def _chunk_shift(self, committed: np.ndarray) -> int | None:
        """Ticks since the last chunk plan: where ``committed`` (k, A) sits in that plan's actions (the runner
        commits a prefix cut from the plan it submitted), or None if it is not there (a new episode)."""
        assert self._chunk_prev is not None
        prev, k = self._chunk_prev[1], len(committed)
        for shift in range(1, len(prev) - k + 1):
            if np.array_equal(prev[shift : shift + k], committed):
                return shift
        return None


@dataclass(kw_only=True)
class DiffuserTrainingStats(TrainingStats):
    loss: float
    a0_loss: float = 0.0
    value_loss: float | None = None


class DiffuserAlgorithm(DiffusionAlgorithm[DiffuserPolicy]):
    """Denoising-loss training of the trajectory model on windows served by a :class:`WindowSampler`."""

    def __init__(self, *, policy: DiffuserPolicy, generator: torch.Generator) -> None:
        super().__init__(policy=policy, generator=generator)
        cfg, A, O = policy.cfg, policy.act_dim, policy.obs_dim
        self.register_buffer(
            "weights", loss_weights(cfg.horizon, A + O, A, cfg.action_weight, cfg.loss_discount).float()
        )
        self.value_optim = None
        if policy.value_net is not None:
            self.value_optim = self._create_optimizer(
                policy.value_net, AdamOptimizerFactory(lr=cfg.lr), max_grad_norm=cfg.grad_clip or None
            )

    def train_step(self, batch: Batch, step: int) -> DiffuserTrainingStats:
        policy, A = self.policy, self.policy.act_dim
        x0 = torch.as_tensor(batch.traj)
        mask = torch.zeros_like(x0, dtype=torch.bool)
        mask[:, 0, A:] = True
        if policy.goal_dim and self.cfg.goal_conditioned:
            mask[:, -1, A:] = True
        inpaint = Inpaint(mask, x0)
        loss, info = denoising_loss(
            policy.model,
            policy.train_scheduler,
            x0,
            cond=policy.condition_vector(x0) if self.cfg.embed_conditions else None,
            inpaint=inpaint,
            weights=self.weights,
            mask=None if self.cfg.loss_on_padding or "mask" not in batch else torch.as_tensor(batch.mask),
            generator=self.generator,
            action_dim=A,
        )
        self.optim.step(loss)
        value_loss = None
        if policy.value_net is not None and self.value_optim is not None:
            value_loss = float(self.value_update(x0, torch.as_tensor(batch.returns), inpaint))
        return DiffuserTrainingStats(
            loss=float(loss.detach()), a0_loss=float(info.get("a0_loss", 0.0)), value_loss=value_loss
        )

    def value_update(self, x0: torch.Tensor, returns: torch.Tensor, inpaint: Inpaint) -> torch.Tensor:
        """One regression step of the value net on noisy windows x_t (B, H, D) at random t -> returns (B, 1).

        The inputs are noised exactly as the denoiser's (same scheduler, start state kept clean), so the value
        is trained on what it sees during guided sampling.
        """
        net = self.policy.value_net
        assert net is not None and self.value_optim is not None
        x_t, t, _ = noised(self.policy.train_scheduler, x0, inpaint=inpaint, generator=self.generator)
        target = (returns.reshape(-1) - net.target_mean) / net.target_std
        loss = torch.nn.functional.mse_loss(net.standardized(x_t, t), target)
        self.value_optim.step(loss)
        return loss.detach()


CONFIG = DiffuserConfig


def check_tracking(cfg: DiffuserConfig, obs_dim: int, act_dim: int) -> None:
    """Refuse PD tracking (:class:`ConfigError`) when the observation is not [position, velocity, ...]."""
    if cfg.tracking == "pd" and obs_dim < 2 * act_dim:
        raise ConfigError(
            f"tracking='pd' needs observations [position ({act_dim}), velocity ({act_dim}), ...] but the "
            f"observation has {obs_dim} dims; use tracking=action"
        )


def build(
    cfg: DiffuserConfig,
    observation_space: gym.Space,
    action_space: gym.spaces.Box,
    episodes: Episodes | None = None,
) -> Agent:
    """Build the Diffuser policy and algorithm; ``episodes=None`` builds an empty shell to load weights into."""
    torch.manual_seed(cfg.seed)
    obs_dim, goal_dim = split_observation_space(observation_space)
    act_dim = int(action_space.shape[0])
    obs_norm, act_norm = fit_normalizers(cfg.normalizer, observation_space, action_space, episodes)
    check_tracking(cfg, obs_dim, act_dim)
    n_conditions = 2 if goal_dim and cfg.goal_conditioned else 1
    cond_dim = n_conditions * obs_dim if cfg.embed_conditions else 0
    model = BACKBONES[cfg.backbone](cfg, act_dim + obs_dim, cond_dim).to(cfg.device)
    value_net = None
    if cfg.value_guided:
        value_net = TemporalValueNet(
            act_dim + obs_dim, cfg.horizon, dim=cfg.value_dim, dim_mults=tuple(cfg.value_dim_mults),
            activation=cfg.activation,
        ).to(cfg.device)
    policy = DiffuserPolicy(
        model=model,
        value_net=value_net,
        cfg=cfg,
        obs_norm=obs_norm,
        act_norm=act_norm,
        observation_space=observation_space,
        action_space=action_space,
        goal_dim=goal_dim if cfg.goal_conditioned else 0,
    ).to(cfg.device)
    generator = torch.Generator().manual_seed(cfg.seed)
    algorithm = DiffuserAlgorithm(policy=policy, generator=generator)
    source = None
    if episodes is not None:
        dataset = SequenceDataset(
            episodes, cfg.horizon, obs_norm.normalizer, act_norm.normalizer,
            use_padding=cfg.use_padding, discount=cfg.value_discount,
            termination_penalty=cfg.termination_penalty, device=cfg.device,
        )
        if value_net is not None:  # every step starts a window (with padding): these are the value targets
            value_net.set_target_stats(dataset.returns_to_go)
            policy.averaged("value_net").set_target_stats(dataset.returns_to_go)
        source = WindowSampler(dataset, generator)
    return Agent(policy=policy, algorithm=algorithm, batch_source=source)
