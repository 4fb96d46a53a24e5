"""PPO with a Gaussian MLP policy (Schulman et al., 2017): Tianshou's own ``PPO``, learning online.

The learning is Tianshou's (clipped surrogate, GAE, value loss, return scaling); this file chooses the networks
(Tianshou's MuJoCo example: 64x64 tanh MLPs, a state-independent log-std starting at -0.5) and plugs them into
diffplan's build contract. It is the online baseline a user would otherwise pick, and, with ``init_from`` a
``bc`` run, the Gaussian BC-then-PPO fine-tuning baseline that diffusion-policy fine-tuning is compared with:
the BC actor's trunk and head become the Gaussian policy's mean.

Being a Tianshou ``OnPolicyAlgorithm``, it is trained by the online loop (:class:`diffplan.training.OnlineSteps`):
collection through a Tianshou ``Collector`` over vector envs, ``update(buffer, batch_size, repeat)`` after every
``env_steps_per_update`` env steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import torch
from tianshou.algorithm.modelfree.ppo import PPO
from tianshou.algorithm.modelfree.reinforce import ProbabilisticActorPolicy
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.utils.net.continuous import ContinuousActorProbabilistic, ContinuousCritic

from diffplan.agent import Agent, OnlineConfig, RunningRewardScaling
from diffplan.checkpoint import load_checkpoint
from diffplan.config import ConfigError
from diffplan.data import Episodes
from diffplan.offline_rl import BaselinePolicyMixin, flat_obs_dim, input_net, obs_normalizer


@dataclass
class PPOConfig(OnlineConfig):
    """PPO. Defaults: Tianshou's MuJoCo PPO example (``examples/mujoco/mujoco_ppo.py``)."""

    agent: str = "ppo"
    PRETRAINED_AGENT: ClassVar[str] = "bc"
    PRETRAINED_KEYS: ClassVar[tuple[str, ...]] = ("task", "maze", "hidden", "normalize_obs")
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer sizes of the actor and the critic MLPs (Tianshou's example: 64, 64)."""
    lr: float = 3e-4
    """Adam learning rate of actor and critic."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    eps_clip: float = 0.2
    """Clip range of the probability ratio."""
    vf_coef: float = 0.25
    """Weight of the value loss."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    max_grad_norm: float = 0.5
    """Gradient-norm clip of each update."""
    return_scaling: bool = True
    """Divide rewards by the running std of their discounted sums, clipped to +-10
    (:class:`~diffplan.agent.RunningRewardScaling`: gymnasium's ``NormalizeReward``, DPPO's reward scaler)."""
    advantage_normalization: bool = False
    """Normalize advantages per minibatch."""
    recompute_advantage: bool = True
    """Recompute GAE before every pass over the data."""
    init_log_std: float = -0.5
    """Initial log standard deviation of the Gaussian policy (state-independent)."""
    normalize_obs: bool = True
    """Standardise observations with fixed statistics saved with the weights: the ``init_from`` BC policy's, or
    the config's dataset's; the identity when neither is given. ``init_from`` must be a ``bc`` run with the
    same ``hidden`` sizes: its actor becomes the Gaussian policy's mean."""

    def validate(self) -> None:
        if not self.hidden:
            raise ConfigError("hidden must list at least one layer size")
        if not 0.0 < self.eps_clip < 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise ConfigError(f"eps_clip={self.eps_clip} must be in (0, 1) and gae_lambda={self.gae_lambda} in [0, 1]")
        if self.train_envs < 1 or self.env_steps_per_update < self.train_envs or self.update_epochs < 1:
            raise ConfigError("train_envs >= 1, env_steps_per_update >= train_envs and update_epochs >= 1 required")


class PPOPolicy(BaselinePolicyMixin, ProbabilisticActorPolicy):
    """Tianshou's stochastic actor policy: samples N(mu(obs), sigma) while training, acts with mu when evaluated."""


def _gaussian(loc_scale: tuple[torch.Tensor, torch.Tensor]) -> torch.distributions.Distribution:
    """Independent Gaussians over the action dimensions (Tianshou's continuous-action distribution)."""
    loc, scale = loc_scale
    return torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)


