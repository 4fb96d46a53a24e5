"""Plan latency of jannerm/diffuser's planner code beside ours, in one process on this CPU (a benchmark, not a test).

    git clone https://github.com/jannerm/diffuser /tmp/jannerm-diffuser   # its models/ and sampling/ only
    pip install einops
    OMP_NUM_THREADS=1 python benchmarks/fastgen/time_vs_jannerm.py /tmp/jannerm-diffuser \\
        --out benchmarks/fastgen/timing_vs_jannerm.json

Both run untrained networks of the published sizes on synthetic inputs (latency does not depend on the weights),
without either side's environment stack; jannerm/diffuser's package is imported with a stub for its
``diffuser.utils`` (which pulls in rendering and D4RL) offering only the progress bar and ``to_np`` the model
code calls. Settings:

* hopper (locomotion config): horizon 32, T = 20, dim 32, dim_mults (1, 2, 4, 8), 64 candidates, value
  guidance with 2 gradient steps per denoising step (scale 0.1, t_stopgrad 2): one decision.
* maze2d-large (maze2d config): horizon 384, T = 256, dim 32, dim_mults (1, 4, 8), batch 1: one plan.

Ours: the same networks (TemporalUnet1d with Mish as theirs, TemporalValueNet) through ``diffplan.diffusion.sample``
at the same settings, then with the fast samplers. The hopper rows are latency only: no trained hopper model
was scored with them here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch


def _stub_utils(src: Path) -> None:
    """``diffuser`` and ``diffuser.sampling`` as bare packages (their ``__init__`` imports gym, D4RL and the
    renderers) and ``diffuser.utils`` replaced by what the model code uses."""
    for name, path in (("diffuser", src / "diffuser"), ("diffuser.sampling", src / "diffuser" / "sampling")):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]  # type: ignore[attr-defined]
        sys.modules[name] = package
    utils = types.ModuleType("diffuser.utils")

    class Silent:
        def __getattr__(self, _: str):
            return lambda *a, **k: None

    utils.Progress = lambda *a, **k: Silent()  # type: ignore[attr-defined]
    utils.Silent = Silent  # type: ignore[attr-defined]
    utils.to_np = lambda x: x.detach().cpu().numpy()  # type: ignore[attr-defined]
    sys.modules["diffuser.utils"] = utils


def _time(fn, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _per_call(call, repeats: int = 20) -> float:
    """Median ms of one network call ``call()`` (no autograd)."""
    with torch.no_grad():
        return float(np.median(_time(call, repeats)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("diffuser_src", help="a checkout of github.com/jannerm/diffuser")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    _stub_utils(Path(args.diffuser_src).resolve())
    import importlib

    jd_models = importlib.import_module("diffuser.models")
    jd_functions = importlib.import_module("diffuser.sampling.functions")
    jd_guides = importlib.import_module("diffuser.sampling.guides")

    from diffplan.diffusion import ValueGuide, make_scheduler, sample
    from diffplan.diffusion.sampling import Inpaint
    from diffplan.nets import TemporalUnet1d, TemporalValueNet

    cases: list[tuple[str, str, object, float, int]] = []

    def add(impl: str, setting: str, fn, call_ms: float, repeats: int) -> None:
        """Register a case; they are timed together below."""
        cases.append((impl, setting, fn, call_ms, repeats))

    # Each setting in its own function, so the timed closures keep their own sizes and networks.
    def hopper_cases() -> None:
        # ------------------------------------------------------------------------------------------- hopper
        A, O, H, T, B = 3, 11, 32, 20, 64
        D = A + O
        unet = jd_models.TemporalUnet(H, D, O, dim=32, dim_mults=(1, 2, 4, 8)).eval()
        vf = jd_models.ValueFunction(H, D, O, dim=32, dim_mults=(1, 2, 4, 8), out_dim=1).eval()
        diffusion = jd_models.GaussianDiffusion(unet, H, O, A, n_timesteps=T, predict_epsilon=False, clip_denoised=False)
        guide = jd_guides.ValueGuide(vf)
        cond = {0: torch.randn(B, O)}
        x, t0 = torch.randn(B, H, D), torch.zeros(B, dtype=torch.long)
        call = _per_call(lambda: unet(x, cond, t0))  # theirs: forward(x, cond, time)

        def jd_hopper() -> None:
            diffusion.conditional_sample(
                cond, verbose=False, sample_fn=jd_functions.n_step_guided_p_sample, guide=guide, scale=0.1,
                t_stopgrad=2, n_guide_steps=2, scale_grad_by_std=True,
            )

        add("jannerm/diffuser", "hopper: ddpm T=20, 64 candidates, 2 guide steps", jd_hopper, call, args.repeats)

        ours = TemporalUnet1d(D, dim=32, dim_mults=(1, 2, 4, 8), activation="mish").eval()
        value = TemporalValueNet(D, H, dim=32, dim_mults=(1, 2, 4, 8), activation="mish").eval()

        def ours_hopper(sampler: str, steps: int | None, n: int, scaled: bool, start: int = 0) -> None:
            sched = make_scheduler(sampler, T, prediction_type="sample", clip_sample=None)
            sched.set_timesteps(steps)
            mask = torch.zeros(n, H, D, dtype=torch.bool)
            mask[:, 0, A:] = True
            ip = Inpaint(mask, torch.randn(n, H, D))
            g = ValueGuide(value, 0.1, 2, 2, scaled, inpaint=ip)
            kw = {"start_from": torch.zeros(n, H, D), "start_index": start} if start else {}
            with torch.inference_mode():
                sample(ours, sched, (n, H, D), inpaint=ip, guide=g, **kw)

        call = _per_call(lambda: ours(x, t0))
        add("diffplan", "hopper: ddpm T=20, 64 candidates, 2 guide steps (same settings)",
            lambda: ours_hopper("ddpm", None, 64, True), call, args.repeats)
        add("diffplan", "hopper: dpmsolver++ 5 steps, 64 candidates, 2 guide steps",
            lambda: ours_hopper("dpmsolver++", 5, 64, False), call, args.repeats)
        call8 = _per_call(lambda: ours(x[:8], t0[:8]))
        add("diffplan", "hopper: dpmsolver++ 3 steps, 8 candidates, 2 guide steps",
            lambda: ours_hopper("dpmsolver++", 3, 8, False), call8, args.repeats)
        add("diffplan", "hopper: dpmsolver++ 5 steps warm-started (last 1 step), 8 candidates, 2 guide steps",
            lambda: ours_hopper("dpmsolver++", 5, 8, False, start=4), call8, args.repeats)

    def maze_cases() -> None:
        # ------------------------------------------------------------------------------------- maze2d-large
        A, O, H, T = 2, 4, 384, 256
        D = A + O
        maze_unet = jd_models.TemporalUnet(H, D, O, dim=32, dim_mults=(1, 4, 8)).eval()
        maze_diffusion = jd_models.GaussianDiffusion(maze_unet, H, O, A, n_timesteps=T, predict_epsilon=False, clip_denoised=True)
        maze_cond = {0: torch.randn(1, O), H - 1: torch.randn(1, O)}
        mx, mt0 = torch.randn(1, H, D), torch.zeros(1, dtype=torch.long)
        call = _per_call(lambda: maze_unet(mx, maze_cond, mt0))
        add("jannerm/diffuser", "maze2d-large: ddpm T=256, batch 1",
            lambda: maze_diffusion.conditional_sample(maze_cond, verbose=False), call, max(3, args.repeats // 3))

        maze_net = TemporalUnet1d(D, dim=32, dim_mults=(1, 4, 8), activation="mish").eval()
        call = _per_call(lambda: maze_net(mx, mt0))
        mask = torch.zeros(1, H, D, dtype=torch.bool)
        mask[:, [0, -1], A:] = True
        ip = Inpaint(mask, torch.randn(1, H, D))

        def ours_maze(sampler: str, steps: int | None) -> None:
            sched = make_scheduler(sampler, T, prediction_type="sample")
            sched.set_timesteps(steps)
            with torch.inference_mode():
                sample(maze_net, sched, (1, H, D), inpaint=ip)

        add("diffplan", "maze2d-large: ddpm T=256, batch 1 (same settings)",
            lambda: ours_maze("ddpm", None), call, max(3, args.repeats // 3))
        for sampler, steps in (("ddim", 10), ("dpmsolver++", 5), ("dpmsolver++", 3)):
            add("diffplan", f"maze2d-large: {sampler} {steps} steps, batch 1",
                lambda s=sampler, k=steps: ours_maze(s, k), call, args.repeats)

    hopper_cases()
    maze_cases()

    # Round robin (after one warm-up call each): the machine's load drifts, and interleaving gives every case
    # the same share of it, so the two implementations are compared under the same conditions.
    for _, _, fn, _, _ in cases:
        fn()  # type: ignore[operator]
    times: list[list[float]] = [[] for _ in cases]
    for i in range(max(c[4] for c in cases)):
        for j, (_, _, fn, _, repeats) in enumerate(cases):
            if i < repeats:
                t0 = time.perf_counter()
                fn()  # type: ignore[operator]
                times[j].append((time.perf_counter() - t0) * 1000)
    rows = []
    for (impl, setting, _, call_ms, _), ms in zip(cases, times, strict=True):
        rows.append({"impl": impl, "setting": setting, "model_call_ms": call_ms,
                     "plan_ms_median": float(np.median(ms)), "plan_ms_p95": float(np.percentile(ms, 95)),
                     "repeats": len(ms)})
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "benchmark": "fastgen-timing",
        "command": "OMP_NUM_THREADS=1 python benchmarks/fastgen/time_vs_jannerm.py <jannerm/diffuser checkout>"
                   f" --repeats {args.repeats}" + (f" --out {args.out}" if args.out else ""),
        "description": (
            "Untrained networks of the published sizes on synthetic tensors, one process, 1 torch thread, the "
            "cases timed round robin, batch as stated; hopper = one value-guided decision (64 candidates in the paper's setting), maze2d-large = "
            "one plan. jannerm/diffuser's TemporalUnet / GaussianDiffusion / n_step_guided_p_sample beside "
            "diffplan's TemporalUnet1d (Mish) / sample. Latency only: the fast rows' scores are not measured here."
        ),
        "rows": rows,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()}-core CPU, torch {torch.__version__}, 1 torch thread(s)",
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
