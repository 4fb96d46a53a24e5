"""Value network over noisy trajectories, for value (classifier) guidance of a trajectory diffusion model.

Diffuser's ``ValueFunction`` (Janner et al., 2022, Sec. 3.2): the down path of the temporal U-Net (residual
temporal blocks, stride-2 convolutions) reads a noisy trajectory x_t and its noise level t, and an MLP head maps
the flattened features to a scalar. It is trained on x_t at random t, so its gradient is meaningful at every
step of the reverse process, which is where guidance evaluates it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from diffplan.nets.temporal_unet import ACTIVATIONS, ResidualTemporalBlock, time_mlp

__all__ = ["TemporalValueNet"]


class TemporalValueNet(nn.Module):
    """``forward(x (B, H, D), t (B,)) -> (B,)`` value of a (noisy) trajectory, in target units.

    Levels ``i = 0..L-1`` have ``dim * dim_mults[i]`` channels and two residual blocks each; every level halves
    the horizon (stride-2 conv), so the head sees ``dim * dim_mults[-1] * ceil(H / 2**L)`` features plus the time
    embedding. The output is ``target_mean + target_std * net(x, t)``: the net regresses a standardized target
    (well conditioned whatever the return scale), while the value and its gradient, which guidance uses, stay in
    the target's own units (Diffuser guides with unnormalized returns; its guide scales assume that).
    ``target_mean``/``target_std`` are buffers, saved with the weights; set them with :meth:`set_target_stats`.
    """

    def __init__(
        self,
        transition_dim: int,
        horizon: int,
        dim: int = 32,
        dim_mults: Sequence[int] = (1, 2, 4, 8),
        kernel_size: int = 5,
        n_groups: int = 8,
        activation: str = "mish",
    ) -> None:
        super().__init__()
        if not dim_mults:
            raise ValueError("dim_mults must not be empty")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {sorted(ACTIVATIONS)}")
        self.transition_dim, self.horizon = transition_dim, horizon
        self.time_mlp = time_mlp(dim, activation)
        self.levels = nn.ModuleList()
        prev, length = transition_dim, horizon
        for mult in dim_mults:
            ch = dim * mult
            self.levels.append(
                nn.ModuleList(
                    [
                        ResidualTemporalBlock(prev, ch, dim, kernel_size, n_groups, activation),
                        ResidualTemporalBlock(ch, ch, dim, kernel_size, n_groups, activation),
                        nn.Conv1d(ch, ch, 3, stride=2, padding=1),
                    ]
                )
            )
            prev, length = ch, (length + 1) // 2
        features = prev * length
        self.head = nn.Sequential(
            nn.Linear(features + dim, features // 2), ACTIVATIONS[activation](), nn.Linear(features // 2, 1)
        )
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))

    @torch.no_grad()
    def set_target_stats(self, targets: torch.Tensor) -> None:
        """Standardize the regression with the mean / std of the training targets (any shape)."""
        self.target_mean.copy_(targets.float().mean())
        self.target_std.copy_(targets.float().std().clamp(min=1e-6))

    def standardized(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The raw regression output (B,): (value - target_mean) / target_std."""
        B, H, D = x.shape
        if D != self.transition_dim or H != self.horizon:
            raise ValueError(
                f"x has shape {tuple(x.shape)}, expected (B, horizon={self.horizon}, {self.transition_dim})"
            )
        emb = self.time_mlp(t.reshape(-1).expand(B))
        h = x.transpose(1, 2)
        for res1, res2, down in self.levels:
            h = down(res2(res1(h, emb), emb))
        return self.head(torch.cat([h.flatten(1), emb], dim=-1)).squeeze(-1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.target_mean + self.target_std * self.standardized(x, t)