class PPOAlgorithm(RunningRewardScaling, PPO):
    """Tianshou's PPO, able to start from a ``bc`` run (:meth:`warm_start`), with running reward scaling
    (:class:`~diffplan.agent.RunningRewardScaling`, checkpointed) in place of Tianshou's return scaling."""

    def __init__(self, *, hidden: list[int], reward_scaling: bool, **kwargs: Any) -> None:
        super().__init__(return_scaling=False, **kwargs)
        self.init_reward_scaling(reward_scaling)
        self.hidden = list(hidden)
        """Hidden layer sizes of the actor (a warm start must match them)."""

    def warm_start(self, path: str) -> None:
        """Load a ``bc`` run's actor: its trunk and observation normalizer as they are (the normalizer is shared
        with the critic), its output layer as the Gaussian mean's; the log-std keeps its initial value. Refuses
        other agents and other layer sizes with a clear message."""
        import yaml

        if not Path(path).exists():
            raise ConfigError(f"init_from={path!r}: no such run directory or checkpoint")
        state, config_yaml = load_checkpoint(path)
        saved = yaml.safe_load(config_yaml) or {}
        hidden = self.hidden
        if saved.get("agent") != "bc":
            raise ConfigError(f"init_from={path!r} is a {saved.get('agent')!r} run; PPO starts from a 'bc' run")
        if list(saved.get("hidden", [])) != hidden or bool(saved.get("normalize_obs")) != self._normalizes:
            raise ConfigError(
                f"init_from={path!r} has hidden={saved.get('hidden')} normalize_obs={saved.get('normalize_obs')}; "
                f"this PPO has hidden={hidden} normalize_obs={self._normalizes}"
            )
        weights = {}
        for key, value in state["algorithm"].items():
            if key.startswith("policy.actor."):
                name = key[len("policy.actor."):]
                weights["mu." + name[len("last."):] if name.startswith("last.") else name] = value
        missing, unexpected = self.policy.actor.load_state_dict(weights, strict=False)
        if unexpected or any(not k.startswith("sigma") for k in missing):
            raise ConfigError(f"init_from={path!r}: actor weights do not fit ({missing=}, {unexpected=})")

    @property
    def _normalizes(self) -> bool:
        return self.policy.actor.preprocess.norm is not None


CONFIG = PPOConfig


def build(
    cfg: PPOConfig, observation_space: gym.Space, action_space: gym.spaces.Box, episodes: Episodes | None = None
) -> Agent:
    """Build PPO; ``episodes`` (optional for an online agent) only supplies observation statistics. The same
    call builds the shell a checkpoint is loaded into."""
    torch.manual_seed(cfg.seed)
    if episodes is not None:
        episodes.check_spaces(observation_space, action_space)
    obs_dim, act_dim = flat_obs_dim(observation_space), int(action_space.shape[0])
    # One normalizer shared by actor and critic: fitted on the dataset if one is given, else the identity until
    # a checkpoint or the init_from BC run replaces its statistics.
    norm = obs_normalizer(episodes, obs_dim, cfg.normalize_obs)
    actor = ContinuousActorProbabilistic(
        preprocess_net=input_net(obs_dim, cfg.hidden, norm), action_shape=act_dim, unbounded=False
    )
    torch.nn.init.constant_(actor.sigma_param, cfg.init_log_std)
    critic = ContinuousCritic(preprocess_net=input_net(obs_dim, cfg.hidden, norm))
    policy = PPOPolicy(
        actor=actor, dist_fn=_gaussian, deterministic_eval=True, action_space=action_space,
        observation_space=observation_space, action_scaling=True, action_bound_method="clip",
    )
    algorithm = PPOAlgorithm(
        hidden=cfg.hidden, policy=policy, critic=critic, optim=AdamOptimizerFactory(lr=cfg.lr), eps_clip=cfg.eps_clip,
        advantage_normalization=cfg.advantage_normalization, recompute_advantage=cfg.recompute_advantage,
        vf_coef=cfg.vf_coef, ent_coef=cfg.ent_coef, max_grad_norm=cfg.max_grad_norm, gae_lambda=cfg.gae_lambda,
        gamma=cfg.gamma, reward_scaling=cfg.return_scaling,
    ).to(cfg.device)
    return Agent(policy=policy, algorithm=algorithm)
