"""Diffusion-QL (Wang et al., 2023) and, with ``critic=iql``, IDQL (Hansen-Estruch et al., 2023).

The actor is a conditional diffusion model over one action, ``x = a_t`` of shape (B, 1, A), conditioned on
the normalized state [and goal], with very few denoising steps (T = 5, the VP schedule). Per gradient step
(Diffusion-QL, Algorithm 1):

1. **Critic.** Twin Q networks regress to ``y = r + gamma (1 - done) min_j Q'_j(s', a')`` with a' sampled from
   the EMA actor at s' (``max_q_backup``: the max over 10 samples per head, then the min of heads); target
   networks track the critics by Polyak averaging (tau).
2. **Actor.** ``L = L_bc - eta * Q_i(s, a_new) / mean|Q_j(s, a_new)|`` with a_new sampled by the core's
   sampling loop *with gradients through the whole chain*, i (j the other head) picked at random per step,
   as in the paper's code. L_bc is the DDPM denoising loss.

IDQL (``critic=iql``) swaps step 1 for IQL's critics and drops the Q term from the actor (``eta=0``):
``V`` by expectile regression on ``min_j Q'_j(s, a) - V(s)`` (dataset actions only, no policy samples), ``Q``
by TD to ``r + gamma (1 - done) V(s')``; the actor is pure behaviour cloning.

Acting (both): sample ``n_candidates`` actions per state and pick one by the target critics: ``argmax``,
``softmax`` over Q (Diffusion-QL's code) or IDQL's ``expectile`` weights |tau - 1(Q - V < 0)|.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from tianshou.algorithm.algorithm_base import TrainingStats
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Batch

from diffplan.agent import Agent, DiffusionAgentConfig, DiffusionAlgorithm, DiffusionPolicy
from diffplan.config import ConfigError
from diffplan.data import NORMALIZERS, Episodes, NormalizerModule, observation_arrays
from diffplan.data.conditioning import ConditionEncoder, action_level_data
from diffplan.diffusion import denoising_loss, sample
from diffplan.nets import MLPDenoiser, TwinQ, ValueNet

CRITICS = ("td", "iql")
SELECTIONS = ("argmax", "softmax", "expectile")


@dataclass
class DiffusionQLConfig(DiffusionAgentConfig):
    """Diffusion-QL. Defaults are the paper's (its public code's) D4RL locomotion settings."""

    agent: str = "diffusion_ql"
    batch_size: int = 256
    lr: float = 3e-4
    """Actor learning rate."""
    critic_lr: float = 3e-4
    """Critic (and value) learning rate."""
    critic: str = "td"
    """td: Diffusion-QL's twin-Q TD learning on the actor's next actions | iql: IQL expectile critics (IDQL)."""
    eta: float = 1.0
    """Weight of the normalized Q term in the actor loss (0: pure diffusion BC)."""
    discount: float = 0.99
    """Reward discount gamma."""
    tau: float = 0.005
    """Polyak rate of the target critics."""
    max_q_backup: bool = False
    """Target = max over ``max_q_samples`` next actions per head, then min of heads (the paper's AntMaze)."""
    max_q_samples: int = 10
    """Next actions sampled per state for max_q_backup."""
    expectile: float = 0.7
    """IQL expectile tau of the value regression (critic=iql) and of expectile selection."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this before the TD targets."""
    diffusion_steps: int = 5
    """Denoising steps T, used for both training and sampling (the paper's 5)."""
    beta_schedule: str = "vp"
    """Noise schedule: vp (the paper's) | linear | cosine."""
    sampler: str = "ddpm"
    """Actions are sampled with all T DDPM steps, as in the paper."""
    hidden: int = 256
    """Width of the denoiser and critic MLPs (the paper: 3 hidden layers of 256, Mish)."""
    depth: int = 3
    """Hidden layers of the denoiser and critic MLPs."""
    time_dim: int = 16
    """Timestep-embedding width of the denoiser (the paper's 16)."""
    activation: str = "silu"
    """MLP activation: silu | mish (the paper's) | gelu. PyTorch's CPU Mish made a training step ~2x slower."""
    normalizer: str = "limits"
    """Normalizer of actions, and of observations and goals unless ``obs_normalizer`` is set: limits (to
    [-1, 1]) | gaussian | cdf (empirical CDF to [-1, 1])."""
    obs_normalizer: str = ""
    """Normalizer of observations and goals (the actor's and critics' condition) when it should differ from
    ``normalizer``: '' (the same) | limits | gaussian | cdf. gaussian with limits actions is closest to the paper's code
    (raw states, actions clamped to the action bounds): min-max scaling squeezes states whose dimensions have
    rare extremes (Hopper's velocities) into a fraction of [-1, 1], while standardised states keep their spread;
    ``clip_sample`` still bounds the sampled actions to the data's range."""
    goal_conditioned: bool = True
    """Condition actor and critics on the goal (needs a Dict observation with desired_goal)."""
    grad_clip: float = 1.0
    """Max gradient norm of actor and critic updates (the paper's per-task 'gn'; 0: off)."""
    ema_every: int = 5
    """Update the EMA every this many gradient steps (the paper's 5)."""
    act_with_ema: bool = True
    """Sample evaluation actions with the EMA actor (the paper's code uses the online actor; the EMA is the
    smoother of the two and is what the critic targets already use)."""
    n_candidates: int = 50
    """Actions sampled per decision (the paper's 50)."""
    selection: str = "softmax"
    """How a candidate is chosen: argmax Q | softmax (sample proportional to exp(Q / temperature)) |
    expectile (IDQL: sample proportional to |expectile - 1(Q < V)|; needs critic=iql)."""
    temperature: float = 1.0
    """Softmax selection temperature (the paper's code: 1, on raw Q values)."""

    def validate(self) -> None:
        super().validate()
        if self.critic not in CRITICS:
            raise ConfigError(f"critic={self.critic!r}; valid: {CRITICS}")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"selection={self.selection!r}; valid: {SELECTIONS}")
        if self.selection == "expectile" and self.critic != "iql":
            raise ConfigError("selection=expectile needs the IQL value function: set critic=iql")
        if not 0.0 < self.expectile < 1.0:
            raise ConfigError(f"expectile={self.expectile} must be in (0, 1)")
        if self.n_candidates < 1 or self.max_q_samples < 1 or self.diffusion_steps < 1:
            raise ConfigError("n_candidates, max_q_samples and diffusion_steps must be >= 1")
        if self.obs_normalizer not in ("", *NORMALIZERS):
            raise ConfigError(f"obs_normalizer={self.obs_normalizer!r}; valid: '' (as normalizer), {sorted(NORMALIZERS)}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature={self.temperature} must be > 0")


