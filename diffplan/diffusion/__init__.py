"""Algorithm-agnostic diffusion core: noise schedules, DDPM/DDIM/DPM-Solver++ and flow-matching schedulers, the sampling loop, guidance, losses."""

from diffplan.diffusion.guidance import GUIDANCE_FORMS, GuidanceForm, Guide, ValueGuide, classifier_free
from diffplan.diffusion.losses import denoising_loss, loss_weights, noised
from diffplan.diffusion.sampling import Denoiser, Inpaint, sample, step_log_prob
from diffplan.diffusion.schedulers import (
    SCHEDULERS,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerScheduler,
    FlowMatchHeunScheduler,
    NoiseScheduler,
    PredictionType,
    log_prob,
    make_scheduler,
    randn_tensor,
)
from diffplan.diffusion.schedules import (
    BETA_SCHEDULES,
    cosine_beta_schedule,
    linear_beta_schedule,
    make_betas,
    vp_beta_schedule,
)

__all__ = [
    "BETA_SCHEDULES",
    "GUIDANCE_FORMS",
    "SCHEDULERS",
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "Denoiser",
    "FlowMatchEulerScheduler",
    "FlowMatchHeunScheduler",
    "GuidanceForm",
    "Guide",
    "Inpaint",
    "NoiseScheduler",
    "PredictionType",
    "ValueGuide",
    "classifier_free",
    "cosine_beta_schedule",
    "denoising_loss",
    "linear_beta_schedule",
    "log_prob",
    "loss_weights",
    "make_betas",
    "make_scheduler",
    "noised",
    "randn_tensor",
    "sample",
    "step_log_prob",
    "vp_beta_schedule",
]
