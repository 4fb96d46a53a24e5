"""The learning-rate schedule of a run, shared by every agent: cosine annealing over the run's own budget.

``lr_decay`` (a :class:`~diffplan.config.RunConfig` field) anneals every learning rate of the algorithm from its
configured value to 0 over the run, as Diffusion-QL's ``--lr_decay`` (torch's ``CosineAnnealingLR``, eta_min 0).
The run's length is whichever budget ends it first: ``train_steps``, or with ``max_train_minutes`` the training
time. Progress is therefore the larger of the two fractions spent, so a time-budgeted run reaches the end of
its schedule when its time is up instead of stopping part-way through a schedule sized for ``train_steps`` it
never reaches. (Measuring the elapsed fraction, rather than predicting the step count from early speed, stays
right when the speed changes, e.g. while evaluations or other runs share the machine.)

Why not a torch ``LRScheduler``: the learning rate here is a pure function of the loop's saved counters (update
count and training time), set before every update, so a resumed run continues the schedule exactly; Tianshou's
algorithm state does not save scheduler state, and a scheduler stepped per update cannot follow wall time.
"""

from __future__ import annotations

import math

from tianshou.algorithm.algorithm_base import Algorithm

from diffplan.training.distributed import tianshou_optimizers

__all__ = ["apply_lr_schedule", "cosine_factor", "run_progress"]


def cosine_factor(progress: float) -> float:
    """Multiplier of the initial learning rate at ``progress`` in [0, 1] (clamped): 1 -> 0 along a half cosine."""
    p = min(max(progress, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * p))


def run_progress(step: int, train_steps: int, train_time: float, time_limit: float) -> float:
    """Fraction of the run spent after ``step`` updates and ``train_time`` seconds of training: the larger of
    ``step / train_steps`` and ``train_time / time_limit`` (``time_limit`` inf: no time budget)."""
    by_steps = step / max(train_steps, 1)
    by_time = train_time / time_limit if math.isfinite(time_limit) and time_limit > 0 else 0.0
    return min(max(by_steps, by_time), 1.0)


def apply_lr_schedule(algorithm: Algorithm, progress: float) -> None:
    """Set every learning rate of ``algorithm`` (its Tianshou optimizers, nested algorithms' included) to its
    initial value times :func:`cosine_factor` (``progress``). The initial value is kept in each parameter
    group's ``initial_lr`` (torch's schedulers use the same key), which the optimizer state, and so the
    checkpoint, holds."""
    factor = cosine_factor(progress)
    for wrapper in tianshou_optimizers(algorithm):
        for group in wrapper._optim.param_groups:  # Tianshou's Optimizer wraps the torch one
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor
