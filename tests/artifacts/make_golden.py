"""Golden tensors of the diffusion core: fixed-seed samples and training inputs, compared by tests/test_golden.py.

The model is LeRobot's ``tests/artifacts`` + ``test_backward_compatibility``: a refactor of the sampling loop,
the schedulers, guidance, the loss or the denoisers must reproduce these tensors, or say in its commit why the
numbers changed and write them again with::

    python tests/artifacts/make_golden.py          # writes tests/artifacts/diffusion_golden.safetensors

Everything is computed on the CPU with one torch thread from seeded generators and tiny denoisers built under
a fixed ``torch.manual_seed`` (a 2-level TemporalUnet1d of width 8, an MLPDenoiser, a TemporalValueNet for
value guidance), so the file stays a few kilobytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from diffplan.diffusion import (
    DDIMScheduler,
    DDPMScheduler,
    Inpaint,
    NoiseScheduler,
    ValueGuide,
    classifier_free,
    denoising_loss,
    loss_weights,
    noised,
    sample,
)
from diffplan.nets import MLPDenoiser, TemporalUnet1d, TemporalValueNet

GOLDEN_PATH = Path(__file__).resolve().with_name("diffusion_golden.safetensors")

B, H, D, A, C = 2, 8, 4, 2, 3
"""Batch, horizon, transition dim ([actions (A), observations (D - A)]), condition dim."""
T = 20
"""Training diffusion steps of every scheduler."""
K = 5
"""Reverse steps of the strided samplers."""
NET_SEED, SAMPLE_SEED, LOSS_SEED = 0, 1, 2

PREDICTIONS = {"eps": "epsilon", "x0": "sample"}


def denoisers() -> dict[str, nn.Module]:
    """The tiny denoisers, each built right after ``torch.manual_seed(NET_SEED)`` (so each is reproducible alone)."""
    torch.manual_seed(NET_SEED)
    unet = TemporalUnet1d(D, dim=8, dim_mults=(1, 2), cond_dim=C)
    torch.manual_seed(NET_SEED)
    mlp = MLPDenoiser(H * D, cond_dim=C, hidden=32, depth=2, time_dim=8)
    return {"unet": unet.eval(), "mlp": mlp.eval()}


def value_net() -> TemporalValueNet:
    """A tiny fixed-weight value function over noisy trajectories (Diffuser's guide), targets mean 1 / std 2."""
    torch.manual_seed(NET_SEED)
    net = TemporalValueNet(D, H, dim=8, dim_mults=(1, 2))
    net.set_target_stats(torch.tensor([-1.0, 1.0, 3.0]))
    return net.eval()


def schedulers(prediction: str) -> dict[str, NoiseScheduler]:
    """DDPM over all T steps, and DDIM with eta 0 and 1 over K strided steps."""
    ddim0 = DDIMScheduler(T, "cosine", prediction, eta=0.0)  # type: ignore[arg-type]
    ddim1 = DDIMScheduler(T, "cosine", prediction, eta=1.0)  # type: ignore[arg-type]
    ddim0.set_timesteps(K)
    ddim1.set_timesteps(K)
    return {"ddpm": DDPMScheduler(T, "cosine", prediction), "ddim_eta0": ddim0, "ddim_eta1": ddim1}  # type: ignore[arg-type]


def inputs() -> dict[str, torch.Tensor]:
    """Fixed condition, start and goal observations, and a clean batch for the loss."""
    g = torch.Generator().manual_seed(NET_SEED)
    return {
        "cond": torch.randn(B, C, generator=g),
        "start": torch.randn(B, D - A, generator=g).clamp(-1, 1),
        "goal": torch.randn(B, D - A, generator=g).clamp(-1, 1),
        "x0": torch.randn(B, H, D, generator=g).clamp(-1, 1),
        "mask": torch.tensor([[True] * H, [True] * (H - 3) + [False] * 3]),
    }


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def compute() -> dict[str, torch.Tensor]:
    """Every golden tensor by name (contiguous float32 / int64 CPU tensors)."""
    torch.set_num_threads(1)
    nets, value, data = denoisers(), value_net(), inputs()
    shape = (B, H, D)
    inpaint = Inpaint.at_steps(shape, {0: data["start"], -1: data["goal"]}, slice(A, None))
    out: dict[str, torch.Tensor] = {}
    probe_t = torch.tensor([0, T - 1])
    for name, net in nets.items():
        with torch.no_grad():  # the nets alone, to tell a network change from a sampling change
            out[f"net/{name}/cond"] = net(data["x0"], probe_t, data["cond"])
            out[f"net/{name}/uncond"] = net(data["x0"], probe_t, None)
    with torch.no_grad():
        out["net/value"] = value(data["x0"], probe_t)

    for pred_name, prediction in PREDICTIONS.items():
        for sched_name, sched in schedulers(prediction).items():
            for net_name, net in nets.items():
                key = f"sample/{pred_name}/{sched_name}/{net_name}"
                out[key] = sample(net, sched, shape, cond=data["cond"], generator=_gen(SAMPLE_SEED))
            unet = nets["unet"]
            key = f"{pred_name}/{sched_name}/unet"
            out[f"inpaint/{key}"] = sample(
                unet, sched, shape, cond=data["cond"], inpaint=inpaint, generator=_gen(SAMPLE_SEED)
            )
            out[f"cfg/{key}"] = sample(
                unet, sched, shape, cond=data["cond"], model_fn=classifier_free(unet, 1.2),
                generator=_gen(SAMPLE_SEED),
            )
            out[f"cfg_one_call/{key}"] = sample(
                unet, sched, shape, cond=data["cond"], model_fn=classifier_free(unet, 1.2, one_call=True),
                generator=_gen(SAMPLE_SEED),
            )
            # ValueGuide moves x_t by scale * std^2 * grad (Diffuser's form: the step then runs on the guided x;
            # mean_shift: the displacement is added to the step's mean): DDPM and DDIM eta=1 are guided; DDIM
            # eta=0 (std 0) is guided only without the std scaling.
            for form, family in (("diffuser", "value_guided"), ("mean_shift", "value_guided_mean_shift")):
                guide = ValueGuide(value, scale=0.5, n_guide_steps=2, t_stopgrad=1,
                                   scale_grad_by_std=sched_name != "ddim_eta0", inpaint=inpaint, form=form)
                out[f"{family}/{key}"] = sample(
                    unet, sched, shape, cond=data["cond"], inpaint=inpaint, guide=guide,
                    generator=_gen(SAMPLE_SEED),
                )
        ddpm = schedulers(prediction)["ddpm"]
        _, chain = sample(nets["unet"], ddpm, shape, cond=data["cond"], inpaint=inpaint, num_steps=K,
                          generator=_gen(SAMPLE_SEED), return_chain=True)
        out[f"chain/{pred_name}/ddpm_{K}_steps/unet"] = chain

        # Training: the noised inputs and the loss for a fixed generator.
        if pred_name == "eps":  # the noised inputs do not depend on what the model predicts
            out["noised/x_t"], out["noised/t"], out["noised/eps"] = noised(
                ddpm, data["x0"], inpaint=inpaint, generator=_gen(LOSS_SEED)
            )
        weights = loss_weights(H, D, A, action_weight=10.0, discount=0.9)
        for net_name, net in nets.items():
            loss, info = denoising_loss(
                net, ddpm, data["x0"], cond=data["cond"], inpaint=inpaint, weights=weights, mask=data["mask"],
                generator=_gen(LOSS_SEED), action_dim=A,
            )
            out[f"loss/{pred_name}/{net_name}"] = loss.detach()
            out[f"loss/{pred_name}/{net_name}/a0"] = torch.tensor(info["a0_loss"])
            plain, _ = denoising_loss(net, ddpm, data["x0"], generator=_gen(LOSS_SEED))
            out[f"loss/{pred_name}/{net_name}/plain"] = plain.detach()
    return {k: v.detach().contiguous() for k, v in out.items()}


def main() -> int:
    from safetensors.torch import save_file

    tensors = compute()
    save_file(tensors, str(GOLDEN_PATH), metadata={"torch": torch.__version__})
    print(f"wrote {len(tensors)} tensors, {GOLDEN_PATH.stat().st_size} bytes, to {GOLDEN_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
