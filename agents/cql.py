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
from tianshou.algorithm import CQL
from tianshou.algorithm.modelfree.sac import SACPolicy
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.utils.net.continuous import ContinuousActorProbabilistic

from diffplan.agent import Agent
from diffplan.data import Episodes
from diffplan.offline_rl import (
    BaselineConfig,
    BaselinePolicyMixin,
    TDLossMixin,
    auto_alpha,
    finish,
    input_net,
    prepare,
    twin_critics,
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
    obs_dim, act_dim, norm = prepare(cfg, observation_space, action_space, episodes)
    actor = ContinuousActorProbabilistic(
        preprocess_net=input_net(obs_dim, cfg.hidden, norm), action_shape=act_dim, unbounded=True,
        conditioned_sigma=True,
    )
    policy = CQLPolicy(actor=actor, action_space=action_space, observation_space=observation_space)
    algorithm = CQLAlgorithm(
        policy=policy,
        policy_optim=AdamOptimizerFactory(lr=cfg.actor_lr),
        **twin_critics(obs_dim, act_dim, cfg.hidden, cfg.lr, norm),
        cql_alpha_lr=cfg.cql_alpha_lr,
        cql_weight=cfg.cql_weight,
        tau=cfg.tau,
        gamma=cfg.gamma,
        alpha=auto_alpha(act_dim, cfg.alpha_lr),
        temperature=cfg.temperature,
        with_lagrange=cfg.with_lagrange,
        lagrange_threshold=cfg.lagrange_threshold,
        min_action=float(action_space.low.min()),
        max_action=float(action_space.high.max()),
        num_repeat_actions=cfg.num_repeat_actions,
        calibrated=cfg.calibrated,
    )
    return finish(algorithm, cfg, episodes)
