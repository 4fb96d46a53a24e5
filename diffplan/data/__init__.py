"""Data layer: load any source into validated Episodes, normalize, and serve H-step windows."""

from diffplan.data.batches import WindowSampler
from diffplan.data.d4rl_refs import D4RL_REF_SCORES, d4rl_ref_scores
from diffplan.data.episodes import DatasetError, Episodes
from diffplan.data.normalizer import (
    NORMALIZERS,
    CDFNormalizer,
    GaussianNormalizer,
    LimitsNormalizer,
    Normalizer,
    NormalizerModule,
    make_normalizer,
)
from diffplan.data.sequences import SequenceDataset, discounted_returns_to_go
from diffplan.data.sources import load_d4rl, load_episodes, load_minari, minari_root
from diffplan.data.spaces import observation_arrays, split_observation_space
from diffplan.data.transitions import TransitionDataset

__all__ = [
    "D4RL_REF_SCORES",
    "NORMALIZERS",
    "CDFNormalizer",
    "DatasetError",
    "Episodes",
    "GaussianNormalizer",
    "LimitsNormalizer",
    "Normalizer",
    "NormalizerModule",
    "SequenceDataset",
    "TransitionDataset",
    "WindowSampler",
    "d4rl_ref_scores",
    "discounted_returns_to_go",
    "load_d4rl",
    "load_episodes",
    "load_minari",
    "make_normalizer",
    "minari_root",
    "observation_arrays",
    "split_observation_space",
]
