"""D4RL-style locomotion recipe: the RL Zoo's policies (diffplan.behaviour) -> converted safetensors -> torch
actors -> Minari datasets (diffplan.data.recipes.locomotion), medium-replay from a tiny Tianshou SAC run, and
baselines on the data.

Actors are checked against an independent numpy computation of stable-baselines3's math on synthetic
``weights.npz`` files of each architecture (the Zoo's own files live outside the repository) and on the shipped
policies; every stage runs for real (MuJoCo v5 envs, Minari files) in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffplan import behaviour as B
from diffplan.behaviour import shipped, zoo
from diffplan.data import DatasetError, load_episodes, recipes
from diffplan.data.recipes import locomotion as L
from diffplan.envs import make_env, split_locomotion_task

D4RL_REFS = {"hopper": (-20.272305, 3234.3), "walker2d": (1.629008, 4592.3), "halfcheetah": (-280.178953, 12135.0)}
"""D4RL's reference scores (d4rl/infos.py), typed out here so the test does not read the constant it checks."""


def _fake_zoo_npz(root: Path, algo: str, env: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A ``<algo>/<Env>/weights.npz`` with the Zoo's keys and shapes, float32-exact float64 values (as the
    export of float32 SB3 weights is), plus a critic tensor the converter must drop."""
    rng = np.random.default_rng(seed)
    arch = zoo.zoo_arch(algo, env)
    arrays = {}
    for key, shape in zoo._actor_shapes(arch).items():
        arrays[key] = (rng.normal(size=shape) * 0.3).astype(np.float32).astype(np.float64)
    if "obs_var" in arrays:
        arrays["obs_var"] = rng.uniform(0.1, 4.0, size=arrays["obs_var"].shape)  # float64 running stats
        arrays["obs_mean"] = rng.normal(size=arrays["obs_mean"].shape)
        arrays["clip_obs"], arrays["epsilon"] = np.array(10.0), np.array(1e-8)
    arrays["critic.qf0.0.weight"] = rng.normal(size=(4, 4))
    path = root / algo / zoo.ZOO_ENV_NAMES[env] / "weights.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def _numpy_mean_action(a: dict[str, np.ndarray], arch: zoo.ZooArch, obs: np.ndarray, t: np.ndarray) -> np.ndarray:
    """stable-baselines3's deterministic action, written out in numpy from the MANIFEST's formulas."""
    if arch.time_feature:
        obs = np.concatenate([obs, (1.0 - t / 1000.0)[:, None]], axis=1)
    if arch.family == "squashed_gaussian":
        h = np.maximum(obs @ a["actor.latent_pi.0.weight"].T + a["actor.latent_pi.0.bias"], 0)
        h = np.maximum(h @ a["actor.latent_pi.2.weight"].T + a["actor.latent_pi.2.bias"], 0)
        return np.tanh(h @ a["actor.mu.weight"].T + a["actor.mu.bias"])
    o = np.clip((obs - a["obs_mean"]) / np.sqrt(a["obs_var"] + a["epsilon"]), -a["clip_obs"], a["clip_obs"])
    if arch.family == "linear":
        return np.clip(o @ a["action_net.weight"].T, -1, 1)
    act = (lambda x: np.maximum(x, 0)) if arch.activation == "relu" else np.tanh
    h = act(o @ a["mlp_extractor.policy_net.0.weight"].T + a["mlp_extractor.policy_net.0.bias"])
    h = act(h @ a["mlp_extractor.policy_net.2.weight"].T + a["mlp_extractor.policy_net.2.bias"])
    return np.clip(h @ a["action_net.weight"].T + a["action_net.bias"], -1, 1)


# one per architecture family and activation, plus PPO Walker2d's time feature
ARCHS = [("sac", "hopper"), ("tqc", "halfcheetah"), ("ppo", "hopper"), ("trpo", "walker2d"), ("a2c", "halfcheetah"),
         ("ppo", "walker2d"), ("ars", "hopper")]


@pytest.mark.parametrize(("algo", "env"), ARCHS)
def test_zoo_actor_matches_numpy_and_round_trips(algo, env, tmp_path):
    arrays = _fake_zoo_npz(tmp_path / "zoo", algo, env)
    out = zoo.convert_policy(tmp_path / "zoo", algo, env, tmp_path / f"{env}-{algo}.safetensors")
    # round trip: the file holds exactly the actor's arrays (no critic), with the architecture in its header
    from safetensors import safe_open

    with safe_open(str(out), framework="np") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = json.loads(f.metadata()[zoo.HEADER_KEY])
    assert set(stored) == set(zoo._actor_shapes(zoo.zoo_arch(algo, env)))
    for k, v in stored.items():
        assert np.array_equal(v.astype(np.float64), arrays[k]), k
    assert meta["source_repo"] == "DLR-RM/rl-trained-agents" and meta["source_folder"] == f"{algo}/{zoo.ZOO_ENV_NAMES[env]}-v3_1"
    again = zoo.convert_policy(tmp_path / "zoo", algo, env, tmp_path / "again.safetensors")
    assert again.read_bytes() == out.read_bytes()  # the conversion is reproducible to the byte
    actor = zoo.load_policy_file(out)
    assert type(actor).__name__ == {"squashed_gaussian": "SquashedGaussianActor", "gaussian": "GaussianActor",
                                    "linear": "LinearActor"}[actor.arch.family]
    obs_dim = zoo.ENV_DIMS[env][0]
    obs = np.random.default_rng(1).normal(size=(5, obs_dim)) * 3
    t = np.array([0, 1, 10, 500, 999])
    want = _numpy_mean_action(arrays, actor.arch, obs, t)
    got = actor.act(torch.as_tensor(obs), torch.as_tensor(t), deterministic=True).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_stochastic_actions_follow_sb3():
    """Squashed Gaussian: tanh(mean + exp(clip(log_std, -20, 2)) * eps); Gaussian: clip(mean + std * eps)."""
    arch = zoo.zoo_arch("sac", "hopper")
    t = {k: torch.zeros(s) for k, s in zoo._actor_shapes(arch).items()}
    t["actor.log_std.bias"] = torch.full((3,), 5.0)  # clipped to 2
    t["actor.mu.bias"] = torch.tensor([0.1, -0.2, 0.3])
    actor = zoo.build_actor(t, arch)
    eps = torch.randn((4, 3), generator=torch.Generator().manual_seed(3))
    got = actor.act(torch.zeros(4, 11), None, torch.Generator().manual_seed(3))
    assert torch.allclose(got, torch.tanh(t["actor.mu.bias"] + np.exp(2.0) * eps))
    arch = zoo.zoo_arch("trpo", "hopper")
    t = {k: torch.zeros(s, dtype=torch.float64) for k, s in zoo._actor_shapes(arch).items()}
    t["obs_var"] += 1.0
    t["clip_obs"] += 10.0
    t["log_std"] = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    actor = zoo.build_actor(t, arch)
    got = actor.act(torch.zeros(4, 11), None, torch.Generator().manual_seed(3))
    assert torch.allclose(got, (torch.exp(t["log_std"]).float() * eps).clamp(-1, 1))
    with pytest.raises(ValueError, match="time feature"):
        zoo.build_actor(
            {k: torch.ones(s) for k, s in zoo._actor_shapes(zoo.zoo_arch("ppo", "walker2d")).items()},
            zoo.zoo_arch("ppo", "walker2d"),
        ).act(torch.zeros(1, 17))


def test_shipped_policies_match_numpy_and_are_complete():
    """Per env: the expert (TQC), the medium policy, the MIT license, the summary with source and returns."""
    from safetensors.numpy import load_file

    assert (B.POLICY_DIR / "LICENSE-rl-trained-agents").read_text().startswith("MIT License")
    shipped_files = sorted(p.name for p in B.POLICY_DIR.glob("*.safetensors"))
    used = []
    for env in ("hopper", "walker2d", "halfcheetah"):
        info = B.load_info(env)
        assert info["source"]["commit"] == zoo.ZOO_COMMIT and info["expert"]["algo"] == "tqc"
        for kind in ("medium", "expert"):
            used.append(info[kind]["file"])
            actor = B.load_actor(env, kind)
            arrays = {k: v.astype(np.float64) for k, v in load_file(str(B.POLICY_DIR / info[kind]["file"])).items()}
            obs = np.random.default_rng(0).normal(size=(3, zoo.ENV_DIMS[env][0]))
            t = np.array([0, 5, 900])
            np.testing.assert_allclose(actor.act(torch.as_tensor(obs), torch.as_tensor(t), deterministic=True).numpy(),
                                       _numpy_mean_action(arrays, actor.arch, obs, t), atol=2e-5)
        assert info["random"]["stochastic"]["mean"] < info["medium"]["stochastic"]["mean"] < info["expert"]["stochastic"]["mean"]
    assert shipped_files == sorted(used)  # nothing unused is shipped


def test_medium_choice_is_nearest_stochastic_policy():
    row = lambda m: {"stochastic": {"mean": m}}
    cands = {"hopper": {"random": row(10), "tqc": row(1390), "sac": row(1000), "ppo": row(2000), "ars": row(1400)}}
    assert B.choose_medium(cands, "hopper") == "sac"  # tqc is the expert, ars has no stochastic actions


def test_convert_zoo_ships_only_the_chosen_files(tmp_path):
    zoo_dir = tmp_path / "zoo"
    for algo in ("tqc", "sac", "a2c"):
        _fake_zoo_npz(zoo_dir, algo, "hopper")
    (zoo_dir / "LICENSE-rl-trained-agents").write_text("MIT License\n")
    st = {"stochastic": {"mean": 1.0}, "deterministic": {"mean": 1.0}}
    cands = {"hopper": {"random": {"stochastic": {"mean": 0.0}}, "tqc": st, "sac": st, "a2c": st}}
    out = tmp_path / "policies"
    B.convert_zoo(zoo_dir, cands, out, medium={"hopper": "a2c"})
    B.convert_zoo(zoo_dir, cands, out, medium={"hopper": "sac"})
    assert sorted(p.name for p in out.iterdir()) == [
        "LICENSE-rl-trained-agents", "hopper-sac.safetensors", "hopper-tqc.safetensors", "hopper.json"]
    info = json.loads((out / "hopper.json").read_text())
    assert info["medium"]["folder"] == "sac/Hopper-v3_1" and info["source"]["repo"] == "DLR-RM/rl-trained-agents"
    assert B.load_actor("hopper", "medium", out).arch.algo == "sac"


def test_cli_measure_then_convert(tmp_path):
    """measure-zoo writes every candidate's returns and the choice; convert-zoo ships that choice."""
    from diffplan.cli import main

    zoo_dir = tmp_path / "zoo"
    for i, algo in enumerate(zoo.ZOO_ALGOS):
        _fake_zoo_npz(zoo_dir, algo, "hopper", seed=i)
    (zoo_dir / "LICENSE-rl-trained-agents").write_text("MIT License\n")
    out = tmp_path / "cands.json"
    assert main(["data", "measure-zoo", str(zoo_dir), "--env", "hopper", "--episodes", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = res["candidates"]["hopper"]
    assert set(rows) == {"random", *zoo.ZOO_ALGOS} and rows["ars"]["stochastic"] == rows["ars"]["deterministic"]
    assert res["choice"]["hopper"] == {"expert": "tqc", "medium": B.choose_medium(res["candidates"], "hopper")}
    assert main(["data", "convert-zoo", str(zoo_dir), "--candidates", str(out), "--policy-dir", str(tmp_path / "p")]) == 0
    info = B.load_info("hopper", tmp_path / "p")
    assert info["medium"]["algo"] == res["choice"]["hopper"]["medium"]
    assert info["medium"]["stochastic"] == rows[info["medium"]["algo"]]["stochastic"]


def test_bad_zoo_and_policy_files_fail_with_one_line(tmp_path, capsys):
    from diffplan.cli import main

    zoo_dir = tmp_path / "zoo"
    with pytest.raises(B.BehaviourPolicyError, match="Zoo weights file .*weights.npz is missing"):
        B.convert_policy(zoo_dir, "sac", "hopper", tmp_path / "x.safetensors")
    bad = zoo_dir / "sac" / "Hopper" / "weights.npz"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(B.BehaviourPolicyError, match="corrupt Zoo weights file"):
        B.convert_policy(zoo_dir, "sac", "hopper", tmp_path / "x.safetensors")
    _fake_zoo_npz(zoo_dir, "sac", "walker2d")  # 17-dim observations, filed as a Hopper policy
    (zoo_dir / "sac" / "Walker2d" / "weights.npz").replace(bad)
    with pytest.raises(B.BehaviourPolicyError, match=r"actor.latent_pi.0.weight has shape \(256, 17\), a sac hopper"):
        B.convert_policy(zoo_dir, "sac", "hopper", tmp_path / "x.safetensors")
    with pytest.raises(B.BehaviourPolicyError, match="unknown Zoo algorithm 'ddpg'"):
        B.convert_policy(zoo_dir, "ddpg", "hopper", tmp_path / "x.safetensors")
    garbled = tmp_path / "p.safetensors"
    garbled.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(B.BehaviourPolicyError, match="corrupt behaviour-policy file .*p.safetensors"):
        B.load_policy_file(garbled)
    with pytest.raises(B.BehaviourPolicyError, match="is missing; `diffplan data convert-zoo"):
        B.load_policy_file(tmp_path / "nope.safetensors")
    # through the CLI: one error line, exit 2
    assert main(["data", "convert-zoo", str(zoo_dir), "--candidates", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err
    (tmp_path / "c.json").write_text(json.dumps({"candidates": {"hopper": {}}, "choice": {"hopper": {"medium": "sac"}}}))
    assert main(["data", "convert-zoo", str(zoo_dir), "--candidates", str(tmp_path / "c.json"),
                 "--policy-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "LICENSE-rl-trained-agents is missing" in err


# ------------------------------------------------------------------------------------------------ recipes


def _episodes(dataset_id):
    import minari

    return list(minari.load_dataset(dataset_id).iterate_episodes())


def test_tasks_map_to_v5_envs_with_d4rl_limit():
    env = make_env("walker2d-medium-replay")
    assert env.spec.id == "Walker2d-v5" and env.spec.max_episode_steps == 1000
    assert split_locomotion_task("halfcheetah-medium-expert") == ("halfcheetah", "medium-expert")
    assert split_locomotion_task("hopper-mediocre") is None and split_locomotion_task("ant-medium") is None


def test_mujoco_warnings_go_through_python_warnings(capfd):
    import mujoco

    for _ in range(2):  # MuJoCo 4 warns on every build of Gymnasium's half_cheetah.xml (settotalmass)
        make_env("halfcheetah-medium").close()
    out, err = capfd.readouterr()
    assert "WARNING: compiler" not in out + err  # MuJoCo's own printing is replaced
    with pytest.warns(RuntimeWarning, match="^MuJoCo: a test message$"):
        mujoco.get_mju_user_warning()("a test message")


def test_recipe_ids_resolve_for_locomotion():
    assert recipes.dataset_id("hopper-medium-replay", 5000) == "diffplan/hopper-medium-replay-5k-v0"
    assert recipes.parse("minari:diffplan/hopper-medium-replay-5k-v0") == recipes.DatasetId(
        "hopper-medium-replay", 5000, False
    )
    assert recipes.parse("diffplan/hopper-medium-v0") == recipes.DatasetId("hopper-medium", None, False)
    assert recipes.parse("diffplan/hopper-random-250steps-v0").steps == 250
    assert isinstance(recipes.recipe_for("walker2d-medium-expert"), recipes.LocomotionRecipe)


@pytest.mark.parametrize("env", ["hopper", "walker2d", "halfcheetah"])
def test_datasets_carry_d4rl_reference_scores(env):
    dataset_id = L.make_dataset(f"{env}-random", steps=250, seed=0, progress=False)
    assert dataset_id == f"diffplan/{env}-random-250steps-v0"
    episodes = load_episodes(f"minari:{dataset_id}")
    meta = episodes.metadata
    assert (meta["ref_min_score"], meta["ref_max_score"]) == D4RL_REFS[env]
    info = B.load_info(env)
    assert meta["own_random_return"] == info["random"]["stochastic"]["mean"]
    assert meta["own_expert_return"] == info["expert"]["stochastic"]["mean"]
    assert meta["recipe"] == B.RECIPE and meta["kind"] == "random" and meta["seed"] == 0
    assert meta["behaviour"]["source"]["commit"] == zoo.ZOO_COMMIT
    assert episodes.num_steps == 250 and np.abs(episodes.act).max() <= 1.0
    ends = episodes.terminal | episodes.timeout  # every episode ends in a terminal state or a cut
    assert ends.sum() == episodes.num_episodes


def test_policy_rollouts_are_byte_reproducible_and_sampled():
    a = _episodes(L.make_dataset("walker2d-medium", steps=300, seed=3, progress=False, n_envs=4))
    b = _episodes(L.make_dataset("walker2d-medium", steps=300, seed=3, progress=False, n_envs=4,
                                 dataset_id="diffplan/walker2d-medium-again-v0"))
    assert len(a) == len(b) >= 4
    for x, y in zip(a, b, strict=True):
        for key in ("observations", "actions", "rewards", "terminations", "truncations"):
            assert np.array_equal(getattr(x, key), getattr(y, key)), key
    # the actions are samples, not the mean action: the deterministic policy would not reproduce them
    actor = B.load_actor("walker2d", "medium")
    mean = actor.act(torch.as_tensor(a[0].observations[:-1]), torch.arange(len(a[0].actions)), deterministic=True)
    assert not np.allclose(mean.numpy(), a[0].actions, atol=1e-3)
    c = _episodes(L.make_dataset("walker2d-medium", steps=300, seed=4, progress=False, n_envs=4,
                                 dataset_id="diffplan/walker2d-medium-seed4-v0"))
    assert not np.array_equal(a[0].observations, c[0].observations)


def test_medium_expert_is_medium_then_expert():
    me = _episodes(L.make_dataset("hopper-medium-expert", steps=200, seed=1, progress=False))
    med = _episodes(L.make_dataset("hopper-medium", steps=200, seed=1, progress=False))
    assert sum(len(e.rewards) for e in me) == 400
    for x, y in zip(me[: len(med)], med, strict=True):
        assert np.array_equal(x.actions, y.actions)
    # built again now that the medium dataset exists, it reuses it: same bytes
    me2 = _episodes(L.make_dataset("hopper-medium-expert", steps=200, seed=1, progress=False,
                                   dataset_id="diffplan/hopper-medium-expert-again-v0"))
    assert all(np.array_equal(x.observations, y.observations) for x, y in zip(me, me2, strict=True))


def test_medium_replay_is_the_sac_runs_whole_buffer(tmp_path):
    run = tmp_path / "sac"
    cfg = B.SACTrainConfig(seed=0, max_env_steps=90, start_steps=50, epoch_steps=20, eval_episodes=1, hidden=(8, 8),
                           batch_size=16, show_progress=False)
    dataset_id = L.make_dataset("hopper-medium-replay", progress=False, replay_run_dir=run, replay_sac=cfg)
    meta = load_episodes(f"minari:{dataset_id}").metadata
    done = json.loads((run / "done.json").read_text())
    assert done["target_return"] == B.load_info("hopper")["medium"]["deterministic"]["mean"]
    assert not done["reached_target"] and done["stopped_by"] == "max_env_steps"
    assert meta["num_steps"] == done["env_steps"] == 50 + 2 * 20  # the random warm-up and every step after it
    assert meta["behaviour"]["replay"]["best_return"] == done["best_return"]
    # the same finished run makes the same dataset again (it is reused, not retrained), truncated on request
    again = _episodes(L.make_dataset("hopper-medium-replay", steps=60, progress=False, replay_run_dir=run))
    first = _episodes(dataset_id)
    assert sum(len(e.rewards) for e in again) == 60
    assert np.array_equal(again[0].observations, first[0].observations)


def test_bad_inputs_fail_with_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="unknown locomotion task 'hopper-mediocre'"):
        L.make_dataset("hopper-mediocre", steps=10)
    with pytest.raises(DatasetError, match="unknown locomotion task 'ant-medium'"):
        L.make_dataset("ant-medium", steps=10)
    with pytest.raises(DatasetError, match="steps must be >= 1"):
        L.make_dataset("hopper-medium", steps=0)
    with pytest.raises(DatasetError, match="no behaviour policies for 'hopper'.*convert-zoo"):
        L.make_dataset("hopper-medium", steps=10, policy_dir=tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in B.POLICY_DIR.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    medium_file = B.load_info("hopper")["medium"]["file"]
    (bad / medium_file).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(DatasetError, match=f"corrupt behaviour-policy file .*{medium_file}"):
        L.make_dataset("hopper-medium", steps=10, policy_dir=bad)
    (bad / "hopper.json").write_text("{}")
    with pytest.raises(DatasetError, match="corrupt behaviour-policy summary"):
        L.make_dataset("hopper-medium", steps=10, policy_dir=bad)
    with pytest.raises(DatasetError, match="holds no finished SAC run"):
        L.replay_episodes(tmp_path / "no-run")
    dataset_id = L.make_dataset("hopper-random", steps=20, progress=False)
    with pytest.raises(DatasetError, match="already exists"):
        L.make_dataset("hopper-random", steps=20, dataset_id=dataset_id)


@pytest.mark.parametrize("name", ["bc", "td3bc", "cql"])
def test_baseline_on_locomotion_data(name):
    """Each baseline trains on a hopper dataset and acts in Hopper-v5; states are standardised as in TD3+BC."""
    from tianshou.data import Collector, VectorReplayBuffer
    from tianshou.utils.torch_utils import policy_within_training_step

    from diffplan.agents import AGENTS
    from diffplan.compose import load_config
    from diffplan.envs import make_vector_env

    from .conftest import tiny_baseline

    dataset_id = L.make_dataset("hopper-medium", steps=300, seed=0, progress=False)
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


def test_td3bc_target_actions_stay_in_the_action_bounds():
    """TD3+BC's smoothed target action is ``clip(pi'(s') + clip(noise), -1, 1)`` (Fujimoto & Gu's code): a
    saturated target actor plus noise must not query the critics outside the data's [-1, 1] (Tianshou 2.0's
    TD3 does not clip, and offline the critics' values there grow unchecked)."""
    from tianshou.data import Batch

    from diffplan.agents import AGENTS
    from diffplan.compose import load_config

    from .conftest import tiny_baseline

    dataset_id = L.make_dataset("hopper-medium", steps=300, seed=0, progress=False)
    episodes = load_episodes(f"minari:{dataset_id}")
    cfg = load_config(None, [*tiny_baseline("td3bc"), "task=hopper-medium", f"dataset=minari:{dataset_id}"])
    env = make_env(cfg.task)
    algorithm = AGENTS["td3bc"].build(cfg, env.observation_space, env.action_space, episodes).algorithm
    with torch.no_grad():  # saturate the target actor: tanh(+-big) = +-1 on alternate action dims
        algorithm.actor_old.module.last.model[-1].bias.copy_(torch.tensor([50.0, -50.0, 50.0]))
    obs = Batch(obs=episodes.obs[:256], info=Batch())
    act = algorithm._target_q_compute_action(obs).act
    assert act.abs().max() <= 1.0
    # the noise is still there, and still clipped at noise_clip: inside the bounds the actions differ from +-1
    assert (act.abs() < 1.0).float().mean() > 0.3 and (1.0 - act.abs()).max() <= cfg.noise_clip + 1e-6


def test_cli_make_and_errors(tmp_path, monkeypatch, capsys):
    from diffplan.cli import main

    out = tmp_path / "summary.json"
    assert main(["data", "make", "hopper-medium", "--steps", "300", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["steps"] == 300 and summary["kind"] == "medium" and summary["wall_s"] > 0
    assert summary["ref_max_score"] == 3234.3 and summary["behaviour"]["policies"]["expert"]["algo"] == "tqc"
    capsys.readouterr()
    assert main(["data", "make", "hopper-medium", "--steps", "300", "--noisy"]) == 2
    assert "--noisy applies to maze datasets only" in capsys.readouterr().err
    assert main(["data", "make", "hopper-medium", "--steps", "300", "--time-limit-min", "5"]) == 2
    assert "--time-limit-min applies to locomotion medium-replay datasets only" in capsys.readouterr().err
    monkeypatch.setattr(shipped, "POLICY_DIR", tmp_path / "nowhere")
    assert main(["data", "make", "walker2d-medium", "--steps", "300"]) == 2
    assert "convert-zoo" in capsys.readouterr().err
    assert main(["data", "make", "hopper-mediocre"]) == 2  # neither a task file nor a known task: one line
    assert "unknown task 'hopper-mediocre'" in capsys.readouterr().err
