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
    "NoiseScheduler",
    "PredictionType",
    "log_prob",
    "make_scheduler",
    "randn_tensor",
]

PredictionType = Literal["epsilon", "sample"]
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "sample")
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


def log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, min_std: float = 1e-3) -> torch.Tensor:
    """Log density of x under N(mean, std^2 I), summed over all but the first dim.

    Args:
        x, mean: (B, ...) e.g. (B, H, D); std: broadcastable to x, e.g. (B, 1, 1).
        min_std: std is clamped to at least this, so deterministic steps (std 0: the last DDPM step, DDIM
            eta=0) get a finite density; DPPO uses 0.1 ("min_logprob_denoising_std").
    Returns:
        (B,) log-probabilities.
    """
    std = std.clamp(min=min_std)
    z = (x - mean) / std
    lp = (
        -0.5 * z**2
        - torch.log(std)
        - 0.5 * torch.log(torch.tensor(2 * torch.pi, dtype=x.dtype, device=x.device))
    )
    return lp.flatten(1).sum(-1) if lp.dim() > 1 else lp


class NoiseScheduler:
    """Shared tables and the forward / reverse process interface; subclasses define the reverse step.

    Attributes (float64 CPU tensors of shape (T,) unless noted): ``betas``, ``alphas``, ``alphas_cumprod``,
    ``alphas_cumprod_prev`` (a_bar[t-1], 1 at t=0), ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``;
    ``timesteps`` (K,) long, descending: the reverse-process steps set by :meth:`set_timesteps`.
    """

    name: ClassVar[str] = "base"

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
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; valid: {list(PREDICTION_TYPES)}")
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
        """K, the number of reverse steps in the current ``timesteps``."""
        return len(self.timesteps)

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
            # Spacing (T-1)/(K-1) >= 1, so rounding gives K distinct integers.
            ts = torch.linspace(0, T - 1, num_steps, dtype=torch.float64).round().long().flip(0)
        self.timesteps = ts

        prev = torch.full((T,), _NOT_IN_SCHEDULE, dtype=torch.long)
        prev[ts] = torch.cat([ts[1:], torch.tensor([-1])])
        self._prev = prev
        a_bar = self.alphas_cumprod
        a_bar_prev = torch.where(prev >= 0, a_bar[prev.clamp(min=0)], torch.ones_like(a_bar))
        c_x0, c_xt, std = self._step_coefficients(a_bar, a_bar_prev)
        # The step to x0 (prev = -1) is deterministic: its posterior variance is exactly 0.
        std = torch.where(prev == -1, torch.zeros_like(std), std)
        self._step_tables = {"c_x0": c_x0, "c_xt": c_xt, "std": std}
        self._cache.clear()

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


SCHEDULERS: dict[str, type[NoiseScheduler]] = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}
"""Scheduler name -> class; :func:`make_scheduler` picks from here."""


def make_scheduler(
    name: str,
    num_train_steps: int,
    beta_schedule: str = "cosine",
    prediction_type: PredictionType = "sample",
    clip_sample: float | None = 1.0,
    **kw: object,
) -> NoiseScheduler:
    """Build the scheduler called ``name`` (a key of :data:`SCHEDULERS`).

    ``kw`` goes to the class: ``betas`` for any, ``eta`` for DDIM. The result uses all T timesteps; call
    ``set_timesteps(K)`` for fewer.
    """
    try:
        cls = SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}; valid: {sorted(SCHEDULERS)}") from None
    return cls(num_train_steps, beta_schedule, prediction_type, clip_sample, **kw)  # type: ignore[arg-type]
