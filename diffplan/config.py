"""Typed experiment configs: the shared :class:`RunConfig` fields and the merge/validation machinery.

This is a low-level module: it knows dataclasses, YAML and OmegaConf, not the agent registry nor the task
files (composition from method, task and experiment files is :mod:`diffplan.compose`). Given a config
dataclass and a list of ``(origin, mapping)`` layers, :func:`merge_config` checks every key at every depth
(nested sections are nested dataclass fields), merges the layers in order onto
``OmegaConf.structured(<Dataclass>)`` and returns the validated dataclass instance. Unknown keys, wrongly
typed values and bad values are one-line :class:`ConfigError` messages that name the key, where it came from
and, for a misspelling, the closest valid key — a misspelled key must never be silently ignored.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import itertools
import os
import re
import textwrap
import typing
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending key and the valid ones."""


# Cell values of a maze map: gymnasium-robotics' convention (``gymnasium_robotics.envs.maze.maps``).
MAZE_CELLS = (0, 1, "g", "r", "c")


@dataclass
class MazeConfig:
    """A PointMaze layout of a user-defined task (a task file's ``maze:`` section).

    Saved with every run's config, so a run of a user maze can be evaluated later without its task file.
    """

    maze_map: list[list[Any]] = dataclasses.field(default_factory=list)
    """Rows of cells, top row first (gymnasium-robotics' convention): 1 wall, 0 free, "g" goal cell, "r" start
    cell, "c" both. Without any "g"/"c" (or "r"/"c") cell, goals (or starts) are drawn from every free cell.
    The border must be walls and every free cell reachable from every other."""
    max_episode_steps: int = 300
    """Fixed length of an evaluation episode (the built-in mazes: 300 / 600 / 800 steps for umaze / medium /
    large), also the recipe's step limit toward one goal."""

    def validate(self) -> None:
        rows = self.maze_map
        if not rows or not all(isinstance(r, list) and r for r in rows):
            raise ConfigError("maze.maze_map: give a list of rows, each a non-empty list of cells")
        width = len(rows[0])
        if any(len(r) != width for r in rows):
            raise ConfigError(f"maze.maze_map: rows have different lengths {[len(r) for r in rows]}")
        for i, row in enumerate(rows):
            for j, v in enumerate(row):
                if v not in MAZE_CELLS or isinstance(v, bool):
                    raise ConfigError(
                        f"maze.maze_map: cell ({i}, {j}) is {v!r}; cells are 1 (wall), 0 (free), "
                        '"g" (goal), "r" (start) or "c" (start or goal)'
                    )
                border = i in (0, len(rows) - 1) or j in (0, width - 1)
                if border and v != 1:
                    raise ConfigError(f"maze.maze_map: border cell ({i}, {j}) must be a wall (1), got {v!r}")
        free = [(i, j) for i, row in enumerate(rows) for j, v in enumerate(row) if v != 1]
        if len(free) < 2:
            raise ConfigError("maze.maze_map: needs at least two free cells (distinct start and goal)")
        seen, queue = {free[0]}, deque([free[0]])
        while queue:
            i, j = queue.popleft()
            for nxt in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
                if nxt not in seen and rows[nxt[0]][nxt[1]] != 1:
                    seen.add(nxt)
                    queue.append(nxt)
        if len(seen) != len(free):
            lost = next(c for c in free if c not in seen)
            raise ConfigError(f"maze.maze_map: free cell {lost} cannot be reached from {free[0]}")
        goals = [c for c in free if rows[c[0]][c[1]] in ("g", "c")] or free
        starts = [c for c in free if rows[c[0]][c[1]] in ("r", "c")] or free
        if not any(s != g for s in starts for g in goals):
            raise ConfigError("maze.maze_map: no start cell differs from a goal cell")
        if self.max_episode_steps < 1:
            raise ConfigError(f"maze.max_episode_steps must be >= 1, got {self.max_episode_steps}")


