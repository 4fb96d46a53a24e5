"""The real-robot bridge: a robot served over ZeroMQ (server next to the hardware, authoritative safety,
watchdog, tick clock) and a gymnasium client env. Needs the ``robot`` extra (``pip install 'diffplan[robot]'``).

Modules: :mod:`.protocol` (wire format), :mod:`.auth` (CURVE keys), :mod:`.safety` (spec + safety layer), :mod:`.scheduler`
(tick-addressed chunks), :mod:`.backends` (MuJoCo, mock), :mod:`.server`, :mod:`.client` (``RobotEnv``),
:mod:`.relay` (fault injection). Driving a robot with a trained policy (the latency-aware runner, ``diffplan
serve`` / ``diffplan deploy``, the bridge benchmarks) is :mod:`diffplan.deploy`'s: this package never imports
agent or training code (an import-linter contract in pyproject.toml says so).
"""

from diffplan.envs.robot.auth import AuthError, ClientKeys, ServerKeys, generate_keys
from diffplan.envs.robot.backends import (
    BackendError,
    MockBackend,
    MujocoBackend,
    RobotBackend,
    RobotState,
    make_backend,
)
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
    "AuthError",
    "BackendError",
    "ClientKeys",
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
    "ServerKeys",
    "SpecMismatch",
    "StaleObservation",
    "VersionError",
    "check_spec",
    "generate_keys",
    "make_backend",
]
