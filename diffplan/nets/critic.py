"""Critics for offline RL: twin Q networks and a state-value network (MLPs over flat inputs)."""

from __future__ import annotations

import torch
from torch import nn

from diffplan.nets.mlp import MLP

__all__ = ["TwinQ", "ValueNet"]


class TwinQ(nn.Module):
    """Two independent Q heads (Fujimoto et al., 2018, clipped double Q): ``(s (B, S), a (B, A)) -> (q1, q2)``.

    Each head is an :class:`MLP` over ``[s, a]`` (Diffusion-QL: 3 hidden layers of 256, Mish) returning (B,).
    """

    def __init__(
        self, state_dim: int, action_dim: int, hidden: int = 256, depth: int = 3, activation: str = "mish"
    ) -> None:
        super().__init__()
        self.q1 = MLP(state_dim + action_dim, 1, hidden, depth, activation)
        self.q2 = MLP(state_dim + action_dim, 1, hidden, depth, activation)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """state (B, S), action (B, A) -> q1 (B,), q2 (B,)."""
        x = torch.cat([state, action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)

    def q_min(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """min(q1, q2), (B,): the pessimistic estimate used for targets and action selection."""
        q1, q2 = self(state, action)
        return torch.minimum(q1, q2)


class ValueNet(nn.Module):
    """State value ``V(s (B, S)) -> (B,)``, an :class:`MLP` (IQL's expectile value)."""

    def __init__(self, state_dim: int, hidden: int = 256, depth: int = 3, activation: str = "mish") -> None:
        super().__init__()
        self.net = MLP(state_dim, 1, hidden, depth, activation)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state).squeeze(-1)
