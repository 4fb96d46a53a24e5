"""Reverse-process schedulers: one interface, DDPM and DDIM behind it.

A scheduler knows the forward process (``add_noise``), how to turn a model output into an x0 / eps estimate,
and the Gaussian reverse step p(x_{t_prev} | x_t) = N(mean, std^2 I) over its current ``timesteps``.

Both samplers write that step as ``mean = c_x0[t] * x0_hat + c_xt[t] * x_t`` with per-timestep coefficients
precomputed (float64) in :meth:`NoiseScheduler.set_timesteps`; only x0_hat depends on the model, so
``step_distribution`` is exact and differentiable w.r.t. the model output (DPPO's log-probabilities,
Diffusion-QL's backprop through the chain).

Notation: T = ``num_train_steps``; a_bar[t] = prod_{s<=t} (1 - beta_s) for t = 0..T-1; the step after the last
timestep goes to "t = -1", i.e. x0 itself, with a_bar[-1] := 1 (so that step has std 0 and mean x0_hat).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from diffplan.diffusion.schedules import make_betas

__all__ = [
    "SCHEDULERS",
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "FlowMatchEulerScheduler",
    "FlowMatchHeunScheduler",
    "NoiseScheduler",
    "PredictionType",
    "log_prob",
    "make_scheduler",
    "randn_tensor",
]

PredictionType = Literal["epsilon", "sample", "velocity"]
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "sample")
"""What a diffusion (noise-prediction) model may output; flow models also allow "velocity"."""
Timestep = int | torch.Tensor

_NOT_IN_SCHEDULE = -2  # marker in the prev-timestep table for t that are not in the current timesteps


def randn_tensor(
    shape: torch.Size | tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``device``, drawn from ``generator`` if given.

    The draw happens on the generator's own device and is then moved, so a CPU generator can seed CUDA
    sampling and the same seed gives the same noise on every device.
    """
    gen_device = generator.device if generator is not None else device
    noise = torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype)
    return noise.to(device) if device is not None else noise


def log_prob(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, min_std: float = 1e-3, reduce: bool = True
) -> torch.Tensor:
    """Log density of x under N(mean, std^2 I), summed over all but the first dim.

    Args:
        x, mean: (B, ...) e.g. (B, H, D); std: broadcastable to x, e.g. (B, 1, 1).
        min_std: std is clamped to at least this, so deterministic steps (std 0: the last DDPM step, DDIM
            eta=0) get a finite density; DPPO uses 0.1 ("min_logprob_denoising_std").
        reduce: False keeps the per-entry densities (B, ...).
    Returns:
        (B,) log-probabilities ((B, ...) with ``reduce=False``).
    """
    std = std.clamp(min=min_std)
    z = (x - mean) / std
    lp = (
        -0.5 * z**2
        - torch.log(std)
        - 0.5 * torch.log(torch.tensor(2 * torch.pi, dtype=x.dtype, device=x.device))
    )
    if not reduce:
        return lp
    return lp.flatten(1).sum(-1) if lp.dim() > 1 else lp


