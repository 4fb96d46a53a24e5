"""Pieces of Tianshou's SAC-family algorithms shared by the behaviour-policy trainer and the offline baselines.

Both :mod:`diffplan.behaviour.sac` (online SAC that makes the locomotion datasets) and the TD3+BC / CQL agents
build twin critics and SAC's entropy tuning the same way; they live here, below both, so neither layer imports
the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Tianshou is imported where used: the CLI's parser imports this module's users
    from tianshou.utils.net.common import ModuleWithVectorOutput, Net

__all__ = ["auto_alpha", "mlp_trunk", "twin_critics"]


def mlp_trunk(in_dim: int, hidden: Sequence[int]) -> Net:
    """Tianshou's MLP ``Net``: (B, in_dim) -> (B, hidden[-1]), ReLU between layers."""
    from tianshou.utils.net.common import Net

    return Net(state_shape=in_dim, hidden_sizes=list(hidden))


def twin_critics(trunk: Callable[[], ModuleWithVectorOutput], lr: float) -> dict[str, Any]:
    """``critic, critic_optim, critic2, critic2_optim`` keyword arguments of Tianshou's twin-critic algorithms
    (SAC, TD3+BC, CQL): two ``Q(s, a)`` heads, each on a fresh ``trunk()`` whose input is ``[obs (B, O), act
    (B, A)]`` (Tianshou's ``ContinuousCritic`` concatenates them), with Adam at ``lr``."""
    from tianshou.algorithm.optim import AdamOptimizerFactory
    from tianshou.utils.net.continuous import ContinuousCritic

    return {
        "critic": ContinuousCritic(preprocess_net=trunk()),
        "critic_optim": AdamOptimizerFactory(lr=lr),
        "critic2": ContinuousCritic(preprocess_net=trunk()),
        "critic2_optim": AdamOptimizerFactory(lr=lr),
    }


def auto_alpha(act_dim: int, lr: float) -> Any:
    """SAC's automatic entropy tuning as in Tianshou's examples: target entropy -|A|, log(alpha)=0 at start."""
    from tianshou.algorithm.modelfree.sac import AutoAlpha
    from tianshou.algorithm.optim import AdamOptimizerFactory

    return AutoAlpha(target_entropy=-float(act_dim), log_alpha=0.0, optim=AdamOptimizerFactory(lr=lr))
