"""Networks: Diffuser's temporal U-Net, MLP denoisers, critics."""

from diffplan.nets.critic import TwinQ, ValueNet
from diffplan.nets.embeddings import SinusoidalPosEmb
from diffplan.nets.mlp import MLP, MLPDenoiser
from diffplan.nets.temporal_unet import Conv1dBlock, ResidualTemporalBlock, TemporalUnet1d
from diffplan.nets.value import TemporalValueNet

__all__ = [
    "MLP",
    "Conv1dBlock",
    "MLPDenoiser",
    "ResidualTemporalBlock",
    "SinusoidalPosEmb",
    "TemporalUnet1d",
    "TemporalValueNet",
    "TwinQ",
    "ValueNet",
]
