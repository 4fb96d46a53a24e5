"""Experiment runner: dataset -> build -> train (periodic evaluation, TensorBoard, checkpoints) -> results.json.

Why our own loop rather than Tianshou's ``OfflineTrainer``: every gradient step still goes through Tianshou's
``Algorithm.update`` (and evaluation through its ``Collector``), but exact resume needs the training-batch
generator, the step counter and the global RNGs restored mid-run, which the trainer's epoch/log-based resume
does not cover.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tianshou.utils.torch_utils import policy_within_training_step
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from diffplan.agent import Agent
from diffplan.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_bytes_atomic,
    write_text_atomic,
)
from diffplan.config import RunConfig, config_to_dict, load_config
from diffplan.data import Episodes, load_episodes, recipes
from diffplan.envs import EVAL_SEED, is_maze_task, make_env, make_vector_env
from diffplan.evaluation import EvalResult, evaluate

log = logging.getLogger("diffplan")

def default_dataset(cfg: RunConfig) -> str:
    """The generated dataset of the config's task, ``minari:`` + :func:`diffplan.data.recipes.dataset_id`."""
    return "minari:" + recipes.dataset_id(cfg.task, cfg.dataset_steps)


def resolve_episodes(cfg: RunConfig, progress: bool = True) -> Episodes:
    """Load the config's dataset, generating it first when it is one of ours and not on disk yet."""
    source = cfg.dataset or default_dataset(cfg)
    recipes.ensure(source, progress=progress)
    return load_episodes(source)


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

    def make_venv(self, n: int, seed: int) -> Any:
        return make_vector_env(self.cfg.task, n, seed)

    def evaluate(self, n_episodes: int, record_plans: int = 0, seed: int = EVAL_SEED) -> EvalResult:
        """The evaluation protocol over ``n_episodes``; ``seed`` draws the start/goal pairs (EVAL_SEED: the
        reported benchmark episodes; tune execution settings on another seed)."""
        policy = self.agent.policy
        if record_plans and hasattr(policy, "record_plans"):
            policy.recorded_plans = []
            policy.record_plans = record_plans
        return evaluate(
            policy, self.make_venv, n_episodes, n_envs=self.cfg.eval_envs, seed=seed,
            ref_min=self.ref_min, ref_max=self.ref_max, progress=self.progress,
        )

    def plan_figure(self) -> Any | None:
        """Recorded plans drawn over the maze (maze tasks only)."""
        plans = getattr(self.agent.policy, "recorded_plans", [])
        if not plans or not is_maze_task(self.cfg.task):
            return None
        from diffplan.viz import plot_plans

        xy = np.stack([p["plan"][:, :2] for p in plans])
        goals = np.stack([p["goal"] for p in plans]) if plans[0]["goal"] is not None else None
        titles = [f"plan {i} (reaches goal at step {int(p['length'])})" for i, p in enumerate(plans)]
        return plot_plans(self.cfg.task, xy, starts=xy[:, 0], goals=goals, titles=titles)


def setup(cfg: RunConfig, *, with_data: bool = True, progress: bool = True) -> Experiment:
    """Seed, load data, build the agent."""
    from diffplan.agents import AGENTS

    torch.set_num_threads(cfg.torch_threads if cfg.torch_threads > 0 else (os.cpu_count() or 1))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    episodes = resolve_episodes(cfg, progress=progress) if with_data else None
    env = make_env(cfg.task, seed=cfg.seed)
    try:
        agent = AGENTS[cfg.agent].build(cfg, env.observation_space, env.action_space, episodes)
    finally:
        env.close()
    ref_min, ref_max = _reference_scores(episodes) if episodes is not None else (None, None)
    return Experiment(cfg, agent, episodes, _run_dir(cfg), ref_min, ref_max, progress)


