"""Glue that lets Tianshou's own offline-RL algorithms (BC, TD3+BC, CQL) run as diffplan agents.

The baselines are Tianshou's implementations, not ours; this module only adapts their inputs:

* :class:`ObsInputNet`: a Tianshou ``Net`` whose input is first flattened (a Dict goal observation becomes
  ``[observation, desired_goal]``) and standardised with the dataset's mean/std (TD3+BC, Fujimoto & Gu 2021,
  normalises states this way; CORL does it for every baseline). The statistics live inside the net, so they are
  saved with the weights and the policy acts on raw env observations.
* :func:`episodes_to_buffer`: the dataset as a Tianshou ``ReplayBuffer`` (what Tianshou's offline updates
  sample from, including ``obs_next`` and the terminal flags for TD targets).
* :class:`BaselineConfig`: the config fields the three baselines share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tianshou.data import Batch, ReplayBuffer
from tianshou.utils.net.common import ModuleWithVectorOutput, Net

from diffplan.agent import Agent
from diffplan.config import RunConfig
from diffplan.data import Episodes, NormalizerModule, observation_arrays, split_observation_space
from diffplan.nets import sac as sac_nets
from diffplan.nets.sac import auto_alpha  # noqa: F401 (re-exported: the baselines import it from here)


@dataclass
class BaselineConfig(RunConfig):
    """Fields shared by the Tianshou baselines (defaults: the TD3+BC / CORL settings)."""

    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden layer sizes of every MLP (actor and critics)."""
    normalize_obs: bool = True
    """Standardise observations with the dataset's mean/std (TD3+BC's state normalisation)."""
    gamma: float = 0.99
    """Discount of the TD targets (unused by BC)."""
    tau: float = 0.005
    """Polyak rate of the target networks (unused by BC)."""
    batch_size: int = 256
    lr: float = 3e-4


def flat_obs(obs: Any) -> np.ndarray | torch.Tensor:
    """``(B, O [+ G])``: a Dict goal observation batch becomes ``[observation, desired_goal]``."""
    if isinstance(obs, Batch | dict):
        o, g = observation_arrays(obs)
        return o if g is None else np.concatenate([o, g], axis=-1)
    return obs


class ObsInputNet(ModuleWithVectorOutput):
    """``obs (B, O) [, act]`` -> flatten -> standardise the first ``O`` inputs -> Tianshou ``Net`` -> (B, H).

    For a critic built with ``concat=True`` the input is ``[obs, act]``; only the observation part is
    standardised (actions are already in [-1, 1]).
    """

    def __init__(self, net: Net, norm: NormalizerModule | None, obs_dim: int) -> None:
        super().__init__(net.get_output_dim())
        self.net = net
        self.norm = norm
        self.obs_dim = obs_dim

    def forward(self, obs: Any, state: Any = None, info: Any = None) -> tuple[torch.Tensor, Any]:
        x = torch.as_tensor(flat_obs(obs), dtype=torch.float32, device=next(self.net.parameters()).device)
        if self.norm is not None:
            x = torch.cat([self.norm.normalize(x[..., : self.obs_dim]), x[..., self.obs_dim :]], dim=-1)
        return self.net(x)[0], state


def input_net(obs_dim: int, hidden: Sequence[int], norm: NormalizerModule | None, act_dim: int = 0) -> ObsInputNet:
    """The MLP trunk of an actor (``act_dim=0``) or a critic (input ``[obs, act]``), standardisation in front.

    ``obs_dim`` counts the flattened observation (with the goal for goal tasks)."""
    return ObsInputNet(Net(state_shape=obs_dim + act_dim, hidden_sizes=list(hidden)), norm, obs_dim)


def flat_obs_dim(observation_space: Any) -> int:
    """Width of :func:`flat_obs` for an env observation space."""
    obs_dim, goal_dim = split_observation_space(observation_space)
    return obs_dim + goal_dim


def obs_normalizer(episodes: Episodes | None, obs_dim: int, enabled: bool) -> NormalizerModule | None:
    """Gaussian normaliser of the flattened observation (``[obs, goal]``); placeholder stats for a shell."""
    if not enabled:
        return None
    if episodes is None:
        return NormalizerModule("gaussian", dim=obs_dim)
    data = episodes.obs if episodes.goal is None else np.concatenate([episodes.obs, episodes.goal], axis=-1)
    return NormalizerModule("gaussian", data)


