"""Fast samplers behind the one sampling loop: DPM-Solver++ 2M, flow matching (Euler, Heun), warm starts.

Oracles: for Gaussian data x0 ~ N(mu, s0^2 I) the exact x0-prediction E[x0 | x_t] is known in closed form,
and so is the ODE's map from the starting noise to the data (it keeps the standardized value:
x0 = mu + s0 * z / std(x_start) for diffusion, x0 = mu + s0 * x_1 for the flow's straight path). Each solver
is checked against that map, and the second-order ones against their first-order counterparts.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from diffplan.diffusion import (
    SCHEDULERS,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerScheduler,
    FlowMatchHeunScheduler,
    Inpaint,
    NoiseScheduler,
    ValueGuide,
    classifier_free,
    denoising_loss,
    make_scheduler,
    sample,
)
from diffplan.nets import MLPDenoiser

B, H, D = 64, 4, 2
MU, S0 = 0.3, 0.5
T = 200


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gaussian_x0_oracle(scheduler: NoiseScheduler):
    """The exact E[x0 | x_t] for x0 ~ N(MU, S0^2), as an x0-predicting denoiser for ``scheduler``."""

    def denoiser(x: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        if isinstance(scheduler, FlowMatchEulerScheduler):
            s = ((t.double() + 1) / scheduler.num_train_steps)[:, None, None]
            a, sig = 1.0 - s, s  # x_s = a x0 + sig eps
        else:
            a_bar = scheduler.alphas_cumprod[t][:, None, None]
            a, sig = a_bar.sqrt(), (1 - a_bar).sqrt()
        gain = a * S0**2 / (a**2 * S0**2 + sig**2)
        return (MU + gain * (x.double() - a * MU)).to(x.dtype)

    return denoiser


def _exact_map(scheduler: NoiseScheduler, x_start: torch.Tensor) -> torch.Tensor:
    """Where the ODE takes x_start (at the first timestep) for Gaussian data: the same standardized value."""
    t0 = int(scheduler.timesteps[0])
    if isinstance(scheduler, FlowMatchEulerScheduler):
        s = (t0 + 1) / scheduler.num_train_steps
        a, sig = 1.0 - s, s
    else:
        a_bar = float(scheduler.alphas_cumprod[t0])
        a, sig = a_bar**0.5, (1 - a_bar) ** 0.5
    return MU + S0 * (x_start - a * MU) / (a**2 * S0**2 + sig**2) ** 0.5


def _solve(name: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(result, exact ODE result) of ``name`` over ``steps`` solver steps from the same float64 noise."""
    s = make_scheduler(name, T, prediction_type="sample", clip_sample=None)
    s.set_timesteps(steps)
    x = sample(_gaussian_x0_oracle(s), s, (B, H, D), generator=_gen(), device="cpu").double()
    z = torch.randn(B, H, D, generator=_gen())  # the loop's first draw
    return x, _exact_map(s, z.double())


def _err(name: str, steps: int) -> float:
    x, exact = _solve(name, steps)
    return float((x - exact).abs().max())


# ---------------------------------------------------------------------------------------------- solvers
def test_dpm_solver_converges_to_the_exact_ode_map_and_beats_ddim() -> None:
    errs = {k: _err("dpmsolver++", k) for k in (5, 20, 100)}
    assert errs[100] < 2e-3, errs
    assert errs[100] < errs[20] < errs[5], errs
    # second order: at equal model calls it is far closer than DDIM (first order) on the same problem
    assert errs[20] < 0.5 * _err("ddim", 20), (errs[20], _err("ddim", 20))


def test_dpm_solver_many_steps_approaches_ddim_all_steps() -> None:
    """Both solve the same probability-flow ODE: DDIM closes in on DPM-Solver++'s 100-step result as its step
    count grows (at first order: the gap halves when the steps double)."""
    x_dpm, _ = _solve("dpmsolver++", 100)
    gaps = [float((_solve("ddim", k)[0] - x_dpm).abs().max()) for k in (25, 50, 100, T)]
    assert all(0.4 < b / a < 0.6 for a, b in itertools.pairwise(gaps)), gaps
    assert gaps[-1] < 0.02, gaps


