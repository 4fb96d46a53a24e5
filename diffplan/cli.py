"""The ``diffplan`` command: data, train, eval, quickstart, bench, serve, deploy.

Examples::

    diffplan quickstart
    diffplan data make pointmaze-umaze --steps 200000
    diffplan data make my-maze.yaml --steps 100000          # a task file with a maze: section
    diffplan data info minari:diffplan/pointmaze-umaze-v0
    diffplan train diffuser task=pointmaze-umaze train_steps=20000 seed=1
    diffplan train configs/experiments/diffuser-pointmaze-large.yaml seed=1
    diffplan config diffuser pointmaze-large
    diffplan train --resume runs/diffuser-pointmaze-umaze-s0-...
    diffplan eval runs/diffuser-pointmaze-umaze-s0-... --episodes 100
    diffplan serve --env Hopper-v5 --port 5555 --hz 50
    diffplan deploy runs/quickstart --robot tcp://127.0.0.1:5555
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

QUICKSTART: dict[str, Any] = {
    # A small planner on a 200k-step UMaze dataset, sized to finish in under 10 minutes on 2 CPU cores.
    "agent": "diffuser",
    "task": "pointmaze-umaze",
    "dataset_steps": 200_000,
    "horizon": 128,
    "dim": 32,
    "dim_mults": [1, 2, 4],
    "train_steps": 2_000,
    "batch_size": 32,
    "lr": 1e-3,
    "eval_every": 1_000,
    "eval_episodes": 10,
    "final_eval_episodes": 50,
    "checkpoint_every": 1_000,
    "sampling_steps": 10,
}


def _print_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2, default=float))


def cmd_data_make(args: argparse.Namespace) -> int:
    import time

    from diffplan.compose import load_task
    from diffplan.data import recipes
    from diffplan.envs import split_locomotion_task

    task = load_task(args.name).task  # a task name or a task file; a user maze gets registered
    if args.retrain:
        loco = split_locomotion_task(task)
        if loco is None:
            print("diffplan: error: --retrain applies to locomotion datasets only", file=sys.stderr)
            return 2
        from diffplan.behaviour import retrain
        from diffplan.envs.evaluation import evaluate

        retrain(loco[0], evaluate=evaluate)
    start = time.perf_counter()
    dataset_id = recipes.make(
        task, steps=args.steps, seed=args.seed, noisy=args.noisy, minari_id=args.id, progress=True
    )
    wall = time.perf_counter() - start
    print(f"wrote minari:{dataset_id} in {wall:.1f}s")
    if args.json:
        from diffplan.checkpoint import write_text_atomic

        summary = {**dataset_info(f"minari:{dataset_id}"), "wall_s": round(wall, 1), "load_avg": os.getloadavg()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(args.json), json.dumps(summary, indent=1, default=float))
    return 0


def cmd_data_train_behaviour(args: argparse.Namespace) -> int:
    from diffplan.behaviour import SACTrainConfig, retrain
    from diffplan.envs.evaluation import evaluate

    cfg = SACTrainConfig(
        seed=args.seed, max_env_steps=args.max_env_steps, epoch_steps=args.epoch_steps,
        start_steps=min(10_000, args.max_env_steps),
        time_limit_s=None if args.time_limit_min is None else 60 * args.time_limit_min,
    )
    retrain(args.env, args.run_dir, cfg, args.policy_dir, evaluate=evaluate, expert=args.expert)
    return 0


def dataset_info(source: str) -> dict[str, Any]:
    """Summary of a dataset source: size, episodes, returns, reference scores."""
    import numpy as np

    from diffplan.data import load_episodes

    episodes = load_episodes(source)
    returns = episodes.returns()
    meta = episodes.metadata
    return {
        "source": source,
        "steps": int(episodes.num_steps),
        "episodes": int(episodes.num_episodes),
        "obs_dim": int(episodes.obs_dim),
        "act_dim": int(episodes.act_dim),
        "goal_dim": int(episodes.goal_dim) if episodes.goal is not None else 0,
        "episode_length_mean": float(np.mean(episodes.lengths)),
        "return_mean": float(np.mean(returns)),
        "return_min": float(np.min(returns)),
        "return_max": float(np.max(returns)),
        "ref_min_score": meta.get("ref_min_score"),
        "ref_max_score": meta.get("ref_max_score"),
        **{k: meta[k] for k in ("recipe", "maze", "task", "seed", "noisy", "kind", "behaviour", "timing") if k in meta},
    }


def cmd_data_info(args: argparse.Namespace) -> int:
    _print_json(dataset_info(args.source))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import yaml

    from diffplan.checkpoint import CheckpointError
    from diffplan.compose import load_config
    from diffplan.training import train

    if args.config is not None and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.config)  # `train --resume DIR key=value`: no config file given
        args.config = None
    if args.resume:
        saved_path = Path(args.resume) / "config.yaml"
        if not saved_path.exists():
            raise CheckpointError(f"--resume {args.resume}: not a run directory (no config.yaml)")
        saved = yaml.safe_load(saved_path.read_text())
        cfg = load_config(args.config, args.overrides, base=saved)
        cfg.run_dir = str(args.resume)
    else:
        if args.config is None:
            print("diffplan train: give an agent, an experiment or config file (or --resume RUN_DIR)", file=sys.stderr)
            return 2
        cfg = load_config(args.config, args.overrides)
    results = train(cfg, resume=args.resume, progress=not args.no_progress)
    _print_final(results)
    return 0


def _print_final(results: dict[str, Any]) -> None:
    final = results["final"]
    line = (f"final ({final['episodes']} episodes): return {final['return_mean']:.1f} ± {final['return_se']:.1f}, "
            f"success {final['success_rate']:.2f}")
    if "normalized_score" in final:
        line += f", normalized score {final['normalized_score']:.1f} ± {final['normalized_score_se']:.1f}"
    if "plan_ms_median" in final:
        line += f", plan {final['plan_ms_median']:.0f} ms"
    print(line)
    run_dir = results["run_dir"]
    print(f"run directory: {run_dir}  (results.json, checkpoints/, plans/*.png)")
    print(f"TensorBoard:   tensorboard --logdir {run_dir}/tb")


def cmd_eval(args: argparse.Namespace) -> int:
    from diffplan.training import eval_run

    summary = eval_run(
        args.path, episodes=args.episodes, overrides=args.overrides, seed=args.seed,
        progress=not args.no_progress, video=args.video,
    )
    _print_json(summary)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from diffplan.compose import describe_config

    print(describe_config(args.agent, args.task, args.overrides), end="")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from diffplan.compose import load_config
    from diffplan.training import train

    overrides = list(args.overrides)
    cfg = load_config(None, overrides, base={**QUICKSTART, "run_dir": args.out})
    print(
        f"diffplan quickstart: Diffuser planner on {cfg.task}, {cfg.dataset_steps} dataset steps, "
        f"{cfg.train_steps} gradient steps -> {cfg.run_dir}"
    )
    results = train(cfg, progress=not args.no_progress)
    _print_final(results)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from diffplan.bench import BENCHMARKS

    result = BENCHMARKS[args.what](args)
    _print_json(result)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from diffplan.deploy.cli import serve_command

    return serve_command(args)


def cmd_deploy(args: argparse.Namespace) -> int:
    from diffplan.deploy.cli import deploy_command

    return deploy_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffplan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="make or inspect datasets").add_subparsers(dest="data_command", required=True)
    from diffplan.behaviour import EXPERT_RULES
    from diffplan.data import recipes
    from diffplan.envs import LOCOMOTION_ENVS

    make = data.add_parser("make", help="generate a local Minari dataset (D4RL maze2d / locomotion recipes)")
    make.add_argument("name", help=f"a task file (a user maze) or a task: {', '.join(recipes.tasks())}")
    make.add_argument("--steps", type=int, default=1_000_000,
                      help="dataset size in env steps (medium-expert: per policy; medium-replay: at most)")
    make.add_argument("--json", default=None, help="write the dataset summary and wall time here")
    make.add_argument("--retrain", action="store_true",
                      help="locomotion: train the behaviour policies again (hours) instead of the shipped ones")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--noisy", action="store_true", help="Gaussian action noise 0.5, as D4RL's noisy variant")
    make.add_argument("--id", default=None, help="Minari dataset id (default diffplan/<name>[-noisy][-<N>k]-v0)")
    make.set_defaults(func=cmd_data_make)
    tb = data.add_parser("train-behaviour", help="train a locomotion env's SAC behaviour policies (slow)")
    tb.add_argument("env", choices=sorted(LOCOMOTION_ENVS))
    tb.add_argument("--seed", type=int, default=0)
    tb.add_argument("--max-env-steps", type=int, default=1_000_000)
    tb.add_argument("--time-limit-min", type=float, default=None, help="stop at the first evaluation after this")
    tb.add_argument("--epoch-steps", type=int, default=5_000, help="env steps between checkpoints")
    tb.add_argument("--run-dir", default=None,
                    help="default runs/behaviour/<env>-<time>; a finished run there is only finalized")
    tb.add_argument("--expert", choices=EXPERT_RULES, default="last",
                    help="expert = last checkpoint (D4RL) or the best-evaluated one (short, unstable runs)")
    tb.add_argument("--policy-dir", default=None, help="where the policies go (default: the shipped ones)")
    tb.set_defaults(func=cmd_data_train_behaviour)
    info = data.add_parser("info", help="print size, episodes, returns and reference scores")
    info.add_argument("source", help="minari:<id> | d4rl:<file.hdf5> | <path>")
    info.set_defaults(func=cmd_data_info)

    train = sub.add_parser("train", help="train an agent on a task (composed config) or from a YAML file")
    train.add_argument(
        "config", nargs="?",
        help="an agent (with task=<task or task file>), configs/experiments/<name>.yaml or a flat config file",
    )
    train.add_argument("overrides", nargs="*", help="key=value overrides")
    train.add_argument("--resume", default=None, help="run directory to continue exactly where it stopped")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=cmd_train)

    cfg = sub.add_parser("config", help="print an agent's resolved config on a task, each field documented")
    cfg.add_argument("agent")
    cfg.add_argument("task", nargs="?", help="task name or task file (default: the agent's default task)")
    cfg.add_argument("overrides", nargs="*", help="key=value overrides")
    cfg.set_defaults(func=cmd_config)

    ev = sub.add_parser("eval", help="evaluate a run directory or checkpoint")
    ev.add_argument("path")
    ev.add_argument("overrides", nargs="*", help="key=value overrides of execution settings")
    ev.add_argument("--episodes", type=int, default=50)
    ev.add_argument(
        "--seed", type=int, default=None,
        help="seed of the start/goal draws (default: the benchmark episodes; tune settings on another seed)",
    )
    ev.add_argument("--no-progress", action="store_true")
    ev.add_argument("--video", default=None, help="also write the first episode as an animated GIF to this path")
    ev.set_defaults(func=cmd_eval)

    qs = sub.add_parser("quickstart", help="make a small maze dataset, train a planner, evaluate it")
    qs.add_argument("overrides", nargs="*", help="key=value overrides of the embedded config")
    qs.add_argument("--out", default="runs/quickstart")
    qs.add_argument("--no-progress", action="store_true")
    qs.set_defaults(func=cmd_quickstart)

    bench = sub.add_parser("bench", help="benchmarks that write JSON results")
    bench.add_argument("what", choices=["plan", "train", "maze", "curve", "report", "fastgen"])
    bench.add_argument(
        "path", nargs="?",
        help="run directory (plan, maze, curve), config (train) or results folder (report, default benchmarks)",
    )
    bench.add_argument("overrides", nargs="*", help="key=value overrides (curve: more run directories)")
    bench.add_argument("--episodes", type=int, default=50)
    bench.add_argument("--repeats", type=int, default=50)
    bench.add_argument("--steps", type=int, default=300, help="env steps timed for the decision latency (plan)")
    bench.add_argument("--out", default=None, help="JSON file to write (report: the page, default <folder>/README.md)")
    bench.set_defaults(func=cmd_bench)

    # The real-robot bridge (needs the 'robot' extra); handlers import it only when run.
    serve = sub.add_parser("serve", help="serve a MuJoCo env (or a robot backend) as a robot over ZeroMQ")
    serve.add_argument("--env", required=True, help="task name or gymnasium MuJoCo id (Hopper-v5), or 'mock'")
    serve.add_argument("--port", type=int, default=5555, help="command port; observations on port+1")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0: all)")
    serve.add_argument("--hz", type=float, default=50.0, help="control rate (ticks per second)")
    serve.add_argument("--watchdog-ticks", type=int, default=5, help="silent ticks before the server holds")
    serve.add_argument("--margin", type=float, default=0.02, help="bound margin, fraction of each range")
    serve.add_argument("--max-step", type=float, default=0.25, help="rate limit per tick, fraction of range")
    serve.add_argument("--seed", type=int, default=0)
    serve.set_defaults(func=cmd_serve)
    deploy = sub.add_parser("deploy", help="drive a served robot with a trained chunk planner")
    deploy.add_argument("run_dir")
    deploy.add_argument("overrides", nargs="*", help="key=value overrides of execution settings")
    deploy.add_argument("--robot", required=True, help="tcp://host:port of `diffplan serve`")
    deploy.add_argument("--episodes", type=int, default=1)
    deploy.add_argument("--seed", type=int, default=0)
    deploy.add_argument("--execute-ticks", type=int, default=8, help="new actions per plan (at least the lead)")
    deploy.add_argument("--timeout", type=float, default=1.0, help="deadline of every request (s)")
    deploy.add_argument("--latency-budget-ms", type=float, default=None,
                        help="fit every plan into this many ms (fewer solver steps); default: the run's setting")
    deploy.set_defaults(func=cmd_deploy)
    return parser


def main(argv: list[str] | None = None) -> int:
    from diffplan.behaviour import BehaviourPolicyError
    from diffplan.checkpoint import CheckpointError
    from diffplan.config import ConfigError
    from diffplan.data import DatasetError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DatasetError, CheckpointError, BehaviourPolicyError) as exc:
        print(f"diffplan: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
