"""Guidance hooks for :func:`~diffplan.diffusion.sampling.sample`.

Two ways to steer sampling:

* a :class:`Guide` moves x_t before each reverse step (classifier / value guidance), passed as ``guide=``;
* :func:`classifier_free` wraps the denoiser into a ``model_fn`` mixing conditional and unconditional outputs,
  passed as ``model_fn=``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

if TYPE_CHECKING:
    from diffplan.diffusion.sampling import Denoiser, Inpaint

__all__ = ["GUIDANCE_FORMS", "GuidanceForm", "Guide", "ValueGuide", "classifier_free"]

GuidanceForm = Literal["diffuser", "mean_shift"]
GUIDANCE_FORMS: tuple[str, ...] = ("diffuser", "mean_shift")
"""Where the sampling loop puts a guide's result: ``diffuser``: the guided x_t replaces x_t and the denoiser and
the scheduler step run on it (Diffuser's ``n_step_guided_p_sample``: ``p_mean_variance(x=x_guided)``);
``mean_shift``: the model runs on the unguided x_t and the guide's displacement is added to the step's mean
(classifier guidance as Dhariwal & Nichol, 2021, Alg. 1). The same displacement moves the sample much further
in the second form: in the first the step's mean sees it only through ``c_xt`` and the model."""


class Guide(Protocol):
    """``guide(x_t (B, H, D), t (B,) long, std (B, 1, 1)) -> guided x_t (B, H, D)``, called by the sampling loop
    before the denoiser at every reverse step; ``std`` is that step's std (``NoiseScheduler.step_std``).
    ``form`` (a :data:`GUIDANCE_FORMS` name) says how the loop uses the result."""

    form: GuidanceForm

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, std: torch.Tensor) -> torch.Tensor: ...


class ValueGuide:
    """Value (classifier) guidance, Diffuser's ``n_step_guided_p_sample`` (Janner et al., 2022, Sec. 3.2).

    ``n_guide_steps`` gradient-ascent steps on ``value_fn`` starting from x_t:
        x <- x + scale * std^2 * grad_x value_fn(x, t)    (std^2 only if ``scale_grad_by_std``)
    with the gradient zeroed for rows with t < ``t_stopgrad`` and the inpainted entries re-applied after each
    step. With ``form="diffuser"`` (default) the loop then denoises the guided x, as Diffuser does; with
    ``"mean_shift"`` it adds x - x_t to the step mean instead (see :data:`GUIDANCE_FORMS`).
    With ``scale_grad_by_std`` the final step to x0 (std 0) is unguided, as in Diffuser; for the same reason a
    deterministic sampler (DDIM with eta=0, DPM-Solver++, flow Euler / Heun: every std 0) is not guided at all:
    guide DDPM steps, or set ``scale_grad_by_std=False``.

    value_fn: ``(x (B, H, D), t (B,) long) -> values (B,) or (B, 1)``, higher is better; differentiable in x.
    """

    def __init__(
        self,
        value_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        scale: float = 0.1,
        n_guide_steps: int = 2,
        t_stopgrad: int = 2,
        scale_grad_by_std: bool = True,
        inpaint: Inpaint | None = None,
        form: GuidanceForm = "diffuser",
    ) -> None:
        if form not in GUIDANCE_FORMS:
            raise ValueError(f"unknown guidance form {form!r}; valid: {list(GUIDANCE_FORMS)}")
        self.value_fn = value_fn
        self.scale = scale
        self.n_guide_steps = n_guide_steps
        self.t_stopgrad = t_stopgrad
        self.scale_grad_by_std = scale_grad_by_std
        self.inpaint = inpaint
        self.form: GuidanceForm = form

    def gradients(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values (B,), grad_x of their sum (B, H, D)) at x; x is detached first."""
        # Sampling usually runs under no_grad / inference_mode; the value gradient needs autograd, and a plain
        # tensor (inference tensors cannot be recorded), so re-enable both locally and clone x out of them.
        with torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)
            values = self.value_fn(x, t).reshape(x.shape[0], -1).sum(-1)
            (grad,) = torch.autograd.grad(values.sum(), x)
        return values.detach(), grad

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        active = (t >= self.t_stopgrad).reshape((-1,) + (1,) * (x_t.dim() - 1)).to(x_t.device)
        if not bool(active.any()) or (self.scale_grad_by_std and not bool((std != 0).any())):
            return x_t  # every row's guidance would be zero: skip the value-gradient passes
        with torch.inference_mode(False):
            x = x_t.detach().clone()
            for _ in range(self.n_guide_steps):
                _, grad = self.gradients(x, t)
                if self.scale_grad_by_std:
                    grad = grad * std.detach() ** 2
                grad = torch.where(active, grad, torch.zeros_like(grad))
                x = x + self.scale * grad
                if self.inpaint is not None:
                    x = self.inpaint.apply(x)
        return x.to(x_t.dtype)


def classifier_free(denoiser: Denoiser, guidance_weight: float, one_call: bool = False) -> Denoiser:
    """Classifier-free guidance (Ho & Salimans, 2022) as a ``model_fn`` for ``sample``.

    Returns ``f(x, t, cond) = uncond + w * (cond_out - uncond)`` with ``cond_out = denoiser(x, t, cond)`` and
    ``uncond = denoiser(x, t, None)``: w = 0 is the unconditional model, w = 1 the conditional one, w > 1
    extrapolates past it. Those two cases (and cond=None) call the denoiser once, and are exact.
    The denoiser must accept cond=None as "no condition" (see :class:`~diffplan.nets.TemporalUnet1d`).

    ``one_call=True`` evaluates both halves in one call on the doubled batch ``[x; x]``, nulling the condition
    of the second half with the denoiser's ``drop_cond`` (B,) bool argument (TemporalUnet1d has it): the same
    result up to float rounding, and on a CPU with small planning batches nearly half the time, since the
    per-call overhead rather than the arithmetic dominates there.
    """
    w = float(guidance_weight)

    def model_fn(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        if cond is None or w == 0.0:
            return denoiser(x, t, None)
        if w != 1.0 and one_call:
            B = x.shape[0]
            drop = torch.arange(2 * B, device=x.device) >= B
            both = denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, cond]), drop_cond=drop)  # type: ignore[call-arg]
            cond_out, uncond = both[:B], both[B:]
            return uncond + w * (cond_out - uncond)
        cond_out = denoiser(x, t, cond)
        if w == 1.0:
            return cond_out
        uncond = denoiser(x, t, None)
        return uncond + w * (cond_out - uncond)

    return model_fn
