"""What the robot is (:class:`RobotSpec`) and the safety layer that guards every command (:class:`SafetyLayer`).

The server's layer is authoritative; the client runs the same checks first (the spec, including the
:class:`SafetyConfig`, travels in the handshake), so a bad chunk is refused before it is even sent.

Checks, in order, on every chunk of actions (H, A):

1. **Validate**: a numpy float array of shape (H, A) with every entry finite. Anything else rejects the
   whole chunk (:class:`SafetyError`) and the server latches HOLD. NaN is never clipped (``np.clip`` passes
   NaN through, so clipping first would hide it).
2. **Bounds**: clip to the action bounds shrunk by ``margin`` (a fraction of each range) and flag it.
3. **Excessive clipping**: if more than ``clip_abort_fraction`` of the last ``clip_window`` actions were
   clipped by more than ``clip_abort_excess`` of the range, the episode is aborted (HOLD): the planner is
   asking for something the robot cannot do.

and, at every tick, on the one target about to be commanded:

4. **Rate limit**: the change from the last commanded target is capped at ``max_step`` (a fraction of the
   range) per tick.
5. **Last guard** (:meth:`SafetyLayer.is_safe`): finite, inside the bounds, within the rate limit; the
   server never passes a target that fails it to the backend.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from diffplan.envs.robot.protocol import E_NONFINITE, E_SHAPE, ProtocolError

__all__ = ["ClipReport", "RobotSpec", "SafetyConfig", "SafetyError", "SafetyLayer", "SpecMismatch", "check_spec"]


class SafetyError(ProtocolError):
    """A chunk refused by the safety layer (code NONFINITE or SHAPE)."""


class SpecMismatch(ValueError):
    """The robot's spec (units, bounds, shapes) is not what the client expects."""


@dataclass
class SafetyConfig:
    """Safety settings; sent to the client in the handshake so both sides run the same checks."""

    margin: float = 0.02
    """Clip actions to [low + margin*range, high - margin*range]."""
    max_step: float = 0.25
    """Largest change of the commanded target per tick, as a fraction of each dimension's range."""
    clip_abort_excess: float = 0.1
    """An action clipped by more than this fraction of the range counts toward the abort."""
    clip_abort_fraction: float = 0.5
    """Abort the episode when more than this fraction of the last ``clip_window`` actions count."""
    clip_window: int = 50
    """Window (actions) of the excessive-clipping rule."""
    max_chunk: int = 1024
    """Longest accepted chunk (actions)."""

    def __post_init__(self) -> None:
        if not 0 <= self.margin < 0.5:
            raise ValueError(f"safety margin must be in [0, 0.5), got {self.margin}")
        if not 0 < self.max_step <= 1:
            raise ValueError(f"max_step must be in (0, 1], got {self.max_step}")
        if self.clip_window < 1 or self.max_chunk < 1:
            raise ValueError("clip_window and max_chunk must be >= 1")


