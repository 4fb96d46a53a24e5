"""Env observations as arrays: the (observation, goal) split of Dict goal spaces and Tianshou observation batches."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from tianshou.data import Batch


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
