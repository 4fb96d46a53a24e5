"""The README's commands and CI stay in sync."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "python -m pytest -q --nbmake tests notebooks"
    assert command in readme and command in ci
    # ... after installing the same extras (the Ray tests need `distributed`)
    extras = '-e ".[dev,robot,distributed]"'
    assert f'pip install {extras} && {command}' in readme and f"install --quiet {extras}" in ci
    assert "diffplan quickstart" in readme


def test_every_readme_config_path_exists():
    readme = (ROOT / "README.md").read_text()
    for word in readme.split():
        if word.startswith("configs/") and word.endswith(".yaml") and "<" not in word:
            assert (ROOT / word).exists(), word