# ---------------------------------------------------------------------------------------------- pure math
def td_target(reward: torch.Tensor, done: torch.Tensor, discount: float, next_value: torch.Tensor) -> torch.Tensor:
    """``r + discount * (1 - done) * V(s')``, all (B,); detached (a regression target)."""
    return (reward + discount * (1.0 - done) * next_value).detach()


def pessimistic_next_value(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Clipped double-Q value of the next state from (B, S) Q values of S sampled next actions per head:
    max over the samples per head (S = 1: the single sample), then the min of the two heads. Returns (B,)."""
    return torch.minimum(q1.max(dim=1).values, q2.max(dim=1).values)


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """IQL's asymmetric squared loss |tau - 1(diff < 0)| * diff^2, elementwise (diff = target - prediction)."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff**2


def select_candidates(
    q: torch.Tensor,
    mode: str,
    *,
    temperature: float = 1.0,
    value: torch.Tensor | None = None,
    expectile: float = 0.7,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Index (M,) of the chosen candidate per row of Q values q (M, K).

    argmax: the highest Q. softmax: sampled with probabilities softmax(q / temperature). expectile (IDQL):
    sampled with weights |expectile - 1(q < value)|, value (M,) the state values.
    """
    if mode == "argmax":
        return q.argmax(dim=1)
    if mode == "softmax":
        probs = torch.softmax(q / temperature, dim=1)
    elif mode == "expectile":
        if value is None:
            raise ValueError("expectile selection needs the state values")
        probs = torch.where(q < value[:, None], 1.0 - expectile, expectile)
    else:
        raise ValueError(f"unknown selection {mode!r}; valid: {SELECTIONS}")
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(q.device)


# ------------------------------------------------------------------------------------------------- policy
class DiffusionQLPolicy(DiffusionPolicy[DiffusionQLConfig]):
    """Samples candidate actions with the diffusion actor and picks one by the target critics."""

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        critic: TwinQ,
        value: ValueNet | None,
        cfg: DiffusionQLConfig,
        encoder: ConditionEncoder,
        act_norm: NormalizerModule,
        observation_space: gym.Space,
        action_space: gym.spaces.Box,
    ) -> None:
        super().__init__(model=model, cfg=cfg, observation_space=observation_space, action_space=action_space)
        self.critic = critic
        self.critic_target = copy.deepcopy(critic).requires_grad_(False)
        self.value = value
        self.encoder, self.act_norm = encoder, act_norm

    def sample_actions(
        self,
        cond: torch.Tensor,
        *,
        model: torch.nn.Module | None = None,
        enable_grad: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Normalized actions (B, A) for conditions cond (B, C) through the core sampling loop (all T steps).

        ``enable_grad`` keeps the graph through every denoising step (the actor's Q term); ``model`` defaults
        to the trained actor.
        """
        x = sample(
            model or self.model, self.sampling_scheduler, (cond.shape[0], 1, self.act_dim), cond=cond,
            generator=generator or self.generator, device=cond.device, enable_grad=enable_grad,
        )
        return x[:, 0]

    @torch.inference_mode()
    def plan(self, obs: np.ndarray, goal: np.ndarray | None) -> np.ndarray:
        """One action per state: sample ``n_candidates``, choose by the target critics.

        Args:
            obs: (M, O) observations; goal: (M, G) or None.
        Returns:
            (M, A) actions in env units.
        """
        M, K = len(obs), self.cfg.n_candidates
        with self.latency.time(M):
            cond = self.encoder.encode(obs, goal, self.device).repeat_interleave(K, dim=0)  # (M*K, C)
            actor = self.ema.model if self.cfg.act_with_ema else self.model
            act = self.sample_actions(cond, model=actor)  # (M*K, A)
            q = self.critic_target.q_min(cond, act).reshape(M, K)
            value = None
            if self.cfg.selection == "expectile":
                assert self.value is not None
                value = self.value(cond[::K])
            idx = select_candidates(
                q, self.cfg.selection, temperature=self.cfg.temperature, value=value,
                expectile=self.cfg.expectile, generator=self.generator,
            )
            chosen = act.reshape(M, K, -1)[torch.arange(M, device=act.device), idx]
            return self.act_norm.unnormalize(chosen).cpu().numpy().astype(np.float32)

    def forward(self, batch: Batch, state: Any = None, **kwargs: Any) -> Batch:
        """One action per env. ``batch.obs``: Batch with observation (N, O) [and desired_goal (N, G)], or (N, O)."""
        obs, goal = observation_arrays(batch.obs)
        act = self.plan(obs, goal)
        return Batch(act=np.clip(act, self.action_space.low, self.action_space.high), state=state)


# ---------------------------------------------------------------------------------------------- algorithm
@dataclass(kw_only=True)
class DiffusionQLTrainingStats(TrainingStats):
    loss: float
    """Actor loss."""
    bc_loss: float
    q_loss: float
    critic_loss: float
    value_loss: float
    q_mean: float


class DiffusionQLAlgorithm(DiffusionAlgorithm[DiffusionQLPolicy]):
    """One Diffusion-QL (or IDQL) gradient step per update: critic(s), then the actor, then the targets."""

    def __init__(self, *, policy: DiffusionQLPolicy, generator: torch.Generator) -> None:
        super().__init__(policy=policy, generator=generator)
        cfg, clip = policy.cfg, policy.cfg.grad_clip or None
        self.actor_optim = self.optim
        self.critic_optim = self._create_optimizer(
            policy.critic, AdamOptimizerFactory(lr=cfg.critic_lr), max_grad_norm=clip
        )
        self.value_optim = None
        if policy.value is not None:
            self.value_optim = self._create_optimizer(
                policy.value, AdamOptimizerFactory(lr=cfg.critic_lr), max_grad_norm=clip
            )

    # The two critic variants; each returns the TD target (B,) and the value loss (0 for td).
    def td_critic_target(self, next_cond: torch.Tensor, reward: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """Diffusion-QL's target: next actions from the EMA actor, clipped double Q of the target critics."""
        policy, S = self.policy, self.cfg.max_q_samples if self.cfg.max_q_backup else 1
        with torch.no_grad():
            rep = next_cond.repeat_interleave(S, dim=0)
            next_act = policy.sample_actions(rep, model=policy.ema.model, generator=self.generator)
            q1, q2 = policy.critic_target(rep, next_act)
            next_value = pessimistic_next_value(q1.reshape(-1, S), q2.reshape(-1, S))
        return td_target(reward, done, self.cfg.discount, next_value)

    def iql_value_step(self, cond: torch.Tensor, act: torch.Tensor) -> float:
        """IQL's expectile regression of V(s) toward min_j Q'_j(s, a) on dataset actions; returns the loss."""
        policy = self.policy
        assert policy.value is not None and self.value_optim is not None
        with torch.no_grad():
            q = policy.critic_target.q_min(cond, act)
        loss = expectile_loss(q - policy.value(cond), self.cfg.expectile).mean()
        self.value_optim.step(loss)
        return float(loss.detach())

    def iql_critic_target(self, next_cond: torch.Tensor, reward: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """IQL's target r + gamma (1 - done) V(s')."""
        assert self.policy.value is not None
        with torch.no_grad():
            next_value = self.policy.value(next_cond)
        return td_target(reward, done, self.cfg.discount, next_value)

    def q_term(self, cond: torch.Tensor) -> torch.Tensor:
        """-Q_i(s, a_new) / mean|Q_j(s, a_new)| with a_new sampled through the chain with gradients."""
        policy = self.policy
        new_act = policy.sample_actions(cond, enable_grad=True, generator=self.generator)
        q1, q2 = policy.critic(cond, new_act)
        if torch.rand((), generator=self.generator) > 0.5:  # which head leads: random per step, as the paper
            q1, q2 = q2, q1
        return -q1.mean() / q2.abs().mean().detach()

    def train_step(self, batch: Batch, step: int) -> DiffusionQLTrainingStats:
        policy, cfg = self.policy, self.cfg
        goal = batch.get("goal", None)
        cond = policy.encoder(torch.as_tensor(batch.obs), goal)  # (B, C)
        next_cond = policy.encoder(torch.as_tensor(batch.next_obs), goal)  # the goal holds within an episode
        act = torch.as_tensor(batch.act)[:, 0]  # (B, A)
        reward = torch.as_tensor(batch.rew) * cfg.reward_scale
        done = torch.as_tensor(batch.done)

        value_loss = 0.0
        if cfg.critic == "iql":
            value_loss = self.iql_value_step(cond, act)
            target = self.iql_critic_target(next_cond, reward, done)
        else:
            target = self.td_critic_target(next_cond, reward, done)
        q1, q2 = policy.critic(cond, act)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.critic_optim.step(critic_loss)

        bc_loss, _ = denoising_loss(policy.model, policy.train_scheduler, act[:, None], cond=cond, generator=self.generator)
        q_loss = self.q_term(cond) if cfg.eta > 0 else torch.zeros(())
        actor_loss = bc_loss + cfg.eta * q_loss
        self.actor_optim.step(actor_loss)

        with torch.no_grad():
            for p_target, p in zip(policy.critic_target.parameters(), policy.critic.parameters(), strict=True):
                p_target.lerp_(p, cfg.tau)
        return DiffusionQLTrainingStats(
            loss=float(actor_loss.detach()),
            bc_loss=float(bc_loss.detach()),
            q_loss=float(q_loss.detach()),
            critic_loss=float(critic_loss.detach()),
            value_loss=value_loss,
            q_mean=float(q1.detach().mean()),
        )


CONFIG = DiffusionQLConfig


def build(
    cfg: DiffusionQLConfig,
    observation_space: gym.Space,
    action_space: gym.spaces.Box,
    episodes: Episodes | None = None,
) -> Agent:
    """Build the Diffusion-QL (or IDQL) policy and algorithm; ``episodes=None`` builds a shell for weights."""
    torch.manual_seed(cfg.seed)
    data = action_level_data(
        cfg, observation_space, action_space, episodes, goal_conditioned=cfg.goal_conditioned,
        obs_normalizer=cfg.obs_normalizer or None,
    )
    cond_dim, act_dim = data.encoder.dim, data.act_dim
    model = MLPDenoiser(
        act_dim, cond_dim, hidden=cfg.hidden, depth=cfg.depth, time_dim=cfg.time_dim, activation=cfg.activation
    )
    critic = TwinQ(cond_dim, act_dim, cfg.hidden, cfg.depth, cfg.activation)
    value = ValueNet(cond_dim, cfg.hidden, cfg.depth, cfg.activation) if cfg.critic == "iql" else None
    policy = DiffusionQLPolicy(
        model=model, critic=critic, value=value, cfg=cfg, encoder=data.encoder, act_norm=data.act_norm,
        observation_space=observation_space, action_space=action_space,
    ).to(cfg.device)
    algorithm = DiffusionQLAlgorithm(policy=policy, generator=data.generator)
    return Agent(policy=policy, algorithm=algorithm, batch_source=data.batch_source)
