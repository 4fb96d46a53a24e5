"""Evaluation through a Tianshou test Collector: returns, normalized score, success rate, plan latency."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tianshou.data import Batch, Collector, CollectStats, VectorReplayBuffer
from tianshou.env import BaseVectorEnv

from diffplan.agent import Reseedable, TimedPolicy


def normalized_score(returns: np.ndarray, ref_min: float | None, ref_max: float | None) -> np.ndarray | None:
    """D4RL normalization: 100 * (return - ref_min) / (ref_max - ref_min); None without reference scores."""
    if ref_min is None or ref_max is None or ref_max == ref_min:
        return None
    return 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)


def mean_and_stderr(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    se = float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else 0.0
    return float(x.mean()), se


@dataclass(kw_only=True)
class SuccessStats(CollectStats):
    """CollectStats plus whether each episode ever reached its goal (``info["success"]`` at any step).

    ``success_rate`` is a scalar so Tianshou's loggers keep it (they drop arrays).
    """

    successes: list[bool] = field(default_factory=list)
    success_rate: float = 0.0

    def update_at_episode_done(self, episode_batch: Any, episode_return: float, **kwargs: Any) -> None:
        super().update_at_episode_done(episode_batch, episode_return, **kwargs)
        info = episode_batch.info
        success = bool(np.any(info["success"])) if "success" in info else False
        self.successes.append(success)
        self.success_rate = float(np.mean(self.successes))


@dataclass
class EvalResult:
    """Outcome of one evaluation; ``to_dict`` is what results.json and TensorBoard get."""

    returns: np.ndarray
    lengths: np.ndarray
    successes: np.ndarray
    normalized: np.ndarray | None
    latency: dict[str, float]
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        ret_mean, ret_se = mean_and_stderr(self.returns)
        out: dict[str, Any] = {
            "episodes": len(self.returns),
            "return_mean": ret_mean,
            "return_se": ret_se,
            "success_rate": float(np.mean(self.successes)) if len(self.successes) else float("nan"),
            "length_mean": float(np.mean(self.lengths)) if len(self.lengths) else float("nan"),
            "wall_s": self.wall_s,
            **self.latency,
        }
        if self.normalized is not None:
            out["normalized_score"], out["normalized_score_se"] = mean_and_stderr(self.normalized)
        return out

    def per_episode(self) -> dict[str, list[float]]:
        """Each episode's raw return, length and (with reference scores) normalized score, in episode order:
        what a benchmark needs to recompute or compare the mean (``to_dict`` keeps only the summary)."""
        out: dict[str, list[float]] = {"returns": self.returns.tolist(), "lengths": self.lengths.tolist()}
        if self.normalized is not None:
            out["normalized_scores"] = self.normalized.tolist()
        return out


def _progress_stats(bar: Any, n_episodes: int) -> type[SuccessStats]:
    """SuccessStats that also advance ``bar`` by env steps and show finished episodes: the Collector builds its
    stats object from a class with no arguments, so the bar travels in a subclass made here."""

    class ProgressStats(SuccessStats):
        def update_at_step_batch(self, step_batch: Any, refresh_sequence_stats: bool = False) -> None:
            super().update_at_step_batch(step_batch, refresh_sequence_stats)
            bar.update(len(step_batch))

        def update_at_episode_done(self, episode_batch: Any, episode_return: float, **kwargs: Any) -> None:
            super().update_at_episode_done(episode_batch, episode_return, **kwargs)
            bar.set_description(f"eval {len(self.successes)}/{n_episodes} episodes")

    return ProgressStats


def evaluate(
    policy: Any,
    make_venv: Callable[[int, int], BaseVectorEnv],
    n_episodes: int,
    *,
    n_envs: int = 5,
    seed: int = 0,
    ref_min: float | None = None,
    ref_max: float | None = None,
    max_episode_steps: int = 1000,
    progress: bool = False,
) -> EvalResult:
    """Run ``n_episodes`` through a Tianshou Collector over ``make_venv(n_envs, seed)``.

    ``max_episode_steps`` must cover the longest episode: the Collector reads each episode's length and its
    ``info["success"]`` back from the buffer, so a shorter per-env buffer silently truncates both.

    A fresh vector env with the same seed gives every evaluation the same start/goal pairs, and the policy's
    planning noise is reseeded, so two evaluations of the same weights agree exactly. ``progress`` shows a bar
    of env steps and finished episodes (a locomotion evaluation with a planner can take many minutes).
    """
    from tqdm.auto import tqdm

    n_envs = max(1, min(n_envs, n_episodes))
    venv = make_venv(n_envs, seed)
    bar = tqdm(desc=f"eval 0/{n_episodes} episodes", unit="step", disable=not progress, leave=False)
    try:
        if isinstance(policy, Reseedable):
            policy.reseed(seed)
        latency = policy.latency if isinstance(policy, TimedPolicy) else None
        if latency is not None:
            latency.clear()
        buffer = VectorReplayBuffer((max_episode_steps + 1) * n_envs, n_envs)
        collector = Collector(policy, venv, buffer, collect_stats_class=_progress_stats(bar, n_episodes))
        start = time.perf_counter()
        collector.reset()
        policy.eval()
        stats = collector.collect(n_episode=n_episodes)
        wall = time.perf_counter() - start
    finally:
        bar.close()
        venv.close()
    returns = np.asarray(stats.returns, dtype=np.float64)
    return EvalResult(
        returns=returns,
        lengths=np.asarray(stats.lens),
        successes=np.asarray(stats.successes, dtype=bool),
        normalized=normalized_score(returns, ref_min, ref_max),
        latency=latency.summary() if latency is not None else {},
        wall_s=wall,
    )


def as_batch(obs: Any) -> Any:
    """One env observation with a leading batch dim, as the Collector passes it (Dict -> Batch)."""
    if isinstance(obs, dict):
        return Batch({k: np.asarray(v)[None] for k, v in obs.items()})
    return np.asarray(obs)[None]


def decision_latency(policy: Any, env: Any, steps: int) -> list[float]:
    """ms of each ``policy(batch, state)`` call along ``steps`` env steps at batch 1 (episodes restart as needed).

    The observation is wrapped like the Collector does (a Batch of the Dict observation, leading batch dim), so
    a chunk-executing or replan-every-k agent's cheap calls (reading a cached plan) count as they do in an
    episode.
    """
    policy.eval()
    times: list[float] = []
    state, (obs, _) = None, env.reset(seed=0)
    for _ in range(steps):
        batch = Batch(obs=as_batch(obs))
        t0 = time.perf_counter()
        out = policy(batch, state)
        times.append((time.perf_counter() - t0) * 1000)
        state = out.get("state", None)
        obs, _, terminated, truncated, _ = env.step(np.asarray(out.act)[0])
        if terminated or truncated:
            state, (obs, _) = None, env.reset()
    return times
