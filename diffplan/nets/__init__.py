"""Networks: Diffuser's temporal U-Net, a 1-D DiT, MLP denoisers, critics."""

from diffplan.nets.critic import TwinQ, ValueNet
from diffplan.nets.dit import DiT1d, DiTBlock
from diffplan.nets.embeddings import SinusoidalPosEmb
from diffplan.nets.mlp import MLP, MLPDenoiser
from diffplan.nets.temporal_unet import Conv1dBlock, ResidualTemporalBlock, TemporalUnet1d
from diffplan.nets.value import TemporalValueNet

__all__ = [
    "MLP",
    "Conv1dBlock",
    "DiT1d",
    "DiTBlock",
    "MLPDenoiser",
    "ResidualTemporalBlock",
    "SinusoidalPosEmb",
    "TemporalUnet1d",
    "TemporalValueNet",
    "TwinQ",
    "ValueNet",
]
