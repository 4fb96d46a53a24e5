"""Plain MLPs: a building block and a denoiser over flattened (B, H, D) inputs (action-chunk policies)."""

from __future__ import annotations

import torch
from torch import nn

from diffplan.nets.embeddings import SinusoidalPosEmb
from diffplan.nets.temporal_unet import _activation

__all__ = ["MLP", "MLPDenoiser"]


class MLP(nn.Sequential):
    """``depth`` hidden layers (Linear + activation, Mish by default) of width ``hidden``, then a Linear to
    ``out_dim``.

    (B, in_dim) -> (B, out_dim); depth = 0 is a single Linear. ``activation``: mish | silu | gelu (SiLU is
    several times faster than PyTorch's CPU Mish, forward and backward).
    """

    def __init__(
        self, in_dim: int, out_dim: int, hidden: int = 256, depth: int = 2, activation: str = "mish"
    ) -> None:
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), _activation(activation)]
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        super().__init__(*layers)


class MLPDenoiser(nn.Module):
    """Denoiser ``f(x (B, H, D), t (B,), cond (B, cond_dim) | None) -> (B, H, D)`` over the flattened x.

    x is flattened to (B, x_dim) with x_dim = H * D, concatenated with a sinusoidal time embedding (through a
    small MLP, as in Diffusion-QL) and the flattened cond, and mapped back by an :class:`MLP`. With
    ``cond_dim > 0``, cond=None means zeros (there is no learned "null" condition here; for classifier-free
    guidance prefer :class:`~diffplan.nets.TemporalUnet1d`, whose null condition is distinct).
    """

    def __init__(
        self,
        x_dim: int,
        cond_dim: int = 0,
        hidden: int = 256,
        depth: int = 3,
        time_dim: int = 32,
        activation: str = "mish",
    ) -> None:
        super().__init__()
        self.x_dim, self.cond_dim = x_dim, cond_dim
        self.time_mlp = nn.Sequential(
            SinusoidalPosEmb(time_dim),
            nn.Linear(time_dim, 2 * time_dim),
            _activation(activation),
            nn.Linear(2 * time_dim, time_dim),
        )
        self.net = MLP(x_dim + time_dim + cond_dim, x_dim, hidden, depth, activation)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        B = x.shape[0]
        flat = x.reshape(B, -1)
        if flat.shape[1] != self.x_dim:
            raise ValueError(
                f"x {tuple(x.shape)} flattens to {flat.shape[1]} features, expected x_dim={self.x_dim}"
            )
        parts = [flat, self.time_mlp(t.reshape(-1).expand(B))]
        if self.cond_dim:
            if cond is None:
                cond = flat.new_zeros(B, self.cond_dim)
            parts.append(cond.reshape(B, -1).to(flat.dtype))
        return self.net(torch.cat(parts, dim=-1)).reshape(x.shape)
