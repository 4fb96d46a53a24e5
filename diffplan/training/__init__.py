"""Training and evaluation of any registered agent: experiments, the offline/online loop, evaluation."""

from diffplan.envs.evaluation import EvalResult, evaluate, mean_and_stderr, normalized_score
from diffplan.training.experiment import (
    Experiment,
    default_dataset,
    load_trained,
    machine_info,
    resolve_episodes,
    setup,
)
from diffplan.training.loop import OfflineSteps, OnlineSteps, eval_run, run_experiment, train

__all__ = [
    "EvalResult",
    "Experiment",
    "OfflineSteps",
    "OnlineSteps",
    "default_dataset",
    "eval_run",
    "evaluate",
    "load_trained",
    "machine_info",
    "mean_and_stderr",
    "normalized_score",
    "resolve_episodes",
    "run_experiment",
    "setup",
    "train",
]
