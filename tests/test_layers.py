"""The import layers of pyproject.toml's ``[tool.importlinter]`` contracts hold, and the check can fail.

agents/ and envs/ ship as diffplan.agents / diffplan.envs through setuptools' package-dir mapping; grimp (the
graph builder of import-linter) walks the directory of the imported ``diffplan`` package and would not see
them. So the contracts are checked on a staged copy in which the three roots form one ``diffplan/`` tree, the
layout of an installed wheel; the staged tree goes first on the path, so ``lint-imports`` analyses it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def stage(dest: Path) -> Path:
    """``dest/diffplan`` = diffplan/ + agents/ as diffplan/agents + envs/ as diffplan/envs (Python files only)."""
    skip = shutil.ignore_patterns("__pycache__", "*.safetensors", "*.json", "*.pyc")
    pkg = dest / "diffplan"
    shutil.copytree(ROOT / "diffplan", pkg, ignore=skip)
    for name in ("agents", "envs"):
        if (pkg / name).exists():
            raise RuntimeError(f"diffplan/{name} exists in the repository: package-dir maps {name}/ there")
        shutil.copytree(ROOT / name, pkg / name, ignore=skip)
    return dest


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the repository's contracts on the staged ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


def _plant(tree: Path, module: str, code: str) -> None:
    """Append ``code`` to the staged copy of ``module`` (a dotted name under diffplan)."""
    parts = module.split(".")[1:]
    path = tree.joinpath("diffplan", *parts[:-1], parts[-1] + ".py")
    if not path.exists():
        path = tree.joinpath("diffplan", *parts, "__init__.py")
    path.write_text(path.read_text() + "\n\n" + code + "\n")


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    return stage(tmp_path_factory.mktemp("layers"))


def test_contracts_are_kept(staged):
    result = lint(staged)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_the_graph_holds_every_module_of_the_three_roots(staged):
    """What the contracts run on, built as lint-imports builds it (lazy imports: the planted cases below)."""
    probe = "import grimp, json; print(json.dumps(sorted(grimp.build_graph('diffplan', cache_dir=None).modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=staged, env={**os.environ, "PYTHONPATH": str(staged)},
                         capture_output=True, text=True, timeout=120, check=True)
    modules = set(json.loads(out.stdout))
    for root, prefix in ((ROOT / "diffplan", "diffplan"), (ROOT / "agents", "diffplan.agents"),
                         (ROOT / "envs", "diffplan.envs")):
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join((prefix, *parts[:-1])) if parts[-1] == "__init__" else ".".join((prefix, *parts))
            assert name in modules, name


@pytest.mark.parametrize(
    ("module", "code", "broken"),
    [
        # the shape of the config -> agent registry import: a lazy upward import from the bottom layer
        ("diffplan.checkpoint", "def _registry():\n    from diffplan.agents import AGENTS\n    return AGENTS",
         "one-way layers"),
        # the robot bridge importing the deploy runner: both contracts
        ("diffplan.envs.robot.server", "def _runner():\n    from diffplan.deploy import runner\n    return runner",
         "robot bridge"),
        # an agent file importing the training code
        ("diffplan.agents.bc", "def _train():\n    import diffplan.training\n    return diffplan.training",
         "one-way layers"),
        # the data layer importing the training layer (the old recipes -> runner circle)
        ("diffplan.data.recipes.locomotion", "from diffplan.training import setup  # noqa", "one-way layers"),
        # the contract importing an agent implementation
        ("diffplan.agent", "def _x():\n    from diffplan.agents import diffuser\n    return diffuser", "one-way layers"),
    ],
)
def test_an_upward_import_breaks_a_contract(tmp_path, module, code, broken):
    tree = stage(tmp_path)
    _plant(tree, module, code)
    result = lint(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    broken_lines = [line for line in result.stdout.splitlines() if " BROKEN" in line]
    assert any(line.startswith(broken) for line in broken_lines), result.stdout
    assert module in result.stdout  # the report names the offending importer


def test_a_module_outside_every_layer_is_an_error(tmp_path):
    """``exhaustive``: a new top-level module must be placed in a layer on purpose."""
    tree = stage(tmp_path)
    (tree / "diffplan" / "newthing.py").write_text("X = 1\n")
    result = lint(tree)
    assert result.returncode != 0 and "diffplan.newthing" in result.stdout + result.stderr
