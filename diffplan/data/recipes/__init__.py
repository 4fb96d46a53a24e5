"""Generated datasets: the registry from task names to the recipes that make them, and their Minari ids.

Every dataset diffplan generates is named ``diffplan/<task>[-noisy][-<N>k]-v0`` (no size suffix at the recipe's
default size, ``-<N>steps`` for a size that is not whole thousands). This module is the one place that builds
(:func:`dataset_id`) and reads (:func:`parse`) those ids and maps a task to its generator (:func:`recipe_for`):

* ``pointmaze``: D4RL's maze2d waypoint-controller stream (:mod:`.pointmaze`) for every maze task
  :mod:`diffplan.envs.maze` knows, the shipped layouts and any layout registered there;
* ``locomotion``: rollouts of the shipped SAC behaviour policies (:mod:`.locomotion`) for
  ``<hopper|walker2d|halfcheetah>-<random|medium|medium-replay|medium-expert|expert>``.

:func:`ensure` generates a source's dataset when it is ours and not on disk (the runner calls it before
loading); :func:`make` generates one unconditionally (``diffplan data make``). A new kind of generated dataset
is one :class:`Recipe` passed to :func:`register`.

The recipe modules are imported on first use: they pull in Minari and MuJoCo, and they import the id helpers
from here.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from diffplan.data.episodes import DatasetError

__all__ = [
    "DEFAULT_STEPS",
    "RECIPES",
    "DatasetId",
    "LocomotionRecipe",
    "MazeRecipe",
    "Recipe",
    "check_existing",
    "dataset_dir",
    "dataset_id",
    "ensure",
    "make",
    "merge_metadata",
    "parse",
    "recipe_for",
    "register",
    "tasks",
]

DEFAULT_STEPS = 1_000_000
"""Dataset size named by an id without a size suffix (D4RL's 1M steps; a locomotion medium-replay dataset is
then the whole recorded buffer)."""

_ID = re.compile(r"^diffplan/(?P<task>.+?)(?P<noisy>-noisy)?(?:-(?P<k>\d+)k|-(?P<n>\d+)steps)?-v0$")


def dataset_id(task: str, steps: int | None = None, noisy: bool = False) -> str:
    """Minari id of a generated dataset: ``diffplan/<task>[-noisy][-<N>k]-v0``.

    ``steps`` None or :data:`DEFAULT_STEPS`: no size suffix; whole thousands: ``-<N>k``; other sizes (tests,
    quick looks): ``-<N>steps``."""
    if steps is not None and steps < 1:
        raise DatasetError(f"steps must be >= 1, got {steps}")
    if steps is None or steps == DEFAULT_STEPS:
        size = ""
    elif steps % 1000:
        size = f"-{steps}steps"
    else:
        size = f"-{steps // 1000}k"
    return f"diffplan/{task}{'-noisy' if noisy else ''}{size}-v0"


@dataclass(frozen=True)
class DatasetId:
    """A parsed generated-dataset id; ``str()`` rebuilds it."""

    task: str
    steps: int | None
    """Env steps; None: the recipe's default size (no suffix in the id)."""
    noisy: bool

    def __str__(self) -> str:
        return dataset_id(self.task, self.steps, self.noisy)


def parse(source: str) -> DatasetId | None:
    """The task, size and noise of a generated dataset's id (``minari:`` prefix allowed); None when the id is
    not one of ours (another Minari dataset, a D4RL file, a path, or a task no recipe knows)."""
    match = _ID.match(source.removeprefix("minari:"))
    if match is None or recipe_for(match["task"]) is None:
        return None
    steps = int(match["k"]) * 1000 if match["k"] else int(match["n"]) if match["n"] else None
    return DatasetId(match["task"], steps, bool(match["noisy"]))


