"""Composed configs: an agent's method file + a task file + an experiment file + command-line overrides.

Precedence, lowest first (each layer is checked key by key, at every depth, against the agent's dataclass)::

    dataclass defaults  <-  method file  <-  task file  <-  experiment file  <-  key=value overrides

* **Method file** ``configs/<agent>/<family>.yaml``: the agent's defaults for a family of tasks (``maze``,
  ``locomotion``; ``default.yaml`` when the agent's settings do not depend on the family; none: the
  dataclass defaults). The family is the task's (:func:`diffplan.envs.task_family`).
* **Task file** ``configs/task/<task>.yaml`` (or any path given as ``task=path.yaml``): the task, its dataset
  and, for a user maze, its ``maze:`` section. It may set only :class:`~diffplan.config.RunConfig` fields,
  the ones every agent shares. A built-in task or a gymnasium id needs no task file.
* **Experiment file**: names its agent and task under ``defaults:`` and holds only what differs::

      defaults: {agent: diffuser, task: pointmaze-large}
      horizon: 384

A YAML file without ``defaults:`` is a flat config (the format before composition, and what a run saves):
dataclass defaults <- file <- overrides, no method or task file. ``agent=`` and ``task=`` on the command
line also choose the method and task files of a composed config.

Loading a config that defines a user maze registers it with :func:`diffplan.envs.maze.register_maze`, so
``make_env(cfg.task)`` works in this process — also for a saved run, whose config keeps the ``maze:`` section.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffplan.config import (
    ConfigError,
    RunConfig,
    check_keys,
    documented_yaml,
    merge_config,
    parse_overrides,
    read_yaml,
    suggest,
)


def _shipped_configs() -> Path:
    """The repository's ``configs/`` (a source checkout or an editable install), else the copy a wheel ships as
    ``diffplan/configs``."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "configs"
    return checkout if (checkout / "task").is_dir() else here / "configs"


CONFIG_DIR = Path(os.environ.get("DIFFPLAN_CONFIG_DIR") or _shipped_configs())
"""The shipped configs (``DIFFPLAN_CONFIG_DIR`` overrides): ``task/``, ``<agent>/``, ``experiments/``."""

Layer = tuple[str, dict[str, Any]]


def config_class(agent: str) -> type[RunConfig]:
    """The config dataclass of a registered agent."""
    from diffplan.agents import AGENTS

    if agent not in AGENTS:
        raise ConfigError(f"unknown agent {agent!r}{suggest(agent, list(AGENTS))}; registered agents: {sorted(AGENTS)}")
    return AGENTS[agent].CONFIG


def _is_agent(name: str) -> bool:
    from diffplan.agents import AGENTS

    return name in AGENTS


