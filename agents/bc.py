"""Behaviour cloning: Tianshou's ``OfflineImitationLearning`` (MSE regression of dataset actions).

The learning is Tianshou's; this file chooses the network (a 256x256 MLP with a tanh head, observations
standardised with the dataset's mean/std as in CORL's BC) and plugs it into diffplan's build contract. It is the
floor every offline agent is compared against.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
from tianshou.algorithm.imitation.imitation_base import ImitationPolicy, OfflineImitationLearning
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.utils.net.continuous import ContinuousActorDeterministic

from diffplan.agent import Agent
from diffplan.data import Episodes
from diffplan.offline_rl import BaselineConfig, BaselinePolicyMixin, finish, input_net, prepare


@dataclass
class BCConfig(BaselineConfig):
    """Behaviour cloning (CORL's BC settings: 256x256, Adam 3e-4, batch 256, normalised states)."""

    agent: str = "bc"


class BCPolicy(BaselinePolicyMixin, ImitationPolicy):
    """Tianshou's imitation policy: ``act = tanh(MLP(normalise(obs)))``, (B, A)."""


CONFIG = BCConfig


def build(
    cfg: BCConfig, observation_space: gym.Space, action_space: gym.spaces.Box, episodes: Episodes | None = None
) -> Agent:
    """Build BC; ``episodes=None`` builds an empty shell to load weights into."""
    obs_dim, act_dim, norm = prepare(cfg, observation_space, action_space, episodes)
    actor = ContinuousActorDeterministic(
        preprocess_net=input_net(obs_dim, cfg.hidden, norm), action_shape=act_dim, max_action=1.0
    )
    policy = BCPolicy(actor=actor, action_space=action_space, observation_space=observation_space)
    return finish(OfflineImitationLearning(policy=policy, optim=AdamOptimizerFactory(lr=cfg.lr)), cfg, episodes)
