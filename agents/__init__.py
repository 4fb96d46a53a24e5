"""Agent registry: name -> module. Each module defines ``CONFIG`` (its config dataclass) and ``build``.

Modules are imported on first access, so ``import diffplan.agents`` stays cheap and a broken optional agent
cannot break the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from types import ModuleType

_MODULES: dict[str, str] = {
    "diffuser": "diffplan.agents.diffuser",
    "diffusion_bc": "diffplan.agents.diffusion_bc",
    "diffusion_ql": "diffplan.agents.diffusion_ql",
    "idql": "diffplan.agents.idql",
    "decision_diffuser": "diffplan.agents.decision_diffuser",
    # Tianshou's own offline-RL baselines (one file each, as the registry maps a name to a module).
    "bc": "diffplan.agents.bc",
    "td3bc": "diffplan.agents.td3bc",
    "cql": "diffplan.agents.cql",
    # Online: Tianshou's PPO with a Gaussian policy (optionally started from a bc run).
    "ppo": "diffplan.agents.ppo",
}


class _Registry(Mapping[str, ModuleType]):
    def __getitem__(self, name: str) -> ModuleType:
        if name not in _MODULES:
            raise KeyError(f"unknown agent {name!r}; registered agents: {sorted(_MODULES)}")
        return importlib.import_module(_MODULES[name])

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)


AGENTS: Mapping[str, ModuleType] = _Registry()
"""Registered agents; ``AGENTS["diffuser"].build(cfg, observation_space, action_space, episodes)``."""
