"""Conditioning of action-level policies and critics: normalizers fitted on a dataset, the condition encoder and
the transition batch source they train from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from diffplan.data.batches import WindowSampler
from diffplan.data.normalizer import NormalizerModule
from diffplan.data.spaces import split_observation_space


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
    obs_normalizer: str | None = None,
) -> ActionLevelData:
    """Condition encoder and action normalizer fitted on ``episodes`` (placeholders when None: a shell to load
    weights into) and a :class:`~diffplan.data.TransitionDataset` batch source with ``history`` observations
    and ``chunk`` actions per sample. ``cfg`` needs ``normalizer``, ``seed`` and ``device``; observations and
    goals get the ``obs_normalizer`` kind instead when it is given (actions keep ``cfg.normalizer``, e.g. limits
    so that x0 clipping bounds sampled actions to the data's range while states are standardised)."""
    from diffplan.data.transitions import TransitionDataset

    obs_dim, goal_dim = split_observation_space(observation_space)
    act_dim = int(action_space.shape[0])
    if episodes is not None:
        episodes.check_spaces(observation_space, action_space)
    encoder = ConditionEncoder.fit(
        obs_normalizer or cfg.normalizer, episodes, obs_dim, goal_dim if goal_conditioned else 0, history
    )
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