def test_dpm_solver_first_order_is_ddim_and_is_exact_for_a_constant_x0() -> None:
    """With a constant x0 prediction the second-order correction vanishes: the result is DDIM's, step by step."""
    target = torch.linspace(-0.8, 0.8, H * D).reshape(1, H, D).expand(B, H, D)
    dpm = DPMSolverMultistepScheduler(T, prediction_type="sample")
    dpm.set_timesteps(6)
    ddim = DDIMScheduler(T, prediction_type="sample")
    ddim.set_timesteps(T)
    x = torch.randn(B, H, D, generator=_gen(1))
    for t in dpm.timesteps.tolist():
        mean, std = dpm.step_distribution(target, t, x)
        prev = dpm.prev_timestep(t)
        # DDIM's step t -> prev from the same x, written with its all-steps tables
        a, a_prev = ddim.alphas_cumprod[t], (ddim.alphas_cumprod[prev] if prev >= 0 else torch.tensor(1.0))
        c_xt = ((1 - a_prev) / (1 - a)).sqrt()
        expect = (a_prev.sqrt() - c_xt * a.sqrt()) * target + c_xt * x
        assert torch.allclose(mean, expect.float(), atol=1e-5) and float(std.max()) == 0.0
        x = mean
    assert torch.allclose(x, target, atol=1e-6)


def test_dpm_solver_timesteps_skip_t0_and_refuse_mixed_rows() -> None:
    s = DPMSolverMultistepScheduler(100)
    s.set_timesteps(4)
    assert s.timesteps.tolist() == [99, 74, 50, 25] and s.prev_timestep(25) == -1
    x = torch.zeros(2, H, D)
    with pytest.raises(ValueError, match="one timestep"):
        s.step_distribution(x, torch.tensor([99, 74]), x)


def test_flow_euler_is_exact_on_a_straight_field_and_heun_beats_euler() -> None:
    # a point mass: the flow's velocity (x - c) / s is linear in x and every path straight, so one Euler
    # step is already exact
    c = torch.full((B, H, D), 0.25)
    s = FlowMatchEulerScheduler(T, prediction_type="velocity", clip_sample=None)
    for k in (1, 3):
        s.set_timesteps(k)
        x = sample(lambda x, t, _: (x - c) / ((t.float() + 1) / T)[:, None, None], s, (B, H, D), generator=_gen())
        assert torch.allclose(x, c, atol=1e-6)
    # Gaussian data: curved paths; Euler converges at first order, Heun faster at equal model calls
    euler = {k: _err("euler", k) for k in (4, 16, 64)}
    assert euler[64] < euler[16] < euler[4], euler
    assert euler[64] < 0.06, euler
    heun_8 = _err("heun", 8)  # 15 model calls
    assert heun_8 < 0.5 * euler[16], (heun_8, euler[16])


def test_heun_timesteps_list_each_model_call() -> None:
    s = FlowMatchHeunScheduler(50)
    s.set_timesteps(3)
    assert s.num_steps == 3 and s.solver_timesteps.tolist() == [49, 24, 0]
    assert s.timesteps.tolist() == [49, 24, 24, 0, 0] and s.model_calls == 5
    calls = []
    sample(lambda x, t, _: calls.append(int(t[0])) or torch.zeros_like(x), s, (2, H, D), generator=_gen())
    assert calls == [49, 24, 24, 0, 0]
    # sample(num_steps=...) restores the solver steps, not the model calls
    sample(lambda x, t, _: torch.zeros_like(x), s, (2, H, D), num_steps=2, generator=_gen())
    assert s.num_steps == 3 and s.model_calls == 5


def test_flow_add_noise_target_and_predictions_are_consistent() -> None:
    g = _gen(2)
    x0, eps = torch.rand(B, H, D, generator=g, dtype=torch.float64), torch.randn(B, H, D, generator=g, dtype=torch.float64)
    t = torch.randint(0, T, (B,), generator=g)
    for pt in ("velocity", "sample"):
        s = FlowMatchEulerScheduler(T, prediction_type=pt, clip_sample=None)
        x_t = s.add_noise(x0, eps, t)
        sig = ((t.double() + 1) / T)[:, None, None]
        assert torch.allclose(x_t, (1 - sig) * x0 + sig * eps)
        out = s.training_target(x0, eps)
        assert torch.allclose(out, eps - x0 if pt == "velocity" else x0)
        assert torch.allclose(s.predict_x0(out, t, x_t), x0)
        assert torch.allclose(s.predict_eps(out, t, x_t), eps)
    with pytest.raises(ValueError, match="prediction_type"):
        FlowMatchEulerScheduler(T, prediction_type="epsilon")