def _show(path: Path) -> str:
    """A file's name for messages: relative to the working directory when under it."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def _is_file_arg(source: str | os.PathLike) -> bool:
    return str(source).endswith((".yaml", ".yml")) or Path(source).is_file()


def task_files(config_dir: Path | None = None) -> list[str]:
    """Names of the shipped task files."""
    return sorted(p.stem for p in ((config_dir or CONFIG_DIR) / "task").glob("*.yaml"))


def task_layer(task: str, config_dir: Path | None = None) -> Layer | None:
    """The task file of ``task`` (a name or a path) as a layer; None for a built-in task without a file."""
    from diffplan.envs import is_known_task

    root = config_dir or CONFIG_DIR
    if _is_file_arg(task):
        path = Path(task)
    else:
        path = root / "task" / f"{task}.yaml"
        if not path.is_file():
            if is_known_task(task):
                return None
            raise ConfigError(
                f"unknown task {task!r}{suggest(task, task_files(root))}: no task file {_show(path)} and not a "
                f"built-in task or gymnasium id; task files: {', '.join(task_files(root))}"
            )
    data = read_yaml(path, "task file")
    check_keys(data, RunConfig, _show(path), what="in a task file (only the fields every agent shares)")
    data.setdefault("task", path.stem)  # a file may name another task (e.g. a gymnasium id with a dataset)
    return _show(path), data


def _agent_file_layer(path: Path, what: str) -> Layer:
    """A file of an agent's folder (``configs/<agent>/``) as a layer; it holds method settings only (the task
    file sets the task and maze, the folder names the agent)."""
    data = read_yaml(path, what)
    for key in ("task", "maze", "agent"):
        if key in data:
            raise ConfigError(f"{_show(path)}: a {what} must not set {key!r} (task files and the folder name do)")
    return _show(path), data


def method_layer(agent: str, family: str, config_dir: Path | None = None) -> Layer | None:
    """``configs/<agent>/<family>.yaml``, else ``configs/<agent>/default.yaml``, as a layer (None: neither)."""
    root = (config_dir or CONFIG_DIR) / agent
    for path in (root / f"{family}.yaml", root / "default.yaml"):
        if path.is_file():
            return _agent_file_layer(path, "method file")
    return None


def finetune_layer(agent: str, config_dir: Path | None = None) -> Layer | None:
    """``configs/<agent>/finetune.yaml`` as a layer (None: the agent has none): the settings an agent that also
    trains from scratch uses when it fine-tunes a pre-trained run (e.g. PPO's small exploration noise and clip)."""
    path = (config_dir or CONFIG_DIR) / agent / "finetune.yaml"
    return _agent_file_layer(path, "fine-tuning file") if path.is_file() else None


def _family(task: str, task_data: dict[str, Any] | None) -> str:
    from diffplan.envs import task_family

    return "maze" if task_data and task_data.get("maze") else task_family(task)


def compose_layers(
    agent: str, task: str, config_dir: Path | None = None
) -> tuple[list[Layer], str]:
    """The method and task layers of ``agent`` on ``task`` and the task's name (``task`` may be a path)."""
    layers: list[Layer] = []
    tl = task_layer(task, config_dir)
    name = str(tl[1]["task"]) if tl else task
    ml = method_layer(agent, _family(name, tl[1] if tl else None), config_dir)
    layers.extend(layer for layer in (ml, tl) if layer is not None)
    return layers, name


def load_config(
    source: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    *,
    agent: str | None = None,
    base: dict[str, Any] | None = None,
    presets: Sequence[Layer] = (),
    config_dir: str | os.PathLike | None = None,
) -> RunConfig:
    """Build a validated config.

    Args:
        source: an experiment file (``defaults: {agent, task}`` + what differs), a flat YAML config, an agent
            name (composed with its method file and the task file of ``task=``), or None.
        overrides: dotlist overrides such as ``["train_steps=500", "maze.max_episode_steps=200"]``; they win
            over every file. ``agent=`` / ``task=`` here also select a composed config's method / task file.
        agent: agent name when neither the source nor the overrides give one (a flat config).
        base: a flat mapping applied first (a saved run's config when resuming or evaluating).
        presets: layers above the method and task files and below ``base`` (a fine-tuning file).
        config_dir: where ``task/`` and the method files live (default :data:`CONFIG_DIR`).
    """
    root = Path(config_dir) if config_dir is not None else None
    cli = parse_overrides(overrides or [])
    flat: list[Layer] = [*presets, *([("saved config", dict(base))] if base else [])]
    compose: dict[str, Any] | None = None
    if source is not None and Path(source).is_dir() and not _is_agent(str(source)):
        raise ConfigError(f"{source}: is a directory; give a config or experiment file (.yaml) or an agent name")
    if source is not None and _is_file_arg(source):
        data = read_yaml(source)
        if "defaults" in data:
            compose = data.pop("defaults")
            if not isinstance(compose, dict) or set(compose) - {"agent", "task"}:
                raise ConfigError(f"{source}: `defaults` must be a mapping with `agent` and `task`, got {compose!r}")
            for key in ("agent", "task"):
                if key in data:
                    raise ConfigError(f"{source}: set {key!r} under `defaults:` (it selects the {key}'s file)")
        flat.append((str(source), data))
    elif source is not None:
        compose = {"agent": str(source)}
    if cli:
        flat.append(("command line", cli))

    if compose is None:
        name = agent
        for _, data in flat:
            name = data.get("agent", name)
        if not name:
            raise ConfigError("no agent given: set `agent: <name>` in the YAML or pass agent=<name>")
        layers = flat
    else:
        name = cli.get("agent", compose.get("agent") or agent)
        task = cli.get("task", compose.get("task") or RunConfig.task)
        if not name:
            raise ConfigError(f"{source}: `defaults` names no agent")
        config_class(str(name))  # an unknown agent fails before its method file is looked for
        below, task = compose_layers(str(name), str(task), root)
        if "task" in cli:
            cli["task"] = task  # `task=path/to/maze.yaml` selects the file; the config keeps the task's name
        layers = below + flat
    cls = config_class(str(name))
    cfg = merge_config(cls, layers, what=f"for agent {name!r}")
    cfg.agent = str(name)
    if compose is not None:
        cfg.task = task
    register_task(cfg)
    return cfg


def load_finetune_config(
    source: str | os.PathLike, overrides: list[str] | None, pretrained: dict[str, Any], path: str
) -> RunConfig:
    """The config of ``diffplan finetune SOURCE --from PATH``: ``source`` (an agent, experiment or config file)
    with ``init_from=PATH``; above the method and task files and below the experiment file and ``overrides`` lie
    the agent's fine-tuning file (``configs/<agent>/finetune.yaml``, where it has one) and, above it, the fields
    the agent takes from its pre-trained run (its config class's ``PRETRAINED_KEYS``, from ``pretrained``, that
    run's saved config). The task is the run's unless the command names it; a run
    of another agent or task is refused (:class:`ConfigError`)."""
    overrides = list(overrides or [])
    given = parse_overrides(overrides)
    if "task" not in given and not _is_file_arg(source) and pretrained.get("task"):
        overrides.insert(0, f"task={pretrained['task']}")
    probe = load_config(source, overrides)
    cls = type(probe)
    wanted = getattr(cls, "PRETRAINED_AGENT", "")
    if not wanted:
        raise ConfigError(f"agent {probe.agent!r} does not fine-tune a pre-trained run (finetune: dppo, ppo)")
    if pretrained.get("agent") != wanted:
        raise ConfigError(
            f"--from {path} is a {pretrained.get('agent')!r} run; {probe.agent} fine-tunes a {wanted!r} run"
        )
    if pretrained.get("task") != probe.task:
        raise ConfigError(f"--from {path} was trained on task {pretrained.get('task')!r}, this config is for {probe.task!r}")
    inherited = {k: pretrained[k] for k in cls.PRETRAINED_KEYS if k in pretrained and k not in given}
    preset = finetune_layer(probe.agent)
    return load_config(source, [*overrides, f"init_from={path}"], base=inherited, presets=[preset] if preset else [])


def register_task(cfg: RunConfig) -> None:
    """Make the config's user maze (its ``maze:`` section) known to ``make_env`` in this process."""
    if cfg.maze is None:
        return
    from diffplan.envs.maze import register_maze

    try:
        register_maze(cfg.task, cfg.maze.maze_map, cfg.maze.max_episode_steps)
    except ValueError as exc:
        raise ConfigError(f"task {cfg.task!r}: {exc}") from exc


def load_task(task: str | os.PathLike, config_dir: str | os.PathLike | None = None) -> RunConfig:
    """The task-level config of a task name or task file (registers a user maze); for ``diffplan data make``."""
    layer = task_layer(str(task), Path(config_dir) if config_dir is not None else None)
    cfg = merge_config(RunConfig, [layer] if layer else [])
    cfg.task = str(layer[1]["task"]) if layer else str(task)
    register_task(cfg)
    return cfg


def describe_config(agent: str, task: str | None = None, overrides: list[str] | None = None) -> str:
    """``diffplan config <agent> [task]``: the resolved config as YAML, each field's documentation as comments."""
    extra = [f"task={task}"] if task else []
    cfg = load_config(agent, [*extra, *(overrides or [])])
    layers, _ = compose_layers(agent, task or cfg.task)
    head = [f"# diffplan config {agent}{' ' + task if task else ''}: dataclass defaults"]
    head += [f"#   <- {origin}" for origin, _ in layers]
    if overrides:
        head.append("#   <- command line")
    tuned = CONFIG_DIR / "experiments" / f"{agent}-{cfg.task}.yaml"
    if tuned.is_file():
        pretrained = getattr(type(cfg), "PRETRAINED_AGENT", "")
        command = f"finetune {_show(tuned)} --from <{pretrained} run>" if pretrained else f"train {_show(tuned)}"
        head.append(f"# Tuned experiment for this pair: diffplan {command}")
    return "\n".join(head) + "\n\n" + documented_yaml(cfg)


__all__ = [
    "CONFIG_DIR",
    "compose_layers",
    "config_class",
    "describe_config",
    "load_config",
    "load_finetune_config",
    "load_task",
    "method_layer",
    "register_task",
    "task_files",
    "task_layer",
]
