"""IDQL (Hansen-Estruch et al., 2023): IQL critics + a diffusion behaviour policy, actions re-sampled by critic
weights. All logic lives in :mod:`diffplan.agents.diffusion_ql` (``critic=iql``, ``eta=0``,
``selection=expectile``); this module only gives the variant its own name and defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffplan.agents.diffusion_ql import DiffusionQLConfig, build
from diffplan.config import ConfigError

__all__ = ["CONFIG", "IDQLConfig", "build"]


@dataclass
class IDQLConfig(DiffusionQLConfig):
    """IDQL defaults (the paper's locomotion settings where they differ from Diffusion-QL's)."""

    agent: str = "idql"
    critic: str = "iql"
    eta: float = 0.0
    """IDQL's actor is pure behaviour cloning; the critics only act at selection time."""
    selection: str = "expectile"
    expectile: float = 0.7
    n_candidates: int = 32
    """Behaviour samples per decision (IDQL samples N of them and re-samples one by the critic weights)."""
    act_with_ema: bool = True

    def validate(self) -> None:
        if self.critic != "iql":
            raise ConfigError("agent=idql needs critic=iql (use agent=diffusion_ql for TD critics)")
        super().validate()


CONFIG = IDQLConfig
