"""D4RL-style locomotion recipe: SAC behaviour training (diffplan.behaviour) -> shipped policies -> Minari datasets
(diffplan.data.recipes.locomotion), and baselines.

A tiny SAC run (8x8 nets, a few hundred env steps) is trained once per module and finalised into a temporary
policy directory, so every stage runs for real (Tianshou SAC, MuJoCo Hopper-v5, Minari files) in seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffplan import behaviour as B
from diffplan.behaviour import shipped
from diffplan.data import DatasetError, load_episodes, recipes
from diffplan.data.recipes import locomotion as L
from diffplan.envs import make_env, split_locomotion_task
from diffplan.envs.evaluation import evaluate


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("sac-run")
    cfg = B.SACTrainConfig(
        seed=0, max_env_steps=60, start_steps=50, epoch_steps=20, eval_episodes=1, hidden=(8, 8),
        batch_size=16, show_progress=False,
    )
    B.train_behaviour("hopper", run, cfg)
    return run


@pytest.fixture(scope="module")
def policy_dir(sac_run, tmp_path_factory):
    run = sac_run
    out = tmp_path_factory.mktemp("policies")
    B.finalize_behaviour("hopper", run, out, ref_episodes=2, evaluate=evaluate)
    return out


def _episodes(dataset_id):
    import minari

    return list(minari.load_dataset(dataset_id).iterate_episodes())


def test_tasks_map_to_v5_envs_with_d4rl_limit():
    env = make_env("walker2d-medium-replay")
    assert env.spec.id == "Walker2d-v5" and env.spec.max_episode_steps == 1000
    assert split_locomotion_task("halfcheetah-medium-expert") == ("halfcheetah", "medium-expert")
    assert split_locomotion_task("hopper-mediocre") is None and split_locomotion_task("ant-medium") is None


def test_recipe_ids_resolve_for_locomotion():
    assert recipes.dataset_id("hopper-medium-replay", 5000) == "diffplan/hopper-medium-replay-5k-v0"
    assert recipes.parse("minari:diffplan/hopper-medium-replay-5k-v0") == recipes.DatasetId(
        "hopper-medium-replay", 5000, False
    )
    assert recipes.parse("diffplan/hopper-medium-v0") == recipes.DatasetId("hopper-medium", None, False)
    assert recipes.parse("diffplan/hopper-random-250steps-v0").steps == 250
    assert isinstance(recipes.recipe_for("walker2d-medium-expert"), recipes.LocomotionRecipe)


def test_finalize_picks_expert_last_and_medium_closest_to_a_third(policy_dir):
    info = json.loads((policy_dir / "hopper.json").read_text())
    curve = info["curve"]
    assert info["expert"]["env_step"] == curve[-1]["env_step"] == 60
    target = curve[-1]["return_mean"] / 3
    trained = [r for r in curve[:-1] if r["env_step"] > 0]
    best = min(trained, key=lambda r: abs(r["return_mean"] - target))
    assert info["medium"]["env_step"] == best["env_step"]
    assert info["ref_min_score"] < info["ref_max_score"] or info["ref_max_score"] > 0
    # the shipped files load without pickle and rebuild the actor
    actor = B.load_actor("hopper", "medium", policy_dir)
    (mu, sigma), _ = actor(torch.zeros(2, 11))
    assert mu.shape == (2, 3) and (sigma > 0).all()
    # medium-replay = the replay buffer up to the medium checkpoint (random warm-up included)
    steps = sum(len(e["rewards"]) for e in B.replay_episodes("hopper", None, policy_dir))
    assert steps == info["medium_replay"]["transitions"] == 50 + info["medium"]["env_step"]


def test_finalize_best_rule_and_bad_rule(sac_run, tmp_path):
    rows = [json.loads(line) for line in (sac_run / "log.jsonl").read_text().splitlines()]
    info = B.finalize_behaviour("hopper", sac_run, tmp_path, ref_episodes=1, expert="best", evaluate=evaluate)
    best = max(rows, key=lambda r: r["return_mean"])
    assert info["expert"]["env_step"] == best["env_step"] and info["expert"]["rule"] == "best"
    assert info["medium"]["env_step"] < best["env_step"] or best["env_step"] == rows[0]["env_step"]
    with pytest.raises(ValueError, match="expert='median'"):
        B.finalize_behaviour("hopper", sac_run, tmp_path, expert="median", evaluate=evaluate)
    with pytest.raises(FileNotFoundError, match="no finished training run"):
        B.finalize_behaviour("hopper", tmp_path, tmp_path, evaluate=evaluate)


def test_retrain_finalizes_a_finished_run_without_training_again(sac_run, tmp_path, capsys):
    log = (sac_run / "log.jsonl").read_text()
    info = B.retrain("hopper", sac_run, policy_dir=tmp_path, evaluate=evaluate, expert="best")
    assert (sac_run / "log.jsonl").read_text() == log  # no second training run appended
    assert info["expert"]["rule"] == "best" and (tmp_path / "hopper-expert.safetensors").exists()
    assert "finalized the finished run" in capsys.readouterr().out


def test_cli_train_behaviour_reports_a_corrupt_checkpoint_in_one_line(sac_run, tmp_path, capsys):
    from diffplan.cli import main

    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "log.jsonl", "done.json"):
        (run / name).write_text((sac_run / name).read_text())
    (run / "checkpoints").mkdir()
    last = json.loads((run / "log.jsonl").read_text().splitlines()[-1])["checkpoint"]
    (run / "checkpoints" / last).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert main(["data", "train-behaviour", "hopper", "--run-dir", str(run), "--policy-dir", str(tmp_path)]) == 2
    assert f"corrupt behaviour-policy file {run / 'checkpoints' / last}" in capsys.readouterr().err


def test_same_seed_same_bytes_other_seed_other_data(policy_dir, tmp_path, monkeypatch):
    ids = []
    for i, seed in enumerate((5, 5, 6)):
        monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / f"root{i}"))
        ids.append(L.make_dataset("hopper-medium", steps=300, seed=seed, policy_dir=policy_dir, progress=False))
        eps = _episodes(ids[-1])
        ids[-1] = eps
    a, b, c = ids
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in ("observations", "actions", "rewards", "terminations", "truncations"):
            assert np.array_equal(getattr(x, key), getattr(y, key)), key
    assert not np.array_equal(a[0].actions, c[0].actions)


def test_dataset_metadata_and_loading(policy_dir):
    info = json.loads((policy_dir / "hopper.json").read_text())
    dataset_id = L.make_dataset("hopper-random", steps=250, seed=0, policy_dir=policy_dir, progress=False)
    assert dataset_id == "diffplan/hopper-random-250steps-v0"
    episodes = load_episodes(f"minari:{dataset_id}")
    assert episodes.num_steps == 250 and episodes.obs.shape[1] == 11 and episodes.act.shape[1] == 3
    meta = episodes.metadata
    assert meta["ref_min_score"] == pytest.approx(info["ref_min_score"])
    assert meta["ref_max_score"] == pytest.approx(info["ref_max_score"])
    assert meta["recipe"] == B.RECIPE and meta["kind"] == "random" and meta["seed"] == 0
    assert meta["behaviour"]["sac_seed"] == 0 and meta["behaviour"]["expert"]["env_step"] == 60
    assert np.abs(episodes.act).max() <= 1.0
    # every episode ends in a terminal state or a cut, nothing in between
    ends = episodes.terminal | episodes.timeout
    assert ends.sum() == episodes.num_episodes


def test_medium_expert_is_medium_then_expert(policy_dir):
    me = _episodes(L.make_dataset("hopper-medium-expert", steps=200, seed=1, policy_dir=policy_dir, progress=False))
    med = _episodes(L.make_dataset("hopper-medium", steps=200, seed=1, policy_dir=policy_dir, progress=False))
    assert sum(len(e.rewards) for e in me) == 400
    for x, y in zip(me[: len(med)], med, strict=True):
        assert np.array_equal(x.actions, y.actions)
    # built again now that the medium dataset exists, it reuses it: same bytes
    me2 = _episodes(L.make_dataset("hopper-medium-expert", steps=200, seed=1, policy_dir=policy_dir, progress=False,
                                   dataset_id="diffplan/hopper-medium-expert-again-v0"))
    assert all(np.array_equal(x.observations, y.observations) for x, y in zip(me, me2, strict=True))


def test_bad_inputs_fail_with_clear_errors(policy_dir, tmp_path):
    with pytest.raises(DatasetError, match="unknown locomotion task 'hopper-mediocre'"):
        L.make_dataset("hopper-mediocre", steps=10, policy_dir=policy_dir)
    with pytest.raises(DatasetError, match="unknown locomotion task 'ant-medium'"):
        L.make_dataset("ant-medium", steps=10, policy_dir=policy_dir)
    with pytest.raises(ValueError, match="unknown locomotion env 'ant'"):
        B.train_behaviour("ant", tmp_path / "run")
    with pytest.raises(DatasetError, match="steps must be >= 1"):
        L.make_dataset("hopper-medium", steps=0, policy_dir=policy_dir)
    with pytest.raises(DatasetError, match="no behaviour policies for 'hopper'.*train-behaviour hopper"):
        L.make_dataset("hopper-medium", steps=10, policy_dir=tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in policy_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "hopper-medium.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(DatasetError, match="corrupt behaviour-policy file .*hopper-medium.safetensors"):
        L.make_dataset("hopper-medium", steps=10, policy_dir=bad)
    dataset_id = L.make_dataset("hopper-random", steps=20, policy_dir=policy_dir, progress=False)
    with pytest.raises(DatasetError, match="already exists"):
        L.make_dataset("hopper-random", steps=20, policy_dir=policy_dir, dataset_id=dataset_id)


def test_shipped_policies_are_complete():
    """Every env with a shipped summary has its actors (and the medium-replay buffer when recorded so)."""
    envs = sorted(p.stem for p in B.POLICY_DIR.glob("*.json"))
    assert envs == ["halfcheetah", "hopper", "walker2d"]
    for env in envs:
        info = B.load_info(env)
        paths = B.policy_paths(env)
        assert paths["medium"].exists() and paths["expert"].exists()
        assert paths["medium-replay"].exists() == info["medium_replay"]["stored"]
        assert info["ref_max_score"] > info["ref_min_score"]


@pytest.mark.parametrize("name", ["bc", "td3bc", "cql"])
def test_baseline_on_locomotion_data(name, policy_dir):
    """Each baseline trains on a hopper dataset and acts in Hopper-v5; states are standardised as in TD3+BC."""
    from tianshou.data import Collector, VectorReplayBuffer
    from tianshou.utils.torch_utils import policy_within_training_step

    from diffplan.agents import AGENTS
    from diffplan.compose import load_config
    from diffplan.envs import make_vector_env

    from .conftest import tiny_baseline

    dataset_id = L.make_dataset("hopper-medium", steps=300, seed=0, policy_dir=policy_dir, progress=False)
    episodes = load_episodes(f"minari:{dataset_id}")
    cfg = load_config(None, [*tiny_baseline(name), "task=hopper-medium", f"dataset=minari:{dataset_id}"])
    env = make_env(cfg.task)
    agent = AGENTS[name].build(cfg, env.observation_space, env.action_space, episodes)
    norm = agent.policy.actor.preprocess.norm.normalizer
    x = torch.as_tensor(episodes.obs)
    z = norm.normalize(x)
    assert torch.allclose(z.mean(0), torch.zeros(11), atol=1e-3)
    with policy_within_training_step(agent.policy):
        for _ in range(2):
            stats = agent.algorithm.update(buffer=agent.batch_source, sample_size=cfg.batch_size)
    assert np.isfinite(stats.get_loss_stats_dict()["loss"])
    venv = make_vector_env(cfg.task, 2, seed=0)
    collector = Collector(agent.policy, venv, VectorReplayBuffer(100, 2))
    collector.reset()
    assert collector.collect(n_step=20).n_collected_steps == 20


def test_cli_make_and_errors(policy_dir, tmp_path, monkeypatch, capsys):
    from diffplan.cli import main

    monkeypatch.setattr(shipped, "POLICY_DIR", policy_dir)
    out = tmp_path / "summary.json"
    assert main(["data", "make", "hopper-random", "--steps", "300", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["steps"] == 300 and summary["kind"] == "random" and summary["wall_s"] > 0
    assert main(["data", "make", "hopper-medium", "--steps", "300", "--noisy"]) == 2
    assert "--noisy applies to maze datasets only" in capsys.readouterr().err
    monkeypatch.setattr(shipped, "POLICY_DIR", tmp_path / "nowhere")
    assert main(["data", "make", "walker2d-medium", "--steps", "300"]) == 2
    assert "train-behaviour walker2d" in capsys.readouterr().err
    assert main(["data", "make", "hopper-mediocre"]) == 2  # neither a task file nor a known task: one line
    assert "unknown task 'hopper-mediocre'" in capsys.readouterr().err