@dataclass
class RunConfig:
    """Fields shared by every experiment, whatever the agent."""

    agent: str = ""
    """Registered agent name (``diffplan.agents.AGENTS``); selects the config dataclass."""
    task: str = "pointmaze-umaze"
    """Environment task used for evaluation (``diffplan.envs.make_env``), e.g. ``pointmaze-medium``; a
    task file (``configs/task/<task>.yaml``) may define it."""
    maze: Optional[MazeConfig] = None  # noqa: UP045 - OmegaConf reads typing.Optional, not `X | None`
    """A user-defined maze (set by the task file that defines the task); null: ``task`` is a built-in task
    or a gymnasium id."""
    dataset: str = ""
    """Dataset source: ``minari:<id>``, ``d4rl:<file.hdf5>`` or a path. Empty: the task's own generated dataset
    (``minari:diffplan/<task>-v0``), made on first use."""
    dataset_steps: int = 1_000_000
    """Size of the generated dataset when ``dataset`` is empty and it does not exist yet."""
    seed: int = 0
    """Seeds the model initialisation, the training sampler and the evaluation environments."""
    device: str = "cpu"
    """Torch device for training and planning."""
    torch_threads: int = 0
    """torch.set_num_threads; 0: one per CPU core. Use 1 when several runs share the machine."""
    train_steps: int = 10_000
    """Number of gradient steps."""
    max_train_minutes: float = 0.0
    """Stop training after this much training time (evaluations excluded; ``budget_clock`` says which clock),
    even before train_steps; 0: no limit. Benchmarks use it for "score within N minutes of CPU training"."""
    budget_clock: str = "wall"
    """The clock of ``max_train_minutes`` (and of ``train_time_s``, steps/s): ``wall`` (elapsed time) or
    ``cpu`` (this process's CPU time over all its threads). A CPU budget is the one other work on the machine
    cannot shrink: with ``torch_threads=1`` a CPU-minute is about a minute of one idle core, whatever else
    runs. Online agents' env worker processes are not counted in it."""
    batch_size: int = 32
    """Training batch size."""
    lr: float = 2e-4
    """Adam learning rate."""
    lr_decay: bool = False
    """Cosine-anneal every learning rate of the agent to 0 over the run (Diffusion-QL's ``--lr_decay``): over
    ``train_steps``, or with ``max_train_minutes`` over whichever budget ends the run first, by the fraction of
    it spent (:mod:`diffplan.training.lr`)."""
    eval_every: int = 2_000
    """Evaluate every this many gradient steps (0: only at the end)."""
    eval_episodes: int = 10
    """Episodes per periodic evaluation."""
    eval_envs: int = 5
    """Parallel environments in the evaluation collector."""
    final_eval_episodes: int = 50
    """Episodes of the final evaluation written to results.json."""
    checkpoint_every: int = 5_000
    """Save a checkpoint every this many gradient steps (0: only at the end)."""
    log_every: int = 100
    """Log training scalars every this many gradient steps."""
    run_dir: str = ""
    """Where logs, checkpoints and results go. Empty: ``runs/<agent>-<task>-<seed>-<timestamp>``."""
    plot_plans: int = 8
    """Plans drawn into TensorBoard at each evaluation (0: none)."""
    video_frames: int = 0
    """After the final evaluation, log one protocol episode as an animated GIF to TensorBoard (``eval/rollout``,
    also ``videos/`` in the run directory) with at most this many frames (0: no video). MuJoCo renders in
    software on a machine without a GPU (0.1-0.4 s a frame on a 2-core CPU), hence the cap."""
    video_every: int = 4
    """Env steps between two video frames."""
    vector_env: str = ""
    """Vector env of evaluations and online training: dummy | subproc | ray (Tianshou's DummyVectorEnv,
    SubprocVectorEnv, RayVectorEnv: one Ray actor per env, spread over a Ray cluster). Empty: dummy for
    evaluations; online agents' ``subproc_envs`` decides for their training envs."""
    ray_address: str = ""
    """The Ray cluster of ``vector_env=ray``: empty starts a local Ray; ``auto`` or ``host:port`` joins one."""


