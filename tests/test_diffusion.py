"""Diffusion core: schedules, schedulers (DDPM / DDIM), the sampling loop, guidance and the denoising loss."""

from __future__ import annotations

import pytest
import torch

from diffplan.diffusion import (
    BETA_SCHEDULES,
    SCHEDULERS,
    DDPMScheduler,
    Inpaint,
    ValueGuide,
    classifier_free,
    cosine_beta_schedule,
    denoising_loss,
    linear_beta_schedule,
    log_prob,
    loss_weights,
    make_betas,
    make_scheduler,
    sample,
)
from diffplan.nets import MLPDenoiser

B, H, D = 4, 8, 3
STOCHASTIC = ["ddim", "ddpm"]
"""The Gaussian-step samplers (DDIM with eta > 0, DDPM); the ODE solvers are tested in test_fast_sampling.py."""


def _prediction_types(name: str) -> list[str]:
    return list(SCHEDULERS[name].prediction_types)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("name", sorted(BETA_SCHEDULES))
@pytest.mark.parametrize("n", [1, 10, 100, 1000])
def test_schedules_valid_and_monotone(name: str, n: int) -> None:
    betas = make_betas(name, n)
    assert betas.shape == (n,) and betas.dtype == torch.float64
    assert bool(((betas > 0) & (betas < 1)).all())
    a_bar = torch.cumprod(1 - betas, 0)
    assert bool((a_bar[1:] < a_bar[:-1]).all()), "alphas_cumprod must be strictly decreasing"


def test_schedule_values() -> None:
    lin = linear_beta_schedule(5)
    assert torch.allclose(lin, torch.tensor([1e-4, 0.0050750, 0.01005, 0.0150250, 2e-2], dtype=torch.float64))
    cos = cosine_beta_schedule(100)
    assert float(cos.max()) <= 0.999 and float(cos[-1]) == pytest.approx(0.999)  # last beta clipped
    # Nichol & Dhariwal: a_bar(t) = f(t)/f(0) -> a_bar at t=n/2 is cos^2((0.5+s)/(1+s) pi/2) / f(0)
    a_bar = torch.cumprod(1 - cos, 0)
    f = lambda u: torch.cos(torch.tensor((u + 0.008) / 1.008 * torch.pi / 2, dtype=torch.float64)) ** 2
    assert float(a_bar[49]) == pytest.approx(float(f(0.5) / f(0.0)), rel=1e-10)


def test_unknown_names_raise() -> None:
    with pytest.raises(ValueError, match="cosine.*linear"):
        make_betas("quadratic", 10)
    with pytest.raises(ValueError, match="ddim.*ddpm"):
        make_scheduler("rk4", 10)
    with pytest.raises(ValueError, match="prediction_type"):
        make_scheduler("ddpm", 10, prediction_type="v")
    with pytest.raises(ValueError, match="eta"):
        make_scheduler("ddim", 10, eta=1.5)


# -------------------------------------------------------------------------------------------- schedulers
@pytest.mark.parametrize("name", STOCHASTIC)
def test_add_noise_then_predict_recovers_x0_and_eps(name: str) -> None:
    g = _gen()
    # float64: at t = T-1 the cosine schedule has a_bar ~ 2e-7, so recovering x0 amplifies rounding ~2000x
    x0 = torch.rand(B, H, D, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(B, H, D, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 17, 60, 99])
    for pt in ("epsilon", "sample"):
        s = make_scheduler(name, 100, prediction_type=pt)
        x_t = s.add_noise(x0, eps, t)
        model_out = eps if pt == "epsilon" else x0
        assert torch.allclose(s.predict_x0(model_out, t, x_t), x0, atol=1e-9)
        assert torch.allclose(s.predict_eps(model_out, t, x_t), eps, atol=1e-9)
    # add_noise follows q(x_t | x0) = N(sqrt(a_bar) x0, (1 - a_bar) I) (Ho et al. eq. 4)
    a_bar = s.alphas_cumprod[t][:, None, None]
    assert torch.allclose(x_t, a_bar.sqrt() * x0 + (1 - a_bar).sqrt() * eps, atol=1e-12)
    # float32 inputs get float32 tables (no silent promotion)
    assert s.add_noise(x0.float(), eps.float(), t).dtype == torch.float32