class NoiseScheduler:
    """Shared tables and the forward / reverse process interface; subclasses define the reverse step.

    Attributes (float64 CPU tensors of shape (T,) unless noted): ``betas``, ``alphas``, ``alphas_cumprod``,
    ``alphas_cumprod_prev`` (a_bar[t-1], 1 at t=0), ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``;
    ``timesteps`` (K,) long, descending: the reverse-process steps set by :meth:`set_timesteps`.
    """

    name: ClassVar[str] = "base"
    objective: ClassVar[str] = "diffusion"
    """The training objective whose model this scheduler samples: diffusion | flow."""
    prediction_types: ClassVar[tuple[str, ...]] = PREDICTION_TYPES
    """Model outputs (``prediction_type``) this scheduler understands."""
    deterministic: ClassVar[bool] = False
    """Every reverse step has std 0 at the class's default settings (so std-scaled value guidance does nothing)."""
    strided: ClassVar[bool] = True
    """Acting samples over ``sampling_steps`` (True) or over every train step (False: DDPM as in the papers)."""

    @classmethod
    def stochastic(cls, **kw: object) -> bool:
        """Whether the reverse steps (but the last) add noise when built with ``kw`` (before building one)."""
        return not cls.deterministic

    def __init__(
        self,
        num_train_steps: int,
        beta_schedule: str = "cosine",
        prediction_type: PredictionType = "sample",
        clip_sample: float | None = 1.0,
        betas: torch.Tensor | None = None,
    ) -> None:
        """
        Args:
            num_train_steps: T, number of forward diffusion steps the model is trained with.
            beta_schedule: a name in :data:`~diffplan.diffusion.schedules.BETA_SCHEDULES`.
            prediction_type: what the model outputs: "epsilon" (the noise) or "sample" (x0).
            clip_sample: clamp x0 estimates to [-clip_sample, clip_sample] (data normalized to [-1, 1]);
                None disables it.
            betas: (T,) explicit betas, overriding ``beta_schedule``.
        """
        if prediction_type not in self.prediction_types:
            raise ValueError(
                f"unknown prediction_type {prediction_type!r} for {self.name}; valid: {list(self.prediction_types)}"
            )
        if clip_sample is not None and clip_sample <= 0:
            raise ValueError(f"clip_sample must be positive or None, got {clip_sample}")
        betas = make_betas(beta_schedule, num_train_steps) if betas is None else betas.to(torch.float64)
        if betas.shape != (num_train_steps,):
            raise ValueError(f"betas must have shape ({num_train_steps},), got {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must lie in (0, 1)")
        self.num_train_steps = num_train_steps
        self.beta_schedule = beta_schedule
        self.prediction_type: PredictionType = prediction_type
        self.clip_sample = clip_sample

        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        # x0 = sqrt(1/a_bar) x_t - sqrt(1/a_bar - 1) eps  (inverse of eq. 4 of Ho et al.)
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()

        self._cache: dict[tuple[torch.device, torch.dtype], dict[str, torch.Tensor]] = {}
        self.set_timesteps(None)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(T={self.num_train_steps}, steps={len(self.timesteps)}, "
            f"beta_schedule={self.beta_schedule!r}, prediction_type={self.prediction_type!r}, "
            f"clip_sample={self.clip_sample}{self._extra_repr()})"
        )

    def _extra_repr(self) -> str:
        return ""

    # ------------------------------------------------------------------------------------------- timesteps
    @property
    def num_steps(self) -> int:
        """K, the number of solver steps set by :meth:`set_timesteps` (model calls: :attr:`model_calls`)."""
        return self._num_steps

    @property
    def model_calls(self) -> int:
        """Denoiser evaluations per sample: ``len(timesteps)``; K for one-stage solvers, 2K - 1 for Heun."""
        return len(self.timesteps)

    def call_index(self, step: int) -> int:
        """Index in ``timesteps`` (model calls) where solver step ``step`` (0..K-1) begins: ``step`` itself
        for one-call-per-step solvers."""
        return step

    def reset(self) -> None:
        """Forget per-sample solver state; :func:`~diffplan.diffusion.sample` calls it before each sample.
        One-step samplers (DDPM, DDIM, Euler) keep none; multistep / multistage ones override it."""

    def _spacing(self, num_steps: int) -> torch.Tensor:
        """(K,) long, descending: the K steps of :meth:`set_timesteps` (see there) for 1 < K < T."""
        # Spacing (T-1)/(K-1) >= 1, so rounding gives K distinct integers.
        return torch.linspace(0, self.num_train_steps - 1, num_steps, dtype=torch.float64).round().long().flip(0)

    def set_timesteps(self, num_steps: int | None) -> None:
        """Choose the K reverse-process steps: ``timesteps`` = (K,) long, descending from T-1 to 0.

        None (or T) uses all train steps. Otherwise K evenly spaced steps that always include T-1 (so sampling
        starts where the forward process ends, near pure noise) and 0 (so the last step is the usual final
        denoising step); K = 1 is the single step T-1 -> x0.
        """
        T = self.num_train_steps
        if num_steps is None:
            num_steps = T
        if not isinstance(num_steps, int) or not 1 <= num_steps <= T:
            raise ValueError(
                f"num_steps must be an int in [1, {T}] (num_train_steps) or None, got {num_steps!r}"
            )
        if num_steps == T:
            ts = torch.arange(T - 1, -1, -1, dtype=torch.long)
        elif num_steps == 1:
            ts = torch.tensor([T - 1], dtype=torch.long)
        else:
            ts = self._spacing(num_steps)
        self.timesteps = ts
        self._num_steps = num_steps

        prev = torch.full((T,), _NOT_IN_SCHEDULE, dtype=torch.long)
        prev[ts] = torch.cat([ts[1:], torch.tensor([-1])])
        self._prev = prev
        self._step_tables = self._make_step_tables(prev)
        self._cache.clear()
        self.reset()

    def _make_step_tables(self, prev: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-timestep (T,) float64 tables of the reverse step t -> prev[t]: at least c_x0, c_xt and std."""
        a_bar = self.alphas_cumprod
        a_bar_prev = torch.where(prev >= 0, a_bar[prev.clamp(min=0)], torch.ones_like(a_bar))
        c_x0, c_xt, std = self._step_coefficients(a_bar, a_bar_prev)
        # The step to x0 (prev = -1) is deterministic: its posterior variance is exactly 0.
        std = torch.where(prev == -1, torch.zeros_like(std), std)
        return {"c_x0": c_x0, "c_xt": c_xt, "std": std}

    def _step_coefficients(
        self, a_bar: torch.Tensor, a_bar_prev: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_x0, c_xt, std), each (T,) float64, of the step t -> prev(t): mean = c_x0 x0_hat + c_xt x_t."""
        raise NotImplementedError

    def prev_timestep(self, t: Timestep) -> Timestep:
        """The timestep after ``t`` in the current ``timesteps`` (-1 after the last: the step to x0).

        t: int -> int; LongTensor (B,) -> LongTensor (B,). Raises ValueError for t not in ``timesteps``.
        """
        if isinstance(t, torch.Tensor):
            in_range = (t >= 0) & (t < self.num_train_steps)  # negative t would silently wrap around
            prev = self._tables(t.device, torch.float32)["prev"][t.clamp(0, self.num_train_steps - 1)]
            if bool(((prev == _NOT_IN_SCHEDULE) | ~in_range).any()):
                raise ValueError(
                    f"timesteps {t.unique().tolist()} not all in the scheduler's {self._ts_desc()}"
                )
            return prev
        self._check_int_t(t)
        return int(self._prev[t])

    def _single_timestep(self, t: Timestep) -> int:
        """t as one int in the current timesteps; for solvers with state, which advance the whole batch from
        one timestep (a (B,) tensor must hold one value)."""
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            if t.numel() == 0 or bool((t != t.flatten()[0]).any()):
                raise ValueError(f"{self.name} steps the whole batch from one timestep, got {t.unique().tolist()}")
            t = t.flatten()[0]
        t = int(t)
        self._check_int_t(t)
        return t

    def _ts_desc(self) -> str:
        ts = self.timesteps.tolist()
        return f"timesteps ({len(ts)} steps: {ts[:4]}{'...' if len(ts) > 4 else ''})"

    def _check_int_t(self, t: int) -> None:
        if not 0 <= t < self.num_train_steps or int(self._prev[t]) == _NOT_IN_SCHEDULE:
            raise ValueError(f"timestep {t} is not in the scheduler's {self._ts_desc()}")

    # ------------------------------------------------------------------------------------------- tables
    def _tables(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Coefficient tables on ``device`` in ``dtype``, cached so the sampling loop does no host copies."""
        key = (torch.device(device), dtype)
        tables = self._cache.get(key)
        if tables is None:
            src = {
                "sqrt_alphas_cumprod": self.sqrt_alphas_cumprod,
                "sqrt_one_minus_alphas_cumprod": self.sqrt_one_minus_alphas_cumprod,
                "sqrt_recip_alphas_cumprod": self.sqrt_recip_alphas_cumprod,
                "sqrt_recipm1_alphas_cumprod": self.sqrt_recipm1_alphas_cumprod,
                **self._step_tables,
            }
            tables = {k: v.to(device=device, dtype=dtype) for k, v in src.items()}
            tables["prev"] = self._prev.to(device)
            self._cache[key] = tables
        return tables

    def _gather(self, name: str, t: Timestep, x: torch.Tensor) -> torch.Tensor:
        """Table ``name`` at t, shaped (B, 1, ..., 1) to broadcast over x (B, ...)."""
        table = self._tables(x.device, x.dtype)[name]
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            if t.dim() != 1 or t.shape[0] not in (1, x.shape[0]):
                raise ValueError(
                    f"t must be an int or a (B,) tensor with B = {x.shape[0]}, got shape {tuple(t.shape)}"
                )
            vals = table[t.to(x.device)]
        else:
            if not 0 <= int(t) < self.num_train_steps:
                raise ValueError(f"timestep {int(t)} out of range [0, {self.num_train_steps})")
            vals = table[int(t)].expand(1)
        return vals.expand(x.shape[0]).reshape((x.shape[0],) + (1,) * (x.dim() - 1))

    # ---------------------------------------------------------------------------------------- forward
    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: Timestep) -> torch.Tensor:
        """Sample q(x_t | x0) = N(sqrt(a_bar_t) x0, (1 - a_bar_t) I) (Ho et al., eq. 4) with noise eps.

        x0, eps: (B, ...); t: int or LongTensor (B,). Returns x_t (B, ...).
        """
        return (
            self._gather("sqrt_alphas_cumprod", t, x0) * x0
            + self._gather("sqrt_one_minus_alphas_cumprod", t, x0) * eps
        )

    def training_target(self, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """What the denoiser regresses onto (B, ...): eps for "epsilon" models, x0 for "sample" ones."""
        return eps if self.prediction_type == "epsilon" else x0

    # ----------------------------------------------------------------------------------------- predict
    def predict_x0(
        self, model_out: torch.Tensor, t: Timestep, x_t: torch.Tensor, clip: bool = True
    ) -> torch.Tensor:
        """x0 estimate (B, ...) from the model output; clamped to +-clip_sample if set and ``clip``."""
        if self.prediction_type == "epsilon":
            x0 = (
                self._gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                - self._gather("sqrt_recipm1_alphas_cumprod", t, x_t) * model_out
            )
        else:
            x0 = model_out
        if clip and self.clip_sample is not None:
            x0 = x0.clamp(-self.clip_sample, self.clip_sample)
        return x0

    def predict_eps(self, model_out: torch.Tensor, t: Timestep, x_t: torch.Tensor) -> torch.Tensor:
        """Noise estimate (B, ...) implied by the model output (no clipping: it is the raw prediction)."""
        if self.prediction_type == "epsilon":
            return model_out
        return (x_t - self._gather("sqrt_alphas_cumprod", t, x_t) * model_out) / self._gather(
            "sqrt_one_minus_alphas_cumprod", t, x_t
        )

    # ------------------------------------------------------------------------------------------ reverse
    def step_distribution(
        self, model_out: torch.Tensor, t: Timestep, x_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The Gaussian p(x_{prev(t)} | x_t) = N(mean, std^2 I) the reverse step samples from.

        Args:
            model_out: (B, ...) denoiser output at (x_t, t); x_t: (B, ...); t: int or LongTensor (B,), each
                entry one of ``timesteps`` (rows may sit at different timesteps).
        Returns:
            mean (B, ...), differentiable w.r.t. model_out and x_t; std (B, 1, ..., 1), 0 at the step to x0.
        """
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            self.prev_timestep(t)  # validates t against the current timesteps
        else:
            self._check_int_t(int(t))
        x0 = self.predict_x0(model_out, t, x_t)
        mean = self._gather("c_x0", t, x_t) * x0 + self._gather("c_xt", t, x_t) * x_t
        return mean, self._gather("std", t, x_t)

    def starts_step(self, t: Timestep) -> bool:
        """Whether the model call at ``t`` about to be made starts a solver step (True for one-call solvers),
        rather than finishing one begun at an earlier call (Heun's corrector). The sampling loop guides x only
        where a step starts: a corrector evaluates the model at a trial point but steps from the start point."""
        return True

    def step_std(self, t: Timestep, x_t: torch.Tensor) -> torch.Tensor:
        """The std (B, 1, ..., 1) of the reverse step from t, known before the model is called (it does not
        depend on the model's output): what a guide scales its gradient by before the step is taken."""
        return self._gather("std", t, x_t)

    def step(
        self,
        model_out: torch.Tensor,
        t: Timestep,
        x_t: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One reverse step: x_prev = mean + std * z, z ~ N(0, I) from ``generator``. Returns (B, ...)."""
        mean, std = self.step_distribution(model_out, t, x_t)
        return mean + std * randn_tensor(x_t.shape, generator, x_t.device, x_t.dtype)


class DDPMScheduler(NoiseScheduler):
    """Ancestral DDPM sampling (Ho et al., 2020): the posterior q(x_{t-1} | x_t, x0 = x0_hat).

    With all T timesteps (the default) this is eq. 6-7 of Ho et al.:
        mean = sqrt(a_bar_{t-1}) beta_t / (1 - a_bar_t) x0 + sqrt(alpha_t) (1 - a_bar_{t-1}) / (1 - a_bar_t) x_t
        var  = beta_t (1 - a_bar_{t-1}) / (1 - a_bar_t)
    With fewer timesteps (``set_timesteps(K)``, K < T) it is the *strided* DDPM posterior of Nichol & Dhariwal
    (2021, Sec. 4, "respacing"): the same formulas between consecutive kept steps s > s', with the effective
    beta = 1 - a_bar_s / a_bar_s'. That equals DDIM with eta = 1 on the same steps.
    The std is exp(0.5 * log(max(var, 1e-20))), Diffuser's clipped log-variance, and exactly 0 for the step to x0.
    """

    name: ClassVar[str] = "ddpm"
    strided: ClassVar[bool] = False

    def _step_coefficients(
        self, a_bar: torch.Tensor, a_bar_prev: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        alpha = a_bar / a_bar_prev  # effective alpha of the (possibly strided) step
        beta = 1.0 - alpha
        c_x0 = a_bar_prev.sqrt() * beta / (1.0 - a_bar)
        c_xt = alpha.sqrt() * (1.0 - a_bar_prev) / (1.0 - a_bar)
        var = beta * (1.0 - a_bar_prev) / (1.0 - a_bar)
        std = torch.exp(0.5 * torch.log(var.clamp(min=1e-20)))
        return c_x0, c_xt, std


class DDIMScheduler(NoiseScheduler):
    """DDIM (Song et al., 2021), eq. 12:

        x_prev = sqrt(a_bar_prev) x0_hat + sqrt(1 - a_bar_prev - sigma^2) eps_hat + sigma z,
        sigma(eta) = eta sqrt((1 - a_bar_prev) / (1 - a_bar_t)) sqrt(1 - a_bar_t / a_bar_prev)   (eq. 16)

    eta = 0 (default) is the deterministic DDIM sampler; eta = 1 is the DDPM posterior (see
    :class:`DDPMScheduler`). eps_hat is re-derived from the *clipped* x0_hat,
    eps_hat = (x_t - sqrt(a_bar_t) x0_hat) / sqrt(1 - a_bar_t), so x0_hat and eps_hat stay consistent and the
    mean is linear in x0_hat like DDPM's: mean = c_x0 x0_hat + c_xt x_t with
    c_xt = sqrt(1 - a_bar_prev - sigma^2) / sqrt(1 - a_bar_t), c_x0 = sqrt(a_bar_prev) - c_xt sqrt(a_bar_t).
    """

    name: ClassVar[str] = "ddim"
    deterministic: ClassVar[bool] = True

    def __init__(
        self,
        num_train_steps: int,
        beta_schedule: str = "cosine",
        prediction_type: PredictionType = "sample",
        clip_sample: float | None = 1.0,
        betas: torch.Tensor | None = None,
        eta: float = 0.0,
    ) -> None:
        """See :class:`NoiseScheduler`; ``eta`` in [0, 1] scales the step noise (0: deterministic)."""
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        self.eta = float(eta)  # needed by set_timesteps, which the base __init__ calls
        super().__init__(num_train_steps, beta_schedule, prediction_type, clip_sample, betas)

    @classmethod
    def stochastic(cls, **kw: object) -> bool:
        """eta > 0 adds noise at every step but the last (eta 1: the DDPM posterior over the kept steps)."""
        return float(kw.get("eta", 0.0)) > 0  # type: ignore[arg-type]

    def _extra_repr(self) -> str:
        return f", eta={self.eta}"

    def _step_coefficients(
        self, a_bar: torch.Tensor, a_bar_prev: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        var = self.eta**2 * (1.0 - a_bar_prev) / (1.0 - a_bar) * (1.0 - a_bar / a_bar_prev)
        # clamp: rounding can make the direction term a hair negative when eta = 1 and a_bar_prev ~ 1
        c_xt = (1.0 - a_bar_prev - var).clamp(min=0.0).sqrt() / (1.0 - a_bar).sqrt()
        c_x0 = a_bar_prev.sqrt() - c_xt * a_bar.sqrt()
        return c_x0, c_xt, var.sqrt()


class DPMSolverMultistepScheduler(DDIMScheduler):
    """DPM-Solver++(2M) (Lu et al., 2022, "DPM-Solver++", Alg. 2), data-prediction multistep solver of the
    diffusion ODE, for epsilon and x0 models alike (both give x0_hat).

    With alpha = sqrt(a_bar), sigma = sqrt(1 - a_bar), lambda = log(alpha / sigma), the step s -> t with
    h = lambda_t - lambda_s is
        x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) D,     D = x0_s + (x0_s - x0_r) / (2 r),  r = h_r / h
    where x0_r is the previous step's x0 estimate (at the step r -> s before, h_r = lambda_s - lambda_r). With
    D = x0_s (first order: the first step, and the last one, to x0, where h is infinite, as diffusers'
    ``lower_order_final``) this is exactly DDIM with eta = 0, whose tables this class reuses: only the
    combination D of the two latest x0 estimates is new. So ``mean = c_x0 D + c_xt x_t`` stays linear in the
    model's output, std is 0, and inpainting, value guidance and classifier-free guidance plug into the same loop.

    The timesteps are diffusers' "linspace" spacing for this solver: K steps from T-1 down to round((T-1)/K),
    the last one going straight to x0, so no model call is spent on the nearly clean step t = 0.

    Why not diffusers' ``DPMSolverMultistepScheduler``: its ``step`` returns only the next sample, not the
    Gaussian (mean, std) our loop hands to guides and log-probabilities; it keeps its own timestep index rather
    than accepting arbitrary rows; it would bring a large dependency (and its import time) into every planner
    for some twenty lines of arithmetic. Its formulas are the ones above (``dpmsolver++``, ``midpoint``): on the
    same betas (``trained_betas``, ``timestep_spacing="linspace"``, ``final_sigmas_type="zero"``) diffusers
    0.42.1 and this class gave the same 5-step samples to 1.2e-7 (checked once by hand, diffusers is no
    dependency; the tests check the solver against the exact ODE map of Gaussian data instead).

    State: the x0 estimate and timestep of the last call; :meth:`reset` (called by ``sample``) clears it. A
    call uses the second-order update only when the stored timestep is the one right before ``t``.
    """

    name: ClassVar[str] = "dpmsolver++"
    _last: tuple[int, torch.Tensor] | None
    """Timestep and x0 estimate of the last step (set by :meth:`reset` and each step)."""

    def __init__(
        self,
        num_train_steps: int,
        beta_schedule: str = "cosine",
        prediction_type: PredictionType = "sample",
        clip_sample: float | None = 1.0,
        betas: torch.Tensor | None = None,
    ) -> None:
        """See :class:`NoiseScheduler`. (No eta: the solver is deterministic.)"""
        super().__init__(num_train_steps, beta_schedule, prediction_type, clip_sample, betas, eta=0.0)

    def _extra_repr(self) -> str:
        return ""

    def reset(self) -> None:
        self._last = None

    def _spacing(self, num_steps: int) -> torch.Tensor:
        T = self.num_train_steps
        return torch.linspace(0, T - 1, num_steps + 1, dtype=torch.float64).round().long()[1:].flip(0)

    def _make_step_tables(self, prev: torch.Tensor) -> dict[str, torch.Tensor]:
        tables = super()._make_step_tables(prev)
        a_bar = self.alphas_cumprod
        lam = 0.5 * (a_bar.log() - (1.0 - a_bar).log())  # lambda_t = log(alpha_t / sigma_t)
        # For the step t -> prev[t] of size h: 1 / (2 r) = h / (2 h_r), h_r the size of the step into t.
        # 0 where there is no previous step (the first) or h is infinite (the step to x0): first order there.
        ts = self.timesteps.tolist()
        half_over_r = torch.zeros_like(a_bar)
        for i in range(1, len(ts)):
            t, t_prev = ts[i], int(prev[ts[i]])
            if t_prev < 0:
                continue
            h = lam[t_prev] - lam[t]
            h_r = lam[t] - lam[ts[i - 1]]
            half_over_r[t] = 0.5 * h / h_r
        tables["half_over_r"] = half_over_r
        return tables

    def step_distribution(
        self, model_out: torch.Tensor, t: Timestep, x_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`NoiseScheduler.step_distribution` with the multistep D in place of x0_hat; std is 0."""
        t_int = self._single_timestep(t)
        x0 = self.predict_x0(model_out, t_int, x_t)
        d = x0
        last = self._last
        if last is not None and int(self._prev[last[0]]) == t_int and last[1].shape == x0.shape:
            d = x0 + self._gather("half_over_r", t_int, x_t) * (x0 - last[1])
        self._last = (t_int, x0)
        mean = self._gather("c_x0", t_int, x_t) * d + self._gather("c_xt", t_int, x_t) * x_t
        return mean, self._gather("std", t_int, x_t)


class FlowMatchEulerScheduler(NoiseScheduler):
    """Rectified flow / conditional flow matching (Liu et al., 2023; Lipman et al., 2023) with Euler steps.

    The path is the straight line x_s = (1 - s) x0 + s eps between data (s = 0) and noise (s = 1), whose
    velocity dx/ds = eps - x0 the model learns ("velocity") or, equivalently, x0 itself ("sample"; then
    v = (x_s - x0_hat) / s, and x0_hat can be clipped like the diffusion samplers'). Time is the integer grid
    of the other schedulers, so networks and the sampling loop are shared: train step t in 0..T-1 is
    s_t = (t + 1) / T, and the step after the last, "t = -1", is s = 0, the data.

    Euler from s to s' < s: x_s' = x_s + (s' - s) v = (s'/s) x_s + (1 - s'/s) x0_hat, i.e. the same
    ``mean = c_x0 x0_hat + c_xt x_t`` with std 0 as DDIM, so guides, inpainting and log-probabilities work
    unchanged. On an exactly straight (e.g. linear-in-x) velocity field Euler is exact at any step count.

    The constructor is :class:`NoiseScheduler`'s; ``beta_schedule`` and ``betas`` only fill the diffusion tables,
    which a flow never reads.

    Why not torchcfm / torchdiffeq: the objective is three lines (:meth:`add_noise`, :meth:`training_target`),
    and an ODE library's integrator owns the loop, leaving no place to inpaint or guide between steps.
    """

    name: ClassVar[str] = "euler"
    objective: ClassVar[str] = "flow"
    prediction_types: ClassVar[tuple[str, ...]] = ("velocity", "sample")
    deterministic: ClassVar[bool] = True

    def sigma(self) -> torch.Tensor:
        """(T,) float64 s_t = (t + 1) / T, the noise fraction at each train step."""
        T = self.num_train_steps
        return torch.arange(1, T + 1, dtype=torch.float64) / T

    def _make_step_tables(self, prev: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.sigma()
        s_prev = torch.where(prev >= 0, s[prev.clamp(min=0)], torch.zeros_like(s))
        ratio = s_prev / s
        return {"c_x0": 1.0 - ratio, "c_xt": ratio, "std": torch.zeros_like(s), "s": s, "s_prev": s_prev}

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: Timestep) -> torch.Tensor:
        """x_s = (1 - s_t) x0 + s_t eps. x0, eps: (B, ...); t: int or LongTensor (B,). Returns (B, ...)."""
        s = self._gather("s", t, x0)
        return (1.0 - s) * x0 + s * eps

    def training_target(self, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The regression target (B, ...): the velocity eps - x0, or x0 for "sample" models."""
        return eps - x0 if self.prediction_type == "velocity" else x0

    def predict_x0(
        self, model_out: torch.Tensor, t: Timestep, x_t: torch.Tensor, clip: bool = True
    ) -> torch.Tensor:
        x0 = x_t - self._gather("s", t, x_t) * model_out if self.prediction_type == "velocity" else model_out
        if clip and self.clip_sample is not None:
            x0 = x0.clamp(-self.clip_sample, self.clip_sample)
        return x0

    def predict_eps(self, model_out: torch.Tensor, t: Timestep, x_t: torch.Tensor) -> torch.Tensor:
        s = self._gather("s", t, x_t)
        if self.prediction_type == "velocity":
            return x_t + (1.0 - s) * model_out
        return (x_t - (1.0 - s) * model_out) / s


class FlowMatchHeunScheduler(FlowMatchEulerScheduler):
    """Heun's method (second order, as in Karras et al., 2022, Alg. 1) on the flow's ODE: per step s -> s'
    an Euler predictor x' = x + (s' - s) v(x, s), then the corrector x + (s' - s) (v(x, s) + v(x', s')) / 2;
    the last step, to s = 0 where the model is not defined, is plain Euler. K steps cost 2K - 1 model calls:
    ``timesteps`` lists each evaluation, t_0, t_1, t_1, t_2, ..., t_{K-1}, and the sampling loop runs them in
    order (after the predictor call the loop's x is the predicted x', inpainted like any other step).

    State: the stage and (x, v) of the step being corrected; :meth:`reset` clears it.
    """

    name: ClassVar[str] = "heun"
    _pending: tuple[int, int, torch.Tensor, torch.Tensor] | None
    """(target timestep, start timestep, x at the start, its velocity) of the step awaiting correction."""

    def reset(self) -> None:
        self._pending = None

    def set_timesteps(self, num_steps: int | None) -> None:
        super().set_timesteps(num_steps)
        steps = self.timesteps.tolist()
        evals = [steps[0]] + [t for t in steps[1:] for _ in range(2)]
        self.solver_timesteps = self.timesteps
        """(K,) the solver's steps; ``timesteps`` (2K - 1,) lists the model evaluations."""
        self.timesteps = torch.tensor(evals, dtype=torch.long)

    def call_index(self, step: int) -> int:
        """Step j's predictor is call 2j (calls: t_0, then a corrector and a predictor at each t_j)."""
        return 2 * step

    def starts_step(self, t: Timestep) -> bool:
        """False for a corrector call: the step it finishes started at the pending predictor's x."""
        pending = self._pending
        return pending is None or pending[0] != self._single_timestep(t)

    def _velocity(self, model_out: torch.Tensor, t: int, x_t: torch.Tensor) -> torch.Tensor:
        """v (B, ...) from the (clipped) x0 estimate: (x_t - x0_hat) / s_t."""
        return (x_t - self.predict_x0(model_out, t, x_t)) / self._gather("s", t, x_t)

    def step_distribution(
        self, model_out: torch.Tensor, t: Timestep, x_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictor or corrector stage (see the class); returns (next x (B, ...), std 0 (B, 1, ..., 1))."""
        t = self._single_timestep(t)
        std = self._gather("std", t, x_t)
        v = self._velocity(model_out, t, x_t)
        pending = self._pending
        if pending is not None and pending[0] == t and pending[2].shape == x_t.shape:
            # corrector: t is the target level s' of the pending step started at x_s with velocity v_s
            self._pending = None
            _, t_from, x_s, v_s = pending
            ds = self._gather("s", t, x_t) - self._gather("s", t_from, x_t)
            return x_s + ds * 0.5 * (v_s + v), std
        ds = self._gather("s_prev", t, x_t) - self._gather("s", t, x_t)
        x_next = x_t + ds * v
        prev = int(self._prev[t])
        if prev >= 0:
            self._pending = (prev, t, x_t, v)
        return x_next, std


SCHEDULERS: dict[str, type[NoiseScheduler]] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpmsolver++": DPMSolverMultistepScheduler,
    "euler": FlowMatchEulerScheduler,
    "heun": FlowMatchHeunScheduler,
}
"""Scheduler name -> class; :func:`make_scheduler` picks from here. Each class's ``objective`` says which
models it samples: ddpm, ddim, dpmsolver++ the diffusion (epsilon / x0) ones, euler and heun flow models."""


def make_scheduler(
    name: str,
    num_train_steps: int,
    beta_schedule: str = "cosine",
    prediction_type: PredictionType = "sample",
    clip_sample: float | None = 1.0,
    **kw: object,
) -> NoiseScheduler:
    """Build the scheduler called ``name`` (a key of :data:`SCHEDULERS`).

    ``kw`` goes to the class: ``betas`` for any, ``eta`` for DDIM. For the flow schedulers (euler, heun)
    ``prediction_type`` is "velocity" or "sample". The result uses all T timesteps; call
    ``set_timesteps(K)`` for fewer.
    """
    try:
        cls = SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}; valid: {sorted(SCHEDULERS)}") from None
    return cls(num_train_steps, beta_schedule, prediction_type, clip_sample, **kw)  # type: ignore[arg-type]