def test_flow_matching_loss_trains_a_denoiser() -> None:
    torch.manual_seed(0)
    s = FlowMatchEulerScheduler(20, prediction_type="velocity")
    net = MLPDenoiser(H * D, hidden=64, depth=2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x0 = torch.linspace(-0.5, 0.5, H * D).reshape(1, H, D).expand(32, H, D)
    losses = []
    for i in range(150):
        loss, _ = denoising_loss(net, s, x0, generator=_gen(i))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    s.set_timesteps(5)
    x = sample(net, s, (8, H, D), generator=_gen())
    assert float((x - x0[:8]).abs().mean()) < 0.15


# ------------------------------------------------------------------------------- guidance and inpainting
ODE = ["dpmsolver++", "euler", "heun"]


@pytest.mark.parametrize("name", ODE)
def test_inpainting_and_value_guidance_with_each_solver(name: str) -> None:
    s = make_scheduler(name, 30, prediction_type="sample")
    s.set_timesteps(5)
    target = torch.full((8, H, D), 0.8)
    ip = Inpaint.at_steps((8, H, D), {0: torch.full((8, D), -0.3)}, slice(None))

    def shrink(x: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        return 0.5 * x

    def dist(x: torch.Tensor) -> float:
        return float((x - target)[:, 1:].pow(2).sum())

    def run(sign: float) -> torch.Tensor:
        # the solvers' steps have std 0: guide without the std scaling. Diffuser's form (the step runs on the
        # guided x) moves a shrinking denoiser's result less than a mean shift, hence scale 0.1. Heun guides
        # only its predictor calls: guiding the corrector's trial point alone pushed the result the wrong way.
        guide = ValueGuide(
            lambda x, t: sign * -(x - target).pow(2).sum((1, 2)), scale=0.1, t_stopgrad=0,
            scale_grad_by_std=False, inpaint=ip,
        )
        return sample(shrink, s, (8, H, D), inpaint=ip, guide=guide, generator=_gen())

    plain = sample(shrink, s, (8, H, D), inpaint=ip, generator=_gen())
    toward, away = run(1.0), run(-1.0)
    assert dist(toward) < 0.9 * dist(plain) and dist(away) > 1.1 * dist(plain)
    for x in (plain, toward, away):
        assert torch.equal(x[ip.mask], ip.values[ip.mask])


@pytest.mark.parametrize("name", ODE)
def test_classifier_free_guidance_with_each_solver(name: str) -> None:
    """Oracle x0-denoisers for two point masses: guidance weight w lands on uncond + w (cond - uncond)."""
    a, b = torch.full((B, H, D), 0.4), torch.full((B, H, D), -0.2)

    def denoiser(x: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        return a if cond is not None else b

    s = make_scheduler(name, 30, prediction_type="sample", clip_sample=None)
    s.set_timesteps(4)
    for w in (0.0, 1.0, 2.5):
        x = sample(denoiser, s, (B, H, D), cond=torch.ones(B, 1), model_fn=classifier_free(denoiser, w),
                   generator=_gen())
        assert torch.allclose(x, b + w * (a - b), atol=1e-5), (name, w)


# ------------------------------------------------------------------------------------------- warm start
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_warm_start_runs_only_the_remaining_calls_and_keeps_inpainting(name: str) -> None:
    s = make_scheduler(name, 40, prediction_type="sample")
    s.set_timesteps(8 if s.strided else None)
    target = torch.full((2, H, D), 0.5)
    ip = Inpaint.at_steps((2, H, D), {0: torch.full((2, D), -0.7)}, slice(None))
    calls: list[int] = []

    def oracle(x: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        calls.append(int(t[0]))
        return target

    skip = s.num_steps - 3
    x = sample(oracle, s, (2, H, D), inpaint=ip, start_from=torch.zeros(2, H, D), start_index=skip,
               generator=_gen())
    assert calls == s.timesteps.tolist()[s.call_index(skip):]
    assert len(calls) == (5 if name == "heun" else 3)  # Heun: two calls per step but the last
    assert torch.equal(x[ip.mask], ip.values[ip.mask])
    assert torch.allclose(x[~ip.mask], target[~ip.mask], atol=1e-5)
    with pytest.raises(ValueError, match="start_index"):
        sample(oracle, s, (2, H, D), start_index=1)


def test_objective_and_sampler_config() -> None:
    from diffplan.agent import DiffusionAgentConfig
    from diffplan.config import ConfigError

    for sampler, objective in (("euler", "diffusion"), ("dpmsolver++", "flow"), ("rk4", "diffusion")):
        with pytest.raises(ConfigError, match="sampler"):
            DiffusionAgentConfig(sampler=sampler, objective=objective).validate()
    with pytest.raises(ConfigError, match="objective"):
        DiffusionAgentConfig(objective="score").validate()
    for name, cls in SCHEDULERS.items():
        DiffusionAgentConfig(sampler=name, objective=cls.objective).validate()
