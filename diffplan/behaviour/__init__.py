"""Behaviour policies of the generated datasets: the shipped SAC policies (:mod:`.shipped`) and how they are
trained again (:mod:`.sac`, ``diffplan data train-behaviour``).

This layer sits below the data layer: the locomotion recipe (:mod:`diffplan.data.recipes.locomotion`) rolls
these policies out into datasets; nothing here imports the data, agent or training code.
"""

from diffplan.behaviour.sac import (
    EXPERT_RULES,
    REF_EPISODES,
    ProtocolEvaluator,
    SACTrainConfig,
    finalize_behaviour,
    reference_returns,
    retrain,
    train_behaviour,
)
from diffplan.behaviour.shipped import (
    POLICY_DIR,
    POLICY_KINDS,
    RECIPE,
    BehaviourPolicyError,
    actor_sampler,
    build_actor,
    env_dims,
    load_actor,
    load_info,
    policy_paths,
    replay_episodes,
)

__all__ = [
    "EXPERT_RULES",
    "POLICY_DIR",
    "POLICY_KINDS",
    "RECIPE",
    "REF_EPISODES",
    "BehaviourPolicyError",
    "ProtocolEvaluator",
    "SACTrainConfig",
    "actor_sampler",
    "build_actor",
    "env_dims",
    "finalize_behaviour",
    "load_actor",
    "load_info",
    "policy_paths",
    "reference_returns",
    "replay_episodes",
    "retrain",
    "train_behaviour",
]
