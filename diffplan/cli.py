"""The ``diffplan`` command: data, train, finetune, eval, sweep, quickstart, bench, serve, deploy.

Examples::

    diffplan quickstart
    diffplan data make pointmaze-umaze --steps 200000
    diffplan data make my-maze.yaml --steps 100000          # a task file with a maze: section
    diffplan data info minari:diffplan/pointmaze-umaze-v0
    diffplan train diffuser task=pointmaze-umaze train_steps=20000 seed=1
    diffplan train configs/experiments/diffuser-pointmaze-large.yaml seed=1
    diffplan config diffuser pointmaze-large
    diffplan train --resume runs/diffuser-pointmaze-umaze-s0-...
    diffplan finetune dppo --from runs/diffusion_bc-hopper-medium-s0-... train_steps=50
    diffplan eval runs/diffuser-pointmaze-umaze-s0-... --episodes 100
    torchrun --nproc-per-node 2 -m diffplan train diffuser task=pointmaze-umaze batch_size=64
    diffplan sweep diffuser task=pointmaze-umaze lr=1e-3,3e-4 seed=0,1,2 --out sweeps/lr
    diffplan serve --env Hopper-v5 --port 5555 --hz 50
    diffplan deploy runs/quickstart --robot tcp://127.0.0.1:5555
    diffplan robot keys robot-keys --client laptop
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
    from diffplan.config import ConfigError
    from diffplan.data import DatasetError, recipes
    from diffplan.envs import split_locomotion_task

    if args.steps < 1:
        raise ConfigError(f"data make --steps {args.steps}: give a dataset size of at least 1 env step")
    _check_seed(args.seed, "data make")
    task = load_task(args.name).task  # a task name or a task file; a user maze gets registered
    if args.id is not None:
        from minari.dataset.minari_dataset import parse_dataset_id

        try:
            parse_dataset_id(args.id)  # Minari's own parser; an id without -v<N> fails there with a TypeError
        except (ValueError, TypeError):
            raise DatasetError(
                f"data make --id {args.id!r}: a Minari id looks like <namespace>/<name>-v<version>, e.g. "
                "diffplan/my-maze-v0"
            ) from None
    if args.id is not None and recipes.dataset_dir(args.id).exists():
        raise DatasetError(
            f"data make --id {args.id}: a Minari dataset with this id already exists at "
            f"{recipes.dataset_dir(args.id)}; choose another --id (nothing was overwritten)"
        )
    loco = split_locomotion_task(task)
    if args.time_limit_min is not None and (loco is None or loco[1] != "medium-replay"):
        raise ConfigError("data make --time-limit-min applies to locomotion medium-replay datasets only")
    if args.time_limit_min is not None and args.time_limit_min <= 0:
        raise ConfigError(f"data make --time-limit-min {args.time_limit_min}: give a positive number of minutes")
    start = time.perf_counter()
    if loco is not None and loco[1] == "medium-replay":
        from diffplan.data.recipes.locomotion import make_dataset

        # The replay buffer's SAC run takes a wall-time budget the other recipes have no use for.
        limit = None if args.time_limit_min is None else 60 * args.time_limit_min
        dataset_id = make_dataset(task, None if args.steps == recipes.DEFAULT_STEPS else args.steps, args.seed,
                                  args.id, progress=True, replay_time_limit_s=limit)
    else:
        dataset_id = recipes.make(
            task, steps=args.steps, seed=args.seed, noisy=args.noisy, minari_id=args.id, progress=True
        )
    wall = time.perf_counter() - start
    print(f"wrote minari:{dataset_id} in {wall:.1f}s")
    if args.json:
        import datetime

        from diffplan.checkpoint import write_text_atomic

        command = f"diffplan data make {args.name}" + "".join(
            f" {flag} {value}" for flag, value, default in (
                ("--steps", args.steps, 1_000_000), ("--seed", args.seed, 0), ("--id", args.id, None),
                ("--time-limit-min", args.time_limit_min, None)) if value != default
        ) + (" --noisy" if args.noisy else "")
        summary = {**dataset_info(f"minari:{dataset_id}"), "wall_s": round(wall, 1), "load_avg": os.getloadavg(),
                   "command": command, "date": datetime.date.today().isoformat()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(args.json), json.dumps(summary, indent=1, default=float))
    return 0


def _check_seed(seed: int, command: str) -> None:
    """Seeds feed numpy's SeedSequence, which takes non-negative integers only."""
    from diffplan.config import ConfigError

    if seed < 0:
        raise ConfigError(f"{command} --seed {seed}: a seed is a non-negative integer")