def test_predict_x0_clips() -> None:
    s = make_scheduler("ddpm", 10, clip_sample=1.0)
    out = torch.full((B, H, D), 3.0)
    assert float(s.predict_x0(out, 5, out).max()) == 1.0
    assert float(s.predict_x0(out, 5, out, clip=False).max()) == 3.0
    s_none = make_scheduler("ddpm", 10, clip_sample=None)
    assert float(s_none.predict_x0(out, 5, out).max()) == 3.0


def _ho_posterior(
    s: DDPMScheduler, x0: torch.Tensor, x_t: torch.Tensor, t: int
) -> tuple[torch.Tensor, float]:
    """Ho et al. eq. 7, written out independently of the scheduler's tables."""
    beta, a_bar = s.betas[t], s.alphas_cumprod[t]
    a_bar_prev = s.alphas_cumprod[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
    mean = (a_bar_prev.sqrt() * beta / (1 - a_bar)) * x0 + (
        (1 - beta).sqrt() * (1 - a_bar_prev) / (1 - a_bar)
    ) * x_t
    var = beta * (1 - a_bar_prev) / (1 - a_bar)
    return mean, float(var.sqrt()) if t > 0 else 0.0


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
@pytest.mark.parametrize("beta_schedule", ["cosine", "linear"])
def test_ddim_eta1_equals_ddpm_posterior(prediction_type: str, beta_schedule: str) -> None:
    kw = {"beta_schedule": beta_schedule, "prediction_type": prediction_type}
    ddpm = make_scheduler("ddpm", 100, **kw)
    ddim = make_scheduler("ddim", 100, eta=1.0, **kw)
    g = _gen(1)
    x_t = torch.randn(B, H, D, generator=g, dtype=torch.float64)
    # partly outside [-1, 1], so x0 clipping is active
    out = torch.randn(B, H, D, generator=g, dtype=torch.float64) * 2
    for t in [99, 70, 31, 5, 1, 0]:
        m1, s1 = ddpm.step_distribution(out, t, x_t)
        m2, s2 = ddim.step_distribution(out, t, x_t)
        assert torch.allclose(m1, m2, atol=1e-10) and torch.allclose(s1, s2, atol=1e-10), t
        ref_mean, ref_std = _ho_posterior(ddpm, ddpm.predict_x0(out, t, x_t), x_t, t)
        assert torch.allclose(m1, ref_mean, atol=1e-10)
        assert s1.shape == (B, 1, 1) and torch.allclose(s1, torch.full_like(s1, ref_std), atol=1e-12)
    # Per-row timesteps give the same rows as scalar timesteps.
    tb = torch.tensor([99, 50, 1, 0])
    m, s = ddpm.step_distribution(out, tb, x_t)
    for i, t in enumerate(tb.tolist()):
        mi, si = ddpm.step_distribution(out[i : i + 1], t, x_t[i : i + 1])
        assert torch.allclose(m[i], mi[0]) and torch.allclose(s[i], si[0])


def test_strided_ddpm_equals_ddim_eta1() -> None:
    ddpm, ddim = make_scheduler("ddpm", 100), make_scheduler("ddim", 100, eta=1.0)
    ddpm.set_timesteps(10)
    ddim.set_timesteps(10)
    assert torch.equal(ddpm.timesteps, ddim.timesteps)
    x_t, out = torch.randn(B, H, D, dtype=torch.float64), torch.randn(B, H, D, dtype=torch.float64)
    for t in ddpm.timesteps.tolist():
        m1, s1 = ddpm.step_distribution(out, t, x_t)
        m2, s2 = ddim.step_distribution(out, t, x_t)
        assert torch.allclose(m1, m2, atol=1e-10) and torch.allclose(s1, s2, atol=1e-10)


def test_timesteps_and_prev_timestep() -> None:
    s = make_scheduler("ddim", 100)
    assert torch.equal(s.timesteps, torch.arange(99, -1, -1))
    s.set_timesteps(20)
    ts = s.timesteps
    assert len(ts) == 20 and ts[0] == 99 and ts[-1] == 0 and bool((ts[1:] < ts[:-1]).all())
    assert s.prev_timestep(int(ts[0])) == int(ts[1]) and s.prev_timestep(0) == -1
    assert torch.equal(s.prev_timestep(ts), torch.cat([ts[1:], torch.tensor([-1])]))
    with pytest.raises(ValueError, match="not in"):
        s.prev_timestep(98)
    with pytest.raises(ValueError, match="not all in"):
        s.step_distribution(torch.zeros(2, H, D), torch.tensor([99, 98]), torch.zeros(2, H, D))
    with pytest.raises(ValueError, match="not all in"):
        s.prev_timestep(torch.tensor([-1]))
    with pytest.raises(ValueError, match="num_steps"):
        s.set_timesteps(101)
    s.set_timesteps(1)
    assert s.timesteps.tolist() == [99] and s.prev_timestep(99) == -1


@pytest.mark.parametrize("name", STOCHASTIC)
def test_std_zero_at_final_step(name: str) -> None:
    s = make_scheduler(name, 50, eta=1.0) if name == "ddim" else make_scheduler(name, 50)
    x = torch.randn(B, H, D)
    for k in (None, 7):
        s.set_timesteps(k)
        stds = [float(s.step_distribution(x, t, x)[1].max()) for t in s.timesteps.tolist()]
        assert stds[-1] == 0.0
        assert min(stds[:-1]) > 0.0
        # the final step returns x0_hat itself
        mean, _ = s.step_distribution(x, 0, x)
        assert torch.allclose(mean, s.predict_x0(x, 0, x))


def test_ddim_eta0_is_deterministic() -> None:
    s = make_scheduler("ddim", 100, eta=0.0)
    s.set_timesteps(10)
    x, out = torch.randn(B, H, D), torch.randn(B, H, D)
    for t in s.timesteps.tolist():
        assert float(s.step_distribution(out, t, x)[1].abs().max()) == 0.0
        assert torch.equal(s.step(out, t, x, _gen(1)), s.step(out, t, x, _gen(2)))
    # DDPM is not: different noise, different step
    ddpm = make_scheduler("ddpm", 100)
    assert not torch.equal(ddpm.step(out, 50, x, _gen(1)), ddpm.step(out, 50, x, _gen(2)))
    # A whole DDIM sampling run is a function of the initial noise only.
    net = MLPDenoiser(H * D, hidden=16, depth=1)
    a = sample(net, s, (B, H, D), generator=_gen(3))
    b = sample(net, s, (B, H, D), generator=_gen(3))
    assert torch.equal(a, b)


def test_step_distribution_is_differentiable_and_step_uses_it() -> None:
    s = make_scheduler("ddpm", 20, prediction_type="epsilon", clip_sample=None)
    x = torch.randn(B, H, D)
    out = torch.randn(B, H, D, requires_grad=True)
    mean, std = s.step_distribution(out, 10, x)
    (grad,) = torch.autograd.grad(mean.sum(), out)
    assert grad.abs().sum() > 0
    z = torch.randn(B, H, D, generator=_gen(5))
    assert torch.allclose(s.step(out, 10, x, _gen(5)), mean + std * z)


def test_log_prob_matches_normal() -> None:
    mean, x = torch.randn(B, H, D), torch.randn(B, H, D)
    std = torch.rand(B, 1, 1) + 0.5
    ref = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(x).sum((1, 2))
    assert torch.allclose(log_prob(x, mean, std), ref, atol=1e-5)
    zero = torch.zeros(B, 1, 1)
    assert torch.isfinite(log_prob(x, mean, zero, min_std=0.1)).all()
    ref_min = torch.distributions.Normal(mean, 0.1).log_prob(x).sum((1, 2))
    assert torch.allclose(log_prob(x, mean, zero, min_std=0.1), ref_min, atol=1e-4)


# ------------------------------------------------------------------------------------------------ sample
def _inpaint() -> Inpaint:
    g = _gen(7)
    return Inpaint.at_steps(
        (B, H, D), {0: torch.randn(B, 2, generator=g), -1: torch.randn(B, 2, generator=g)}, slice(1, None)
    )


def test_inpaint_at_steps() -> None:
    ip = _inpaint()
    assert ip.mask.shape == (B, H, D) and int(ip.mask.sum()) == B * 2 * 2
    assert (
        bool(ip.mask[:, 0, 1:].all()) and bool(ip.mask[:, -1, 1:].all()) and not bool(ip.mask[:, :, 0].any())
    )
    x = ip.apply(torch.zeros(B, H, D, dtype=torch.float64))
    assert x.dtype == torch.float64 and torch.equal(x[:, 0, 1:], ip.values[:, 0, 1:].double())


@pytest.mark.parametrize(
    ("name", "prediction_type"), [(n, p) for n in sorted(SCHEDULERS) for p in _prediction_types(n)]
)
def test_sample_inpainted_entries_exact(name: str, prediction_type: str) -> None:
    torch.manual_seed(0)
    s = make_scheduler(name, 20, prediction_type=prediction_type)
    net = MLPDenoiser(H * D, hidden=32, depth=1)
    ip = _inpaint()
    x = sample(net, s, (B, H, D), inpaint=ip, generator=_gen())
    assert torch.equal(x[ip.mask], ip.values[ip.mask])
    assert not torch.equal(x[~ip.mask], torch.zeros_like(x[~ip.mask]))


def test_sample_shapes_chain_and_num_steps() -> None:
    s = make_scheduler("ddim", 30)
    s.set_timesteps(6)
    net = MLPDenoiser(H * D, hidden=16, depth=1)
    x = sample(net, s, (B, H, D), generator=_gen())
    assert x.shape == (B, H, D) and x.grad_fn is None
    x2, chain = sample(net, s, (B, H, D), generator=_gen(), return_chain=True)
    assert chain.shape == (B, 7, H, D)
    assert torch.equal(chain[:, -1], x2) and torch.equal(x2, x)
    # the chain starts from the generator's noise
    assert torch.equal(chain[:, 0], torch.randn(B, H, D, generator=_gen()))
    _, chain = sample(net, s, (B, H, D), generator=_gen(), return_chain=True, num_steps=3)
    assert chain.shape == (B, 4, H, D)
    assert len(s.timesteps) == 6, "num_steps must not change the scheduler's timesteps"


def test_sample_enable_grad_reaches_params() -> None:
    s = make_scheduler("ddpm", 5, prediction_type="epsilon")
    net = MLPDenoiser(H * D, cond_dim=2, hidden=16, depth=1)
    cond = torch.randn(B, 2)
    x = sample(net, s, (B, H, D), cond=cond, generator=_gen(), enable_grad=True)
    x.pow(2).sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    with torch.inference_mode():  # and the default path works under inference mode
        y = sample(net, s, (B, H, D), cond=cond, generator=_gen())
    assert torch.allclose(y, x.detach())


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_oracle_denoiser_recovers_target(name: str) -> None:
    target = torch.rand(B, H, D, generator=_gen(3)) * 1.6 - 0.8
    other = "epsilon" if SCHEDULERS[name].objective == "diffusion" else "velocity"
    s_x0 = make_scheduler(name, 50, prediction_type="sample")
    s_eps = make_scheduler(name, 50, prediction_type=other)
    for s in (s_x0, s_eps):
        s.set_timesteps(10 if s.strided else None)

    def oracle_x0(x: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        return target

    def oracle_eps(x: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        if other == "velocity":  # the velocity of the straight path through x toward the target
            return (x - target) / ((t.float() + 1) / 50)[:, None, None]
        # the noise that x_t would carry if x0 were the target
        a = s_eps.alphas_cumprod[t].float()[:, None, None]
        return (x - a.sqrt() * target) / (1 - a).sqrt()

    assert torch.allclose(sample(oracle_x0, s_x0, (B, H, D), generator=_gen()), target, atol=1e-6)
    assert torch.allclose(sample(oracle_eps, s_eps, (B, H, D), generator=_gen()), target, atol=1e-4)


# ---------------------------------------------------------------------------------------------- guidance
def _shrink(x: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
    """x0-prediction denoiser that shrinks x_t toward 0: keeps the chain sensitive to the guide's shifts."""
    return 0.5 * x


@pytest.mark.parametrize("name", STOCHASTIC)
def test_value_guide_moves_toward_target(name: str) -> None:
    s = (
        make_scheduler(name, 30, prediction_type="sample", eta=1.0)
        if name == "ddim"
        else make_scheduler(name, 30)
    )
    target = torch.full((B, H, D), 0.8)
    ip = Inpaint.at_steps((B, H, D), {0: torch.zeros(B, D)}, slice(None))

    def dist(x: torch.Tensor) -> float:
        return float((x - target)[:, 1:].pow(2).sum())

    def run(sign: float) -> torch.Tensor:
        guide = ValueGuide(lambda x, t: sign * -(x - target).pow(2).sum((1, 2)), scale=0.5, inpaint=ip)
        with torch.inference_mode():
            return sample(_shrink, s, (B, H, D), inpaint=ip, guide=guide, generator=_gen())

    plain = sample(_shrink, s, (B, H, D), inpaint=ip, generator=_gen())
    toward, away = run(1.0), run(-1.0)
    assert dist(toward) < 0.9 * dist(plain), (dist(toward), dist(plain))
    assert dist(away) > 1.1 * dist(plain), (dist(away), dist(plain))
    assert torch.equal(toward[ip.mask], ip.values[ip.mask])


def test_value_guide_respects_stopgrad_and_std() -> None:
    target = torch.ones(B, H, D)
    guide = ValueGuide(
        lambda x, t: -(x - target).pow(2).sum((1, 2)), scale=1.0, n_guide_steps=1, t_stopgrad=3
    )
    x = torch.zeros(B, H, D)
    std = torch.full((B, 1, 1), 0.5)
    t = torch.tensor([0, 2, 3, 10])
    out = guide(x, t, std)
    assert torch.equal(out[:2], x[:2])  # t < t_stopgrad: unguided
    # one step: grad = -2 (x - target) = 2, times std^2 = 0.25, times scale 1
    assert torch.allclose(out[2:], torch.full((2, H, D), 0.5))
    assert torch.equal(guide(x, t, torch.zeros(B, 1, 1)), x)  # std 0 (step to x0): no guidance
    with pytest.raises(ValueError, match="guidance form"):
        ValueGuide(lambda x, t: x.sum((1, 2)), form="mean")  # type: ignore[arg-type]


@pytest.mark.parametrize("form", ["diffuser", "mean_shift"])
def test_value_guidance_steps_from_the_guided_x_as_diffuser(form: str) -> None:
    """Pins Diffuser's ``n_step_guided_p_sample``: at each step x_t is moved up the value gradient
    (``n_guide_steps`` times, scale * std^2 * grad, zero for t < t_stopgrad, conditions re-inpainted), and the
    denoiser and the step's posterior run on that guided x (``p_mean_variance(x=x_guided)``); the noise is then
    added with the step's std. The ``mean_shift`` form instead adds the displacement to the unguided step's mean.
    Written out by hand here with the loop's noise stream; before the fix the loop did only the latter."""
    torch.manual_seed(0)
    net = MLPDenoiser(H * D, cond_dim=0, hidden=16, depth=1)
    s = make_scheduler("ddpm", 6, prediction_type="epsilon", clip_sample=None)
    target = torch.full((B, H, D), 0.7)

    def value(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -(x - target).pow(2).sum((1, 2))

    ip = Inpaint.at_steps((B, H, D), {0: torch.full((B, D), -0.4)}, slice(None))
    scale, n_guide, stop = 0.3, 2, 2
    guide = ValueGuide(value, scale=scale, n_guide_steps=n_guide, t_stopgrad=stop, inpaint=ip, form=form)
    with torch.no_grad():
        got = sample(net, s, (B, H, D), inpaint=ip, guide=guide, generator=_gen())

        g = _gen()
        x = ip.apply(torch.randn(B, H, D, generator=g))
        for t in s.timesteps.tolist():
            tb = torch.full((B,), t)
            std = s.step_std(t, x)
            xg = x
            for _ in range(n_guide):
                with torch.enable_grad():
                    xr = xg.clone().requires_grad_(True)
                    (grad,) = torch.autograd.grad(value(xr, tb).sum(), xr)
                xg = ip.apply(xg + (scale * std**2 * grad if t >= stop else 0.0))
            if form == "diffuser":
                mean, std = s.step_distribution(net(xg, tb, None), t, xg)
            else:
                mean, std = s.step_distribution(net(x, tb, None), t, x)
                mean = mean + (xg - x)
            x = ip.apply(mean + std * torch.randn(B, H, D, generator=g))
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-6)


def test_classifier_free_weights() -> None:
    torch.manual_seed(0)
    net = MLPDenoiser(H * D, cond_dim=2, hidden=16, depth=1)
    x, t, cond = torch.randn(B, H, D), torch.randint(0, 10, (B,)), torch.randn(B, 2)
    uncond, cond_out = net(x, t, None), net(x, t, cond)
    assert not torch.allclose(uncond, cond_out)
    assert torch.equal(classifier_free(net, 0.0)(x, t, cond), uncond)
    assert torch.equal(classifier_free(net, 1.0)(x, t, cond), cond_out)
    assert torch.allclose(
        classifier_free(net, 2.5)(x, t, cond), uncond + 2.5 * (cond_out - uncond), atol=1e-6
    )
    # plugs into the sampling loop
    s = make_scheduler("ddim", 10)
    a = sample(net, s, (B, H, D), cond=cond, generator=_gen(), model_fn=classifier_free(net, 1.0))
    b = sample(net, s, (B, H, D), cond=cond, generator=_gen())
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- losses
def test_loss_weights() -> None:
    w = loss_weights(5, 4, 2, action_weight=10.0)
    assert w.shape == (5, 4) and w.dtype == torch.float32
    assert torch.equal(w[0, :2], torch.tensor([10.0, 10.0])) and torch.equal(w[0, 2:], torch.ones(2))
    assert torch.equal(w[1:], torch.ones(4, 4))
    w = loss_weights(4, 3, 1, action_weight=2.0, discount=0.5)
    d = torch.tensor([1.0, 0.5, 0.25, 0.125])
    d = d / d.mean()
    assert torch.allclose(w[:, 1:], d[:, None].expand(4, 2)) and torch.allclose(w[1:, 0], d[1:])
    assert float(w[0, 0]) == 2.0


def test_denoising_loss_masks_and_inpaint() -> None:
    x0 = torch.rand(B, H, D, generator=_gen()) * 2 - 1
    s = make_scheduler("ddpm", 10, prediction_type="sample")
    valid = torch.ones(B, H, dtype=torch.bool)
    valid[:, 5:] = False
    ip = Inpaint.at_steps((B, H, D), {0: x0[:, 0, 1:]}, slice(1, None))

    def oracle_except_padding_and_known(x: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        out = x0.clone()
        out[:, 5:] += 100.0  # wrong on padded steps ...
        out[:, 0, 1:] -= 100.0  # ... and on the known entries
        return out

    loss, info = denoising_loss(
        oracle_except_padding_and_known, s, x0, inpaint=ip, mask=valid, generator=_gen()
    )
    assert float(loss) == 0.0 and info["loss"] == 0.0
    loss, _ = denoising_loss(oracle_except_padding_and_known, s, x0, mask=valid, generator=_gen())
    assert float(loss) > 1.0  # without the inpaint exclusion the known entries count
    w = loss_weights(H, D, 1, action_weight=5.0)
    loss, info = denoising_loss(lambda x, t, c: x0 + 1.0, s, x0, weights=w, action_dim=1, generator=_gen())
    assert float(loss) == pytest.approx(float(w.mean())) and info["a0_loss"] == pytest.approx(1.0)


def test_denoising_loss_decreases_when_training() -> None:
    torch.manual_seed(0)
    g = _gen(0)
    # Fixed dataset: noisy straight lines from a random start, so there is structure to learn.
    start = torch.rand(64, 1, D, generator=g) * 2 - 1
    slope = torch.rand(64, 1, D, generator=g) * 0.2 - 0.1
    data = (start + slope * torch.arange(H)[None, :, None]).clamp(-1, 1)
    s = make_scheduler("ddpm", 50, prediction_type="epsilon")
    net = MLPDenoiser(H * D, hidden=64, depth=2)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)

    def eval_loss() -> float:
        with torch.no_grad():
            return sum(float(denoising_loss(net, s, data, generator=_gen(100 + i))[0]) for i in range(8)) / 8

    before = eval_loss()
    for _ in range(200):
        idx = torch.randint(0, 64, (32,), generator=g)
        loss, _ = denoising_loss(net, s, data[idx], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.6 * before, (before, after)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_denoising_loss_target_and_known_inputs(prediction_type: str) -> None:
    """An oracle that inverts the forward process has zero loss; the model sees the known entries clean."""
    x0 = torch.rand(B, H, D, generator=_gen(), dtype=torch.float64) * 2 - 1
    s = make_scheduler("ddpm", 20, prediction_type=prediction_type)
    ip = Inpaint.at_steps((B, H, D), {0: x0[:, 0, 1:]}, slice(1, None))
    seen: list[torch.Tensor] = []

    def oracle(x_t: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        seen.append(x_t)
        if prediction_type == "sample":
            return x0
        a = s.alphas_cumprod[t][:, None, None]
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    loss, _ = denoising_loss(oracle, s, x0, inpaint=ip, generator=_gen(1))
    assert float(loss) < 1e-20
    assert torch.equal(seen[0][ip.mask], x0[ip.mask])  # known entries are given clean ...
    assert not torch.allclose(seen[0][~ip.mask], x0[~ip.mask])  # ... the rest noised
