"""What every agent shares: the build contract, the training-batch source, EMA and normalizer modules.

An agent module in ``diffplan.agents`` defines

* ``CONFIG``: its config dataclass (a :class:`diffplan.config.RunConfig` subclass), and
* ``build(cfg, observation_space, action_space, episodes) -> Agent``,

so the runner, CLI, checkpoints and robot bridge never need to know which algorithm they hold.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from tianshou.algorithm.algorithm_base import Algorithm, Policy
from tianshou.data import Batch
from torch import nn

from diffplan.data.normalizer import NORMALIZERS, Normalizer
from diffplan.diffusion import NoiseScheduler, make_scheduler


class BatchSource(Protocol):
    """What Tianshou's ``Algorithm.update(buffer, sample_size)`` needs from a buffer: ``sample``."""

    def sample(self, batch_size: int) -> tuple[Batch, np.ndarray]: ...


@dataclass
class Agent:
    """A built agent: the acting policy, the learning algorithm and (offline) its training-batch source."""

    policy: Policy
    algorithm: Algorithm
    batch_source: BatchSource | None = None


class WindowSampler:
    """Serves trajectory windows of a :class:`~diffplan.data.SequenceDataset` (or samples of any dataset with
    ``sample(n, generator) -> dict`` holding ``indices``, e.g. a :class:`~diffplan.data.TransitionDataset`) to
    ``Algorithm.update``.

    Tianshou's offline update samples ``buffer.sample(n)``; a ``ReplayBuffer`` would have to rebuild H-step
    windows with H python-level ``buffer.next`` calls per batch, while the SequenceDataset gathers them in one
    vectorized index. All randomness comes from ``generator`` so a resumed run draws the same batches.
    """

    def __init__(self, dataset: Any, generator: torch.Generator) -> None:
        self.dataset = dataset
        self.generator = generator

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, batch_size: int) -> tuple[Batch, np.ndarray]:
        data = self.dataset.sample(batch_size, self.generator)
        indices = data.pop("indices")
        return Batch(**data), np.asarray(indices)


