"""The agent contract: what the training loops, the evaluator, the benchmarks and the robot bridge may rely on.

An agent module in ``diffplan.agents`` defines

* ``CONFIG``: its config dataclass (a :class:`diffplan.config.RunConfig` subclass), and
* ``build(cfg, observation_space, action_space, episodes) -> Agent``,

so the runner, CLI, checkpoints and robot bridge never need to know which algorithm they hold.

What an agent *can* do beyond acting is declared by the typed, ``runtime_checkable`` Protocols below (checked
with ``isinstance``, never discovered with ``hasattr``), and what every diffusion agent shares is owned by two
small base classes:

* :class:`DiffusionPolicy`: the trained model and its EMA copy (and EMA copies of any further networks an agent
  tracks, :meth:`DiffusionPolicy.track_ema`), the training and sampling schedulers (built
  once, from the same config fields), a seeded noise generator, ``reseed`` and latency tracking;
* :class:`DiffusionAlgorithm`: the update counter, the optimizer of the model, the training-batch generator and
  the EMA step after every update; a subclass writes only ``train_step`` (its paper's loss).

Whether an agent learns offline (from a batch source) or online (collecting in vector envs) follows from its
Tianshou algorithm type: an ``OnPolicyAlgorithm`` is trained by the online loop, everything else by the offline
loop (:mod:`diffplan.training`).
"""

from __future__ import annotations

import copy
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

import gymnasium as gym
import numpy as np
import torch
from tianshou.algorithm.algorithm_base import (
    Algorithm,
    OfflineAlgorithm,
    OnPolicyAlgorithm,
    Policy,
    TrainingStats,
)
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Batch
from torch import nn

from diffplan.config import ConfigError, RunConfig
from diffplan.diffusion import BETA_SCHEDULES, SCHEDULERS, NoiseScheduler, make_scheduler

# ------------------------------------------------------------------------------------------------ capabilities


class BatchSource(Protocol):
    """What Tianshou's ``Algorithm.update(buffer, sample_size)`` needs from a buffer: ``sample``."""

    def sample(self, batch_size: int) -> tuple[Batch, np.ndarray]: ...


@runtime_checkable
class Reseedable(Protocol):
    """A policy whose acting noise can be restarted, so that two evaluations of the same weights agree."""

    def reseed(self, seed: int) -> None: ...


@runtime_checkable
class TimedPolicy(Protocol):
    """A policy that times its planning calls (evaluation reports the latency)."""

    latency: LatencyTracker


@runtime_checkable
class Planner(Protocol):
    """A policy that plans for a batch of states in one call (``diffplan bench plan`` times it).

    ``plan(obs (M, O), goal (M, G) | None)`` returns the agent's plan (a chunk, an action, a trajectory ...).
    """

    latency: LatencyTracker

    def plan(self, obs: np.ndarray, goal: np.ndarray | None) -> Any: ...