_AT_LEAST_ONE = ("train_steps", "batch_size", "log_every", "final_eval_episodes", "eval_envs", "dataset_steps",
                 "video_every")
BUDGET_CLOCKS = ("wall", "cpu")
"""Values of :attr:`RunConfig.budget_clock`."""
_NOT_NEGATIVE = ("seed", "eval_every", "checkpoint_every", "max_train_minutes", "torch_threads", "plot_plans", "video_frames")


def check_run_fields(cfg: RunConfig) -> None:
    """The checks on the fields every agent shares (:class:`RunConfig`), run before the agent's own ``validate``.

    A zero or negative budget would not fail later: ``train_steps=0`` reported an untrained model's score as a
    result, ``final_eval_episodes=0`` a NaN score, ``log_every=0`` a ZeroDivisionError mid-run. To evaluate a
    trained run use ``diffplan eval``.
    """
    for name in _AT_LEAST_ONE:
        value = getattr(cfg, name)
        if value < 1:
            raise ConfigError(f"{name}={value} must be >= 1")
    for name in _NOT_NEGATIVE:
        value = getattr(cfg, name)
        if value < 0:
            raise ConfigError(f"{name}={value} must be >= 0")
    if cfg.budget_clock not in BUDGET_CLOCKS:
        raise ConfigError(f"budget_clock={cfg.budget_clock!r}: expected one of {', '.join(BUDGET_CLOCKS)}")
    if cfg.eval_every > 0 and cfg.eval_episodes < 1:
        raise ConfigError(f"eval_episodes={cfg.eval_episodes} must be >= 1 when eval_every={cfg.eval_every} > 0")


# ------------------------------------------------------------------------------------------ reading input


def read_yaml(path: str | os.PathLike, what: str = "config file") -> dict[str, Any]:
    """A YAML file's top-level mapping; a missing file, bad YAML or a non-mapping is a :class:`ConfigError`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such {what}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} must be a mapping of keys to values")
    return data


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["horizon=64", "maze.max_episode_steps=200"]`` -> ``{"horizon": 64, "maze": {"max_episode_steps": 200}}``.

    Values are parsed as YAML (``dim_mults=[1,2]`` is a list, ``lr=1e-3`` a float); an empty value is "".
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML") from exc
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} was given a value and cannot have keys")
            node = child
        node[leaf] = parsed
    return out


# ------------------------------------------------------------------------------------------- validation


def suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def section_class(cls: type, name: str) -> type | None:
    """The dataclass of field ``name`` of ``cls`` when it is a nested section (also ``Optional[...]``)."""
    hint = _type_hints(cls).get(name)
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


def check_keys(data: Mapping[str, Any], cls: type, origin: str, prefix: str = "", what: str = "") -> None:
    """Every key of ``data`` (recursively into nested sections) is a field of ``cls``, else ``ConfigError``.

    Args:
        data: one layer (a file's or the command line's mapping).
        cls: the config dataclass the layer is merged into.
        origin: where the layer came from (a path, "command line"), first word of every message.
        prefix: dotted path of ``data`` inside the config (for nested sections).
        what: a phrase naming what ``cls`` is (e.g. "for agent 'diffuser'") for the message.
    """
    valid = [f.name for f in fields(cls)]
    for key, value in data.items():
        if key not in valid:
            full = [f"{prefix}{v}" for v in valid]
            raise ConfigError(
                f"{origin}: unknown config key {prefix + str(key)!r}{suggest(prefix + str(key), full)}"
                f"{' ' + what if what else ''}; valid keys: {', '.join(full)}"
            )
        sub = section_class(cls, key)
        if sub is None:
            continue
        if isinstance(value, Mapping):
            check_keys(value, sub, origin, f"{prefix}{key}.", what)
        elif value is not None:
            raise ConfigError(
                f"{origin}: {prefix + key!r} is a section: give a mapping of its keys "
                f"({', '.join(f.name for f in fields(sub))}), got {value!r}"
            )


def _leaf_origins(data: Mapping[str, Any], origin: str, prefix: str, out: dict[str, str]) -> None:
    for key, value in data.items():
        if isinstance(value, Mapping):
            _leaf_origins(value, origin, f"{prefix}{key}.", out)
        out[f"{prefix}{key}"] = origin


def _validate_tree(obj: Any, origins: dict[str, str]) -> None:
    """Call ``validate()`` on nested sections first, then on ``obj``; name where the culprit keys were set."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate_tree(value, origins)
    validate = getattr(obj, "validate", None)
    if not callable(validate) and not isinstance(obj, RunConfig):
        return
    try:
        if isinstance(obj, RunConfig):  # whether or not the agent's validate() calls up to these checks
            check_run_fields(obj)
        if callable(validate):
            validate()
    except ConfigError as exc:
        msg = str(exc)
        named = sorted({o for k, o in origins.items() if re.search(rf"\b{re.escape(k)}\b", msg)})
        raise ConfigError(f"{msg} (set in: {', '.join(named)})" if named else msg) from exc


