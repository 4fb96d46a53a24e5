"""The real-robot bridge: a robot served over ZeroMQ (server next to the hardware, authoritative safety,
watchdog, tick clock) and a gymnasium client env. Needs the ``robot`` extra (``pip install 'diffplan[robot]'``).

Modules: :mod:`.protocol` (wire format), :mod:`.safety` (spec + safety layer), :mod:`.scheduler`
(tick-addressed chunks), :mod:`.backends` (MuJoCo, mock), :mod:`.server`, :mod:`.client` (``RobotEnv``),
:mod:`.runner` (latency-aware receding-horizon control, ``diffplan deploy``), :mod:`.relay` (fault
injection), :mod:`.bench` (benchmarks).
"""

from diffplan.envs.robot.backends import MockBackend, MujocoBackend, RobotBackend, RobotState, make_backend
from diffplan.envs.robot.client import RobotClient, RobotEnv, RobotError, RobotTimeout, StaleObservation
from diffplan.envs.robot.protocol import VERSION, ProtocolError, VersionError
from diffplan.envs.robot.safety import (
    RobotSpec,
    SafetyConfig,
    SafetyError,
    SafetyLayer,
    SpecMismatch,
    check_spec,
)
from diffplan.envs.robot.scheduler import ActionScheduler
from diffplan.envs.robot.server import ManualClock, RealTimeClock, RobotServer

__all__ = [
    "VERSION",
    "ActionScheduler",
    "ManualClock",
    "MockBackend",
    "MujocoBackend",
    "ProtocolError",
    "RealTimeClock",
    "RobotBackend",
    "RobotClient",
    "RobotEnv",
    "RobotError",
    "RobotServer",
    "RobotSpec",
    "RobotState",
    "RobotTimeout",
    "SafetyConfig",
    "SafetyError",
    "SafetyLayer",
    "SpecMismatch",
    "StaleObservation",
    "VersionError",
    "check_spec",
    "make_backend",
]
