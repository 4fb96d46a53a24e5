"""Training-batch sources for Tianshou's ``Algorithm.update(buffer, sample_size)``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tianshou.data import Batch


class WindowSampler:
    """Serves trajectory windows of a :class:`~diffplan.data.SequenceDataset` (or samples of any dataset with
    ``sample(n, generator) -> dict`` holding ``indices``, e.g. a :class:`~diffplan.data.TransitionDataset`) to
    ``Algorithm.update``.

    Tianshou's offline update samples ``buffer.sample(n)``; a ``ReplayBuffer`` would have to rebuild H-step
    windows with H python-level ``buffer.next`` calls per batch, while the SequenceDataset gathers them in one
    vectorized index. All randomness comes from ``generator`` so a resumed run draws the same batches.
    """

    def __init__(self, dataset: Any, generator: torch.Generator) -> None:
        self.dataset = dataset
        self.generator = generator

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, batch_size: int) -> tuple[Batch, np.ndarray]:
        data = self.dataset.sample(batch_size, self.generator)
        indices = data.pop("indices")
        return Batch(**data), np.asarray(indices)
