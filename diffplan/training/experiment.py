"""An experiment: config -> dataset -> built agent, and the same rebuilt from a saved run."""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from diffplan.agent import Agent, OnlineConfig, PlanRecorder
from diffplan.checkpoint import load_checkpoint
from diffplan.config import RunConfig
from diffplan.data import Episodes, load_episodes, recipes
from diffplan.envs import EVAL_SEED, check_vector_env, make_env, make_vector_env
from diffplan.envs.evaluation import EvalResult, evaluate

log = logging.getLogger("diffplan")

def default_dataset(cfg: RunConfig) -> str:
    """The generated dataset of the config's task, ``minari:`` + :func:`diffplan.data.recipes.dataset_id`."""
    return "minari:" + recipes.dataset_id(cfg.task, cfg.dataset_steps)


def resolve_episodes(cfg: RunConfig, progress: bool = True) -> Episodes:
    """Load the config's dataset, generating it first when it is one of ours and not on disk yet."""
    source = cfg.dataset or default_dataset(cfg)
    recipes.ensure(source, progress=progress)
    return load_episodes(source)


def machine_info() -> dict[str, Any]:
    """Date, machine and load of a measurement (benchmark JSON and results.json carry it)."""
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()}-core CPU, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s)",
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def _reference_scores(episodes: Episodes) -> tuple[float | None, float | None]:
    meta = episodes.metadata
    lo, hi = meta.get("ref_min_score"), meta.get("ref_max_score")
    return (None if lo is None else float(lo)), (None if hi is None else float(hi))


def _run_dir(cfg: RunConfig) -> Path:
    if cfg.run_dir:
        return Path(cfg.run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.agent}-{cfg.task}-s{cfg.seed}-{stamp}"


@dataclass
class Experiment:
    """Everything a run holds: config, agent, data, where it writes."""

    cfg: RunConfig
    agent: Agent
    episodes: Episodes | None
    run_dir: Path
    ref_min: float | None
    ref_max: float | None
    progress: bool = False
    """Show progress bars (evaluations too)."""

    def make_venv(self, n: int, seed: int, subproc: bool = False) -> Any:
        """``n`` envs of the task (seeds ``seed..seed+n-1``) in the config's ``vector_env`` kind."""
        return make_vector_env(
            self.cfg.task, n, seed, subproc=subproc, kind=self.cfg.vector_env, ray_address=self.cfg.ray_address
        )

    def evaluate(self, n_episodes: int, record_plans: int = 0, seed: int = EVAL_SEED) -> EvalResult:
        """The evaluation protocol over ``n_episodes``; ``seed`` draws the start/goal pairs (EVAL_SEED: the
        reported benchmark episodes; tune execution settings on another seed)."""
        policy = self.agent.policy
        if record_plans and isinstance(policy, PlanRecorder):
            policy.recorded_plans = []
            policy.record_plans = record_plans
        return evaluate(
            policy, self.make_venv, n_episodes, n_envs=self.cfg.eval_envs, seed=seed,
            ref_min=self.ref_min, ref_max=self.ref_max, progress=self.progress,
        )

    def recorded_plans(self) -> list[dict[str, Any]]:
        """Plans the policy kept at the last evaluation (empty for agents that record none)."""
        policy = self.agent.policy
        return list(policy.recorded_plans) if isinstance(policy, PlanRecorder) else []

    def plan_figure(self) -> Any | None:
        """Recorded plans drawn over the maze (maze tasks only)."""
        from diffplan.envs import is_maze_task

        plans = self.recorded_plans()
        if not plans or not is_maze_task(self.cfg.task):
            return None
        from diffplan.viz import plot_plans

        xy = np.stack([p["plan"][:, :2] for p in plans])
        goals = np.stack([p["goal"] for p in plans]) if plans[0]["goal"] is not None else None
        titles = [f"plan {i} (reaches goal at step {int(p['length'])})" for i, p in enumerate(plans)]
        return plot_plans(self.cfg.task, xy, starts=xy[:, 0], goals=goals, titles=titles)


def setup(cfg: RunConfig, *, with_data: bool = True, progress: bool = True) -> Experiment:
    """Seed, load data (offline agents; an online agent only when its config names a dataset), build the agent.

    ``with_data=False`` builds a shell to load a checkpoint into (normalizers come from the checkpoint).
    """
    from diffplan.agents import AGENTS

    check_vector_env(cfg.vector_env)  # now, not at the first evaluation hours later
    torch.set_num_threads(cfg.torch_threads if cfg.torch_threads > 0 else (os.cpu_count() or 1))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    wants_data = with_data and (not isinstance(cfg, OnlineConfig) or bool(cfg.dataset))
    episodes = resolve_episodes(cfg, progress=progress) if wants_data else None
    env = make_env(cfg.task, seed=cfg.seed)
    try:
        agent = AGENTS[cfg.agent].build(cfg, env.observation_space, env.action_space, episodes)
    finally:
        env.close()
    ref_min, ref_max = _reference_scores(episodes) if episodes is not None else (None, None)
    return Experiment(cfg, agent, episodes, _run_dir(cfg), ref_min, ref_max, progress)


def load_trained(
    path: str | os.PathLike, overrides: list[str] | None = None, progress: bool = False
) -> Experiment:
    """Rebuild a trained agent from a run directory or checkpoint (no dataset needed: normalizers are saved)."""
    from diffplan.compose import load_config

    state, config_yaml = load_checkpoint(path)
    cfg = load_config(None, overrides, base=yaml.safe_load(config_yaml))
    exp = setup(cfg, with_data=False, progress=progress)
    exp.agent.algorithm.load_state_dict(state["algorithm"])
    exp.ref_min, exp.ref_max = state.get("ref_min_score"), state.get("ref_max_score")
    src = Path(path)
    exp.run_dir = src if (src / "checkpoints").is_dir() else exp.run_dir
    return exp