@runtime_checkable
class ChunkPlanner(Protocol):
    """What the robot bridge deploys: ``plan_chunk(obs, committed (k, A)) -> (H, A)`` actions for the next H
    ticks whose first k rows equal the actions already committed for those ticks."""

    def plan_chunk(self, obs: Any, committed: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class LatencyBudgeted(Protocol):
    """A planner that fits each plan into a wall-clock budget (fewer solver steps / candidates when needed):
    ``set_latency_budget(ms)``, None or 0 turning it off. The deploy runner sets it from its control period."""

    def set_latency_budget(self, budget_ms: float | None) -> None: ...


@runtime_checkable
class WarmPlanner(Protocol):
    """A planner that can start a plan from a guess (warm-started replanning): ``warm_guess`` turns plans made
    ``shift`` steps ago (env units: states (M, H, O), actions (M, H, A)) into the ``init`` of
    ``plan(obs, goal, init)``; ``last_plan`` says what the last plan ran (steps, candidates, calls, warm)."""

    last_plan: dict[str, int]

    def warm_guess(self, plan_obs: np.ndarray, plan_act: np.ndarray, shift: int) -> Any: ...

    def plan(self, obs: np.ndarray, goal: np.ndarray | None, init: Any = None) -> Any: ...


@runtime_checkable
class PlanRecorder(Protocol):
    """A planner that keeps its next ``record_plans`` plans in ``recorded_plans`` (for pictures): each a dict
    with ``plan`` (H, O) raw states, ``length`` (steps used) and ``goal`` (G,) or None."""

    record_plans: int
    recorded_plans: list[dict[str, Any]]


@runtime_checkable
class WarmStartable(Protocol):
    """An algorithm that can start from another run's trained weights (``init_from``): the training loop calls
    ``warm_start(path)`` once at the start of a fresh run (never on resume: the checkpoint holds them then)."""

    def warm_start(self, path: str) -> None: ...


@runtime_checkable
class ChunkDecider(Protocol):
    """A policy that, while collecting for training, decides a whole action chunk per transition: the online loop
    then steps its training envs one decision at a time (``diffplan.envs.ActionChunks``: ``act_steps`` actions of
    a ``chunk``-action flat chunk, rewards summed), so buffers, returns, GAE and PPO see one transition per
    decision (DPPO's decision MDP). Outside training it acts one env step at a time like any chunk policy."""

    def decision_chunk(self) -> tuple[int, int]:
        """(chunk, act_steps): actions per decided chunk and how many of them the env executes."""
        ...


@runtime_checkable
class HasGenerator(Protocol):
    """Owns a ``torch.Generator`` whose state a checkpoint must keep for an exact resume."""

    generator: torch.Generator


@dataclass
class Agent:
    """A built agent: the acting policy, the learning algorithm and (offline) its training-batch source."""

    policy: Policy
    algorithm: Algorithm
    batch_source: BatchSource | None = None

    @property
    def online(self) -> bool:
        """True when the algorithm learns from its own env interaction (Tianshou's on-policy type)."""
        return isinstance(self.algorithm, OnPolicyAlgorithm)

    def generators(self) -> dict[str, torch.Generator]:
        """Every generator whose state an exact resume needs, by a stable name."""
        found: dict[str, torch.Generator] = {}
        for name, owner in (("algorithm", self.algorithm), ("policy", self.policy)):
            if isinstance(owner, HasGenerator) and all(g is not owner.generator for g in found.values()):
                found[name] = owner.generator
        return found


# --------------------------------------------------------------------------------------------- shared parts


class EMA(nn.Module):
    """Exponential moving average of a model's weights, as Diffuser keeps it (start after a warm-up, every k).

    Before ``start_step`` the average simply copies the model, so early evaluations are not dominated by the
    random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float = 0.995, every: int = 10, start_step: int = 1000) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.decay, self.every, self.start_step = decay, every, start_step

    @torch.no_grad()
    def update(self, source: nn.Module, step: int) -> None:
        if step % self.every != 0:
            return
        if step < self.start_step:
            self.model.load_state_dict(source.state_dict())
            return
        for ema_p, p in zip(self.model.parameters(), source.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)
        for ema_b, b in zip(self.model.buffers(), source.buffers(), strict=True):
            ema_b.copy_(b)


class LatencyTracker:
    """Wall-clock latency of recent planning calls (ms), with the batch size of each call."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self.records: deque[tuple[float, int]] = deque(maxlen=maxlen)

    def time(self, batch_size: int) -> _Timer:
        return _Timer(self, batch_size)

    def clear(self) -> None:
        self.records.clear()

    def summary(self) -> dict[str, float]:
        if not self.records:
            return {}
        ms = np.array([r[0] for r in self.records])
        sizes = np.array([r[1] for r in self.records])
        return {
            "plan_ms_median": float(np.median(ms)),
            "plan_ms_p90": float(np.percentile(ms, 90)),
            "plan_batch_mean": float(sizes.mean()),
            "plans": float(sizes.sum()),
        }


class _Timer:
    def __init__(self, tracker: LatencyTracker, batch_size: int) -> None:
        self.tracker, self.batch_size = tracker, batch_size

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.tracker.records.append(((time.perf_counter() - self.start) * 1000.0, self.batch_size))


# ------------------------------------------------------------------------------------ diffusion base classes


@dataclass
class DiffusionAgentConfig(RunConfig):
    """Fields every diffusion agent shares: the noise process, sampling, EMA and optimisation. Agents override
    the defaults with their paper's values."""

    diffusion_steps: int = 100
    """Training diffusion steps T (DDPM)."""
    beta_schedule: str = "cosine"
    """Noise schedule: cosine | linear | vp."""
    objective: str = "diffusion"
    """Generative objective: diffusion (denoising, Ho et al.) | flow (rectified flow / flow matching: the
    straight path x_s = (1-s) x0 + s eps, the model learning the velocity eps - x0, or x0)."""
    predict_epsilon: bool = True
    """The model predicts the noise (True) or the clean sample x0 (False); with objective=flow, True means
    the velocity eps - x0."""
    sampler: str = "ddim"
    """Sampler when acting. objective=diffusion: ddim (``sampling_steps`` steps) | dpmsolver++ (DPM-Solver++ 2M,
    ``sampling_steps`` steps) | ddpm (every one of the T steps); objective=flow: euler | heun (2 model calls
    per step but the last)."""
    sampling_steps: int = 10
    """Solver steps per sample (every sampler but ddpm)."""
    ddim_eta: float = 0.0
    """DDIM noise scale when acting (0: deterministic; 1 over all steps equals DDPM)."""
    clip_sample: float = 1.0
    """Clamp x0 estimates to +-clip_sample while sampling (0: off). Right for the limits normalizer (data in
    [-1, 1]); with the gaussian one values past 1 are ordinary."""
    ema_decay: float = 0.995
    """EMA decay of the acting weights."""
    ema_every: int = 10
    """Update the EMA every this many gradient steps."""
    ema_start: int = 1000
    """Before this step the EMA copies the model."""
    grad_clip: float = 0.0
    """Clip the gradient norm of the model's update to this value (0: off)."""

    def validate(self) -> None:
        """The checks every diffusion agent shares; subclasses extend it (and call it)."""
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective={self.objective!r}; valid: {list(OBJECTIVES)}")
        valid = sorted(name for name, cls in SCHEDULERS.items() if cls.objective == self.objective)
        if self.sampler not in valid:
            raise ConfigError(f"sampler={self.sampler!r} with objective={self.objective}; valid: {valid}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(f"beta_schedule={self.beta_schedule!r}; valid: {sorted(BETA_SCHEDULES)}")
        if self.diffusion_steps < 1 or self.sampling_steps < 1:
            raise ConfigError("diffusion_steps and sampling_steps must be >= 1")
        if SCHEDULERS[self.sampler].strided and self.sampling_steps > self.diffusion_steps:
            raise ConfigError(f"sampling_steps={self.sampling_steps} > diffusion_steps={self.diffusion_steps}")
        if self.clip_sample < 0:
            raise ConfigError(f"clip_sample={self.clip_sample} must be >= 0 (0: no clipping)")
        if not 0.0 <= self.ddim_eta <= 1.0:
            raise ConfigError(f"ddim_eta={self.ddim_eta} must be in [0, 1]")

    @property
    def sampler_kwargs(self) -> dict[str, float]:
        """The acting scheduler's own settings beyond the shared ones (DDIM: ``eta``)."""
        return {"eta": self.ddim_eta} if self.sampler == "ddim" else {}

    @property
    def stochastic_steps(self) -> bool:
        """Whether the acting sampler's reverse steps (but the last) add noise: DDPM, and DDIM with ddim_eta > 0.
        Std-scaled value guidance (Diffuser's ``scale_grad_by_std``) needs them."""
        return SCHEDULERS[self.sampler].stochastic(**self.sampler_kwargs)


OBJECTIVES: dict[str, str] = {"diffusion": "ddpm", "flow": "euler"}
"""Objective -> the scheduler whose forward process (``add_noise``, ``training_target``) trains the model."""

CfgT = TypeVar("CfgT", bound=DiffusionAgentConfig)


class DiffusionPolicy(Policy, Generic[CfgT]):
    """What every diffusion policy owns: ``model`` (trained) and ``ema`` (acts), the training scheduler
    (``train_scheduler``, DDPM over T) and the acting one (``sampling_scheduler``), both from the config's one
    set of fields; a seeded noise ``generator`` with :meth:`reseed`; and ``latency`` of planning calls.

    Subclasses implement ``forward`` (Tianshou's acting call) and usually ``plan``.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        cfg: CfgT,
        observation_space: gym.Space,
        action_space: gym.spaces.Box,
    ) -> None:
        super().__init__(action_space=action_space, observation_space=observation_space)
        self.cfg = cfg
        self.model = model
        self.ema = EMA(model, cfg.ema_decay, cfg.ema_every, cfg.ema_start)
        self.emas = nn.ModuleDict()
        """EMA copies of further networks by attribute name (:meth:`track_ema`), updated and saved with ``ema``."""
        self.register_load_state_dict_pre_hook(self._fill_missing_emas)
        self.act_dim = int(action_space.shape[0])
        self.train_scheduler: NoiseScheduler = make_scheduler(
            OBJECTIVES[cfg.objective], cfg.diffusion_steps, beta_schedule=cfg.beta_schedule,
            prediction_type=self.prediction_type,
        )
        """The forward (noising) process the model is trained on (DDPM, or the flow's straight path); T steps."""
        self.sampling_scheduler: NoiseScheduler = self.make_sampling_scheduler()
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.latency = LatencyTracker()

    @property
    def prediction_type(self) -> str:
        """What the model outputs: epsilon | sample, or for flow models velocity | sample."""
        if self.cfg.predict_epsilon:
            return "velocity" if self.cfg.objective == "flow" else "epsilon"
        return "sample"

    def make_sampling_scheduler(self, steps: int | None = None) -> NoiseScheduler:
        """The scheduler acting samples with: ``cfg.sampler`` (a key of SCHEDULERS) over ``steps`` solver steps
        (default ``sampling_steps``; every one of the T steps for ddpm), DDIM with ``ddim_eta``.

        ``clip_sample`` 0 turns x0 clipping off (data normalized beyond [-1, 1], e.g. Gaussian normalization).
        """
        cfg = self.cfg
        scheduler = make_scheduler(
            cfg.sampler, cfg.diffusion_steps, beta_schedule=cfg.beta_schedule,
            prediction_type=self.prediction_type, clip_sample=cfg.clip_sample or None, **cfg.sampler_kwargs,
        )
        if steps is None:
            steps = cfg.sampling_steps if scheduler.strided else None
        scheduler.set_timesteps(steps)
        return scheduler

    def track_ema(self, name: str) -> nn.Module:
        """Also keep an EMA of the network in attribute ``name`` (e.g. a value function or an inverse-dynamics
        model), with the model's decay and timing; returns the averaged copy, which is what should act.

        The averages are updated after every update by :meth:`update_emas` and saved with the weights under
        ``emas.<name>``; calling it again restarts the average from the network's current weights.
        """
        self.emas[name] = EMA(getattr(self, name), self.cfg.ema_decay, self.cfg.ema_every, self.cfg.ema_start)
        return self.emas[name].model

    def averaged(self, name: str) -> nn.Module:
        """The EMA copy of the network in attribute ``name`` (see :meth:`track_ema`)."""
        return self.emas[name].model

    def update_emas(self, step: int) -> None:
        """One EMA step of the model and of every tracked network, after update number ``step``."""
        self.ema.update(self.model, step)
        for name, ema in self.emas.items():
            ema.update(getattr(self, name), step)

    @staticmethod
    def _fill_missing_emas(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Checkpoints from before a network's EMA was tracked: start that EMA from the saved network."""
        assert isinstance(module, DiffusionPolicy)
        for name in module.emas:
            ema_prefix, src_prefix = f"{prefix}emas.{name}.model.", f"{prefix}{name}."
            if any(k.startswith(ema_prefix) for k in state_dict):
                continue
            for key in [k for k in state_dict if k.startswith(src_prefix)]:
                state_dict[ema_prefix + key[len(src_prefix):]] = state_dict[key]

    def reseed(self, seed: int) -> None:
        """Restart the acting noise stream, so evaluations are repeatable."""
        self.generator.manual_seed(seed)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


PolicyT = TypeVar("PolicyT", bound=DiffusionPolicy)


class DiffusionAlgorithm(OfflineAlgorithm[PolicyT], Generic[PolicyT]):
    """What every offline diffusion algorithm owns: the update counter ``num_updates`` (checkpointed), the
    training-batch ``generator`` (shared with the batch source, so a resumed run draws the same batches), the
    Adam optimizer of ``policy.model`` (``self.optim``), and the EMA step after every update.

    A subclass implements :meth:`train_step` with its paper's losses (and may create more optimizers with
    ``self._create_optimizer``).
    """

    def __init__(self, *, policy: PolicyT, generator: torch.Generator, lr: float | None = None) -> None:
        super().__init__(policy=policy)
        cfg = policy.cfg
        self.cfg = cfg
        self.generator = generator
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.optim = self._create_optimizer(
            policy.model, AdamOptimizerFactory(lr=cfg.lr if lr is None else lr), max_grad_norm=cfg.grad_clip or None
        )

    def train_step(self, batch: Batch, step: int) -> TrainingStats:
        """One gradient step on ``batch``; ``step`` is this update's number (1 for the first). Returns stats
        with a ``loss`` field (what the progress bar shows)."""
        raise NotImplementedError

    def _update_with_batch(self, batch: Batch) -> TrainingStats:
        step = int(self.num_updates) + 1
        stats = self.train_step(batch, step)
        self.num_updates += 1
        self.policy.update_emas(step)
        return stats



# ----------------------------------------------------------------------------------------------- online agents


@dataclass
class OnlineConfig(RunConfig):
    """Fields of agents that learn from their own interaction (Tianshou on-policy algorithms, DPPO).

    For these agents one training *step* is one policy update: ``env_steps_per_update`` env steps collected
    across ``train_envs`` vector envs, then ``update_epochs`` passes over them in minibatches of ``batch_size``.
    ``train_steps``, ``eval_every``, ``checkpoint_every`` and ``log_every`` count these updates.
    """

    train_steps: int = 100
    """Number of policy updates (each after ``env_steps_per_update`` env steps)."""
    train_envs: int = 8
    """Parallel training environments of the collector."""
    subproc_envs: bool = True
    """Training envs in subprocesses (Tianshou's SubprocVectorEnv); False: in this process (DummyVectorEnv)."""
    env_steps_per_update: int = 2048
    """Env steps collected (over all training envs) before each update."""
    update_epochs: int = 10
    """Passes over the collected data per update (Tianshou's ``repeat``)."""
    batch_size: int = 64
    """Minibatch size of the update."""
    eval_every: int = 10
    """Evaluate every this many updates (0: only at the end)."""
    checkpoint_every: int = 10
    """Save a checkpoint every this many updates (0: only at the end). The training envs restart (reseeded)
    after every checkpoint, so a resumed run continues exactly."""
    log_every: int = 1
    """Log training scalars every this many updates."""
    init_from: str = ""
    """A run directory (or checkpoint) of a pre-trained agent to start from; which agents an algorithm accepts
    is its own (its ``warm_start``). Empty: start from scratch."""

    PRETRAINED_AGENT: ClassVar[str] = ""
    """The agent whose runs ``diffplan finetune --from RUN`` starts this one from ('': none)."""
    PRETRAINED_KEYS: ClassVar[tuple[str, ...]] = ()
    """Config fields ``diffplan finetune --from RUN`` takes from that run (its network and task)."""


class RunningRewardScaling:
    """Mixin of a Tianshou actor-critic algorithm: each update's rewards are divided by the running standard
    deviation of their discounted sums along each env's trajectory, then clipped to +-10, before GAE (DPPO's
    ``RunningRewardScaler``, gymnasium's ``NormalizeReward``). Put it before the Tianshou class in the bases and
    give that class ``return_scaling=False``.

    Why not Tianshou's ``return_scaling``: it divides the GAE returns by a running std of those returns, which
    the critic's own bootstrapped values feed, and its first batch is scaled before any statistics exist (std 1).
    From a pre-trained policy whose first returns are in the hundreds, the critic learns that scale, the next
    returns bootstrap from its values times the new std, and the scale runs away: DPPO on hopper-medium had a
    running return mean of 8e5 after 15 updates, explained variance -8, and no improvement. These statistics
    depend on rewards only, and the current batch is in them before it is scaled.

    Scaling happens once per update, in ``_preprocess_batch`` (PPO's ``recompute_advantage`` reuses the scaled
    batch). The statistics and each env's running discounted sum travel in the state dict
    (``get_extra_state``), so a resumed run scales exactly as the uninterrupted one."""

    REWARD_CLIP: ClassVar[float] = 10.0
    """Scaled rewards are clipped to +-this (DPPO's ``cliprew``)."""

    reward_scaling: bool
    gamma: float

    def init_reward_scaling(self, enabled: bool) -> None:
        """Call after the Tianshou class's ``__init__``."""
        from tianshou.utils import RunningMeanStd

        self.reward_scaling = enabled
        self.reward_rms = RunningMeanStd(clip_max=None)
        """Running mean/var of the per-env discounted reward sums."""
        self.running_sum: np.ndarray | None = None
        """Each training env's discounted reward sum so far in its current episode, (E,)."""

    def _preprocess_batch(self, batch: Any, buffer: Any, indices: np.ndarray) -> Any:
        if self.reward_scaling:
            batch.rew = self._scaled_rewards(batch, buffer, indices)
        return super()._preprocess_batch(batch, buffer, indices)  # type: ignore[misc]

    def _scaled_rewards(self, batch: Any, buffer: Any, indices: np.ndarray) -> np.ndarray:
        """(N,) rewards of the batch divided by the running std, after adding this batch's sums to it. ``indices``
        list each env's transitions in time order, as GAE assumes; the sub-buffer an index lies in is its env."""
        edges = np.asarray(buffer.subbuffer_edges)
        env = np.searchsorted(edges, indices, side="right") - 1
        if self.running_sum is None or len(self.running_sum) != len(edges) - 1:
            self.running_sum = np.zeros(len(edges) - 1)
        rew = np.asarray(batch.rew, dtype=np.float64)
        done = np.logical_or(batch.terminated, batch.truncated)
        sums, running = np.empty_like(rew), self.running_sum
        # One pass over the batch (a few thousand scalars per update, so a Python loop is fine here).
        for i, e in enumerate(env):
            running[e] = running[e] * self.gamma + rew[i]
            sums[i] = running[e]
            if done[i]:
                running[e] = 0.0
        self.reward_rms.update(sums)
        scaled = rew / np.sqrt(self.reward_rms.var + 1e-8)
        return np.clip(scaled, -self.REWARD_CLIP, self.REWARD_CLIP).astype(np.float32)

    def get_extra_state(self) -> dict[str, Any]:
        rms = self.reward_rms
        running = self.running_sum if self.running_sum is not None else np.zeros(0)
        return {"mean": torch.as_tensor(rms.mean, dtype=torch.float64),
                "var": torch.as_tensor(rms.var, dtype=torch.float64), "count": int(rms.count),
                "running_sum": torch.as_tensor(running, dtype=torch.float64)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.reward_rms.mean = float(state["mean"])
        self.reward_rms.var = float(state["var"])
        self.reward_rms.count = state["count"]
        running = state.get("running_sum")
        self.running_sum = running.numpy().copy() if running is not None and running.numel() else None
