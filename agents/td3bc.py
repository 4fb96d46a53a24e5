"""TD3+BC (Fujimoto & Gu, 2021): Tianshou's ``TD3BC``, TD3 with a behaviour-cloning term in the actor loss.

The algorithm is Tianshou's; this file picks the paper's settings (256x256 actor and twin critics, Adam 3e-4,
batch 256, alpha 2.5, policy noise 0.2 clipped at 0.5, actor update every 2 critic updates, states standardised
with the dataset's mean/std) and plugs them into diffplan's build contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
from tianshou.algorithm import TD3BC
from tianshou.algorithm.modelfree.ddpg import ContinuousDeterministicPolicy
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Batch
from tianshou.data.types import ActStateBatchProtocol
from tianshou.utils.net.continuous import ContinuousActorDeterministic

from diffplan.agent import Agent
from diffplan.data import Episodes
from diffplan.offline_rl import (
    BaselineConfig,
    BaselinePolicyMixin,
    TDLossMixin,
    finish,
    input_net,
    prepare,
    twin_critics,
)


@dataclass
class TD3BCConfig(BaselineConfig):
    """TD3+BC with the paper's hyperparameters."""

    agent: str = "td3bc"
    alpha: float = 2.5
    """Weight of the Q term against the BC term: lambda = alpha / mean|Q| (paper: 2.5)."""
    policy_noise: float = 0.2
    """Std of the target policy smoothing noise."""
    noise_clip: float = 0.5
    """Clip of the target policy smoothing noise."""
    update_actor_freq: int = 2
    """Critic updates per actor (and target) update."""


class TD3BCPolicy(BaselinePolicyMixin, ContinuousDeterministicPolicy):
    """Tianshou's deterministic policy: ``act = tanh(MLP(normalise(obs)))``, (B, A)."""


class TD3BCAlgorithm(TDLossMixin, TD3BC):
    """Tianshou's TD3BC, its stats with diffplan's ``loss`` (see :class:`TDLossMixin`), and the paper's target
    action: ``clip(pi_target(s') + clip(noise, -c, c), -1, 1)``."""

    def _target_q_compute_action(self, obs_batch: Batch) -> ActStateBatchProtocol:
        """The smoothed target action ``(B, A)``, clipped to the action bounds.

        Tianshou 2.0's TD3 adds the clipped noise and stops there, so a saturated actor asks the target critics
        about actions up to 1.5 outside the data's [-1, 1]. Offline, nothing corrects the critics' values there:
        on walker2d-medium the critic loss grew from 0.2 to 490 over 80k steps; clamped, it stays at 2-8 over
        50k. TD3 and TD3+BC (Fujimoto et al.'s code) clamp to +-max_action; so does this.
        """
        act_batch = super()._target_q_compute_action(obs_batch)
        max_action = self.policy.actor.max_action
        act_batch.act = act_batch.act.clamp(-max_action, max_action)
        return act_batch


CONFIG = TD3BCConfig


def build(
    cfg: TD3BCConfig, observation_space: gym.Space, action_space: gym.spaces.Box, episodes: Episodes | None = None
) -> Agent:
    """Build TD3+BC; ``episodes=None`` builds an empty shell to load weights into."""
    obs_dim, act_dim, norm = prepare(cfg, observation_space, action_space, episodes)
    actor = ContinuousActorDeterministic(
        preprocess_net=input_net(obs_dim, cfg.hidden, norm), action_shape=act_dim, max_action=1.0
    )
    policy = TD3BCPolicy(actor=actor, action_space=action_space, observation_space=observation_space)
    algorithm = TD3BCAlgorithm(
        policy=policy,
        policy_optim=AdamOptimizerFactory(lr=cfg.lr),
        **twin_critics(obs_dim, act_dim, cfg.hidden, cfg.lr, norm),
        tau=cfg.tau,
        gamma=cfg.gamma,
        policy_noise=cfg.policy_noise,
        update_actor_freq=cfg.update_actor_freq,
        noise_clip=cfg.noise_clip,
        alpha=cfg.alpha,
    )
    return finish(algorithm, cfg, episodes)
