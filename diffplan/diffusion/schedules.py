"""Noise (beta) schedules for the forward diffusion process q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I).

Every function returns ``betas`` as a float64 tensor of shape (n,). Schedules are built in float64 because
``alphas_cumprod = prod(1 - betas)`` is a long product whose late entries are tiny; the schedulers derive their
coefficient tables from it in float64 and cast to the model's dtype only when they are used.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["BETA_SCHEDULES", "cosine_beta_schedule", "linear_beta_schedule", "make_betas", "vp_beta_schedule"]


def linear_beta_schedule(n: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    """Linearly spaced betas (Ho et al., 2020, Sec. 4). Returns (n,) float64."""
    _check_n(n)
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start=}, {beta_end=}")
    return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)


def cosine_beta_schedule(n: int, s: float = 0.008) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal, 2021, eq. 17). Returns (n,) float64.

    alpha_bar(t) = f(t) / f(0) with f(t) = cos(((t / n + s) / (1 + s)) * pi / 2)^2, t = 0..n, and
    beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1), clipped to at most 0.999 as in the paper: without the clip
    the last beta is exactly 1 (f(n) = 0), which would make alpha_bar 0 and x0 unrecoverable from x_T.
    """
    _check_n(n)
    t = torch.arange(n + 1, dtype=torch.float64) / n
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    betas = 1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(min=0.0, max=0.999)


def vp_beta_schedule(n: int, beta_min: float = 0.1, beta_max: float = 10.0) -> torch.Tensor:
    """Discretized variance-preserving SDE (Song et al., 2021, eq. 11 with beta(s) linear from beta_min to
    beta_max on s in [0, 1]), the schedule Diffusion-QL and IDQL use with very few steps. Returns (n,) float64.

    beta_t = 1 - exp(-beta_min / n - (beta_max - beta_min) (2t - 1) / (2 n^2)), t = 1..n: the exact one-step
    decay of the SDE over [(t-1)/n, t/n]. With n = 5 the last a_bar is exp(-5.05) ~ 0.0064, so five steps
    still end near pure noise, which a linear schedule of 5 steps does not.
    """
    _check_n(n)
    if not 0.0 < beta_min <= beta_max:
        raise ValueError(f"need 0 < beta_min <= beta_max, got {beta_min=}, {beta_max=}")
    t = torch.arange(1, n + 1, dtype=torch.float64)
    alphas = torch.exp(-beta_min / n - 0.5 * (beta_max - beta_min) * (2 * t - 1) / n**2)
    return 1.0 - alphas


BETA_SCHEDULES: dict[str, Callable[[int], torch.Tensor]] = {
    "linear": linear_beta_schedule,
    "cosine": cosine_beta_schedule,
    "vp": vp_beta_schedule,
}
"""Schedule name -> ``f(n) -> betas (n,)``; :func:`make_betas` picks from here."""


def make_betas(name: str, n: int) -> torch.Tensor:
    """Betas (n,) float64 of the schedule called ``name`` (a key of :data:`BETA_SCHEDULES`)."""
    try:
        fn = BETA_SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown beta schedule {name!r}; valid: {sorted(BETA_SCHEDULES)}") from None
    return fn(n)


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of diffusion steps must be a positive int, got {n!r}")
