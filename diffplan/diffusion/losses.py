"""Training objective: the (weighted) denoising loss of Ho et al. (2020), eq. 14, in either parametrization."""

from __future__ import annotations

from typing import Any

import torch

from diffplan.diffusion.sampling import Denoiser, Inpaint
from diffplan.diffusion.schedulers import NoiseScheduler, randn_tensor

__all__ = ["denoising_loss", "loss_weights", "noised"]


def loss_weights(
    horizon: int,
    transition_dim: int,
    action_dim: int,
    action_weight: float = 1.0,
    discount: float = 1.0,
) -> torch.Tensor:
    """Per-entry loss weights (H, D) float32 for trajectories laid out [actions (A), observations] in the last dim.

    As Diffuser's ``get_loss_weights``: step h has weight discount**h, normalized to mean 1 over the horizon
    (so ``discount`` reshapes the loss without rescaling it), and the first action x[0, :A] gets weight
    ``action_weight`` (it is the one a receding-horizon planner executes; Diffuser uses 10 for locomotion).
    Note the first action's weight is *set* to ``action_weight`` (not multiplied by its discount weight),
    matching Diffuser; the two agree for discount = 1.
    """
    if not 0 <= action_dim <= transition_dim:
        raise ValueError(f"action_dim={action_dim} must be in [0, transition_dim={transition_dim}]")
    discounts = discount ** torch.arange(horizon, dtype=torch.float64)
    discounts = discounts / discounts.mean()
    weights = discounts[:, None].repeat(1, transition_dim)
    weights[0, :action_dim] = action_weight
    return weights.float()


def noised(
    scheduler: NoiseScheduler,
    x0: torch.Tensor,
    *,
    inpaint: Inpaint | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training input at a random noise level: ``(x_t (B, H, D), t (B,) long, eps (B, H, D))``.

    t ~ U{0..T-1} and eps ~ N(0, I) per sample, x_t = add_noise(x0, eps, t), and the inpainted (known) entries
    re-applied, as at sampling time. Shared by the denoising loss and by anything else trained on noisy
    samples (Diffuser's value function, classifiers for guidance), so they all see the inputs sampling shows.
    """
    t = torch.randint(
        0,
        scheduler.num_train_steps,
        (x0.shape[0],),
        generator=generator,
        device=generator.device if generator is not None else x0.device,
    ).to(x0.device)
    eps = randn_tensor(x0.shape, generator, x0.device, x0.dtype)
    x_t = scheduler.add_noise(x0, eps, t)
    if inpaint is not None:
        x_t = inpaint.apply(x_t)
    return x_t, t, eps


def denoising_loss(
    denoiser: Denoiser,
    scheduler: NoiseScheduler,
    x0: torch.Tensor,
    *,
    cond: Any = None,
    inpaint: Inpaint | None = None,
    weights: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    action_dim: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted MSE between the denoiser's output at a random noise level and its target.

    t ~ U{0..T-1} and eps ~ N(0, I) per sample; x_t = add_noise(x0, eps, t) with the inpainted (known) entries
    re-applied, as at sampling time; the target is ``scheduler.training_target``: eps or x0 per
    ``scheduler.prediction_type``, or the velocity eps - x0 for a flow-matching ``velocity`` model (with a flow
    scheduler, x_t is the straight-line interpolation and this is the rectified-flow / CFM loss).

    Args:
        denoiser: ``f(x_t (B, H, D), t (B,), cond) -> (B, H, D)``.
        x0: (B, H, D) clean (normalized) trajectories.
        cond: passed to the denoiser.
        inpaint: known entries; they are excluded from the loss (nothing to learn there), keeping the
            denominator of the mean unchanged, which for x0-prediction is exactly Diffuser's loss.
        weights: (H, D) per-entry weights (see :func:`loss_weights`); None: all 1.
        mask: (B, H) validity of each step (False for padding past an episode end); invalid steps are
            excluded and the mean is over valid steps only.
        generator: source of t and eps.
        action_dim: A; if given, ``info["a0_loss"]`` is the unweighted MSE on the first action x[:, 0, :A].
    Returns:
        (loss, info): the scalar loss (differentiable) and {"loss": float, "a0_loss": float (if action_dim)}.
    """
    B = x0.shape[0]
    x_t, t, eps = noised(scheduler, x0, inpaint=inpaint, generator=generator)
    out = denoiser(x_t, t, cond)
    target = scheduler.training_target(x0, eps)
    err = (out - target) ** 2  # (B, H, D)
    if weights is not None:
        err = err * weights.to(err)
    if inpaint is not None:
        err = torch.where(inpaint.mask.to(err.device), torch.zeros_like(err), err)
    if mask is not None:
        valid = mask.to(device=err.device, dtype=err.dtype).reshape(B, -1, *([1] * (err.dim() - 2)))
        per_step = err[0, 0].numel()  # entries per (sample, step)
        loss = (err * valid).sum() / (valid.sum() * per_step).clamp(min=1.0)
    else:
        loss = err.mean()
    info = {"loss": float(loss.detach())}
    if action_dim is not None:
        info["a0_loss"] = float(((out[:, 0, :action_dim] - target[:, 0, :action_dim]) ** 2).mean().detach())
    return loss, info
