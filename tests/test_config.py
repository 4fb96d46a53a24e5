"""Config loading: every shipped YAML loads; bad keys and values fail with the key's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffplan.config import ConfigError, config_to_dict, load_config, save_config

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").rglob("*.yaml"))


def test_configs_exist():
    assert CONFIGS, "no configs found"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_loads(path):
    cfg = load_config(path)
    assert cfg.agent == path.parent.name
    assert cfg.task in path.stem or cfg.task.replace("pointmaze-", "") in path.stem


def test_misspelled_key_names_the_key_and_the_valid_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("agent: diffuser\nhorizn: 64\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "'horizn'" in msg and "did you mean 'horizon'" in msg and "valid keys:" in msg and str(path) in msg


def test_misspelled_override():
    with pytest.raises(ConfigError, match="command line: unknown config key 'train_step'"):
        load_config(None, ["train_step=5"], agent="diffuser")


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="horizon"):
        load_config(None, ["horizon=abc"], agent="diffuser")


def test_overrides_win_and_are_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("agent: diffuser\nhorizon: 64\ndim_mults: [1, 2]\n")
    cfg = load_config(path, ["horizon=32", "lr=1e-3", "dim_mults=[1,2,4]"])
    assert cfg.horizon == 32 and cfg.lr == pytest.approx(1e-3) and list(cfg.dim_mults) == [1, 2, 4]


def test_unknown_agent_and_missing_agent(tmp_path):
    with pytest.raises(ConfigError, match="unknown agent 'nope'"):
        load_config(None, ["agent=nope"])
    with pytest.raises(ConfigError, match="no agent given"):
        load_config(None, ["seed=1"])


def test_bad_override_syntax_and_yaml(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["horizon"], agent="diffuser")
    path = tmp_path / "broken.yaml"
    path.write_text("agent: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_agent_validation():
    with pytest.raises(ConfigError, match="divisible by 4"):
        load_config(None, ["horizon=30"], agent="diffuser")
    with pytest.raises(ConfigError, match="tracking"):
        load_config(None, ["tracking=teleport"], agent="diffuser")


def test_save_and_reload(tmp_path):
    cfg = load_config(None, ["horizon=32", "seed=3"], agent="diffuser")
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert config_to_dict(again) == config_to_dict(cfg)
