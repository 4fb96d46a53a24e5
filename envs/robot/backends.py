"""Robot backends: what the server drives. One per real robot; MuJoCo (any gymnasium MuJoCo env) and a mock.

Contract (:class:`RobotBackend`), called only from the server's tick loop:

* ``spec() -> RobotSpec``: bounds, units, observation space, hold action.
* ``reset(seed) -> None``: start an episode (a sim resets; hardware would move home).
* ``command(target (A,))``: apply one target for one control period; a backend that cannot or will not apply
  it (e-stopped, a driver error) raises :class:`BackendError`, never drops it silently: the server then
  holds and reports the fault.
* ``hold()``: keep the robot where it is for one control period.
* ``estop()``: stop now (latched by the server).
* ``read_state() -> RobotState``: the latest state (flattened observation) and, for sims, reward/done.

Every target handed to ``command`` has passed the server's :class:`~diffplan.envs.robot.safety.SafetyLayer`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from diffplan.envs.robot.safety import RobotSpec, SafetyConfig

__all__ = ["BackendError", "MockBackend", "MujocoBackend", "RobotBackend", "RobotState", "make_backend"]


class BackendError(RuntimeError):
    """The backend refused or failed a call (e.g. a command while its e-stop is engaged)."""


@dataclass
class RobotState:
    """obs: flattened observation (float64); reward/terminated/truncated of the last control period (sims)."""

    obs: np.ndarray
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class RobotBackend(abc.ABC):
    @abc.abstractmethod
    def spec(self) -> RobotSpec: ...

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> None: ...

    @abc.abstractmethod
    def command(self, target: np.ndarray) -> None: ...

    @abc.abstractmethod
    def hold(self) -> None: ...

    @abc.abstractmethod
    def estop(self) -> None: ...

    @abc.abstractmethod
    def read_state(self) -> RobotState: ...

    def close(self) -> None:
        pass


def _mujoco_model(env: gym.Env) -> Any:
    """The MjModel behind a gymnasium MuJoCo env (PointMaze keeps it in ``point_env``)."""
    u = env.unwrapped
    for owner in (u, getattr(u, "point_env", None), getattr(u, "ant_env", None)):
        model = getattr(owner, "model", None)
        if model is not None and hasattr(model, "actuator_gear"):
            return model
    raise ValueError(f"{env.spec.id if env.spec else env}: not a MuJoCo env (no MjModel found)")


def actuator_units(model: Any) -> list[str]:
    """One unit string per actuator: one action unit is ``gear`` N (slide joint) or N*m (hinge), for motors.

    Read from the compiled model (radians, SI), not the MJCF, whose hinge ranges are in degrees unless
    ``<compiler angle="radian"/>`` says otherwise.
    """
    import mujoco

    units = []
    for i in range(model.nu):
        gear = float(model.actuator_gear[i, 0])
        if model.actuator_trntype[i] != mujoco.mjtTrn.mjTRN_JOINT or model.actuator_biastype[i] != 0:
            units.append(f"ctrl[{model.actuator(i).name or i}]")  # position/velocity servos: ctrl is a setpoint
            continue
        jtype = model.jnt_type[model.actuator_trnid[i, 0]]
        base = "N" if jtype == mujoco.mjtJoint.mjJNT_SLIDE else "N*m"
        units.append(f"{gear:g}*{base}")
    return units


class MujocoBackend(RobotBackend):
    """Serves a gymnasium MuJoCo env (``diffplan.envs.make_env`` task name or gymnasium id) as a robot.

    ``hold`` does not advance the physics: a held sim robot is frozen in place, the analogue of a position
    hold or brakes on hardware (and what makes ``reset`` followed by ``step`` deterministic however many ticks
    pass in between). ``command`` is one ``env.step``. Observations are flattened with
    ``gymnasium.spaces.flatten`` (Dict observations such as PointMaze's included).
    """

    def __init__(self, task: str, control_hz: float, safety: SafetyConfig | None = None, seed: int = 0) -> None:
        from diffplan.envs import make_env

        self.task = task
        self.env = make_env(task, seed=seed)
        if not isinstance(self.env.action_space, gym.spaces.Box):
            raise TypeError(f"{task}: only Box action spaces can be served, got {self.env.action_space}")
        model = _mujoco_model(self.env)
        space = self.env.action_space
        hold = np.clip(np.zeros(space.shape), space.low, space.high)
        self._spec = RobotSpec(
            name=task, action_low=space.low.astype(np.float64), action_high=space.high.astype(np.float64),
            action_units=actuator_units(model), observation_space=self.env.observation_space,
            control_hz=control_hz, hold_action=hold, safety=safety or SafetyConfig(),
        )
        self._spec.validate()
        self._state: RobotState | None = None
        self.estopped = False

    def spec(self) -> RobotSpec:
        return self._spec

    def reset(self, seed: int | None = None) -> None:
        obs, info = self.env.reset(seed=seed)
        self.estopped = False
        self._state = RobotState(gym.spaces.flatten(self.env.observation_space, obs).astype(np.float64), info=info)

    def command(self, target: np.ndarray) -> None:
        if self.estopped:  # the server never commands in ESTOP; if it ever did, it must hear about it
            raise BackendError(f"{self.task}: e-stop engaged, command refused (reset the robot first)")
        obs, reward, terminated, truncated, info = self.env.step(target.astype(self.env.action_space.dtype))
        flat = gym.spaces.flatten(self.env.observation_space, obs).astype(np.float64)
        self._state = RobotState(flat, float(reward), bool(terminated), bool(truncated), info)

    def hold(self) -> None:
        if self._state is not None:  # frozen: no physics step; nothing was earned this period
            self._state = RobotState(self._state.obs, 0.0, self._state.terminated, self._state.truncated)

    def estop(self) -> None:
        self.estopped = True
        self.hold()

    def read_state(self) -> RobotState:
        if self._state is None:
            self.reset()
        assert self._state is not None
        return self._state

    def close(self) -> None:
        self.env.close()


class MockBackend(RobotBackend):
    """A first-order "robot" (position += target * dt) that records every command it receives.

    ``commands`` is the full history of targets that reached the backend, so tests can assert that nothing
    unsafe ever got through.
    """

    def __init__(self, action_dim: int = 2, control_hz: float = 50.0, safety: SafetyConfig | None = None,
                 bound: float = 1.0, episode_ticks: int = 0) -> None:
        low, high = -bound * np.ones(action_dim), bound * np.ones(action_dim)
        self._spec = RobotSpec(
            name="mock", action_low=low, action_high=high, action_units=["m/s"] * action_dim,
            observation_space=gym.spaces.Box(-np.inf, np.inf, (action_dim,), np.float64),
            control_hz=control_hz, hold_action=np.zeros(action_dim), safety=safety or SafetyConfig(),
        )
        self.episode_ticks = episode_ticks
        self.position = np.zeros(action_dim)
        self.commands: list[np.ndarray] = []
        self.holds = 0
        self.steps = 0
        self.estopped = False

    def spec(self) -> RobotSpec:
        return self._spec

    def reset(self, seed: int | None = None) -> None:
        self.position = np.zeros(self._spec.action_dim)
        self.steps = 0
        self.estopped = False

    def command(self, target: np.ndarray) -> None:
        if self.estopped:
            raise BackendError("mock: e-stop engaged, command refused")
        self.commands.append(np.array(target))
        self.position = self.position + target / self._spec.control_hz
        self.steps += 1

    def hold(self) -> None:
        self.holds += 1

    def estop(self) -> None:
        self.estopped = True

    def read_state(self) -> RobotState:
        done = self.episode_ticks > 0 and self.steps >= self.episode_ticks
        return RobotState(self.position.copy(), reward=-float(np.abs(self.position).sum()), truncated=done)


def make_backend(env: str, control_hz: float, safety: SafetyConfig | None = None, seed: int = 0) -> RobotBackend:
    """``mock`` or ``mock:<action_dim>`` -> :class:`MockBackend`; anything else -> :class:`MujocoBackend`."""
    if env == "mock" or env.startswith("mock:"):
        dim = int(env.split(":", 1)[1]) if ":" in env else 2
        return MockBackend(dim, control_hz, safety)
    return MujocoBackend(env, control_hz, safety, seed=seed)
