"""Latency budgets: choose solver steps and candidates per plan so a plan fits a wall-clock budget.

The cost of a plan is dominated by denoiser calls, and on a CPU with small planning batches each call costs
about the same whatever the batch (per-call overhead, not arithmetic). So the budget keeps a running
estimate of the milliseconds per model call, measured on the plans actually made (guidance and the solver's
own arithmetic included), per number of candidates, and before each plan picks the largest number of solver
steps, at the most candidates, that the estimate says fits: first fewer steps (down to ``min_steps``), then
fewer candidates. The first plan, with nothing measured, runs at the configured maximum and is the probe.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import numpy as np

__all__ = ["StepBudget"]


class StepBudget:
    """Online chooser of (solver steps, candidates) under ``budget_ms`` per plan.

    Args:
        budget_ms: wall-clock budget of one plan (ms); must be > 0.
        max_steps: solver steps when the budget allows (the configured ``sampling_steps``).
        max_candidates: candidates per decision when the budget allows (``n_candidates``).
        calls_for_steps: model calls a plan of that many solver steps makes (Heun: 2K - 1).
        min_steps: never fewer solver steps than this; below it, candidates are cut instead.
        window: plans per candidate count whose per-call cost is kept (the median is used).
    """

    def __init__(
        self,
        budget_ms: float,
        max_steps: int,
        max_candidates: int = 1,
        calls_for_steps: Callable[[int], int] = lambda k: k,
        min_steps: int = 1,
        window: int = 20,
    ) -> None:
        if budget_ms <= 0:
            raise ValueError(f"budget_ms must be > 0, got {budget_ms}")
        if not 1 <= min_steps <= max_steps or max_candidates < 1:
            raise ValueError(f"need 1 <= min_steps={min_steps} <= max_steps={max_steps} and max_candidates >= 1")
        self.budget_ms = float(budget_ms)
        self.max_steps, self.min_steps, self.max_candidates = max_steps, min_steps, max_candidates
        self.calls_for_steps = calls_for_steps
        self.window = window
        self._cost: dict[int, deque[float]] = {}

    def record(self, ms: float, calls: int, candidates: int) -> None:
        """One plan took ``ms`` for ``calls`` model calls at ``candidates`` candidates."""
        if calls > 0:
            self._cost.setdefault(candidates, deque(maxlen=self.window)).append(ms / calls)

    def cost_per_call(self, candidates: int) -> float | None:
        """Estimated ms per model call at ``candidates`` (None before any plan was measured).

        Measured counts use their median; an unmeasured one takes the nearest measured count's cost, scaled up
        linearly if it has more candidates (pessimistic: on a CPU the cost grows slower than the batch)."""
        if candidates in self._cost:
            return float(np.median(self._cost[candidates]))
        if not self._cost:
            return None
        nearest = min(self._cost, key=lambda k: (abs(k - candidates), k))
        return float(np.median(self._cost[nearest])) * max(1.0, candidates / nearest)

    def choose(self) -> tuple[int, int]:
        """(solver steps, candidates) for the next plan."""
        for k in range(self.max_candidates, 0, -1):
            cost = self.cost_per_call(k)
            if cost is None:
                return self.max_steps, self.max_candidates
            for steps in range(self.max_steps, self.min_steps - 1, -1):
                if self.calls_for_steps(steps) * cost <= self.budget_ms:
                    return steps, k
        return self.min_steps, 1

    def steps_within(self, candidates: int, wanted: int) -> int:
        """At most ``wanted`` solver steps, fewer if the budget says so (at least 1): for warm starts, which
        run a tail of the schedule."""
        cost = self.cost_per_call(candidates)
        if cost is None:
            return wanted
        fit = max(1, math.floor(self.budget_ms / cost))
        while wanted > 1 and self.calls_for_steps(wanted) > fit:
            wanted -= 1
        return wanted
