"""Agent registry: every module of this package is an agent, named after its file.

An agent module defines ``CONFIG`` (its config dataclass) and ``build(cfg, observation_space, action_space,
episodes) -> Agent`` (:mod:`diffplan.agent`). Adding an agent is adding one file here: the registry lists the
package's modules without importing them, and imports one on first access, so ``import diffplan.agents`` stays
cheap and a broken optional agent cannot break the others. Modules whose name starts with ``_`` are not agents.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from types import ModuleType


@functools.cache  # the package's files do not change while a process runs; lookups happen per build and load
def _agent_names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


class _Registry(Mapping[str, ModuleType]):
    def __getitem__(self, name: str) -> ModuleType:
        if name not in _agent_names():
            raise KeyError(f"unknown agent {name!r}; registered agents: {_agent_names()}")
        module = importlib.import_module(f"{__name__}.{name}")
        names = vars(module)
        if not isinstance(names.get("CONFIG"), type) or not callable(names.get("build")):
            raise KeyError(f"{module.__name__} defines no CONFIG and build(): not an agent module")
        return module

    def __iter__(self) -> Iterator[str]:
        return iter(_agent_names())

    def __len__(self) -> int:
        return len(_agent_names())


AGENTS: Mapping[str, ModuleType] = _Registry()
"""Registered agents; ``AGENTS["diffuser"].build(cfg, observation_space, action_space, episodes)``."""
