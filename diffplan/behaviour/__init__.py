"""Behaviour policies of the generated locomotion datasets: the RL Baselines3 Zoo's trained policies as torch
actors and their converter (:mod:`.zoo`), the shipped ones and their measured returns (:mod:`.shipped`), and
the online SAC run whose replay buffer is the medium-replay dataset (:mod:`.sac`).

This layer sits below the data layer: the locomotion recipe (:mod:`diffplan.data.recipes.locomotion`) rolls
these policies out into datasets; nothing here imports the data, agent or training code.
"""

from diffplan.behaviour.sac import SACTrainConfig, build_sac_actor, train_replay
from diffplan.behaviour.shipped import (
    EXPERT_ALGO,
    MEDIUM_TARGETS,
    POLICY_DIR,
    POLICY_KINDS,
    RECIPE,
    choose_medium,
    convert_zoo,
    env_dims,
    episode_returns,
    load_actor,
    load_info,
    measure_zoo,
    policy_sha256,
)
from diffplan.behaviour.zoo import (
    BehaviourPolicyError,
    ZooActor,
    ZooArch,
    build_actor,
    convert_policy,
    load_policy_file,
    read_zoo_npz,
    zoo_arch,
)

__all__ = [
    "EXPERT_ALGO",
    "MEDIUM_TARGETS",
    "POLICY_DIR",
    "POLICY_KINDS",
    "RECIPE",
    "BehaviourPolicyError",
    "SACTrainConfig",
    "ZooActor",
    "ZooArch",
    "build_actor",
    "build_sac_actor",
    "choose_medium",
    "convert_policy",
    "convert_zoo",
    "env_dims",
    "episode_returns",
    "load_actor",
    "load_info",
    "load_policy_file",
    "measure_zoo",
    "policy_sha256",
    "read_zoo_npz",
    "train_replay",
    "zoo_arch",
]
