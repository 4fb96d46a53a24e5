"""Configs: composition (method <- task <- experiment <- overrides), nested sections, one-line errors at every
depth naming the file, `diffplan config`, flat (pre-composition) files and saved runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from diffplan.agents import AGENTS
from diffplan.cli import main
from diffplan.compose import CONFIG_DIR, describe_config, load_config, task_files
from diffplan.config import (
    ConfigError,
    MazeConfig,
    RunConfig,
    config_to_dict,
    config_yaml,
    documented_yaml,
    field_docs,
    merge_config,
    parse_overrides,
    save_config,
)
from diffplan.envs.maze import MAZE_TASKS

EXPERIMENTS = sorted((CONFIG_DIR / "experiments").glob("*.yaml"))
METHODS = sorted(p for p in CONFIG_DIR.glob("*/*.yaml") if p.parent.name not in ("task", "experiments"))
TASKS = task_files()



# --------------------------------------------------------------------------------------- shipped files


def test_shipped_tree():
    assert len(TASKS) >= 12 and EXPERIMENTS and METHODS
    for path in METHODS:
        assert path.parent.name in AGENTS, path
        # a fine-tuning file only for an agent that can start from a pre-trained run
        finetunes = bool(getattr(AGENTS[path.parent.name].CONFIG, "PRETRAINED_AGENT", ""))
        assert path.stem in ("maze", "locomotion", "default", *(("finetune",) if finetunes else ())), path
    # configs/ grows as agents + tasks: no per-(agent, task) files outside experiments/.
    assert len(list(CONFIG_DIR.rglob("*.yaml"))) == len(TASKS) + len(EXPERIMENTS) + len(METHODS)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_loads_and_holds_only_what_differs(path):
    cfg = load_config(path)
    data = yaml.safe_load(path.read_text())
    assert (cfg.agent, cfg.task) == (data["defaults"]["agent"], data["defaults"]["task"])
    plain = config_to_dict(load_config(cfg.agent, [f"task={cfg.task}"]))
    for key, value in data.items():
        if key != "defaults":
            assert plain[key] != value, f"{path.name}: {key} equals the composed default"


@pytest.mark.parametrize("agent", sorted(AGENTS))
def test_every_agent_composes_with_every_task_file(agent):
    for task in TASKS:
        cfg = load_config(agent, [f"task={task}"])
        assert cfg.agent == agent and cfg.task == yaml.safe_load((CONFIG_DIR / "task" / f"{task}.yaml").read_text())["task"]


# ---------------------------------------------------------------------------------------- composition


def _tree(tmp_path: Path) -> Path:
    (tmp_path / "task").mkdir()
    (tmp_path / "diffuser").mkdir()
    (tmp_path / "diffuser" / "maze.yaml").write_text("train_steps: 1\nhorizon: 64\nlr: 0.1\nbatch_size: 7\n")
    (tmp_path / "diffuser" / "default.yaml").write_text("train_steps: 99\n")
    (tmp_path / "task" / "pointmaze-umaze.yaml").write_text("task: pointmaze-umaze\ntrain_steps: 2\nlr: 0.2\n")
    return tmp_path


def test_precedence_method_task_experiment_overrides(tmp_path):
    root = _tree(tmp_path)
    exp = tmp_path / "exp.yaml"
    exp.write_text("defaults: {agent: diffuser, task: pointmaze-umaze}\ntrain_steps: 3\nhorizon: 32\n")
    cfg = load_config(exp, ["train_steps=4"], config_dir=root)
    # batch_size: method only; lr: task over method; horizon: experiment over method; train_steps: override.
    assert (cfg.batch_size, cfg.lr, cfg.horizon, cfg.train_steps) == (7, 0.2, 32, 4)
    cfg = load_config("diffuser", ["task=pointmaze-umaze"], config_dir=root)
    assert (cfg.train_steps, cfg.horizon, cfg.lr) == (2, 64, 0.2)
    # The family's method file wins over default.yaml; a task of another family falls back to default.yaml.
    assert load_config("diffuser", ["task=hopper-medium"], config_dir=root).train_steps == 99


def test_agent_and_task_overrides_select_the_files(tmp_path):
    root = _tree(tmp_path)
    exp = tmp_path / "exp.yaml"
    exp.write_text("defaults: {agent: diffuser, task: hopper-medium}\n")
    assert load_config(exp, config_dir=root).train_steps == 99
    assert load_config(exp, ["task=pointmaze-umaze"], config_dir=root).train_steps == 2
    with pytest.raises(ConfigError, match="unknown agent 'difuser' \\(did you mean 'diffuser'\\?\\)"):
        load_config("difuser")


def test_old_flat_yaml_is_not_composed(tmp_path):
    """A file without `defaults:` means what it meant before composition: dataclass defaults + the file."""
    flat = tmp_path / "mine.yaml"
    flat.write_text("agent: bc\ntask: hopper-medium\nhidden: [64, 64]\n")
    cfg = load_config(flat)
    assert cfg.torch_threads == 0 and list(cfg.hidden) == [64, 64]  # configs/bc/default.yaml says 1
    assert load_config("bc", ["task=hopper-medium"]).torch_threads == 1


def test_saved_run_configs_load_including_pre_composition_ones(tmp_path):
    cfg = load_config("diffuser", ["task=pointmaze-medium", "seed=3"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert config_to_dict(again) == config_to_dict(cfg)
    old = config_to_dict(cfg)
    del old["maze"]  # a run saved before nested sections existed
    assert config_to_dict(load_config(None, ["seed=4"], base=old)) == {**config_to_dict(cfg), "seed": 4}


# -------------------------------------------------------------------------------------------- errors


def test_misspelled_key_names_the_key_the_file_and_the_valid_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("agent: diffuser\nhorizn: 64\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "'horizn'" in msg and "did you mean 'horizon'" in msg and "valid keys:" in msg and str(path) in msg
    with pytest.raises(ConfigError, match="command line: unknown config key 'train_step'"):
        load_config("diffuser", ["train_step=5"])


def test_wrong_types_and_values_name_the_key_and_origin(tmp_path):
    with pytest.raises(ConfigError, match="command line: bad value for key 'horizon'"):
        load_config("diffuser", ["horizon=abc"])
    with pytest.raises(ConfigError, match="divisible by 4.*set in: command line"):
        load_config("diffuser", ["horizon=30"])
    with pytest.raises(ConfigError, match="tracking"):
        load_config(None, ["tracking=teleport"], agent="diffuser")
    cfg = load_config(None, ["horizon=32", "lr=1e-3", "dim_mults=[1,2,4]"], agent="diffuser")
    assert cfg.horizon == 32 and cfg.lr == pytest.approx(1e-3) and list(cfg.dim_mults) == [1, 2, 4]


def test_bad_syntax_and_missing_agent():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("diffuser", ["horizon"])
    with pytest.raises(ConfigError, match="no agent given"):
        load_config(None, ["seed=1"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("agent: [unclosed\n", "not valid YAML"),
        ("- a list\n", "must be a mapping"),
        ("defaults: {agent: diffuser}\nagent: bc\n", "set 'agent' under `defaults:`"),
        ("defaults: [diffuser]\n", "`defaults` must be a mapping"),
    ],
)
def test_bad_config_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"bad.yaml: .*{message}"):
        load_config(path)


def test_bad_and_missing_task_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown task 'pointmaze-umaz' \\(did you mean 'pointmaze-umaze'\\?\\)"):
        load_config("diffuser", ["task=pointmaze-umaz"])
    with pytest.raises(ConfigError, match="nope.yaml: no such task file"):
        load_config("diffuser", [f"task={tmp_path / 'nope.yaml'}"])
    task = tmp_path / "t.yaml"
    task.write_text("task: my-maze\nhorizon: 64\n")  # an agent's key: a task file is combined with any agent
    with pytest.raises(ConfigError, match=r"t\.yaml: unknown config key 'horizon' in a task file"):
        load_config("diffuser", [f"task={task}"])
    task.write_text("task: my-maze\nmaze:\n  maze_map: [[1, 1, 1], [1, 0, 1], [1, 1, 1]]\n  max_episod_steps: 9\n")
    with pytest.raises(ConfigError, match=r"t\.yaml: unknown config key 'maze\.max_episod_steps' "
                                          r"\(did you mean 'maze\.max_episode_steps'\?\)"):
        load_config("diffuser", [f"task={task}"])
    task.write_text("task: my-maze\nmaze: 5\n")
    with pytest.raises(ConfigError, match="'maze' is a section: give a mapping"):
        load_config("diffuser", [f"task={task}"])


# ------------------------------------------------------------------------------------- nested sections


@dataclass
class _Level:
    horizon: int = 8
    """Planning horizon of this level."""
    dims: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class _TwoLevel(RunConfig):
    high: _Level = field(default_factory=_Level)
    """The high-level planner."""
    low: _Level = field(default_factory=lambda: _Level(horizon=4))


def test_nested_sections_merge_and_fail_clearly_at_depth():
    cfg = merge_config(
        _TwoLevel, [("m.yaml", {"high": {"horizon": 32}}), ("command line", parse_overrides(["low.dims=[3]"]))]
    )
    assert (cfg.high.horizon, cfg.high.dims, cfg.low.horizon, cfg.low.dims) == (32, [1, 2], 4, [3])
    with pytest.raises(ConfigError, match="m.yaml: unknown config key 'high.horizn' \\(did you mean 'high.horizon'"):
        merge_config(_TwoLevel, [("m.yaml", {"high": {"horizn": 1}})])
    with pytest.raises(ConfigError, match="command line: bad value for key 'low.horizon'"):
        merge_config(_TwoLevel, [("command line", parse_overrides(["low.horizon=abc"]))])
    with pytest.raises(ConfigError, match="'low' was given a value and cannot have keys"):
        parse_overrides(["low=1", "low.horizon=2"])
    text = documented_yaml(cfg)
    assert "  # Planning horizon of this level." in text and "# The high-level planner." in text
    assert yaml.safe_load(text) == config_to_dict(cfg)


# ------------------------------------------------------------------------------------------ user mazes


RING = {"maze_map": [[1, 1, 1, 1, 1], [1, 0, 0, "g", 1], [1, 0, 1, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]]}


@pytest.mark.parametrize(
    ("maze_map", "message"),
    [
        ([[1, 1, 1], [1, 0, 1, 1], [1, 1, 1]], "rows have different lengths"),
        ([[1, 1, 1, 1], [1, 0, 2, 1], [1, 1, 1, 1]], r"cell \(1, 2\) is 2"),
        ([[1, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]], r"border cell \(1, 0\) must be a wall"),
        ([[1, 1, 1, 1, 1], [1, 0, 1, 0, 1], [1, 1, 1, 1, 1]], r"free cell \(1, 3\) cannot be reached"),
        ([[1, 1, 1], [1, 0, 1], [1, 1, 1]], "needs at least two free cells"),
        ([[1, 1, 1, 1], [1, "c", 0, 1], [1, 1, 1, 1]], "no start cell differs from a goal cell"),
        ([], "give a list of rows"),
    ],
)
def test_bad_maze_maps_are_one_line_errors(maze_map, message):
    with pytest.raises(ConfigError, match=f"maze.maze_map: {message}.*set in: t.yaml"):
        merge_config(RunConfig, [("t.yaml", {"task": "x", "maze": {"maze_map": maze_map}})])


def test_user_maze_registers_and_cannot_shadow_a_builtin(tmp_path):
    task = tmp_path / "ring.yaml"
    task.write_text(yaml.safe_dump({"task": "tiny-ring", "maze": {**RING, "max_episode_steps": 50}}))
    cfg = load_config("diffuser", [f"task={task}"])
    assert cfg.task == "tiny-ring" and cfg.maze.max_episode_steps == 50
    assert MAZE_TASKS["tiny-ring"].maze_map == RING["maze_map"]
    assert "configs/diffuser/maze.yaml" in describe_config("diffuser", str(task)).splitlines()[1]
    task.write_text(yaml.safe_dump({"task": "pointmaze-umaze", "maze": RING}))
    with pytest.raises(ConfigError, match="'pointmaze-umaze' is a built-in maze task"):
        load_config("diffuser", [f"task={task}"])


# ------------------------------------------------------------------------------------ diffplan config


def test_diffplan_config_prints_documented_resolved_yaml(capsys):
    assert main(["config", "diffuser", "pointmaze-large", "seed=2"]) == 0
    out = capsys.readouterr().out
    cfg = load_config("diffuser", ["task=pointmaze-large", "seed=2"])
    assert yaml.safe_load(out) == config_to_dict(cfg)
    docs = field_docs(type(cfg))
    assert "# " + docs["horizon"].splitlines()[0] in out and "# " + docs["seed"].splitlines()[0] in out
    assert "configs/experiments/diffuser-pointmaze-large.yaml" in out  # points at the tuned experiment
    assert "# <- configs/task/pointmaze-large.yaml" in out.replace("#   <-", "# <-")


def test_field_docs_include_inherited_fields():
    docs = field_docs(AGENTS["bc"].CONFIG)
    assert docs["seed"].startswith("Seeds the model") and "hidden" in docs
    assert field_docs(MazeConfig)["max_episode_steps"].startswith("Fixed length")


def test_config_yaml_round_trips():
    cfg = load_config("diffuser", [f"task={CONFIG_DIR / 'task' / 'pointmaze-ring.yaml'}"])
    text = config_yaml(cfg)
    assert "- [1, 1, 1, 1, 1, 1]" in text  # a maze map reads row by row
    assert config_to_dict(load_config(None, base=yaml.safe_load(text))) == config_to_dict(cfg)
