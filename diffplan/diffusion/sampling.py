"""The one denoising loop every agent samples with, and inpainting (conditioning by fixed entries).

Denoiser contract: ``denoiser(x_t, t, cond) -> out`` with x_t (B, H, D), t (B,) long diffusion timesteps, ``cond``
anything the network understands (or None) and ``out`` (B, H, D) in the scheduler's ``prediction_type``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

import torch

from diffplan.diffusion.schedulers import NoiseScheduler, log_prob, randn_tensor

if TYPE_CHECKING:
    from diffplan.diffusion.guidance import Guide

__all__ = ["Denoiser", "Inpaint", "sample", "step_log_prob"]

Denoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
"""``f(x_t (B, H, D), t (B,) long, cond) -> (B, H, D)``."""


@dataclass
class Inpaint:
    """Entries of x fixed to known values during sampling (Diffuser's ``apply_conditioning``).

    mask: (B, H, D) bool, or broadcastable to it; True where x is known.
    values: (B, H, D) (or broadcastable) known values; only entries under the mask are used.
    """

    mask: torch.Tensor
    values: torch.Tensor

    def __post_init__(self) -> None:
        if self.mask.dtype != torch.bool:
            raise TypeError(f"Inpaint.mask must be a bool tensor, got {self.mask.dtype}")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, H, D) with the masked entries replaced by ``values`` (out of place, keeps x's dtype)."""
        # Cast values to x's dtype so the result never silently promotes (e.g. to float64) and the written
        # entries are bit-identical to values in x's dtype.
        return torch.where(self.mask.to(x.device), self.values.to(device=x.device, dtype=x.dtype), x)

    def to(self, device: torch.device | str) -> Inpaint:
        """A copy on ``device``."""
        return Inpaint(self.mask.to(device), self.values.to(device))

    @classmethod
    def at_steps(
        cls,
        shape: torch.Size | tuple[int, ...],
        steps_to_values: Mapping[int, torch.Tensor],
        dim_slice: slice,
    ) -> Inpaint:
        """Fix ``x[:, step, dim_slice] = value`` for each (step, value); e.g. {0: s0 (B, O), -1: goal (B, O)}.

        Args:
            shape: (B, H, D) of the samples.
            steps_to_values: horizon index (negative counts from the end) -> (B, k) or (k,) values, where k is
                the width of ``dim_slice``. Device and dtype of the result follow the first value.
            dim_slice: which entries of the last dim are fixed, e.g. ``slice(A, None)`` for the observation
                part of an [actions, observations] layout.
        """
        first = next(iter(steps_to_values.values()), None)
        device = first.device if first is not None else None
        dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
        mask = torch.zeros(tuple(shape), dtype=torch.bool, device=device)
        values = torch.zeros(tuple(shape), dtype=dtype, device=device)
        for step, value in steps_to_values.items():
            mask[:, step, dim_slice] = True
            values[:, step, dim_slice] = value.to(device=device, dtype=dtype)
        return cls(mask, values)


def _infer_device_dtype(
    denoiser: Any, inpaint: Inpaint | None, device: torch.device | str | None
) -> tuple[torch.device, torch.dtype]:
    """Sampling device: explicit > the inpaint values' > the denoiser's parameters' > CPU.
    Sampling dtype: the denoiser's floating parameters' > the inpaint values' > float32."""
    param = None
    if isinstance(denoiser, torch.nn.Module):
        param = next((p for p in denoiser.parameters() if p.is_floating_point()), None)
    if device is None:
        if inpaint is not None:
            device = inpaint.values.device
        elif param is not None:
            device = param.device
        else:
            device = "cpu"
    if param is not None:
        dtype = param.dtype
    elif inpaint is not None and inpaint.values.is_floating_point():
        dtype = inpaint.values.dtype
    else:
        dtype = torch.float32
    return torch.device(device), dtype


@overload
def sample(
    denoiser: Denoiser,
    scheduler: NoiseScheduler,
    shape: torch.Size | tuple[int, ...],
    *,
    cond: Any = ...,
    inpaint: Inpaint | None = ...,
    guide: Guide | None = ...,
    num_steps: int | None = ...,
    generator: torch.Generator | None = ...,
    device: torch.device | str | None = ...,
    enable_grad: bool = ...,
    return_chain: Literal[False] = ...,
    model_fn: Denoiser | None = ...,
    start_from: torch.Tensor | None = ...,
    start_index: int = ...,
    min_std: float = ...,
) -> torch.Tensor: ...


@overload
def sample(
    denoiser: Denoiser,
    scheduler: NoiseScheduler,
    shape: torch.Size | tuple[int, ...],
    *,
    cond: Any = ...,
    inpaint: Inpaint | None = ...,
    guide: Guide | None = ...,
    num_steps: int | None = ...,
    generator: torch.Generator | None = ...,
    device: torch.device | str | None = ...,
    enable_grad: bool = ...,
    return_chain: Literal[True],
    model_fn: Denoiser | None = ...,
    start_from: torch.Tensor | None = ...,
    start_index: int = ...,
    min_std: float = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


def sample(
    denoiser: Denoiser,
    scheduler: NoiseScheduler,
    shape: torch.Size | tuple[int, ...],
    *,
    cond: Any = None,
    inpaint: Inpaint | None = None,
    guide: Guide | None = None,
    num_steps: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    enable_grad: bool = False,
    return_chain: bool = False,
    model_fn: Denoiser | None = None,
    start_from: torch.Tensor | None = None,
    start_index: int = 0,
    min_std: float = 0.0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Draw samples by running the reverse process over ``scheduler.timesteps``.

    x_K ~ N(0, I) (inpainted); for each t: x = inpaint.apply(guide(x, t, std_t)) if a guide is given (std_t the
    step's std); out = model(x, t, cond); (mean, std) = scheduler.step_distribution(out, t, x);
    std = max(std, min_std); x = mean + std * z; x = inpaint.apply(x). A guide of form ``mean_shift`` instead
    leaves x and adds its displacement guide(x, t, std_t) - x to the mean (see
    :data:`~diffplan.diffusion.guidance.GUIDANCE_FORMS`).

    Args:
        denoiser: the network, ``f(x (B, H, D), t (B,) long, cond) -> (B, H, D)``.
        scheduler: DDPM / DDIM scheduler; its current ``timesteps`` are the steps taken.
        shape: (B, H, D) of the samples.
        cond: passed to the model unchanged (e.g. a (B, C) tensor, or None).
        inpaint: entries fixed during sampling; they are exact (bit-identical) in the result.
        guide: optional hook moving x_t before each step (e.g. :class:`~diffplan.diffusion.guidance.ValueGuide`);
            works with every scheduler, but one whose steps all have std 0 gives a std-scaled guide nothing to do.
            A guided step cuts the autograd graph (``enable_grad``) at x_t: the guide returns a detached x.
        num_steps: sample over this many steps instead of the scheduler's current ones (its timesteps are
            restored afterwards).
        generator: source of all noise (initial and per step), so a seeded generator makes sampling repeatable.
        device: where to sample; default: the inpaint values', else the denoiser's parameters', else CPU.
        enable_grad: keep the autograd graph through the whole chain (Diffusion-QL's policy loss);
            False runs under ``torch.no_grad`` (the caller may also wrap the call in ``inference_mode``).
        return_chain: also return every intermediate x.
        model_fn: called instead of ``denoiser`` with the same arguments; how classifier-free guidance
            (:func:`~diffplan.diffusion.guidance.classifier_free`) plugs in.
        start_from: (B, H, D) a clean guess of the result (warm start, e.g. the previous plan shifted by the
            executed steps, SDEdit-style): instead of pure noise the loop starts from it noised to the level of
            solver step ``start_index`` (``scheduler.add_noise``) and runs only the remaining steps.
        start_index: how many of the scheduler's ``num_steps`` solver steps to skip (only with
            ``start_from``); 0 with ``start_from`` re-noises to the first level, nearly pure noise.
    Returns:
        x0 (B, H, D); with ``return_chain`` also chain (B, K + 1, H, D): chain[:, 0] is the initial noise,
        chain[:, -1] is x0, K = number of model calls made.
    """
    fn = model_fn if model_fn is not None else denoiser
    dev, dtype = _infer_device_dtype(denoiser, inpaint, device)
    batch = int(shape[0])
    saved_steps = scheduler.num_steps
    if num_steps is not None:
        scheduler.set_timesteps(num_steps)
    try:
        timesteps = scheduler.timesteps.tolist()
        if start_from is None and start_index:
            raise ValueError("start_index needs start_from (the clean guess to re-noise)")
        if not 0 <= start_index < scheduler.num_steps:
            raise ValueError(f"start_index={start_index} must be in [0, {scheduler.num_steps}) (solver steps)")
        scheduler.reset()
        with torch.enable_grad() if enable_grad else torch.no_grad():
            x = randn_tensor(shape, generator, dev, dtype)
            if start_from is not None:
                timesteps = timesteps[scheduler.call_index(start_index):]
                x = scheduler.add_noise(start_from.to(device=dev, dtype=dtype), x, timesteps[0])
            if inpaint is not None:
                x = inpaint.apply(x)
            chain = [x] if return_chain else []
            for t in timesteps:
                t_batch = torch.full((batch,), t, dtype=torch.long, device=dev)
                shift = None
                if guide is not None:  # the guide scales by the std the step will draw with (min_std included)
                    guide_std = scheduler.step_std(t, x)
                    guide_std = guide_std.clamp(min=min_std) if min_std > 0 else guide_std
                if guide is not None and guide.form == "mean_shift":
                    shift = guide(x, t_batch, guide_std) - x.detach()
                elif guide is not None and scheduler.starts_step(t):
                    # Diffuser's form: the step is taken from the guided x, conditions written back in (a
                    # corrector call is not guided: its step started from the point guided at the predictor)
                    guided = guide(x, t_batch, guide_std)
                    x = inpaint.apply(guided) if inpaint is not None else guided
                out = fn(x, t_batch, cond)
                mean, std = scheduler.step_distribution(out, t, x)
                if min_std > 0:
                    std = std.clamp(min=min_std)
                if shift is not None:
                    mean = mean + shift.to(mean.dtype)
                x = mean + std * randn_tensor(shape, generator, dev, dtype)
                if inpaint is not None:
                    x = inpaint.apply(x)
                if return_chain:
                    chain.append(x)
    finally:
        if num_steps is not None:
            scheduler.set_timesteps(saved_steps)
    if return_chain:
        return x, torch.stack(chain, dim=1)
    return x


def step_log_prob(
    denoiser: Denoiser,
    scheduler: NoiseScheduler,
    x_t: torch.Tensor,
    x_next: torch.Tensor,
    t: torch.Tensor,
    *,
    cond: Any = None,
    min_std: float,
) -> torch.Tensor:
    """Log-density of reverse steps x_t -> x_next under N(mean, max(std, min_std)^2 I), per entry, differentiable
    in the denoiser: the score of a chain drawn by :func:`sample` with the same ``min_std``.

    Rows may sit at different timesteps (one batched model call over (sample, step) pairs, as policy-gradient
    fine-tuning needs); only stateless one-step schedulers (DDPM, DDIM, Euler) can score them.

    Args:
        denoiser: the network, ``f(x (N, H, D), t (N,) long, cond) -> (N, H, D)``.
        scheduler: the scheduler the chain was sampled with; each ``t`` is one of its ``timesteps``.
        x_t, x_next: (N, H, D) consecutive chain entries; t: (N,) long timesteps of x_t.
        cond: (N, ...) condition rows, or None.
        min_std: the sampler's std floor; must be > 0 where a step is deterministic (std 0: the step to x0,
            DDIM with eta 0), whose density is otherwise a point mass.
    Returns:
        (N, H, D) log N(x_next; mean, std^2), elementwise (callers reduce over entries as their method does).
    """
    if type(scheduler).reset is not NoiseScheduler.reset:
        raise ValueError(f"{scheduler.name} keeps per-sample state; its steps cannot be scored row by row")
    out = denoiser(x_t, t, cond)
    mean, std = scheduler.step_distribution(out, t, x_t)
    return log_prob(x_next, mean, std, min_std=min_std, reduce=False)