@dataclass
class RobotSpec:
    """What a robot server serves, exchanged at the handshake.

    action_low/high (A,) are the hardware bounds in ``action_units`` (one unit string per dimension, e.g.
    ``"100*N"``: one action unit is 100 newtons). ``observation_space`` is a gymnasium ``Box`` or ``Dict`` of
    Boxes; observations travel flattened (``gymnasium.spaces.flatten``) and clients unflatten them.
    ``hold_action`` (A,) is what the backend applies while holding (used as the rate limiter's reference).
    """

    name: str
    action_low: np.ndarray
    action_high: np.ndarray
    action_units: list[str]
    observation_space: gym.Space
    control_hz: float
    hold_action: np.ndarray
    safety: SafetyConfig = field(default_factory=SafetyConfig)

    @property
    def action_dim(self) -> int:
        return int(self.action_low.shape[0])

    @property
    def dt(self) -> float:
        return 1.0 / self.control_hz

    def limits(self) -> tuple[np.ndarray, np.ndarray]:
        """Bounds shrunk by the safety margin."""
        span = self.action_high - self.action_low
        return self.action_low + self.safety.margin * span, self.action_high - self.safety.margin * span

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "action_low": np.asarray(self.action_low, np.float64),
            "action_high": np.asarray(self.action_high, np.float64),
            "action_units": list(self.action_units),
            "observation_space": space_to_wire(self.observation_space),
            "control_hz": float(self.control_hz),
            "hold_action": np.asarray(self.hold_action, np.float64),
            "safety": asdict(self.safety),
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> RobotSpec:
        try:
            spec = cls(
                name=str(d["name"]),
                action_low=np.asarray(d["action_low"], np.float64),
                action_high=np.asarray(d["action_high"], np.float64),
                action_units=[str(u) for u in d["action_units"]],
                observation_space=space_from_wire(d["observation_space"]),
                control_hz=float(d["control_hz"]),
                hold_action=np.asarray(d["hold_action"], np.float64),
                safety=SafetyConfig(**d["safety"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecMismatch(f"malformed robot spec from the server: {exc}") from None
        spec.validate()
        return spec

    def validate(self) -> None:
        A = self.action_dim
        for name in ("action_high", "hold_action"):
            if getattr(self, name).shape != (A,):
                raise SpecMismatch(f"{name} has shape {getattr(self, name).shape}, expected ({A},)")
        if len(self.action_units) != A:
            raise SpecMismatch(f"{len(self.action_units)} action units for {A} action dims")
        if not (np.all(np.isfinite(self.action_low)) and np.all(np.isfinite(self.action_high))):
            raise SpecMismatch("action bounds must be finite (a robot without limits cannot be served safely)")
        if np.any(self.action_high <= self.action_low):
            raise SpecMismatch(f"action bounds empty: low {self.action_low}, high {self.action_high}")
        if np.any(self.hold_action < self.action_low) or np.any(self.hold_action > self.action_high):
            raise SpecMismatch(f"hold action {self.hold_action} is outside the action bounds")
        if not self.control_hz > 0:
            raise SpecMismatch(f"control_hz must be > 0, got {self.control_hz}")


def space_to_wire(space: gym.Space) -> dict[str, Any]:
    """A Box or Dict-of-Boxes space as a msgpack-able map (key order kept)."""
    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "low": space.low, "high": space.high, "dtype": space.dtype.name}
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "keys": list(space.spaces), "spaces": [space_to_wire(s) for s in space.spaces.values()]}
    raise SpecMismatch(f"observation space {space} is not a Box or a Dict of Boxes")


def space_from_wire(d: dict[str, Any]) -> gym.Space:
    if d.get("type") == "Box":
        return gym.spaces.Box(np.asarray(d["low"]), np.asarray(d["high"]), dtype=np.dtype(d["dtype"]))
    if d.get("type") == "Dict":
        return gym.spaces.Dict({k: space_from_wire(s) for k, s in zip(d["keys"], d["spaces"], strict=True)})
    raise SpecMismatch(f"unknown observation space description {d.get('type')!r}")


def check_spec(
    spec: RobotSpec,
    action_space: gym.spaces.Box | None = None,
    observation_space: gym.Space | None = None,
    action_units: list[str] | None = None,
) -> None:
    """Raise :class:`SpecMismatch` when the served robot differs from what the client was built for."""
    spec.validate()
    if action_space is not None:
        if action_space.shape != (spec.action_dim,):
            raise SpecMismatch(f"robot has {spec.action_dim} action dims, the policy expects {action_space.shape}")
        if not (np.allclose(action_space.low, spec.action_low) and np.allclose(action_space.high, spec.action_high)):
            raise SpecMismatch(
                f"action bounds differ: robot [{spec.action_low}, {spec.action_high}], "
                f"policy [{action_space.low}, {action_space.high}]"
            )
    if action_units is not None and list(action_units) != spec.action_units:
        raise SpecMismatch(f"action units differ: robot {spec.action_units}, policy {list(action_units)}")
    if observation_space is not None:
        robot_flat = gym.spaces.flatdim(spec.observation_space)
        mine = gym.spaces.flatdim(observation_space)
        if robot_flat != mine or type(observation_space) is not type(spec.observation_space):
            raise SpecMismatch(f"observation space differs: robot {spec.observation_space}, policy {observation_space}")
        if isinstance(observation_space, gym.spaces.Dict) and list(observation_space.spaces) != list(
            spec.observation_space.spaces
        ):
            raise SpecMismatch(
                f"observation keys differ: robot {list(spec.observation_space.spaces)}, "
                f"policy {list(observation_space.spaces)}"
            )


@dataclass
class ClipReport:
    """What clipping did to a chunk: ``clipped`` actions (rows) touched, ``abort`` when clipping is excessive."""

    clipped: int
    total: int
    abort: bool

    @property
    def fraction(self) -> float:
        return self.clipped / max(self.total, 1)


class SafetyLayer:
    """The checks above for one robot spec; holds the excessive-clipping window (reset per episode)."""

    def __init__(self, spec: RobotSpec) -> None:
        self.spec = spec
        self.cfg = spec.safety
        self.low, self.high = spec.limits()
        self.span = spec.action_high - spec.action_low
        self.max_delta = self.cfg.max_step * self.span
        self.window: deque[bool] = deque(maxlen=self.cfg.clip_window)

    def reset(self) -> None:
        self.window.clear()

    def validate(self, actions: Any) -> np.ndarray:
        """(H, A) float array with every entry finite, as float64; else :class:`SafetyError`."""
        if not isinstance(actions, np.ndarray):
            raise SafetyError(E_SHAPE, f"actions must be a numpy array, got {type(actions).__name__}")
        if actions.dtype.kind != "f":
            raise SafetyError(E_SHAPE, f"actions must be float32/float64, got {actions.dtype}")
        A = self.spec.action_dim
        if actions.ndim != 2 or actions.shape[1] != A or not 1 <= actions.shape[0] <= self.cfg.max_chunk:
            raise SafetyError(E_SHAPE, f"actions must have shape (H, {A}) with 1 <= H <= {self.cfg.max_chunk}, "
                              f"got {actions.shape}")
        bad = ~np.isfinite(actions)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise SafetyError(E_NONFINITE, f"non-finite action {actions[row, col]} at step {row}, dim {col} "
                              f"({int(bad.sum())} bad entries); chunk refused")
        return actions.astype(np.float64)

    def clip(self, actions: np.ndarray) -> tuple[np.ndarray, ClipReport]:
        """Validated (H, A) -> clipped (H, A) and a report; updates the excessive-clipping window."""
        clipped = np.clip(actions, self.low, self.high)
        excess = np.abs(actions - clipped) / self.span  # (H, A) fraction of range beyond the limit
        touched = (excess > 0).any(axis=1)
        for large in (excess > self.cfg.clip_abort_excess).any(axis=1):
            self.window.append(bool(large))
        abort = sum(self.window) > self.cfg.clip_abort_fraction * self.cfg.clip_window
        return clipped, ClipReport(int(touched.sum()), len(actions), bool(abort))

    def check(self, actions: Any) -> tuple[np.ndarray, ClipReport]:
        """validate + clip."""
        return self.clip(self.validate(actions))

    def rate_limit(self, target: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, bool]:
        """target (A,) with its change from ``last`` capped per tick; True when the cap bit."""
        limited = last + np.clip(target - last, -self.max_delta, self.max_delta)
        limited = np.clip(limited, self.low, self.high)
        return limited, bool(np.any(limited != target))

    def is_safe(self, target: np.ndarray, last: np.ndarray) -> bool:
        """The last guard before the backend: finite, inside the limits, within the rate limit."""
        tol = 1e-9 * self.span
        return bool(
            target.shape == (self.spec.action_dim,)
            and np.all(np.isfinite(target))
            and np.all(target >= self.low - tol)
            and np.all(target <= self.high + tol)
            and np.all(np.abs(target - last) <= self.max_delta + tol)
        )
