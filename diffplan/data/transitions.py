"""Single-step transitions (with an optional observation history and action chunk) for policies and critics.

Where :class:`~diffplan.data.sequences.SequenceDataset` serves whole trajectory windows for trajectory
diffusion, this serves what action-level agents need per sampled step t:

* ``obs`` (B, K, O): the K most recent observations ``s_{t-K+1..t}``; before an episode's first step the first
  observation is repeated (Diffusion Policy's observation padding);
* ``act`` (B, C, A): the action chunk ``a_{t..t+C-1}``; past the episode end the raw zero action ("no force",
  as in SequenceDataset's padding) and ``mask`` False;
* ``rew`` (B,), ``next_obs`` (B, O), ``done`` (B,) float (1 at terminal steps: no bootstrapping; time-outs and
  goal changes are not terminal), ``goal`` (B, G) for goal data;

all normalized except rewards. Everything is preloaded as tensors, and a batch is one vectorized gather.
"""

from __future__ import annotations

import numpy as np
import torch

from diffplan.data.episodes import Episodes
from diffplan.data.normalizer import Normalizer

__all__ = ["TransitionDataset"]


class TransitionDataset:
    """Normalized transitions over :class:`Episodes`; see the module docstring for the batch layout.

    Args:
        episodes: the dataset.
        obs_normalizer / act_normalizer: fitted normalizers of observations (O) and actions (A).
        goal_normalizer: fitted normalizer of goals (G), or None to serve goals raw.
        history: K, observations per sample (1: the current one only).
        chunk: C, actions per sample (1: the current action only).
        device: where the preloaded tensors live and batches are returned.
    """

    def __init__(
        self,
        episodes: Episodes,
        obs_normalizer: Normalizer,
        act_normalizer: Normalizer,
        goal_normalizer: Normalizer | None = None,
        *,
        history: int = 1,
        chunk: int = 1,
        device: str | torch.device = "cpu",
    ) -> None:
        if history < 1 or chunk < 1:
            raise ValueError(f"history and chunk must be >= 1, got history={history}, chunk={chunk}")
        self.history, self.chunk = int(history), int(chunk)
        self.device = torch.device(device)

        def tensor(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.asarray(x, dtype=np.float32)).to(self.device)

        self.obs = tensor(obs_normalizer.normalize(episodes.obs))  # (N, O)
        self.next_obs = tensor(obs_normalizer.normalize(episodes.next_obs))  # (N, O)
        self.act = tensor(act_normalizer.normalize(episodes.act))  # (N, A)
        self.rew = tensor(episodes.rew)  # (N,)
        self.done = tensor(episodes.terminal.astype(np.float32))  # (N,)
        self.goal: torch.Tensor | None = None
        if episodes.goal is not None:
            goal = episodes.goal if goal_normalizer is None else goal_normalizer.normalize(episodes.goal)
            self.goal = tensor(goal)  # (N, G)
        self.pad_action = tensor(act_normalizer.normalize(np.zeros((1, episodes.act_dim), np.float32)))[0]
        episode = np.repeat(np.arange(episodes.num_episodes), episodes.lengths)
        self.first = torch.from_numpy(episodes.starts[episode]).to(self.device)  # (N,) episode's first step
        self.last = torch.from_numpy((episodes.starts + episodes.lengths - 1)[episode]).to(self.device)  # (N,)
        self._back = torch.arange(self.history - 1, -1, -1, device=self.device)  # (K,) K-1 .. 0
        self._ahead = torch.arange(self.chunk, device=self.device)  # (C,)

    def __len__(self) -> int:
        """Number of steps N (every step is a sample)."""
        return len(self.rew)

    def get(self, ids: torch.Tensor | np.ndarray | list[int]) -> dict[str, torch.Tensor]:
        """Samples at flat step indices (B,); keys and shapes as in the module docstring, plus ``indices``."""
        t = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        past = torch.maximum(t[:, None] - self._back, self.first[t][:, None])  # (B, K)
        ahead = t[:, None] + self._ahead  # (B, C)
        mask = ahead <= self.last[t][:, None]
        act = torch.where(mask[..., None], self.act[torch.minimum(ahead, self.last[t][:, None])], self.pad_action)
        batch = {
            "obs": self.obs[past],
            "act": act,
            "mask": mask,
            "rew": self.rew[t],
            "next_obs": self.next_obs[t],
            "done": self.done[t],
            "indices": t,
        }
        if self.goal is not None:
            batch["goal"] = self.goal[t]
        return batch

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``batch_size`` steps drawn uniformly with replacement (ids drawn on the CPU ``generator``)."""
        return self.get(torch.randint(len(self), (batch_size,), generator=generator))

    def __repr__(self) -> str:
        return (
            f"TransitionDataset(steps={len(self)}, history={self.history}, chunk={self.chunk}, "
            f"goals={self.goal is not None}, device={self.device})"
        )