def _log_eval(writer: SummaryWriter, exp: Experiment, result: EvalResult, step: int) -> dict[str, Any]:
    summary = result.to_dict()
    for key in ("return_mean", "normalized_score", "success_rate", "plan_ms_median", "length_mean"):
        if key in summary and np.isfinite(summary[key]):
            writer.add_scalar(f"eval/{key}", summary[key], step)
    fig = exp.plan_figure()
    if fig is not None:
        from diffplan.viz import figure_to_array

        image = figure_to_array(fig)
        writer.add_image("eval/plans", image, step, dataformats="HWC")
        plot_dir = exp.run_dir / "plans"
        plot_dir.mkdir(exist_ok=True)
        fig.savefig(plot_dir / f"step_{step:08d}.png", dpi=80)
        import matplotlib.pyplot as plt

        plt.close(fig)
    return summary


def machine_info() -> dict[str, Any]:
    """Date, machine and load of a measurement (benchmark JSON and results.json carry it)."""
    import platform

    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()}-core CPU, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s)",
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def _checkpoint_state(exp: Experiment, step: int, history: list[dict], train_time: float) -> dict[str, Any]:
    algorithm = exp.agent.algorithm
    return {
        "algorithm": algorithm.state_dict(),
        "generator": algorithm.generator.get_state(),
        "rng": rng_state(),
        "step": step,
        "train_time": train_time,
        "history": json.dumps(history),
        "ref_min_score": exp.ref_min,
        "ref_max_score": exp.ref_max,
    }


