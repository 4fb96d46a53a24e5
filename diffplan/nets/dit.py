"""A 1-D diffusion transformer (DiT, Peebles & Xie, 2023) over trajectories, beside the temporal U-Net.

The horizon is cut into patches of ``patch`` steps, each a token; tokens get fixed sinusoidal positions and
pass ``depth`` transformer blocks conditioned by adaLN-Zero: the block's LayerNorms have no affine parameters
of their own, and a linear map of the conditioning vector c = time_emb(t) + cond_emb(cond) gives each block a
shift, scale and gate for its attention and MLP branches. The gates and the output layer start at zero, so
at initialisation every block is the identity and the network outputs zeros (the paper's "adaLN-Zero", which
trained best of its conditioning variants).

Conditioning matches :class:`~diffplan.nets.TemporalUnet1d`: ``cond=None`` (or a row with ``drop_cond``) gives
a zero cond_emb, the null condition classifier-free guidance needs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from diffplan.nets.embeddings import SinusoidalPosEmb

__all__ = ["DiT1d", "DiTBlock"]


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, N, W) with per-sample shift, scale (B, W): x * (1 + scale) + shift."""
    return x * (1 + scale[:, None]) + shift[:, None]


def _positions(n: int, width: int, device: torch.device) -> torch.Tensor:
    """(n, width) fixed sinusoidal token positions (any horizon, no parameters)."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freqs = torch.exp(-math.log(10000.0) * torch.arange(0, width, 2, device=device, dtype=torch.float32) / width)
    pe = torch.zeros(n, width, device=device)
    pe[:, 0::2] = torch.sin(pos * freqs)
    pe[:, 1::2] = torch.cos(pos * freqs[: width // 2])
    return pe


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero: x + gate_a * attn(mod(LN(x))) + gate_m * mlp(mod(LN(x)))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)  # adaLN-Zero: gates (and shifts, scales) start at 0
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x (B, N, W) tokens, c (B, W) conditioning -> (B, N, W)."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.ada(c).chunk(6, dim=-1)
        h = _modulate(self.norm1(x), shift_a, scale_a)
        x = x + gate_a[:, None] * self.attn(h, h, h, need_weights=False)[0]
        return x + gate_m[:, None] * self.mlp(_modulate(self.norm2(x), shift_m, scale_m))


class DiT1d(nn.Module):
    """Denoiser (B, H, D) -> (B, H, D) with the U-Net's interface: ``forward(x, t, cond=None, drop_cond=None)``.

    Args:
        transition_dim: D, features per step.
        width: token width W (divisible by ``heads``).
        depth: transformer blocks.
        heads: attention heads.
        patch: horizon steps per token; the horizon must be divisible by it (``horizon_divisor``).
        cond_dim: size of the global condition vector (0: unconditional).
        mlp_ratio: MLP hidden width / W.
    """

    def __init__(
        self,
        transition_dim: int,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        patch: int = 4,
        cond_dim: int = 0,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if width % heads or width % 2:
            raise ValueError(f"width={width} must be even and divisible by heads={heads}")
        if patch < 1 or depth < 1:
            raise ValueError(f"patch={patch} and depth={depth} must be >= 1")
        self.transition_dim, self.cond_dim, self.patch = transition_dim, cond_dim, patch
        self.horizon_divisor = patch
        self.embed = nn.Linear(transition_dim * patch, width)
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(width), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.cond_mlp: nn.Module | None = None
        if cond_dim > 0:
            self.cond_mlp = nn.Sequential(nn.Linear(cond_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, transition_dim * patch)
        for layer in (self.ada_out[1], self.out):  # the output starts at exactly zero
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def condition(self, t: torch.Tensor, cond: torch.Tensor | None, drop_cond: torch.Tensor | None, B: int) -> torch.Tensor:
        """c (B, W) = time_emb(t) + cond_emb(cond), the cond part zero for cond=None or dropped rows."""
        c = self.time_mlp(t.reshape(-1).expand(B))
        if self.cond_mlp is not None and cond is not None:
            e = self.cond_mlp(cond.reshape(B, -1).to(c.dtype))
            if drop_cond is not None:
                e = e * (~drop_cond.to(device=e.device, dtype=torch.bool)).to(e.dtype)[:, None]
            c = c + e
        return c

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        drop_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, H, D), t (B,) timesteps, cond (B, cond_dim) or None, drop_cond (B,) bool -> (B, H, D)."""
        B, H, D = x.shape
        if D != self.transition_dim:
            raise ValueError(f"x has {D} features in its last dim, expected transition_dim={self.transition_dim}")
        if H % self.patch:
            raise ValueError(f"horizon {H} must be divisible by patch={self.patch}")
        n = H // self.patch
        tokens = self.embed(x.reshape(B, n, self.patch * D))
        tokens = tokens + _positions(n, tokens.shape[-1], x.device).to(tokens.dtype)
        c = self.condition(t, cond, drop_cond, B)
        for block in self.blocks:
            tokens = block(tokens, c)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        out = self.out(_modulate(self.norm_out(tokens), shift, scale))
        return out.reshape(B, H, D)
