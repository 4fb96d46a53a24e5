"""H-step trajectory windows over :class:`~diffplan.data.episodes.Episodes` for trajectory diffusion.

All data is preloaded once as tensors on ``device``; a batch is one vectorized gather, so sampling cost is
independent of the dataset size and has no per-sample Python loop.
"""

from __future__ import annotations

import numpy as np
import torch

from diffplan.data.episodes import DatasetError, Episodes
from diffplan.data.normalizer import Normalizer


def discounted_returns_to_go(rew: np.ndarray, lengths: np.ndarray, discount: float) -> np.ndarray:
    """Per-step discounted return-to-go inside each episode, (N,) float64.

    ``rtg[t] = sum_{k=t}^{end} discount**(k-t) * rew[k]``, restarting at every episode end. Computed with a
    parallel (doubling) scan of the linear recurrence ``y[i] = r[i] + c[i] * y[i+1]`` where ``c`` is 0 at
    episode ends: ceil(log2(max episode length)) vectorized passes, no Python loop over steps or episodes,
    and no division by ``discount**t`` (which underflows on long episodes).
    """
    if not 0.0 <= discount <= 1.0:
        raise ValueError(f"discount must be in [0, 1], got {discount}")
    a = rew.astype(np.float64).copy()
    b = np.full(len(a), discount, dtype=np.float64)
    b[np.cumsum(lengths) - 1] = 0.0  # never carry value across an episode boundary
    # Invariant after each pass: y[i] = a[i] + b[i] * y[i + d]  (y beyond the array is 0).
    d = 1
    while d < len(a) and b.any():
        a[:-d] = a[:-d] + b[:-d] * a[d:]
        b[:-d] = b[:-d] * b[d:]
        b[-d:] = 0.0
        d *= 2
    return a