def episodes_to_buffer(episodes: Episodes) -> ReplayBuffer:
    """All transitions of ``episodes`` in a Tianshou ``ReplayBuffer`` (obs flattened with the goal)."""
    obs, nxt = episodes.obs, episodes.next_obs
    if episodes.goal is not None:
        obs = np.concatenate([obs, episodes.goal], axis=-1)
        nxt = np.concatenate([nxt, episodes.goal], axis=-1)
    buf = ReplayBuffer.from_data(
        obs=obs.astype(np.float32),
        act=episodes.act.astype(np.float32),
        rew=episodes.rew.astype(np.float32),
        terminated=episodes.terminal,
        truncated=episodes.timeout,
        done=episodes.terminal | episodes.timeout,
        obs_next=nxt.astype(np.float32),
    )
    # from_data leaves last_index at [0], which makes buffer.next(0) an episode end (see notes/tianshou-minari).
    buf.last_index[0] = len(buf) - 1
    return buf


def prepare(
    cfg: BaselineConfig, observation_space: Any, action_space: Any, episodes: Episodes | None
) -> tuple[int, int, NormalizerModule | None]:
    """The start of every baseline's ``build``: seed, check the data against the spaces, and return
    ``(flat obs dim, action dim, observation normaliser)``."""
    torch.manual_seed(cfg.seed)
    if episodes is not None:
        episodes.check_spaces(observation_space, action_space)
    obs_dim = flat_obs_dim(observation_space)
    return obs_dim, int(action_space.shape[0]), obs_normalizer(episodes, obs_dim, cfg.normalize_obs)


def twin_critics(
    obs_dim: int, act_dim: int, hidden: Sequence[int], lr: float, norm: NormalizerModule | None = None
) -> dict[str, Any]:
    """:func:`diffplan.nets.sac.twin_critics` for the baselines: each ``Q(s, a)`` MLP reads ``[normalise(obs),
    act]`` (flattened goal observations included)."""
    return sac_nets.twin_critics(lambda: input_net(obs_dim, hidden, norm, act_dim), lr)


def finish(algorithm: Any, cfg: BaselineConfig, episodes: Episodes | None) -> Agent:
    """The end of every baseline's ``build``: device, the generator the runner checkpoints, the buffer."""
    algorithm = algorithm.to(cfg.device)
    algorithm.generator = torch.Generator().manual_seed(cfg.seed)
    # Tianshou's trainer calls process_buffer once (CQL's Monte-Carlo returns); diffplan's runner samples the
    # buffer directly, so it is called here.
    buffer = None if episodes is None else algorithm.process_buffer(episodes_to_buffer(episodes))
    return Agent(algorithm.policy, algorithm, buffer)


class TDLossMixin:
    """Adds ``loss`` (critic1 + critic2 TD loss) to an actor-critic's training stats: the one number diffplan's
    runner shows in its progress bar for every agent. Tianshou's own stats are kept as they are."""

    def _update_with_batch(self, batch: Any) -> Any:
        stats = super()._update_with_batch(batch)  # type: ignore[misc]
        stats.loss = float(stats.critic1_loss + stats.critic2_loss)
        return stats


class BaselinePolicyMixin:
    """Tianshou policies as diffplan acts with them: on a bare ``Batch(obs=...)`` and without a graph."""

    is_within_training_step: bool

    def forward(self, batch: Any, state: Any = None, **kwargs: Any) -> Any:
        # Tianshou's policies read batch.info, which a bare Batch(obs=...) (a robot client, a test) lacks.
        if "info" not in batch.get_keys():
            batch = Batch(obs=batch.obs, info=Batch())
        # Acting needs no graph (the Collector does not disable it); updates run inside a training step.
        if self.is_within_training_step:
            return super().forward(batch, state, **kwargs)  # type: ignore[misc]
        with torch.no_grad():
            return super().forward(batch, state, **kwargs)  # type: ignore[misc]