def cmd_data_measure_zoo(args: argparse.Namespace) -> int:
    import datetime
    import platform
    import time

    from diffplan.behaviour import EXPERT_ALGO, MEDIUM_TARGETS, choose_medium, measure_zoo
    from diffplan.checkpoint import write_text_atomic

    _check_seed(args.seed, "data measure-zoo")
    start = time.perf_counter()
    candidates = measure_zoo(args.zoo_dir, args.env or None, None, args.episodes, args.seed)
    result = {
        "command": f"diffplan data measure-zoo {args.zoo_dir} --episodes {args.episodes} --seed {args.seed}"
                   + "".join(f" --env {e}" for e in args.env or []),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, 1 torch thread",
        "load_avg": os.getloadavg(),
        "wall_s": round(time.perf_counter() - start, 1),
        "protocol": f"Gymnasium v5, 1000-step limit, {args.episodes} episodes per row from reset seeds "
                    f"{args.seed}..{args.seed + args.episodes - 1}; stochastic = actions sampled as the datasets "
                    "sample them, deterministic = the mean action",
        "medium_targets": MEDIUM_TARGETS,
        "choice": {env: {"expert": EXPERT_ALGO, "medium": choose_medium(candidates, env)} for env in candidates},
        "candidates": candidates,
    }
    write_text_atomic(Path(args.out), json.dumps(result, indent=1))
    print(f"wrote {args.out}: medium = {result['choice']}")
    return 0


def cmd_data_convert_zoo(args: argparse.Namespace) -> int:
    from diffplan.behaviour import convert_zoo
    from diffplan.config import ConfigError

    path = Path(args.candidates)
    if not path.exists():
        raise ConfigError(f"data convert-zoo --candidates {path}: no such file (`diffplan data measure-zoo` writes it)")
    try:
        measured = json.loads(path.read_text())
        candidates, choice = measured["candidates"], measured["choice"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"data convert-zoo --candidates {path}: not a measure-zoo result ({exc!r})") from None
    infos = convert_zoo(args.zoo_dir, candidates, args.policy_dir,
                        medium={env: c["medium"] for env, c in choice.items()})
    for env, info in infos.items():
        print(f"[{env}] expert {info['expert']['algo']} ({info['expert']['stochastic']['mean']:.0f}), medium "
              f"{info['medium']['algo']} ({info['medium']['stochastic']['mean']:.0f})")
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
        **{k: meta[k] for k in ("recipe", "maze", "task", "seed", "noisy", "kind", "behaviour", "timing", "frame",
                                "frame_conversion", "ref_scores_from", "d4rl_ref_scores", "dropped_stale_rows",
                                "own_random_return", "own_expert_return", "dataset_returns", "n_envs")
           if k in meta},
    }