class SequenceDataset:
    """Normalized H-step windows ``[actions, observations]`` with masks, returns-to-go and goals.

    Layout: one tensor ``data`` (N, A + O) = ``[act_norm, obs_norm]`` per step. A window is identified by its
    flat start index and the flat index of its episode's last step; a window's steps are
    ``min(start + arange(H), last)``, which both keeps it inside its episode and implements padding.

    Windows:
      * ``use_padding=False``: every start with ``start + H <= episode end``; episodes shorter than H are
        skipped, and windows never cross an episode boundary.
      * ``use_padding=True``: every step of every episode starts a window; steps past the episode end
        (at most H - 1) repeat the episode's last observation with a zero action (raw zero, normalized with
        ``act_normalizer``: "no force", which fits a state that stays put) and ``mask`` is False there.
      * ``front_padding=k``: also k windows per episode that start 1..k steps *before* its first step; those
        steps repeat the episode's first observation with the zero action, ``mask`` False. A model whose
        window begins with k history steps then sees the episode's first k states in its current-state slot,
        as it will at the start of every test episode (the Decision Diffuser's history).

    Args:
        episodes: the dataset.
        horizon: H, steps per window.
        obs_normalizer / act_normalizer: fitted normalizers for observations (O) and actions (A).
        use_padding: see above.
        discount: for ``returns`` (discounted return-to-go from the window start).
        termination_penalty: added to the reward of terminal steps for ``returns`` only (Diffuser and Decision
            Diffuser use -100 on locomotion, so falling over is worth less than any surviving trajectory).
        returns_offset: ``returns`` is the return-to-go from this step of the window (clamped to the episode's
            first and last steps), e.g. the current step of a window whose first steps are history.
        front_padding: see above (0: every window starts inside its episode).
        stride: keep every ``stride``-th step of a real window: window step h is env step ``start + h * stride``
            (a jumpy window spanning ``(H - 1) * stride + 1`` env steps, as a hierarchical planner's high level
            sees it). Padding, masks and windows without padding follow the span: without padding the whole
            span must lie in the episode; with padding, steps past the episode end repeat its last observation.
        device: where the preloaded tensors live and batches are returned.
    """

    def __init__(
        self,
        episodes: Episodes,
        horizon: int,
        obs_normalizer: Normalizer,
        act_normalizer: Normalizer,
        *,
        use_padding: bool = True,
        discount: float = 0.99,
        termination_penalty: float = 0.0,
        returns_offset: int = 0,
        front_padding: int = 0,
        stride: int = 1,
        device: str | torch.device = "cpu",
    ) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = int(stride)
        self.episodes = episodes
        self.horizon = int(horizon)
        self.use_padding = use_padding
        self.discount = float(discount)
        if not 0 <= returns_offset < horizon:
            raise ValueError(f"returns_offset must be in [0, horizon={horizon}), got {returns_offset}")
        self.returns_offset = int(returns_offset)
        if not 0 <= front_padding < horizon:
            raise ValueError(f"front_padding must be in [0, horizon={horizon}), got {front_padding}")
        self.front_padding = int(front_padding)
        self.device = torch.device(device)
        self.action_dim = episodes.act_dim
        self.obs_dim = episodes.obs_dim
        self.goal_dim = episodes.goal_dim
        self.transition_dim = self.action_dim + self.obs_dim

        act_n = np.asarray(act_normalizer.normalize(episodes.act), dtype=np.float32)
        obs_n = np.asarray(obs_normalizer.normalize(episodes.obs), dtype=np.float32)
        self.data = torch.from_numpy(np.concatenate([act_n, obs_n], axis=1)).to(self.device)  # (N, A+O)
        self.rewards = torch.from_numpy(episodes.rew).to(self.device)  # (N,)
        rew = episodes.rew + np.float32(termination_penalty) * episodes.terminal
        rtg = discounted_returns_to_go(rew, episodes.lengths, self.discount)
        self.returns_to_go = torch.from_numpy(rtg.astype(np.float32)).to(self.device)  # (N,)
        # Goals stay raw: the agent decides how (and whether) to normalize them.
        self.goal = (
            None if episodes.goal is None else torch.from_numpy(episodes.goal).to(self.device)
        )  # (N, G)
        pad_act = act_normalizer.normalize(np.zeros((1, self.action_dim), dtype=np.float32))
        self.pad_action = torch.as_tensor(
            np.asarray(pad_act, dtype=np.float32)[0], device=self.device
        )  # (A,)

        # ---- window table (vectorized; E episodes -> W windows)
        starts, lengths = episodes.starts, episodes.lengths
        span = (self.horizon - 1) * self.stride + 1  # env steps from a window's first step to its last
        inside = lengths if use_padding else np.maximum(lengths - span + 1, 0)
        # front-padded windows only where the episode has inside windows (without padding: long enough)
        per_episode = inside + np.where(inside > 0, self.front_padding, 0)
        total = int(per_episode.sum())
        if total == 0:
            raise DatasetError(
                f"dataset {episodes.source!r}: horizon {self.horizon}"
                + (f" (stride {self.stride}: {span} env steps)" if self.stride > 1 else "")
                + " is too long for the episode lengths "
                f"(max length {int(lengths.max())}) without padding; "
                "use a shorter horizon or use_padding=True"
            )
        first_window = np.cumsum(per_episode) - per_episode  # index of each episode's first window
        offset_in_episode = np.arange(total) - np.repeat(first_window, per_episode) - self.front_padding * (
            np.repeat(inside, per_episode) > 0
        )
        self.window_start = torch.from_numpy(np.repeat(starts, per_episode) + offset_in_episode).to(
            self.device
        )  # (W,) flat index of each window's first step; before its episode's first step if front-padded
        self.window_first = torch.from_numpy(np.repeat(starts, per_episode)).to(self.device)
        self.window_last = torch.from_numpy(np.repeat(starts + lengths - 1, per_episode)).to(self.device)
        self._steps = torch.arange(self.horizon, device=self.device) * self.stride  # (H,) env-step offsets

    def __len__(self) -> int:
        """Number of windows W."""
        return len(self.window_start)

    def get(self, window_ids: torch.Tensor | np.ndarray | list[int]) -> dict[str, torch.Tensor]:
        """Windows by id (B,) in [0, W).

        Returns:
            ``traj`` (B, H, A+O) float32 normalized ``[actions, observations]``;
            ``mask`` (B, H) bool, True on real (non-padded) steps;
            ``returns`` (B, 1) float32 discounted return-to-go from the window start (unnormalized; from step
            ``returns_offset`` if set);
            ``goal`` (B, G) float32 raw goal at the window start (only if the data has goals);
            ``indices`` (B,) int64 window ids.
        """
        ids = torch.as_tensor(window_ids, dtype=torch.long, device=self.device)
        start = self.window_start[ids]  # (B,)
        first = self.window_first[ids]  # (B,)
        last = self.window_last[ids]  # (B,)
        steps = start[:, None] + self._steps  # (B, H) flat indices, possibly outside the episode
        mask = (steps >= first[:, None]) & (steps <= last[:, None])
        traj = self.data[
            torch.maximum(torch.minimum(steps, last[:, None]), first[:, None])
        ]  # (B, H, A+O); padded steps repeat the first / last step
        if self.use_padding or self.front_padding:
            # Padded steps keep the last observation but must not repeat the last action.
            traj[..., : self.action_dim] = torch.where(
                mask[..., None], traj[..., : self.action_dim], self.pad_action
            )
        returns = self.returns_to_go[(start + self.returns_offset * self.stride).clamp(first, last)][:, None]
        batch = {"traj": traj, "mask": mask, "returns": returns, "indices": ids}
        if self.goal is not None:
            batch["goal"] = self.goal[torch.maximum(start, first)]
        return batch

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``batch_size`` windows drawn uniformly with replacement; see :meth:`get` for the keys/shapes.

        ``generator`` is a CPU ``torch.Generator`` (ids are drawn on the CPU, then moved), so the same seed
        gives the same batches on any device.
        """
        ids = torch.randint(len(self), (batch_size,), generator=generator)
        return self.get(ids)

    def __repr__(self) -> str:
        return (
            f"SequenceDataset(windows={len(self)}, horizon={self.horizon}, "
            f"transition_dim={self.transition_dim}, stride={self.stride}, "
            f"padding={self.use_padding}, front_padding={self.front_padding}, device={self.device})"
        )
