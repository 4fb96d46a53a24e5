"""Embeddings of scalar inputs (diffusion timesteps) for the denoising networks."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SinusoidalPosEmb"]


class SinusoidalPosEmb(nn.Module):
    """Transformer sinusoidal embedding (Vaswani et al., 2017) of a scalar per sample: t (B,) -> (B, dim).

    Half the features are sin(t * f_i), half cos(t * f_i), with frequencies f_i geometric from 1 to 1/10000, so
    both neighbouring and distant timesteps are distinguishable. No parameters.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"SinusoidalPosEmb dim must be even and >= 4, got {dim}")
        self.dim = dim
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - 1))
        # A buffer so it follows .to(device); non-persistent: it is a constant, not state to checkpoint.
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B,) int or float timesteps -> (B, dim) float32."""
        args = t.float().reshape(-1, 1) * self.freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)
