"""The training loop: one loop for every agent, offline or online, with the same checkpoints, exact resume, time
budget, TensorBoard scalars, periodic evaluation and ``results.json``.

What differs between offline and online learning is one *step*, chosen by the algorithm's Tianshou type:

* :class:`OfflineSteps`: ``algorithm.update(buffer=batch_source, sample_size=batch_size)``, one gradient step on
  a batch from the agent's dataset (Tianshou's ``OfflineAlgorithm`` signature);
* :class:`OnlineSteps`: a Tianshou ``Collector`` gathers ``env_steps_per_update`` steps from vector envs, then
  ``algorithm.update(buffer, batch_size, repeat)`` (Tianshou's ``OnPolicyAlgorithm`` signature) and the buffer is
  emptied, exactly as Tianshou's ``OnPolicyTrainer`` does one training step.

Why our own loop rather than Tianshou's ``OfflineTrainer`` / ``OnPolicyTrainer``: every update still goes through
Tianshou's ``Algorithm.update`` and every rollout through its ``Collector``, but exact resume needs the training
generators, the step counters and the global RNGs restored mid-run (the trainers resume from epoch/logger
state only), and benchmarks need a wall-clock training budget that excludes evaluations.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from tianshou.algorithm.algorithm_base import TrainingStats
from tianshou.data import Collector, VectorReplayBuffer
from tianshou.utils.torch_utils import policy_within_training_step
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from diffplan.agent import ChunkDecider, OnlineConfig, WarmStartable
from diffplan.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_bytes_atomic,
    write_text_atomic,
)
from diffplan.config import ConfigError, RunConfig, config_yaml
from diffplan.envs import EVAL_SEED, ActionChunks
from diffplan.envs.evaluation import EvalResult
from diffplan.training import distributed
from diffplan.training.distributed import DistContext
from diffplan.training.experiment import (
    Experiment,
    check_runtime,
    default_dataset,
    load_trained,
    machine_info,
    setup,
)
from diffplan.training.lr import apply_lr_schedule, run_progress

log = logging.getLogger("diffplan")


class OfflineSteps:
    """One step = one gradient step on a batch drawn from the agent's dataset (in a data-parallel run: this
    rank's shard of the global batch, :mod:`diffplan.training.distributed`)."""

    unit = "step"

    def __init__(self, exp: Experiment, ctx: DistContext | None = None) -> None:
        sharded = distributed.prepare(exp.agent, exp.cfg, ctx or DistContext())
        if sharded is None:
            raise ConfigError(f"agent {exp.cfg.agent!r} learns offline but was built without a dataset")
        self.exp, self.source = exp, sharded

    def total(self) -> int:
        """Progress-bar length in :attr:`unit`."""
        return self.exp.cfg.train_steps

    def done(self, step: int) -> int:
        """Progress after ``step`` updates, in :attr:`unit`."""
        return step

    def step(self) -> tuple[TrainingStats, int, dict[str, float]]:
        """One update; returns its stats, the progress it made (in :attr:`unit`) and extra scalars to log."""
        with policy_within_training_step(self.exp.agent.policy):
            stats = self.exp.agent.algorithm.update(buffer=self.source, sample_size=self.exp.cfg.batch_size)
        return stats, 1, {}

    def restart(self, step: int) -> None:
        """Called after every checkpoint and on resume (nothing to restart offline)."""

    def state_dict(self) -> dict[str, Any]:
        return {"source": self.source.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state.get("source", {}))

    def close(self) -> None:
        pass


