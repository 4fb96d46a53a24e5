"""diffplan: offline RL and planning with diffusion models."""
__version__ = "0.1.0"
