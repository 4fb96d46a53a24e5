"""Tick-addressed execution of action chunks (diffusion_policy's timestamped waypoints, made integer).

A chunk is (H, A) actions for ticks ``base_tick .. base_tick + H - 1``. On submission at tick ``now`` (the
last tick executed), the part addressed to ticks ``<= now`` is trimmed (it can no longer run); the rest
replaces the schedule from ``start = max(now + 1, base_tick)``, cross-fading from the old schedule over the
first ``blend`` ticks where the old one still had actions. Ticks before ``start`` keep the old schedule. A
tick with no action (before the first chunk, in a gap, after the end) is a *starved* tick: the server holds.

No clock in here: ticks are integers handed in by the caller, so tests drive it without sleeping.
"""

from __future__ import annotations

import numpy as np

from diffplan.envs.robot.protocol import E_LATE, ProtocolError

__all__ = ["ActionScheduler"]


class ActionScheduler:
    """Holds the upcoming actions, one row per tick from ``start``; ``valid`` marks ticks that have one."""

    def __init__(self, action_dim: int) -> None:
        self.action_dim = action_dim
        self.clear()

    def clear(self) -> None:
        self.start = 0
        self.actions = np.zeros((0, self.action_dim))
        self.valid = np.zeros(0, dtype=bool)

    @property
    def end_tick(self) -> int:
        """Last tick with a scheduled action (``start - 1`` when there is none)."""
        idx = np.flatnonzero(self.valid)
        return self.start + int(idx[-1]) if len(idx) else self.start - 1

    def submit(self, actions: np.ndarray, base_tick: int, now: int, blend: int = 0) -> tuple[int, int]:
        """Schedule (H, A) ``actions`` for ticks from ``base_tick``; returns (first, last) tick now scheduled
        from this chunk. Raises ``ProtocolError(LATE)`` when every action is addressed to a past tick."""
        H = len(actions)
        first = max(now + 1, base_tick)
        if base_tick + H <= first:
            raise ProtocolError(E_LATE, f"chunk for ticks {base_tick}..{base_tick + H - 1} arrived at tick {now}")
        new = actions[first - base_tick :]
        end = first + len(new)  # exclusive
        lo = now + 1
        out = np.zeros((end - lo, self.action_dim))
        valid = np.zeros(end - lo, dtype=bool)
        old_act, old_valid = self._window(lo, end)
        keep = first - lo
        out[:keep], valid[:keep] = old_act[:keep], old_valid[:keep]
        out[keep:], valid[keep:] = new, True
        for j in range(min(blend, len(new))):
            if old_valid[keep + j]:
                w = (j + 1) / (blend + 1)
                out[keep + j] = (1 - w) * old_act[keep + j] + w * new[j]
        self.start, self.actions, self.valid = lo, out, valid
        return first, end - 1

    def _window(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Old schedule over ticks [lo, hi) (zeros / invalid where it had nothing)."""
        act = np.zeros((hi - lo, self.action_dim))
        valid = np.zeros(hi - lo, dtype=bool)
        a, b = max(lo, self.start), min(hi, self.start + len(self.actions))
        if a < b:
            act[a - lo : b - lo] = self.actions[a - self.start : b - self.start]
            valid[a - lo : b - lo] = self.valid[a - self.start : b - self.start]
        return act, valid

    def pop(self, tick: int) -> np.ndarray | None:
        """The action for ``tick`` (None: starved), dropping every row up to and including it."""
        i = tick - self.start
        action = self.actions[i].copy() if 0 <= i < len(self.actions) and self.valid[i] else None
        drop = max(0, min(i + 1, len(self.actions)))
        self.start += drop
        self.actions, self.valid = self.actions[drop:], self.valid[drop:]
        return action

    def window(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Scheduled actions over ticks [lo, hi) and which are valid (for the committed prefix)."""
        return self._window(lo, hi)