class OnlineSteps:
    """One step = collect ``env_steps_per_update`` env steps with the training policy, then one policy update.

    A :class:`~diffplan.agent.ChunkDecider` policy (DPPO) collects one transition per decided action chunk: its
    training envs are wrapped in :class:`~diffplan.envs.ActionChunks`, and env steps are counted from the
    decisions' ``info["env_steps"]``.

    The training envs are vector envs (``SubprocVectorEnv`` by default, Tianshou's). They restart, reseeded from
    ``(seed, step)``, after every checkpoint and on resume: an interrupted episode cannot be checkpointed, so
    restarting at the same place in both runs is what makes a resumed run continue exactly.
    """

    unit = "env step"

    def __init__(self, exp: Experiment) -> None:
        cfg = exp.cfg
        assert isinstance(cfg, OnlineConfig)
        self.exp, self.cfg = exp, cfg
        wrapper = None
        self.act_steps = 1
        """Env steps per collected transition (a chunk decider's decisions execute several)."""
        if isinstance(exp.agent.policy, ChunkDecider):
            chunk, self.act_steps = exp.agent.policy.decision_chunk()
            wrapper = functools.partial(ActionChunks, chunk=chunk, act_steps=self.act_steps)
        self.transitions = -(-cfg.env_steps_per_update // self.act_steps)
        """Transitions collected per update: ``env_steps_per_update`` env steps, in decisions."""
        self.venv = exp.make_venv(cfg.train_envs, cfg.seed, subproc=cfg.subproc_envs, wrapper=wrapper)
        buffer = VectorReplayBuffer(2 * max(self.transitions, cfg.train_envs), cfg.train_envs)
        self.collector = Collector(exp.agent.policy, self.venv, buffer, exploration_noise=True)
        self.env_steps = 0
        self.restart(0)

    def total(self) -> int:
        return self.cfg.train_steps * self.cfg.env_steps_per_update

    def done(self, step: int) -> int:
        return self.env_steps

    def restart(self, step: int) -> None:
        seed = int(np.random.SeedSequence([self.cfg.seed, step]).generate_state(1)[0] % (2**31 - self.cfg.train_envs))
        self.venv.seed(seed)  # each env i gets seed + i and is reset with it
        self.collector.reset()

    def step(self) -> tuple[TrainingStats, int, dict[str, float]]:
        policy, algorithm = self.exp.agent.policy, self.exp.agent.algorithm
        with policy_within_training_step(policy):
            collected = self.collector.collect(n_step=self.transitions)
            env_steps = collected.n_collected_steps
            if self.act_steps > 1:  # decisions: each says how many env steps it took (fewer at an episode's end)
                buffer = self.collector.buffer
                env_steps = int(np.sum(buffer[buffer.sample_indices(0)].info["env_steps"]))
            stats = algorithm.update(
                buffer=self.collector.buffer, batch_size=self.cfg.batch_size, repeat=self.cfg.update_epochs
            )
        self.collector.reset_buffer(keep_statistics=True)
        self.env_steps += env_steps
        extra = {"env_steps": float(self.env_steps)}
        if collected.n_collected_episodes:
            extra["episode_return"] = float(np.mean(collected.returns))
            extra["episode_length" if self.act_steps == 1 else "episode_decisions"] = float(np.mean(collected.lens))
            if self.exp.ref_min is not None and self.exp.ref_max is not None:
                extra["normalized_score"] = float(
                    100 * (extra["episode_return"] - self.exp.ref_min) / (self.exp.ref_max - self.exp.ref_min)
                )
        return stats, env_steps, extra

    def state_dict(self) -> dict[str, Any]:
        return {"env_steps": self.env_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.env_steps = int(state.get("env_steps", 0))

    def close(self) -> None:
        self.venv.close()


def _rank_state(exp: Experiment, steps: OfflineSteps | OnlineSteps) -> dict[str, Any]:
    """What differs between the ranks of a data-parallel run (the same keys as a checkpoint's top level)."""
    return {
        "generators": {name: g.get_state() for name, g in exp.agent.generators().items()},
        "loop": steps.state_dict(),
        "rng": rng_state(),
    }


def _checkpoint_state(
    exp: Experiment, steps: OfflineSteps | OnlineSteps, step: int, history: list[dict], train_time: float,
    ctx: DistContext | None = None,
) -> dict[str, Any]:
    """The checkpoint of this step. In a data-parallel run every rank must call it (it gathers each rank's
    generator and RNG states to rank 0, under ``ranks``); only rank 0's result is complete and saved."""
    ctx = ctx or DistContext()
    own = _rank_state(exp, steps)
    ranks = distributed.gather(own, ctx) if ctx.enabled else None
    return {
        "algorithm": exp.agent.algorithm.state_dict(),
        **own,
        "world_size": ctx.world,
        **({"ranks": ranks} if ranks is not None else {}),
        "step": step,
        "train_time": train_time,
        "history": json.dumps(history, default=float),
        "ref_min_score": exp.ref_min,
        "ref_max_score": exp.ref_max,
    }


def _restore(
    exp: Experiment, steps: OfflineSteps | OnlineSteps, state: dict[str, Any], ctx: DistContext | None = None
) -> tuple[int, float, list]:
    exp.agent.algorithm.load_state_dict(state["algorithm"])
    ctx = ctx or DistContext()
    if ctx.enabled:  # this rank's own noise streams (check_world made sure the checkpoint has them)
        state = {**state, **state["ranks"][ctx.rank]}
    generators = exp.agent.generators()
    saved = state.get("generators", {"algorithm": state.get("generator")})  # older checkpoints: one generator
    for name, gen_state in saved.items():
        if gen_state is not None and name in generators:
            generators[name].set_state(gen_state)
    steps.load_state_dict(state.get("loop", {}))
    set_rng_state(state["rng"])
    if exp.ref_min is None:  # an online run's reference scores came from its init_from run
        exp.ref_min, exp.ref_max = state.get("ref_min_score"), state.get("ref_max_score")
    return int(state["step"]), float(state["train_time"]), json.loads(state["history"])


def _progress(steps: OfflineSteps | OnlineSteps, step: int) -> dict[str, int]:
    """What a learning curve needs beside the update count: env steps so far for an online run."""
    return {"env_steps": steps.done(step)} if isinstance(steps, OnlineSteps) else {}


def _reference_scores_of(path: str) -> tuple[float | None, float | None]:
    """The reference scores a run (or checkpoint) was normalized with."""
    state, _ = load_checkpoint(path)
    return state.get("ref_min_score"), state.get("ref_max_score")


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


def _eval_line(step: int, summary: dict[str, Any]) -> str:
    parts = [f"step {step}"]
    if "normalized_score" in summary:
        parts.append(f"score {summary['normalized_score']:.1f} ± {summary['normalized_score_se']:.1f}")
    parts.append(f"return {summary['return_mean']:.1f}")
    parts.append(f"success {summary['success_rate']:.2f}")
    if "plan_ms_median" in summary:
        parts.append(f"plan {summary['plan_ms_median']:.0f} ms")
    return " | ".join(parts)


RUN_MARKERS = ("config.yaml", "results.json", "checkpoints")
"""What makes a directory hold a run: any of these entries."""


def claim_run_dir(run_dir: str | os.PathLike, *, overwrite: bool = False) -> Path | None:
    """Make sure a new run may write into ``run_dir``; returns where an old run was moved to (or None).

    A directory that already holds a run (:data:`RUN_MARKERS`) is refused: a new run would overwrite its
    config and results, repoint ``latest`` and rotate its checkpoints away. With ``overwrite`` the old
    directory is *moved* to a timestamped sibling ``<run_dir>.old-<YYYYmmdd-HHMMSS>`` (nothing is deleted).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run_dir {str(run_dir)!r} is a file, not a directory; choose another run_dir")
    held = [m for m in RUN_MARKERS if (run_dir / m).exists()]
    if not held:
        run_dir.mkdir(parents=True, exist_ok=True)  # an unwritable place fails now, not after data and build
        return None
    if not overwrite:
        raise ConfigError(
            f"run_dir {str(run_dir)!r} already holds a run ({', '.join(held)}); continue it with "
            f"`diffplan train --resume {run_dir}`, choose another run_dir, or pass --overwrite to move the old "
            "run aside"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    n = 1
    while aside.exists():  # two overwrites within one second
        aside = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}")
        n += 1
    run_dir.rename(aside)
    log.warning("moved the previous run in %s to %s", run_dir, aside)
    run_dir.mkdir(parents=True)
    return aside


def train(
    cfg: RunConfig, *, resume: str | os.PathLike | None = None, progress: bool = True, overwrite: bool = False
) -> dict[str, Any]:
    """Train ``cfg`` (or continue the run in ``resume``) and return the results written to results.json.

    A new run (``resume`` None) refuses a ``run_dir`` that already holds a run before anything is loaded or
    built; ``overwrite`` moves that run aside instead (:func:`claim_run_dir`).

    Launched by torchrun (``torchrun --nproc-per-node N -m diffplan train ...``), every rank runs this; they
    train one model data-parallel (:mod:`diffplan.training.distributed`) and return rank 0's results.
    """
    check_runtime(cfg)
    ctx = distributed.init(cfg)
    try:
        if resume is None and cfg.run_dir and ctx.main:
            claim_run_dir(cfg.run_dir, overwrite=overwrite)
        if ctx.enabled and not ctx.main:
            distributed.barrier(ctx)  # rank 0 makes the dataset first, if it is not on disk yet
        exp = setup(cfg, progress=progress and ctx.main)
        if ctx.enabled and ctx.main:
            distributed.barrier(ctx)
        return run_experiment(exp, resume=resume, overwrite=overwrite)
    finally:
        distributed.shutdown()


class _NoWriter:
    """TensorBoard on the ranks that do not write (every rank but 0 of a data-parallel run)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _load_resume(path: str | os.PathLike, cfg: RunConfig, ctx: DistContext) -> dict[str, Any]:
    """Rank 0 reads the checkpoint and sends it to the other ranks (no shared file system needed); a bad
    checkpoint is the same one-line error on every rank."""
    if not ctx.enabled:
        state, _ = load_checkpoint(path, map_location=cfg.device)
        return state
    loaded: tuple[dict[str, Any] | None, str] = (None, "")
    if ctx.main:
        try:
            loaded = (load_checkpoint(path, map_location="cpu")[0], "")
        except CheckpointError as exc:
            loaded = (None, str(exc))
    state, error = distributed.broadcast(loaded, ctx)
    if state is None:
        raise CheckpointError(error)
    return state


def run_experiment(
    exp: Experiment, *, resume: str | os.PathLike | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """Train a built experiment in place (its agent ends trained) and return the results of results.json.

    The loop is the same for every agent; :class:`OfflineSteps` or :class:`OnlineSteps` makes one step, by the
    algorithm's type. A new run into a directory that holds a run is refused (``overwrite``: moved aside).
    """
    cfg, progress = exp.cfg, exp.progress
    ctx = distributed.current()
    if ctx.enabled and exp.agent.online:
        raise ConfigError(
            f"agent {cfg.agent!r} learns online: it trains in one process (torchrun is for offline agents); "
            "spread its collection over Ray with vector_env=ray"
        )
    run_dir = exp.run_dir
    resolved_yaml = config_yaml(cfg)
    if ctx.main:
        if resume is None:
            claim_run_dir(run_dir, overwrite=overwrite)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", resolved_yaml)
    init_from = cfg.init_from if isinstance(cfg, OnlineConfig) else ""
    if init_from and resume is None:
        if not isinstance(exp.agent.algorithm, WarmStartable):
            raise ConfigError(f"agent {cfg.agent!r} cannot start from another run (init_from={init_from!r})")
        exp.agent.algorithm.warm_start(init_from)
        if exp.ref_min is None:  # no dataset loaded: the pre-trained run's reference scores normalize this one's
            exp.ref_min, exp.ref_max = _reference_scores_of(init_from)
    state = None
    if resume is not None:
        state = _load_resume(resume, cfg, ctx)
        distributed.check_world(int(state.get("world_size", 1)), ctx, resume)

    steps: OfflineSteps | OnlineSteps = OnlineSteps(exp) if exp.agent.online else OfflineSteps(exp, ctx)
    step, history, train_time = 0, [], 0.0
    bar = None
    try:
        if state is not None:
            try:
                step, train_time, history = _restore(exp, steps, state, ctx)
            except (RuntimeError, KeyError, ValueError) as exc:  # `--resume DIR dim=64`: the weights no longer fit
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CheckpointError(
                    f"--resume {resume}: the checkpoint does not fit the model this config builds ({first}); "
                    "overrides of a resumed run may change budgets and execution settings, not the network"
                ) from exc
            steps.restart(step)
            log.info("resumed %s at step %d", resume, step)
        writer: Any = SummaryWriter(str(run_dir / "tb")) if ctx.main else _NoWriter()
        bar = tqdm(total=steps.total(), initial=steps.done(step), desc=f"train {cfg.agent}", disable=not progress,
                   unit=steps.unit)
        time_limit = cfg.max_train_minutes * 60.0 if cfg.max_train_minutes > 0 else float("inf")
        # CPU time (budget_clock=cpu) makes a minutes budget independent of what else runs on the machine.
        clock = time.process_time if cfg.budget_clock == "cpu" else time.perf_counter
        while step < cfg.train_steps and train_time < time_limit:
            if cfg.lr_decay:  # from the saved counters, before the update: a resumed run continues it exactly
                apply_lr_schedule(exp.agent.algorithm, run_progress(step, cfg.train_steps, train_time, time_limit))
            t0 = clock()
            stats, advanced, scalars = steps.step()
            train_time += clock() - t0
            if ctx.enabled and time_limit < float("inf"):  # every rank stops at the same step
                train_time = distributed.agree_max(train_time, ctx)
            step += 1
            bar.update(advanced)
            if step % cfg.log_every == 0:
                losses = stats.get_loss_stats_dict()
                for key, value in {**losses, **scalars}.items():
                    writer.add_scalar(f"train/{key}", value, step)
                writer.add_scalar("train/steps_per_s", step / max(train_time, 1e-9), step)
                bar.set_postfix(loss=f"{losses.get('loss', float('nan')):.4f}")
            last = step >= cfg.train_steps or train_time >= time_limit
            if cfg.eval_every and step % cfg.eval_every == 0 and not last:
                if ctx.main:
                    summary = _log_eval(writer, exp, exp.evaluate(cfg.eval_episodes, cfg.plot_plans), step)
                    history.append({"step": step, "train_time_s": train_time, **_progress(steps, step), **summary})
                    bar.write(_eval_line(step, summary))
                distributed.barrier(ctx)  # the other ranks wait for rank 0's evaluation here, outside the timing
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and not last:
                ckpt = _checkpoint_state(exp, steps, step, history, train_time, ctx)
                if ctx.main:
                    save_checkpoint(run_dir, step, ckpt, resolved_yaml)
                steps.restart(step)
        # Saved before the final evaluation so that a crash in it loses no training, and saved again after it
        # (same weights and RNG state, so resuming stays exact) so that a resumed run's history keeps this eval.
        final_state = _checkpoint_state(exp, steps, step, history, train_time, ctx)
        if ctx.main:
            save_checkpoint(run_dir, step, final_state, resolved_yaml)
    finally:
        if bar is not None:
            bar.close()
        steps.close()  # the training envs (subprocesses for online agents), also when something above failed
    if not ctx.main:  # rank 0 evaluates and writes; the others get its results
        return distributed.broadcast(None, ctx)

    final = exp.evaluate(cfg.final_eval_episodes, cfg.plot_plans)
    summary = _log_eval(writer, exp, final, step)
    history.append({"step": step, "train_time_s": train_time, **_progress(steps, step), **summary})
    save_checkpoint(run_dir, step, {**final_state, "history": json.dumps(history, default=float)}, resolved_yaml)
    if cfg.video_frames > 0:
        log_rollout_video(writer, exp, step)
    writer.flush()
    writer.close()
    counts = {"env_steps": steps.state_dict()["env_steps"]} if exp.agent.online else {"gradient_steps": step}
    results = {
        "agent": cfg.agent,
        "task": cfg.task,
        "dataset": cfg.dataset or ("" if exp.agent.online else default_dataset(cfg)),
        "seed": cfg.seed,
        "updates": step,
        **counts,
        "train_time_s": train_time,
        "steps_per_s": step / max(train_time, 1e-9),
        "ref_min_score": exp.ref_min,
        "ref_max_score": exp.ref_max,
        "eval_seed": EVAL_SEED,
        "eval_envs": cfg.eval_envs,
        "final": summary,
        "final_episodes": final.per_episode(),
        "history": history,
        "run_dir": str(run_dir),
        **machine_info(),
    }
    if ctx.enabled:
        results["ranks"] = ctx.world
    write_text_atomic(run_dir / "results.json", json.dumps(results, indent=2, default=float))
    return distributed.broadcast(results, ctx)


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