def merge_config(cls: type[T], layers: Sequence[tuple[str, Mapping[str, Any]]], what: str = "") -> T:
    """Merge ``layers`` (lowest precedence first) onto ``cls``'s defaults and return the validated instance.

    Args:
        cls: a config dataclass (nested dataclass fields are sections).
        layers: ``(origin, mapping)`` pairs; a later layer wins key by key, nested sections merge key by key,
            lists are replaced whole.
        what: phrase for unknown-key messages, e.g. "for agent 'diffuser'".
    """
    merged = OmegaConf.structured(cls)
    origins: dict[str, str] = {}
    for origin, data in layers:
        check_keys(data, cls, origin, what=what)
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(dict(data)))
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", None) or "?"
            detail = str(getattr(exc, "msg", exc)).splitlines()[0]
            raise ConfigError(f"{origin}: bad value for key {key!r}: {detail}") from exc
        _leaf_origins(data, origin, "", origins)
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, cls)
    _validate_tree(cfg, origins)
    return cfg


# --------------------------------------------------------------------------------------------- writing


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-python mapping of a config (lists instead of ListConfig), for YAML and checkpoints."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def config_yaml(cfg: Any) -> str:
    """The resolved config as YAML (a run's ``config.yaml``): lists of scalars on one line, a maze map row by row."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None, width=110)


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    from diffplan.checkpoint import write_text_atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, config_yaml(cfg))


def field_docs(cls: type) -> dict[str, str]:
    """Each field's documentation: the string literal right under it in the class body (read with ``ast``).

    Base classes are read first, so a subclass that redeclares a field documents it anew.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # defined in a REPL or a notebook cell: no source to read
            continue
        body = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)).body
        for node, nxt in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}".rstrip() for line in text.splitlines()]


def documented_yaml(cfg: Any, indent: str = "") -> str:
    """``cfg`` as YAML with every field's documentation as comments above it (nested sections too).

    The output loads back (``yaml.safe_load``) to :func:`config_to_dict` of ``cfg``.
    """
    docs = field_docs(type(cfg))
    lines: list[str] = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in docs:
            lines.extend(_comment(docs[f.name], indent))
        if dataclasses.is_dataclass(value):
            lines.append(f"{indent}{f.name}:")
            lines.append(documented_yaml(value, indent + "  ").rstrip("\n"))
            continue
        # Flow style for lists of scalars (``dim_mults: [1, 2, 4]``; a maze map gets one row per line).
        flow = None if isinstance(value, list) else False
        text = yaml.safe_dump({f.name: value}, default_flow_style=flow, sort_keys=False, width=100)
        lines.extend(indent + line for line in text.rstrip("\n").splitlines())
    return "\n".join(lines) + "\n"