def cmd_data_info(args: argparse.Namespace) -> int:
    _print_json(dataset_info(args.source))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from diffplan.checkpoint import CheckpointError, parse_saved_config
    from diffplan.compose import load_config
    from diffplan.training import train

    if args.config is not None and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.config)  # `train --resume DIR key=value`: no config file given
        args.config = None
    if args.resume:
        saved_path = Path(args.resume) / "config.yaml"
        if not saved_path.exists():
            raise CheckpointError(f"--resume {args.resume}: not a run directory (no config.yaml)")
        saved = parse_saved_config(saved_path.read_text(), str(saved_path))
        cfg = load_config(args.config, args.overrides, base=saved)
        cfg.run_dir = str(args.resume)
    else:
        if args.config is None:
            print("diffplan train: give an agent, an experiment or config file (or --resume RUN_DIR)", file=sys.stderr)
            return 2
        cfg = load_config(args.config, args.overrides)
    results = train(cfg, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    from diffplan.training.distributed import launched

    if not launched() or os.environ.get("RANK") == "0":  # under torchrun, rank 0 alone prints
        _print_final(results)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from diffplan.checkpoint import load_checkpoint, parse_saved_config, resolve_checkpoint
    from diffplan.compose import load_finetune_config
    from diffplan.config import ConfigError
    from diffplan.training import train

    if not Path(args.source).exists():
        raise ConfigError(f"finetune --from {args.source}: no such run directory or checkpoint")
    _, config_yaml = load_checkpoint(args.source)
    saved = parse_saved_config(config_yaml, f"checkpoint {resolve_checkpoint(args.source)}: config.yaml")
    cfg = load_finetune_config(args.config, args.overrides, saved, str(args.source))
    results = train(cfg, progress=not args.no_progress, overwrite=args.overwrite)
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
    from diffplan.config import ConfigError
    from diffplan.training import eval_run

    if args.episodes < 1:
        raise ConfigError(f"eval --episodes {args.episodes}: evaluate at least 1 episode")
    if args.seed is not None:
        _check_seed(args.seed, "eval")
    if args.video is not None and Path(args.video).is_dir():
        raise ConfigError(f"eval --video {args.video}: is a directory; give a file name such as {args.video}/run.gif")
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
    results = train(cfg, progress=not args.no_progress, overwrite=args.overwrite)
    _print_final(results)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from diffplan.bench import BENCHMARKS

    result = BENCHMARKS[args.what](args)
    if args.what == "suite":  # its progress lines were the output; the JSON is one file per run
        print(f"{len(result['runs'])} runs: " + ", ".join(
            f"{n} {s}" for s, n in sorted(_count(result["runs"].values()).items())))
        return 1 if result["failed"] else 0
    _print_json(result)
    return 0


def _count(values: Any) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(values))


def cmd_sweep(args: argparse.Namespace) -> int:
    """Exit 0 when every run finished, 1 when some failed (the others are kept; run it again to retry them)."""
    from diffplan.sweep import SUMMARY, run_sweep

    config, items = args.config, list(args.items)
    if "=" in config and not config.endswith((".yaml", ".yml")):  # `sweep task=... agent=...`: no config given
        items.insert(0, config)
        config = None
    out = args.out or str(Path("sweeps") / (Path(config).stem if config else "sweep"))
    command = " ".join(["diffplan sweep", args.config, *args.items, *(["--address", args.address] if args.address else [])])
    summary = run_sweep(config, items, out, address=args.address, retries=args.retries, command=command)
    for g in summary["groups"]:
        print(f"{g['agent']} {g['task']} {g['setting'] or '(no swept keys)'}: {g['metric']} {g['mean']:.1f} ± "
              f"{g['se']:.1f} over seeds {g['seeds']}")
    print(f"summary: {Path(out) / SUMMARY}")
    return 1 if summary["failed"] else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from diffplan.deploy.cli import serve_command

    return serve_command(args)


def cmd_deploy(args: argparse.Namespace) -> int:
    from diffplan.deploy.cli import deploy_command

    return deploy_command(args)


