"""The wheel ships every package: each directory with an ``__init__.py`` under the three package roots is listed
in pyproject.toml (the CI's editable install would hide a missing one; a user's ``pip install .`` would not)."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_directory_is_listed_in_pyproject():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = set()
    for dotted, directory in setuptools["package-dir"].items():
        base = ROOT / directory
        for init in base.rglob("__init__.py"):
            if "tests" in init.relative_to(ROOT).parts:
                continue
            rel = init.parent.relative_to(base).parts
            found.add(".".join((dotted, *rel)))
    missing = found - listed
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
