"""The recipe registry (diffplan.data.recipes): generated-dataset ids, task -> recipe, ensure/make dispatch."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from diffplan.data import DatasetError, recipes
from diffplan.envs import maze


def test_dataset_id_sizes_and_noise():
    assert recipes.dataset_id("pointmaze-umaze") == "diffplan/pointmaze-umaze-v0"
    assert recipes.dataset_id("pointmaze-umaze", 1_000_000) == "diffplan/pointmaze-umaze-v0"
    assert recipes.dataset_id("pointmaze-large", 200_000, noisy=True) == "diffplan/pointmaze-large-noisy-200k-v0"
    assert recipes.dataset_id("hopper-random", 250) == "diffplan/hopper-random-250steps-v0"
    with pytest.raises(DatasetError, match="steps must be >= 1"):
        recipes.dataset_id("hopper-random", 0)


@pytest.mark.parametrize(
    ("task", "steps", "noisy"),
    [("pointmaze-umaze", None, False), ("pointmaze-medium", 200_000, True), ("pointmaze-large", 1500, False),
     ("hopper-medium-replay", 5000, False), ("walker2d-medium-expert", None, False)],
)
def test_parse_inverts_dataset_id(task, steps, noisy):
    built = recipes.dataset_id(task, steps, noisy)
    assert recipes.parse(built) == recipes.DatasetId(task, steps, noisy)
    assert recipes.parse("minari:" + built) == recipes.DatasetId(task, steps, noisy)
    assert str(recipes.parse(built)) == built


@pytest.mark.parametrize(
    "source",
    ["diffplan/ant-medium-v0", "D4RL/pointmaze/umaze-v2", "diffplan/pointmaze-umaze", "mujoco/hopper/expert-v0",
     "diffplan/pointmaze-tiny-v0"],
)
def test_foreign_ids_are_not_ours(source):
    assert recipes.parse(source) is None
    assert recipes.ensure("minari:" + source) is None  # left to the loader: no generation, no error


def test_ensure_leaves_files_and_d4rl_sources_alone(tmp_path):
    # a path that happens to look like one of our ids is still a path
    assert recipes.ensure("diffplan/pointmaze-umaze-v0") is None
    assert recipes.ensure(f"d4rl:{tmp_path}/maze2d-umaze-v1.hdf5") is None


def test_tasks_map_to_their_recipe():
    assert isinstance(recipes.recipe_for("pointmaze-medium"), recipes.MazeRecipe)
    assert isinstance(recipes.recipe_for("halfcheetah-expert"), recipes.LocomotionRecipe)
    assert recipes.recipe_for("Hopper-v5") is None and recipes.recipe_for("hopper-mediocre") is None
    assert {"pointmaze-umaze", "pointmaze-large", "hopper-medium-replay"} <= set(recipes.tasks())


def test_bad_requests_are_one_line_dataset_errors():
    with pytest.raises(DatasetError, match="no dataset recipe for task 'Hopper-v5'; generated datasets exist for: "):
        recipes.make("Hopper-v5", steps=10)
    with pytest.raises(DatasetError, match="no noisy variant .*--noisy applies to maze datasets only"):
        recipes.make("hopper-medium", steps=10, noisy=True)
    with pytest.raises(DatasetError, match="no noisy variant"):
        recipes.ensure("minari:diffplan/hopper-medium-noisy-v0")


def test_a_maze_known_to_envs_gets_the_maze_recipe(monkeypatch):
    """Whether a task is a maze is asked of diffplan.envs.maze: a layout registered there needs no change here."""
    monkeypatch.setitem(maze.MAZE_TASKS, "pointmaze-mine", maze.MazeTask("pointmaze-mine", "PointMaze_UMaze-v3", 50))
    assert isinstance(recipes.recipe_for("pointmaze-mine"), recipes.MazeRecipe)
    assert "pointmaze-mine" in recipes.tasks()
    assert recipes.parse("minari:diffplan/pointmaze-mine-noisy-3k-v0") == recipes.DatasetId("pointmaze-mine", 3000, True)


@dataclass
class _CountingRecipe:
    """A registered recipe of its own: ensure/make are dispatched to it with the parsed settings."""

    name: str = "counting"
    noisy: bool = False
    calls: list[tuple] = field(default_factory=list)

    def handles(self, task: str) -> bool:
        return task.startswith("count-")

    def tasks(self) -> list[str]:
        return ["count-up"]

    def make(self, task, *, steps, seed, noisy, minari_id, progress) -> str:
        self.calls.append(("make", task, steps, seed, minari_id))
        return minari_id or recipes.dataset_id(task, steps, noisy)

    def ensure(self, task, *, steps, seed, noisy, minari_id, progress) -> str:
        self.calls.append(("ensure", task, steps, seed, minari_id))
        return minari_id


def test_registered_recipe_is_used_by_ensure_and_make(monkeypatch):
    monkeypatch.setattr(recipes, "RECIPES", dict(recipes.RECIPES))
    rec = recipes.register(_CountingRecipe())
    assert recipes.ensure("minari:diffplan/count-up-2k-v0", progress=False) == "diffplan/count-up-2k-v0"
    assert recipes.make("count-up", steps=3000, seed=4, progress=False) == "diffplan/count-up-3k-v0"
    assert rec.calls == [("ensure", "count-up", 2000, 0, "diffplan/count-up-2k-v0"),
                         ("make", "count-up", 3000, 4, None)]


def test_cli_make_of_an_unknown_task_is_one_clear_line(capsys):
    from diffplan.cli import main

    assert main(["data", "make", "pointmaze-huge"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'pointmaze-huge'" in err and "did you mean 'pointmaze-umaze'" in err
    assert len(err.strip().splitlines()) == 1
