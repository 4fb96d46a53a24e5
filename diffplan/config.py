"""Experiment configuration: YAML + ``key=value`` overrides -> a validated, typed dataclass.

Every agent defines one config dataclass that extends :class:`RunConfig` (the fields every experiment
shares). A YAML file names its agent with ``agent: <name>``; :func:`load_config` looks that agent up in
the registry, merges the YAML and the command-line overrides onto ``OmegaConf.structured(<Dataclass>)``
and returns the dataclass instance. Unknown keys and wrongly typed values are errors that name the key
and list the valid keys — a misspelled key must never be silently ignored.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

T = TypeVar("T", bound="RunConfig")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending key and the valid ones."""


@dataclass
class RunConfig:
    """Fields shared by every experiment, whatever the agent."""

    agent: str = ""
    """Registered agent name (``diffplan.agents.AGENTS``); selects the config dataclass."""
    task: str = "pointmaze-umaze"
    """Environment task used for evaluation (``diffplan.envs.make_env``), e.g. ``pointmaze-medium``."""
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
    """Stop training after this much training wall time (evaluations excluded), even before train_steps;
    0: no limit. Benchmarks use it for "score within N minutes of CPU training"."""
    batch_size: int = 32
    """Training batch size."""
    lr: float = 2e-4
    """Adam learning rate."""
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


def _registry() -> dict[str, Any]:
    from diffplan.agents import AGENTS

    return AGENTS


def config_class(agent: str) -> type[RunConfig]:
    """The config dataclass of a registered agent."""
    agents = _registry()
    if agent not in agents:
        raise ConfigError(f"unknown agent {agent!r}; registered agents: {sorted(agents)}")
    return agents[agent].CONFIG


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(data: dict[str, Any], cls: type[RunConfig], origin: str) -> None:
    valid = [f.name for f in fields(cls)]
    for key in data:
        if key not in valid:
            raise ConfigError(
                f"{origin}: unknown config key {key!r}{_suggest(str(key), valid)} for agent "
                f"{data.get('agent', cls.agent)!r}; valid keys: {', '.join(valid)}"
            )


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    *,
    agent: str | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Build a validated config from a YAML file and ``key=value`` overrides.

    Args:
        path: YAML file (flat mapping of config keys), or None.
        overrides: dotlist overrides such as ``["train_steps=500", "horizon=64"]``; they win over the YAML.
        agent: agent name when neither the YAML nor the overrides give one.
        base: a mapping applied before the YAML (e.g. a saved run's config when resuming).
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    if base:
        layers.append(("saved config", dict(base)))
    if path is not None:
        text = Path(path).read_text()
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of keys to values")
        layers.append((str(path), data))
    override_map: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, value = item.split("=", 1)
        override_map[key.strip()] = yaml.safe_load(value) if value != "" else ""
    if override_map:
        layers.append(("command line", override_map))

    name = agent
    for _, data in layers:
        name = data.get("agent", name)
    if not name:
        raise ConfigError("no agent given: set `agent: <name>` in the YAML or pass agent=<name>")
    cls = config_class(str(name))

    merged = OmegaConf.structured(cls)
    for origin, data in layers:
        _check_keys(data, cls, origin)
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(data))
        except ConfigKeyError as exc:  # pragma: no cover - _check_keys catches these first
            raise ConfigError(f"{origin}: {exc.msg}") from exc
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", "?")
            raise ConfigError(f"{origin}: bad value for key {key!r}: {exc.msg}") from exc
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, cls)
    cfg.agent = str(name)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain-python mapping of a config (lists instead of ListConfig), for YAML and checkpoints."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def save_config(cfg: RunConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    from diffplan.checkpoint import write_text_atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