def cmd_robot_keys(args: argparse.Namespace) -> int:
    from diffplan.deploy.cli import keys_command

    return keys_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffplan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="make or inspect datasets").add_subparsers(dest="data_command", required=True)
    from diffplan.data import recipes
    from diffplan.envs import LOCOMOTION_ENVS

    make = data.add_parser("make", help="generate a local Minari dataset (D4RL maze2d / locomotion recipes)")
    make.add_argument("name", help=f"a task file (a user maze) or a task: {', '.join(recipes.tasks())}")
    make.add_argument("--steps", type=int, default=1_000_000,
                      help="dataset size in env steps (medium-expert: per policy; medium-replay: at most)")
    make.add_argument("--json", default=None, help="write the dataset summary and wall time here")
    make.add_argument("--time-limit-min", type=float, default=None,
                      help="medium-replay: wall-time budget of its SAC run (default: until the medium return)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--noisy", action="store_true", help="Gaussian action noise 0.5, as D4RL's noisy variant")
    make.add_argument("--id", default=None, help="Minari dataset id (default diffplan/<name>[-noisy][-<N>k]-v0)")
    make.set_defaults(func=cmd_data_make)
    mz = data.add_parser("measure-zoo", help="measure the RL Zoo's policies on the v5 envs (JSON)")
    mz.add_argument("zoo_dir", help="the exported Zoo policies: <algo>/<Env>/weights.npz and the license")
    mz.add_argument("--env", action="append", choices=sorted(LOCOMOTION_ENVS), help="only this env (repeatable)")
    mz.add_argument("--episodes", type=int, default=5)
    mz.add_argument("--seed", type=int, default=0)
    mz.add_argument("--out", default="benchmarks/behaviour/zoo_candidates.json")
    mz.set_defaults(func=cmd_data_measure_zoo)
    cz = data.add_parser("convert-zoo", help="ship the chosen Zoo policies as safetensors (+ license, summary)")
    cz.add_argument("zoo_dir", help="the exported Zoo policies: <algo>/<Env>/weights.npz and the license")
    cz.add_argument("--candidates", default="benchmarks/behaviour/zoo_candidates.json",
                    help="measure-zoo's result: the measured returns and the choice")
    cz.add_argument("--policy-dir", default=None, help="where the policies go (default: the shipped ones)")
    cz.set_defaults(func=cmd_data_convert_zoo)
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
    train.add_argument("--overwrite", action="store_true",
                       help="run_dir holds a run: move it aside to <run_dir>.old-<time> (nothing is deleted)")
    train.set_defaults(func=cmd_train)

    ft = sub.add_parser("finetune", help="fine-tune a pre-trained run online (dppo from diffusion_bc, ppo from bc)")
    ft.add_argument("config", help="dppo | ppo, or an experiment / config file of one")
    ft.add_argument("overrides", nargs="*", help="key=value overrides")
    ft.add_argument("--from", dest="source", required=True, help="the pre-trained run directory (or checkpoint)")
    ft.add_argument("--no-progress", action="store_true")
    ft.add_argument("--overwrite", action="store_true",
                    help="run_dir holds a run: move it aside to <run_dir>.old-<time> (nothing is deleted)")
    ft.set_defaults(func=cmd_finetune)

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
    qs.add_argument("--overwrite", action="store_true",
                    help="--out holds a run: move it aside to <out>.old-<time> (nothing is deleted)")
    qs.set_defaults(func=cmd_quickstart)

    bench = sub.add_parser("bench", help="benchmarks that write JSON results")
    bench.add_argument("what", choices=["plan", "train", "maze", "curve", "report", "ddp", "sweep", "fastgen",
                                        "suite", "dppo", "dppo-throughput"])
    bench.add_argument(
        "path", nargs="?",
        help="run directory (plan, maze, curve), config (train), suite file (suite) or results folder (report, "
        "default benchmarks)",
    )
    bench.add_argument("overrides", nargs="*", help="key=value overrides (curve: more run directories)")
    bench.add_argument("--episodes", type=int, default=50)
    bench.add_argument("--repeats", type=int, default=50)
    bench.add_argument("--steps", type=int, default=300, help="env steps timed for the decision latency (plan)")
    bench.add_argument("--out", default=None, help="JSON file to write (report: the page, default <folder>/README.md; "
                       "suite: the JSON folder, default benchmarks/suites/<name>)")
    bench.add_argument("--ranks", default="1,2", help="ddp: numbers of torchrun ranks to compare")
    bench.add_argument("--plan-to-end", action="store_true",
                       help="maze: also score plans followed to their end, no switch to the goal-directed PD")
    bench.add_argument("--plan-latency", action="store_true", help="maze: also time --repeats plans at batch 1")
    bench.add_argument("--runs", default=None, help="suite: run directories (default runs/suites/<name>)")
    bench.add_argument("--only", default=None,
                       help="suite: comma-separated patterns of run names <task>/<agent>-s<seed> (fnmatch)")
    bench.add_argument("--dry-run", action="store_true", help="suite: list the runs and their state, run nothing")
    bench.add_argument("--parallel", type=int, default=1,
                       help="suite: runs at once, each in its own process (0: in this process)")
    bench.set_defaults(func=cmd_bench)

    sweep = sub.add_parser("sweep", help="many runs (every combination of key=v1,v2 ... seed=0,1,2) as Ray tasks")
    sweep.add_argument("config", help="an agent, an experiment or config file (as train takes)")
    sweep.add_argument("items", nargs="*", help="key=value overrides; key=v1,v2 sweeps the values")
    sweep.add_argument("--out", default=None, help="the sweep's folder: one run directory per combination "
                       "and summary.json (default sweeps/<config>); run again to continue a sweep")
    sweep.add_argument("--address", default="", help="Ray cluster (auto, host:port); default: a local Ray")
    sweep.add_argument("--retries", type=int, default=3, help="restarts of a run whose worker died")
    sweep.set_defaults(func=cmd_sweep)

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
    serve.add_argument("--keys", default=None, metavar="KEYDIR",
                       help="CURVE keys (diffplan robot keys): admit only its clients; required unless --host is loopback")
    serve.set_defaults(func=cmd_serve)
    deploy = sub.add_parser("deploy", help="drive a served robot with a trained chunk planner")
    deploy.add_argument("run_dir")
    deploy.add_argument("overrides", nargs="*", help="key=value overrides of execution settings")
    deploy.add_argument("--robot", required=True, help="tcp://host:port of `diffplan serve`")
    deploy.add_argument("--episodes", type=int, default=1)
    deploy.add_argument("--seed", type=int, default=0)
    deploy.add_argument("--execute-ticks", type=int, default=8, help="new actions per plan (at least the lead)")
    deploy.add_argument("--timeout", type=float, default=1.0, help="deadline of every request (s)")
    deploy.add_argument("--keys", default=None, metavar="KEYDIR", help="CURVE key directory of a --keys server")
    deploy.add_argument("--client", default="client", help="client name in --keys (clients/NAME.key_secret)")
    deploy.add_argument("--latency-budget-ms", type=float, default=None,
                        help="fit every plan into this many ms (fewer solver steps); default: the run's setting")
    deploy.set_defaults(func=cmd_deploy)
    robot = sub.add_parser("robot", help="robot bridge utilities").add_subparsers(dest="robot_command", required=True)
    keys = robot.add_parser("keys", help="make CURVE keys: a server key pair and one per client (secrets 0600)")
    keys.add_argument("keydir", help="directory to write (the server key pair is kept if it exists)")
    keys.add_argument("--client", action="append", default=None, metavar="NAME",
                      help="client to make keys for (repeatable; default: one named 'client')")
    keys.set_defaults(func=cmd_robot_keys)
    return parser