class NormalizerModule(nn.Module):
    """Holds a fitted :class:`Normalizer` inside a policy so it is saved and restored with the weights.

    The statistics travel through ``get_extra_state`` as a dict of tensors, so a checkpoint still loads with
    ``torch.load(weights_only=True)``.
    """

    def __init__(self, kind: str, data: np.ndarray | None = None, dim: int | None = None) -> None:
        super().__init__()
        if kind not in NORMALIZERS:
            raise ValueError(f"unknown normalizer {kind!r}; valid: {sorted(NORMALIZERS)}")
        self.kind = kind
        self.normalizer: Normalizer = NORMALIZERS[kind]()
        if data is not None:
            self.normalizer.fit(np.asarray(data, dtype=np.float32))
        elif dim is not None:  # placeholder statistics, replaced when a checkpoint is loaded
            self.normalizer.fit(np.stack([-np.ones(dim, np.float32), np.ones(dim, np.float32)]))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalizer.normalize(x)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalizer.unnormalize(x)

    def get_extra_state(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.normalizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        state = dict(state)
        kind = state.pop("kind")
        if kind != self.kind:
            raise ValueError(f"checkpoint normalizer is {kind!r}, the config asks for {self.kind!r}")
        self.normalizer.load_state_dict(state)


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


def split_observation_space(space: gym.Space) -> tuple[int, int]:
    """``(obs_dim, goal_dim)`` of an env observation space: Dict goal envs -> (observation, desired_goal)."""
    if isinstance(space, gym.spaces.Dict):
        obs = space["observation"]
        goal = space.spaces.get("desired_goal")
        return int(np.prod(obs.shape)), int(np.prod(goal.shape)) if goal is not None else 0
    return int(np.prod(space.shape)), 0


def observation_arrays(obs: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """``(obs (N,O), goal (N,G) | None)`` from a Tianshou observation batch (Batch of a Dict space or array)."""
    if isinstance(obs, Batch | dict):
        observation = np.asarray(obs["observation"], dtype=np.float32)
        goal = obs.get("desired_goal", None)
        return observation, (None if goal is None else np.asarray(goal, dtype=np.float32))
    return np.asarray(obs, dtype=np.float32), None


class ConditionEncoder(nn.Module):
    """The condition vector of an action-level policy or critic: normalized observation(s) [and goal], flat.

    ``(obs (B, K, O) or (B, O), goal (B, G) | None) -> (B, K*O + G)``. Holds the observation and goal
    normalizers so they travel with the weights; goals get their own normalizer (fitted on the dataset's
    goals), since a goal is not an observation (PointMaze: xy only).
    """

    def __init__(self, obs_norm: NormalizerModule, goal_norm: NormalizerModule | None, history: int = 1) -> None:
        super().__init__()
        self.obs_norm, self.goal_norm, self.history = obs_norm, goal_norm, int(history)

    @classmethod
    def fit(
        cls, kind: str, episodes: Any, obs_dim: int, goal_dim: int, history: int = 1
    ) -> ConditionEncoder:
        """Normalizers of kind ``kind`` fitted on ``episodes`` (an :class:`~diffplan.data.Episodes`), or
        placeholders of the right size for ``episodes=None`` (a shell to load weights into); ``goal_dim=0``:
        no goal."""
        obs_norm = NormalizerModule(kind, None if episodes is None else episodes.obs, dim=obs_dim)
        goal_norm = None
        if goal_dim:
            goal_norm = NormalizerModule(kind, None if episodes is None else episodes.goal, dim=goal_dim)
        return cls(obs_norm, goal_norm, history)

    @property
    def dim(self) -> int:
        """Width K*O [+ G] of the condition vector."""
        goal_dim = 0 if self.goal_norm is None else self.goal_norm.normalizer.dim
        return self.history * self.obs_norm.normalizer.dim + goal_dim

    def forward(self, obs_n: torch.Tensor, goal_n: torch.Tensor | None = None) -> torch.Tensor:
        """Already normalized obs (B, K, O) | (B, O) and goal (B, G) -> (B, K*O [+ G])."""
        parts = [obs_n.flatten(1)]
        if self.goal_norm is not None:
            if goal_n is None:
                raise ValueError("this policy is goal-conditioned but got no goal")
            parts.append(goal_n)
        return torch.cat(parts, dim=-1)

    def encode(
        self, obs: np.ndarray | torch.Tensor, goal: np.ndarray | torch.Tensor | None, device: Any = "cpu"
    ) -> torch.Tensor:
        """Raw env obs (M, K, O) | (M, O) and goal (M, G) | None -> normalized condition (M, K*O [+ G])."""
        obs_n = self.obs_norm.normalize(torch.as_tensor(obs, dtype=torch.float32, device=device))
        goal_n = None
        if self.goal_norm is not None and goal is not None:
            goal_n = self.goal_norm.normalize(torch.as_tensor(goal, dtype=torch.float32, device=device))
        return self(obs_n, goal_n)


@dataclass
class ActionLevelData:
    """What an action-level agent (a policy over actions or action chunks, not whole trajectories) builds from
    its spaces and dataset; see :func:`action_level_data`."""

    encoder: ConditionEncoder
    act_norm: NormalizerModule
    act_dim: int
    generator: torch.Generator
    """Source of the training batches and noise; checkpointed by the runner as ``algorithm.generator``."""
    batch_source: WindowSampler | None


def action_level_data(
    cfg: Any,
    observation_space: gym.Space,
    action_space: gym.spaces.Box,
    episodes: Any,
    *,
    goal_conditioned: bool,
    history: int = 1,
    chunk: int = 1,
) -> ActionLevelData:
    """Condition encoder and action normalizer fitted on ``episodes`` (placeholders when None: a shell to load
    weights into) and a :class:`~diffplan.data.TransitionDataset` batch source with ``history`` observations
    and ``chunk`` actions per sample. ``cfg`` needs ``normalizer``, ``seed`` and ``device``."""
    from diffplan.data.transitions import TransitionDataset

    obs_dim, goal_dim = split_observation_space(observation_space)
    act_dim = int(action_space.shape[0])
    if episodes is not None:
        episodes.check_spaces(observation_space, action_space)
    encoder = ConditionEncoder.fit(cfg.normalizer, episodes, obs_dim, goal_dim if goal_conditioned else 0, history)
    act_norm = NormalizerModule(cfg.normalizer, None if episodes is None else episodes.act, dim=act_dim)
    generator = torch.Generator().manual_seed(cfg.seed)
    source = None
    if episodes is not None:
        dataset = TransitionDataset(
            episodes, encoder.obs_norm.normalizer, act_norm.normalizer,
            None if encoder.goal_norm is None else encoder.goal_norm.normalizer,
            history=history, chunk=chunk, device=cfg.device,
        )
        source = WindowSampler(dataset, generator)
    return ActionLevelData(encoder, act_norm, act_dim, generator, source)


def fit_normalizers(
    kind: str, observation_space: gym.Space, action_space: gym.spaces.Box, episodes: Any | None
) -> tuple[NormalizerModule, NormalizerModule]:
    """Observation and action normalizers fitted on ``episodes`` after checking them against the env's spaces;
    ``episodes=None`` (a shell to load a checkpoint into) gives placeholders of the right size."""
    obs_dim, act_dim = split_observation_space(observation_space)[0], int(np.prod(action_space.shape))
    if episodes is not None:
        episodes.check_spaces(observation_space, action_space)
    obs_norm = NormalizerModule(kind, None if episodes is None else episodes.obs, dim=obs_dim)
    act_norm = NormalizerModule(kind, None if episodes is None else episodes.act, dim=act_dim)
    return obs_norm, act_norm


def planning_scheduler(
    sampler: str,
    diffusion_steps: int,
    sampling_steps: int,
    *,
    beta_schedule: str,
    predict_epsilon: bool,
    clip_sample: float,
) -> NoiseScheduler:
    """The scheduler a planner samples with: ``sampling_steps`` DDIM steps, or every DDPM step.

    ``clip_sample`` 0 turns x0 clipping off (data normalized beyond [-1, 1], e.g. Gaussian normalization).
    """
    scheduler = make_scheduler(
        sampler,
        diffusion_steps,
        beta_schedule=beta_schedule,
        prediction_type="epsilon" if predict_epsilon else "sample",
        clip_sample=clip_sample or None,
    )
    scheduler.set_timesteps(sampling_steps if sampler == "ddim" else None)
    return scheduler