class Recipe(Protocol):
    """A dataset generator for a family of tasks.

    ``make`` writes the dataset (``minari_id`` None: :func:`dataset_id` of its arguments) and fails if it
    exists; ``ensure`` returns the id of a matching existing dataset or makes it, and refuses one made with other
    settings. Both return the Minari id and raise :class:`DatasetError` on bad input.
    """

    name: str
    noisy: bool
    """Whether the recipe has a noisy-action variant (``-noisy`` ids, ``data make --noisy``)."""

    def handles(self, task: str) -> bool: ...

    def tasks(self) -> list[str]:
        """The tasks it can make now (``diffplan data make`` lists them)."""
        ...

    def make(self, task: str, *, steps: int | None, seed: int, noisy: bool, minari_id: str | None,
             progress: bool) -> str: ...

    def ensure(self, task: str, *, steps: int | None, seed: int, noisy: bool, minari_id: str | None,
               progress: bool) -> str: ...


class MazeRecipe:
    """D4RL maze2d recipe (:mod:`.pointmaze`) for any maze task of :mod:`diffplan.envs.maze`: whether a task is
    a maze is asked of the env layer, so a maze layout registered there gets datasets without a change here."""

    name = "pointmaze"
    noisy = True

    def handles(self, task: str) -> bool:
        from diffplan.envs.maze import get_task

        try:
            get_task(task)
        except ValueError:
            return False
        return True

    def tasks(self) -> list[str]:
        from diffplan.envs.maze import MAZE_TASKS

        return sorted(MAZE_TASKS)

    def make(self, task: str, *, steps: int | None, seed: int, noisy: bool, minari_id: str | None,
             progress: bool) -> str:
        from diffplan.data.recipes.pointmaze import generate_pointmaze_dataset

        return generate_pointmaze_dataset(task, steps or DEFAULT_STEPS, seed, noisy,
                                          minari_id or dataset_id(task, steps, noisy), progress)

    def ensure(self, task: str, *, steps: int | None, seed: int, noisy: bool, minari_id: str | None,
               progress: bool) -> str:
        from diffplan.data.recipes.pointmaze import ensure_dataset

        return ensure_dataset(task, steps or DEFAULT_STEPS, seed, noisy,
                              minari_id or dataset_id(task, steps, noisy), progress)


class LocomotionRecipe:
    """D4RL locomotion recipe (:mod:`.locomotion`): rollouts of the shipped RL Zoo policies, medium-replay from SAC."""

    name = "locomotion"
    noisy = False

    def handles(self, task: str) -> bool:
        from diffplan.envs import is_locomotion_task

        return is_locomotion_task(task)

    def tasks(self) -> list[str]:
        from diffplan.envs import LOCOMOTION_ENVS, LOCOMOTION_KINDS

        return [f"{env}-{kind}" for env in LOCOMOTION_ENVS for kind in LOCOMOTION_KINDS]

    def make(self, task: str, *, steps: int | None, seed: int, noisy: bool, minari_id: str | None,
             progress: bool) -> str:
        from diffplan.data.recipes.locomotion import make_dataset

        return make_dataset(task, steps, seed, minari_id, progress)

    def ensure(self, task: str, *, steps: int | None, seed: int, noisy: bool, minari_id: str | None,
               progress: bool) -> str:
        from diffplan.data.recipes.locomotion import ensure_dataset

        return ensure_dataset(task, steps, seed, minari_id, progress)


RECIPES: dict[str, Recipe] = {}
"""Registered recipes by name; :func:`recipe_for` asks them in registration order."""


def register(recipe: Recipe) -> Recipe:
    """Add a recipe (a name already registered is replaced); returns it."""
    RECIPES[recipe.name] = recipe
    return recipe


register(MazeRecipe())
register(LocomotionRecipe())


def recipe_for(task: str) -> Recipe | None:
    """The recipe that makes ``task``'s datasets, or None."""
    return next((r for r in RECIPES.values() if r.handles(task)), None)


def tasks() -> list[str]:
    """Every task some recipe can make now."""
    return [task for recipe in RECIPES.values() for task in recipe.tasks()]