def _quiet_import_notices() -> None:
    """gymnasium-robotics prints a notice about its Adroit hand envs (which diffplan never uses) to stderr when it
    is imported, from ``farama_notifications``; on the command line it would be a second stderr line beside every
    error. Drop that notice before the first import (nothing else reads the table)."""
    try:
        from farama_notifications import notifications
    except ImportError:
        return
    notifications.pop("gymnasium_robotics", None)


def main(argv: list[str] | None = None) -> int:
    from diffplan.behaviour import BehaviourPolicyError
    from diffplan.checkpoint import CheckpointError
    from diffplan.config import ConfigError
    from diffplan.data import DatasetError
    from diffplan.report import ReportError

    _quiet_import_notices()
    parser = build_parser()
    # Options may come after key=value overrides (`train cfg.yaml k=v --no-progress`): argparse stops filling a
    # positional list at the first option, so what is left over is handed back to the command's overrides.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(item.startswith("-") or "=" not in item for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides.extend(extra)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DatasetError, CheckpointError, BehaviourPolicyError, ReportError) as exc:
        print(f"diffplan: error: {exc}", file=sys.stderr)
        return 2
    except (PermissionError, NotADirectoryError, FileExistsError) as exc:
        # A path the user chose that cannot be written (a read-only run_dir, a file where a folder must go):
        # the user's to fix, not a bug, so no traceback.
        where = exc.filename if exc.filename is not None else "a path"
        print(f"diffplan: error: cannot write {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