def train(
    cfg: RunConfig, *, resume: str | os.PathLike | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train ``cfg`` (or continue the run in ``resume``) and return the results written to results.json."""
    exp = setup(cfg, progress=progress)
    run_dir = exp.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    write_text_atomic(run_dir / "config.yaml", config_yaml)
    algorithm, policy, source = exp.agent.algorithm, exp.agent.policy, exp.agent.batch_source
    if source is None:
        raise ValueError(f"agent {cfg.agent!r} has no offline batch source to train from")

    step, history, train_time = 0, [], 0.0
    if resume is not None:
        state, _ = load_checkpoint(resume, map_location=cfg.device)
        algorithm.load_state_dict(state["algorithm"])
        algorithm.generator.set_state(state["generator"])
        set_rng_state(state["rng"])
        step, train_time = int(state["step"]), float(state["train_time"])
        history = json.loads(state["history"])
        log.info("resumed %s at step %d", resume, step)

    writer = SummaryWriter(str(run_dir / "tb"))
    bar = tqdm(total=cfg.train_steps, initial=step, desc=f"train {cfg.agent}", disable=not progress, unit="step")
    stats = None
    try:
        time_limit = cfg.max_train_minutes * 60.0 if cfg.max_train_minutes > 0 else float("inf")
        while step < cfg.train_steps and train_time < time_limit:
            t0 = time.perf_counter()
            with policy_within_training_step(policy):
                stats = algorithm.update(buffer=source, sample_size=cfg.batch_size)
            train_time += time.perf_counter() - t0
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0:
                losses = stats.get_loss_stats_dict()
                for key, value in losses.items():
                    writer.add_scalar(f"train/{key}", value, step)
                writer.add_scalar("train/steps_per_s", step / max(train_time, 1e-9), step)
                bar.set_postfix(loss=f"{losses.get('loss', float('nan')):.4f}")
            last = step >= cfg.train_steps or train_time >= time_limit
            if cfg.eval_every and step % cfg.eval_every == 0 and not last:
                summary = _log_eval(writer, exp, exp.evaluate(cfg.eval_episodes, cfg.plot_plans), step)
                history.append({"step": step, "train_time_s": train_time, **summary})
                bar.write(_eval_line(step, summary))
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and not last:
                save_checkpoint(run_dir, step, _checkpoint_state(exp, step, history, train_time), config_yaml)
        # Saved before the final evaluation so that a crash in it loses no training, and saved again after it
        # (same weights and RNG state, so resuming stays exact) so that a resumed run's history keeps this eval.
        final_state = _checkpoint_state(exp, step, history, train_time)
        save_checkpoint(run_dir, step, final_state, config_yaml)
    finally:
        bar.close()

    final = exp.evaluate(cfg.final_eval_episodes, cfg.plot_plans)
    summary = _log_eval(writer, exp, final, step)
    history.append({"step": step, "train_time_s": train_time, **summary})
    save_checkpoint(run_dir, step, {**final_state, "history": json.dumps(history, default=float)}, config_yaml)
    if cfg.video_frames > 0:
        log_rollout_video(writer, exp, step)
    writer.flush()
    writer.close()
    results = {
        "agent": cfg.agent,
        "task": cfg.task,
        "dataset": cfg.dataset or default_dataset(cfg),
        "seed": cfg.seed,
        "gradient_steps": step,
        "train_time_s": train_time,
        "steps_per_s": step / max(train_time, 1e-9),
        "ref_min_score": exp.ref_min,
        "ref_max_score": exp.ref_max,
        "eval_seed": EVAL_SEED,
        "final": summary,
        "history": history,
        "run_dir": str(run_dir),
        **machine_info(),
    }
    write_text_atomic(run_dir / "results.json", json.dumps(results, indent=2, default=float))
    return results


def log_rollout_video(writer: SummaryWriter, exp: Experiment, step: int) -> Path | None:
    """Render one evaluation episode into TensorBoard (``eval/rollout``) and ``run_dir/videos/step_<N>.gif``.

    A machine that cannot render gets a warning, not a failed run: the training is already saved.
    """
    from diffplan.video import RenderError, add_gif

    path = exp.run_dir / "videos" / f"step_{step:08d}.gif"
    try:
        frames = _write_rollout_gif(exp, EVAL_SEED, path, exp.cfg.video_frames)
    except RenderError as exc:
        log.warning("no rollout video: %s", exc)
        return None
    add_gif(writer, "eval/rollout", frames, step)
    return path


def _write_rollout_gif(exp: Experiment, seed: int, path: str | os.PathLike, max_frames: int) -> np.ndarray:
    """Record the first protocol episode of ``seed`` and write it as a GIF to ``path``; returns the frames."""
    from diffplan.video import gif_bytes, record_episode

    frames = record_episode(exp.agent.policy, exp.cfg.task, seed, exp.cfg.video_every, max_frames)
    write_bytes_atomic(path, gif_bytes(frames))
    return frames


def _eval_line(step: int, summary: dict[str, Any]) -> str:
    parts = [f"step {step}"]
    if "normalized_score" in summary:
        parts.append(f"score {summary['normalized_score']:.1f} ± {summary['normalized_score_se']:.1f}")
    parts.append(f"return {summary['return_mean']:.1f}")
    parts.append(f"success {summary['success_rate']:.2f}")
    if "plan_ms_median" in summary:
        parts.append(f"plan {summary['plan_ms_median']:.0f} ms")
    return " | ".join(parts)


def load_trained(
    path: str | os.PathLike, overrides: list[str] | None = None, progress: bool = False
) -> Experiment:
    """Rebuild a trained agent from a run directory or checkpoint (no dataset needed: normalizers are saved)."""
    state, config_yaml = load_checkpoint(path)
    cfg = load_config(None, overrides, base=yaml.safe_load(config_yaml))
    exp = setup(cfg, with_data=False, progress=progress)
    exp.agent.algorithm.load_state_dict(state["algorithm"])
    exp.ref_min, exp.ref_max = state.get("ref_min_score"), state.get("ref_max_score")
    src = Path(path)
    exp.run_dir = src if (src / "checkpoints").is_dir() else exp.run_dir
    return exp


def eval_run(
    path: str | os.PathLike,
    episodes: int = 50,
    overrides: list[str] | None = None,
    seed: int | None = None,
    progress: bool = False,
    video: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Evaluate a trained run or checkpoint (``seed`` None: the benchmark episodes); returns the summary.

    ``video``: also write the first episode of that seed as an animated GIF there (``video_frames`` frames, or
    100 when the run's config has none).
    """
    exp = load_trained(path, overrides, progress=progress)
    seed = EVAL_SEED if seed is None else seed
    summary = exp.evaluate(episodes, seed=seed).to_dict()
    if video is not None:
        _write_rollout_gif(exp, seed, video, exp.cfg.video_frames or 100)
        summary["video"] = str(video)
    return summary
