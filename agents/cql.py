"""Conservative Q-learning (Kumar et al., 2020): Tianshou's ``CQL`` on a SAC actor-critic.

The algorithm is Tianshou's; this file picks the settings of Tianshou's ``examples/offline/d4rl_cql.py``
(256x256 nets, actor lr 1e-4, critic lr 3e-4, automatic entropy tuning, CQL weight 1 with the Lagrangian
threshold 10, 10 sampled actions per state), standardises states with the dataset's mean/std, and plugs them
into diffplan's build contract. ``calibrated=False`` by default: plain CQL as reported on D4RL (Cal-QL's
Monte-Carlo floor is meant for offline-to-online fine-tuning).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import torch
from tianshou.algorithm import CQL
from tianshou.algorithm.modelfree.sac import AutoAlpha, SACPolicy
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.utils.net.continuous import ContinuousActorProbabilistic, ContinuousCritic

from diffplan.agent import Agent
from diffplan.data import Episodes
from diffplan.offline_rl import (
    BaselineConfig,
    BaselinePolicyMixin,
    TDLossMixin,
    episodes_to_buffer,
    flat_obs_dim,
    input_net,
    obs_normalizer,
)


@dataclass
class CQLConfig(BaselineConfig):
    """CQL with the settings of Tianshou's D4RL example."""

    agent: str = "cql"
    actor_lr: float = 1e-4
    """Actor learning rate (``lr`` is the critics')."""
    alpha_lr: float = 3e-4
    """Learning rate of the automatically tuned entropy coefficient."""
    cql_alpha_lr: float = 3e-4
    """Learning rate of the Lagrange multiplier of the conservative penalty."""
    cql_weight: float = 1.0
    """Weight of the conservative penalty."""
    with_lagrange: bool = True
    """Tune the penalty weight so the Q gap stays at ``lagrange_threshold``."""
    lagrange_threshold: float = 10.0
    """Target gap between logsumexp Q and the data's Q."""
    temperature: float = 1.0
    """Temperature of the logsumexp over sampled actions."""
    num_repeat_actions: int = 10
    """Actions sampled per state for the logsumexp."""
    calibrated: bool = False
    """Cal-QL: floor the penalised Q at the Monte-Carlo return."""


class CQLPolicy(BaselinePolicyMixin, SACPolicy):
    """Tianshou's SAC policy: tanh-Gaussian over actions; evaluation uses the mean, (B, A)."""


class CQLAlgorithm(TDLossMixin, CQL):
    """Tianshou's CQL, its stats with diffplan's ``loss`` (see :class:`TDLossMixin`)."""


CONFIG = CQLConfig


def build(
    cfg: CQLConfig, observation_space: gym.Space, action_space: gym.spaces.Box, episodes: Episodes | None = None
) -> Agent:
    """Build CQL; ``episodes=None`` builds an empty shell to load weights into."""
    torch.manual_seed(cfg.seed)
    if episodes is not None:
        episodes.check_spaces(observation_space, action_space)
    obs_dim, act_dim = flat_obs_dim(observation_space), int(action_space.shape[0])
    norm = obs_normalizer(episodes, obs_dim, cfg.normalize_obs)
    actor = ContinuousActorProbabilistic(
        preprocess_net=input_net(obs_dim, cfg.hidden, norm), action_shape=act_dim, unbounded=True,
        conditioned_sigma=True,
    )
    policy = CQLPolicy(actor=actor, action_space=action_space, observation_space=observation_space)

    def critic() -> ContinuousCritic:
        return ContinuousCritic(preprocess_net=input_net(obs_dim, cfg.hidden, norm, act_dim))

    algorithm = CQLAlgorithm(
        policy=policy,
        policy_optim=AdamOptimizerFactory(lr=cfg.actor_lr),
        critic=critic(),
        critic_optim=AdamOptimizerFactory(lr=cfg.lr),
        critic2=critic(),
        critic2_optim=AdamOptimizerFactory(lr=cfg.lr),
        cql_alpha_lr=cfg.cql_alpha_lr,
        cql_weight=cfg.cql_weight,
        tau=cfg.tau,
        gamma=cfg.gamma,
        alpha=AutoAlpha(target_entropy=-float(act_dim), log_alpha=0.0, optim=AdamOptimizerFactory(lr=cfg.alpha_lr)),
        temperature=cfg.temperature,
        with_lagrange=cfg.with_lagrange,
        lagrange_threshold=cfg.lagrange_threshold,
        min_action=float(action_space.low.min()),
        max_action=float(action_space.high.max()),
        num_repeat_actions=cfg.num_repeat_actions,
        calibrated=cfg.calibrated,
    ).to(cfg.device)
    algorithm.generator = torch.Generator().manual_seed(cfg.seed)  # the runner checkpoints it
    buffer = None
    if episodes is not None:
        # Tianshou's trainer calls process_buffer once; diffplan's runner samples the buffer directly.
        buffer = algorithm.process_buffer(episodes_to_buffer(episodes))
    return Agent(policy, algorithm, buffer)
