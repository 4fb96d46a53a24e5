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

from diffplan.agent import Agent, OnlineConfig, PlanRecorder
from diffplan.checkpoint import CheckpointError, load_checkpoint, parse_saved_config, resolve_checkpoint
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

    def make_venv(self, n: int, seed: int, subproc: bool = False, wrapper: Any = None) -> Any:
        """``n`` envs of the task (seeds ``seed..seed+n-1``) in the config's ``vector_env`` kind, each wrapped by
        ``wrapper`` (a picklable callable) if given."""
        return make_vector_env(
            self.cfg.task, n, seed, subproc=subproc, kind=self.cfg.vector_env, ray_address=self.cfg.ray_address,
            wrapper=wrapper,
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
        subgoals = [p.get("subgoals") for p in plans]  # hierarchical planners record theirs
        return plot_plans(self.cfg.task, xy, starts=xy[:, 0], goals=goals, titles=titles,
                          subgoals=subgoals if any(s is not None for s in subgoals) else None)


def check_device(device: str) -> None:
    """Refuse a torch device this machine cannot use (:class:`ConfigError`), before anything is built.

    Checked here rather than in the config's validation so that a run trained on a GPU still loads its saved
    config on a CPU machine, where ``diffplan eval RUN device=cpu`` evaluates it.
    """
    from diffplan.config import ConfigError

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device={device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(dev.type, True):
        raise ConfigError(f"device={device!r}: this torch ({torch.__version__}) cannot use it here; use device=cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) here")


def check_dataset_task(cfg: RunConfig, episodes: Episodes) -> None:
    """Refuse data that cannot belong to the task it would be trained and evaluated on (:class:`DatasetError`).

    A D4RL maze2d file is converted into the PointMaze frame of one maze on load (``metadata['task']``); on
    another task its positions and reference scores would be silently wrong. A D4RL-layout file whose name does
    not say which maze it is cannot be converted, so it is refused on a maze task.
    """
    from diffplan.data import DatasetError
    from diffplan.envs import is_maze_task

    meta = episodes.metadata
    if meta.get("source_format") != "d4rl":
        return
    if meta.get("frame") == "pointmaze" and meta.get("task") != cfg.task:
        raise DatasetError(
            f"dataset {episodes.source!r} is D4RL {meta.get('dataset_name')}, converted to the frame of "
            f"{meta.get('task')!r}, but task={cfg.task!r}; train it with task={meta.get('task')}"
        )
    if meta.get("frame") is None and is_maze_task(cfg.task):
        raise DatasetError(
            f"dataset {episodes.source!r}: a D4RL-layout file on maze task {cfg.task!r} must be named as D4RL "
            "names it (e.g. maze2d-umaze-sparse-v1.hdf5) so that its maze and coordinate frame are known"
        )


def check_runtime(cfg: RunConfig) -> None:
    """The settings this machine must support (device, vector env kind), checked before a run claims its
    directory or loads anything."""
    check_device(cfg.device)
    check_vector_env(cfg.vector_env)


def setup(cfg: RunConfig, *, with_data: bool = True, progress: bool = True) -> Experiment:
    """Seed, load data (offline agents; an online agent only when its config names a dataset), build the agent.

    ``with_data=False`` builds a shell to load a checkpoint into (normalizers come from the checkpoint).
    """
    from diffplan.agents import AGENTS

    check_runtime(cfg)  # now, not at the first evaluation hours later
    torch.set_num_threads(cfg.torch_threads if cfg.torch_threads > 0 else (os.cpu_count() or 1))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    wants_data = with_data and (not isinstance(cfg, OnlineConfig) or bool(cfg.dataset))
    episodes = resolve_episodes(cfg, progress=progress) if wants_data else None
    if episodes is not None:
        check_dataset_task(cfg, episodes)
    env = make_env(cfg.task, seed=cfg.seed)
    try:
        agent = AGENTS[cfg.agent].build(cfg, env.observation_space, env.action_space, episodes)
    finally:
        env.close()
    ref_min, ref_max = _reference_scores(episodes) if episodes is not None else (None, None)
    return Experiment(cfg, agent, episodes, _run_dir(cfg), ref_min, ref_max, progress)


IDENTITY_KEYS = ("agent", "task", "maze", "diffusion_steps", "beta_schedule", "predict_epsilon")
"""Config keys that can never change when a trained run is evaluated, beside the keys that shape the network
(found by building it, see :func:`load_trained`): the weights were trained, and the normalized score's reference
scores computed, for that agent on that task, and a diffusion network for one noise process and prediction
target: those three load without a shape error and would then sample garbage."""


def _changed_keys(saved: RunConfig, cfg: RunConfig) -> list[str]:
    """Top-level config fields whose values differ between the saved run and the overridden config."""
    from diffplan.config import config_to_dict

    before, after = config_to_dict(saved), config_to_dict(cfg)
    return [k for k in after if before.get(k) != after[k]]


def _loads_with(saved: dict[str, Any], key: str, value: Any, state: dict[str, Any]) -> bool:
    """Whether the checkpoint's weights load into the network built from the saved config with one key changed.

    Used only after a failed load, to name the keys the model's shapes depend on (derived by building the
    shell, not from a hand-kept list that would drift from the agents).
    """
    from diffplan.compose import load_config
    from diffplan.config import ConfigError

    try:
        cfg = load_config(None, None, base={**saved, key: value})
        setup(cfg, with_data=False, progress=False).agent.algorithm.load_state_dict(dict(state["algorithm"]))
    except (RuntimeError, KeyError, ValueError, ConfigError):
        return False
    return True


def load_trained(
    path: str | os.PathLike, overrides: list[str] | None = None, progress: bool = False
) -> Experiment:
    """Rebuild a trained agent from a run directory or checkpoint (no dataset needed: normalizers are saved)."""
    from diffplan.compose import load_config
    from diffplan.config import config_to_dict

    state, config_yaml = load_checkpoint(path)
    saved = parse_saved_config(config_yaml, f"checkpoint {resolve_checkpoint(path)}: config.yaml")
    cfg = load_config(None, overrides, base=saved)
    saved_cfg = load_config(None, None, base=saved) if overrides else cfg
    changed = _changed_keys(saved_cfg, cfg)
    fixed = [k for k in changed if k in IDENTITY_KEYS]
    if fixed:
        raise CheckpointError(
            f"{path}: {', '.join(f'{k}={getattr(cfg, k)!r}' for k in fixed)} differs from the run's "
            f"{', '.join(f'{k}={getattr(saved_cfg, k)!r}' for k in fixed)}; {', '.join(IDENTITY_KEYS)} cannot "
            "change at eval time (the weights and reference scores belong to them): train a run for that"
        )
    if not isinstance(state.get("algorithm"), dict):
        raise CheckpointError(f"{path}: the checkpoint holds no 'algorithm' state (not a diffplan training checkpoint)")
    exp = setup(cfg, with_data=False, progress=progress)
    try:
        exp.agent.algorithm.load_state_dict(dict(state["algorithm"]))  # a copy: Tianshou pops keys from it
    except (RuntimeError, KeyError, ValueError) as exc:  # size mismatch, missing keys, other optimizer groups
        if not changed:  # no override to blame: the checkpoint and its own config disagree
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"{path}: the checkpoint's weights do not fit the network its own config builds (another diffplan "
                f"version?): {first}"
            ) from exc
        values = config_to_dict(cfg)
        shaped = [k for k in changed if not _loads_with(saved, k, values[k], state)]
        named = ", ".join(f"{k}={getattr(cfg, k)!r} (saved {getattr(saved_cfg, k)!r})" for k in shaped or changed)
        raise CheckpointError(
            f"{path}: the checkpoint's weights do not fit the network these overrides build: {named}; "
            "keys that set the model's shapes cannot change at eval time, only execution settings can"
        ) from exc
    exp.ref_min, exp.ref_max = state.get("ref_min_score"), state.get("ref_max_score")
    src = Path(path)
    exp.run_dir = src if (src / "checkpoints").is_dir() else exp.run_dir
    return exp