def _recipe(task: str, noisy: bool) -> Recipe:
    recipe = recipe_for(task)
    if recipe is None:
        raise DatasetError(f"no dataset recipe for task {task!r}; generated datasets exist for: {', '.join(tasks())}")
    if noisy and not recipe.noisy:
        raise DatasetError(f"{task}: the {recipe.name} recipe has no noisy variant (--noisy applies to maze datasets only)")
    return recipe


def make(task: str, *, steps: int | None = None, seed: int = 0, noisy: bool = False, minari_id: str | None = None,
         progress: bool = True) -> str:
    """Generate ``task``'s dataset with its recipe (fails if it exists); returns the Minari id (default
    :func:`dataset_id` of the arguments).

    ``steps`` None means the recipe's default size; 0 or less is refused (the recipes read a falsy size as the
    default, so ``steps=0`` once generated a million steps)."""
    if steps is not None and steps < 1:
        raise DatasetError(f"{task}: steps must be >= 1, got {steps}")
    return _recipe(task, noisy).make(task, steps=steps, seed=seed, noisy=noisy, minari_id=minari_id,
                                     progress=progress)


def ensure(source: str, *, progress: bool = True) -> str | None:
    """Generate the dataset of a source (as :func:`diffplan.data.load_episodes` takes it) if it is
    ``minari:<one of our ids>`` and not on disk yet.

    Returns the Minari id of a generated dataset (made now, or reused when made by the same recipe with the
    same settings and seed 0), None for any other source (another Minari id, a D4RL file, a path): those are
    the loader's."""
    if not source.startswith("minari:"):
        return None
    parsed = parse(source)
    if parsed is None:
        return None
    return _recipe(parsed.task, parsed.noisy).ensure(
        parsed.task, steps=parsed.steps, seed=0, noisy=parsed.noisy, minari_id=source.removeprefix("minari:"),
        progress=progress,
    )


# ------------------------------------------------------------------------------------ Minari files, shared


def dataset_dir(minari_id: str) -> Path:
    """Where Minari keeps (or would keep) ``minari_id`` (``$MINARI_DATASETS_PATH`` or ``~/.minari``)."""
    from minari.storage.datasets_root_dir import get_dataset_path

    return Path(get_dataset_path(minari_id))


def merge_metadata(minari_id: str, extra: dict[str, Any]) -> None:
    """Add keys to ``<dataset>/data/metadata.json`` via write-to-temp + ``os.replace``.

    Minari 0.5.4's ``create_dataset_from_buffers`` has no custom-metadata argument; ``metadata.json`` is read
    on every ``storage.metadata`` access and unknown keys pass through, so extra keys show up in
    ``minari.load_dataset(id).storage.metadata``.
    """
    path = dataset_dir(minari_id) / "data" / "metadata.json"
    meta = json.loads(path.read_text())
    meta.update(extra)
    mode = path.stat().st_mode & 0o777
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".metadata.", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f)
        os.chmod(tmp, mode)  # mkstemp creates 0600; keep minari's original permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_existing(minari_id: str, recipe: str, want: dict[str, Any]) -> bool:
    """Whether ``minari_id`` is on disk (False: make it), after checking that it is a finished dataset of
    ``recipe`` whose metadata has the values of ``want``.

    A half-written dataset (no recipe metadata, e.g. an interrupted run) raises ``RuntimeError`` asking to delete
    it, rather than deleting files; one made with other settings raises :class:`DatasetError` (a ValueError).
    """
    root = dataset_dir(minari_id)
    if not root.exists():
        return False
    meta_path = root / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta.get("recipe") != recipe:
        raise RuntimeError(f"{root} exists but was not completed by the {recipe} recipe (interrupted run?); "
                           "delete it and call again")
    have = {k: meta.get(k) for k in want}
    if have != want:
        raise DatasetError(f"dataset {minari_id!r} exists with {have}, not {want}; pass another dataset id")
    return True
