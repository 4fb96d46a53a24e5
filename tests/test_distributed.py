"""Data-parallel training (torch.distributed, gloo on CPU): two ranks equal one process, and resume exactly.

The ranks are spawned with ``torch.multiprocessing`` (what torchrun does, minus its agent) and join through the
same environment variables torchrun sets. One spawn runs every distributed scenario of this module, because
starting a process group of two Python processes costs seconds on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.optim.optimizer import register_optimizer_step_pre_hook

from diffplan.checkpoint import CheckpointError
from diffplan.compose import load_config
from diffplan.training import load_trained, train

from .conftest import TINY_DIFFUSION_QL, tiny_baseline

STEPS = 6
BC = ["agent=bc", "task=pointmaze-umaze", "hidden=[16,16]", "batch_size=8", "lr=1e-2", "eval_every=0",
      "checkpoint_every=0", "log_every=1", "final_eval_episodes=1", "eval_envs=1", "plot_plans=0", "torch_threads=1"]
# A diffusion agent whose loss draws noise: ranks see different noise, yet stay replicas of each other.
DIFFUSER = ["agent=diffuser", "task=pointmaze-umaze", "horizon=16", "dim=8", "dim_mults=[1,2]", "diffusion_steps=10",
            "sampling_steps=2", "batch_size=4", "eval_every=0", "checkpoint_every=0", "log_every=1",
            "final_eval_episodes=1", "eval_envs=1", "plot_plans=0", "ema_start=2", "ema_every=1", "torch_threads=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cfg(base: list[str], dataset: str, run_dir: Path, *extra: str):
    return load_config(None, [*base, f"dataset={dataset}", f"run_dir={run_dir}", *extra])


def _rank_main(rank: int, world: int, port: int, dataset: str, root: str) -> None:
    """One rank: every scenario of the module in one process group; each rank reports how far its weights are
    from rank 0's after each run."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), NUMBA_DISABLE_JIT="1")
    torch.set_num_threads(1)
    from diffplan.training import distributed
    from diffplan.training.experiment import setup
    from diffplan.training.loop import run_experiment

    out = Path(root)
    report: dict[str, float | str] = {}
    scenarios = [
        ("bc_straight", BC, out / "bc2", [f"train_steps={STEPS}"], None),
        ("bc_half", BC, out / "bc2_halves", [f"train_steps={STEPS // 2}"], None),
        ("bc_resumed", BC, out / "bc2_halves", [f"train_steps={STEPS}"], out / "bc2_halves"),
        ("diffuser_straight", DIFFUSER, out / "dif2", ["train_steps=4"], None),
        ("diffuser_half", DIFFUSER, out / "dif2_halves", ["train_steps=2"], None),
        ("diffuser_resumed", DIFFUSER, out / "dif2_halves", ["train_steps=4"], out / "dif2_halves"),
        # the Tianshou actor-critics (TD3+BC; CQL with SAC's temperature and its Lagrange multiplier) and a
        # diffusion actor-critic: several optimizers per update, all replicated
        *[(name, [*base, "final_eval_episodes=1", "eval_envs=1"], out / name, ["train_steps=3"], None)
          for name, base in (("td3bc", tiny_baseline("td3bc")), ("cql", tiny_baseline("cql")),
                             ("diffusion_ql", TINY_DIFFUSION_QL))],
        # a time budget with evaluations on rank 0: every rank must stop at the same step (no rank left waiting)
        ("bc_budget", BC, out / "bc2_budget", ["train_steps=100000", "max_train_minutes=0.01", "eval_every=25",
                                                "eval_episodes=1"], None),
    ]
    for name, base, run_dir, extra, resume in scenarios:
        cfg = _cfg(base, dataset, run_dir, *extra)
        ctx = distributed.init(cfg)
        exp = setup(cfg, progress=False)
        run_experiment(exp, resume=resume)
        report[name] = distributed.check_replicas(exp.agent, ctx)
    # A checkpoint of 2 ranks is refused by another number of ranks: here the check itself, with 1 rank.
    try:
        distributed.check_world(2, distributed.DistContext(), out / "bc2")
    except CheckpointError as exc:
        report["refusal"] = str(exc)
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    distributed.shutdown()


@pytest.fixture(scope="module")
def two_ranks(tiny_maze_dataset, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    ranks = mp.spawn(_rank_main, args=(2, _free_port(), tiny_maze_dataset, str(root)), nprocs=2, join=False)
    deadline = time.time() + 300
    while not ranks.join(timeout=1):  # a rank stuck in a collective must fail the test, not hang it
        if time.time() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail("the two ranks did not finish in 300 s (a collective never matched?)")
    return root


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = load_trained(run_dir).agent.algorithm.state_dict()
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def test_two_ranks_equal_one_process_with_the_same_global_batch(two_ranks, tiny_maze_dataset, tmp_path):
    """BC's update has no noise, so the only randomness is the batch: 2 ranks x 4 samples (gradients averaged)
    must give the parameters (and Adam moments) of one process drawing the same 8 samples."""
    one = tmp_path / "bc1"
    train(_cfg(BC, tiny_maze_dataset, one, f"train_steps={STEPS}"), progress=False)
    a, b = _weights(one), _weights(two_ranks / "bc2")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    results = json.loads((two_ranks / "bc2" / "results.json").read_text())
    assert results["ranks"] == 2 and results["gradient_steps"] == STEPS
    budget = json.loads((two_ranks / "bc2_budget" / "results.json").read_text())
    assert 0 < budget["gradient_steps"] < 100000 and len(budget["history"]) >= 2  # periodic evals + final
    assert not (two_ranks / "bc2" / "rank1").exists()


def test_ranks_stay_replicas(two_ranks):
    """Weights, optimizer moments, EMA and normalizers are identical on both ranks after every run, for agents
    with one optimizer and with several."""
    for rank in (0, 1):
        report = json.loads((two_ranks / f"rank{rank}.json").read_text())
        for name in ("bc_straight", "bc_resumed", "diffuser_straight", "diffuser_resumed", "bc_budget", "td3bc",
                     "cql", "diffusion_ql"):
            assert report[name] == 0.0, (rank, name, report[name])


@pytest.mark.parametrize("agent", ["bc2", "dif2"])
def test_distributed_resume_is_exact(two_ranks, agent):
    """N steps on 2 ranks == N/2, stop, resume on 2 ranks, N/2 (the diffusion agent too: each rank's noise
    streams are in the checkpoint)."""
    a, b = _weights(two_ranks / agent), _weights(two_ranks / f"{agent}_halves")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_with_another_number_of_ranks_is_refused(two_ranks, tmp_path):
    report = json.loads((two_ranks / "rank0.json").read_text())
    assert "written by a run of 2 rank(s), resumed with 1" in report["refusal"]
    # the same through the command, with one process: one error line, exit 2, the checkpoint untouched
    from diffplan.cli import main

    before = sorted(p.name for p in (two_ranks / "bc2" / "checkpoints").iterdir())
    assert main(["train", "--resume", str(two_ranks / "bc2"), f"train_steps={STEPS + 2}", "--no-progress"]) == 2
    assert sorted(p.name for p in (two_ranks / "bc2" / "checkpoints").iterdir()) == before


def test_online_agents_are_refused_under_torchrun(monkeypatch):
    """PPO collects its own data: data-parallel training refuses it in one line."""
    from diffplan.config import ConfigError
    from diffplan.training import distributed
    from diffplan.training.loop import run_experiment

    monkeypatch.setattr(distributed, "current", lambda: distributed.DistContext(rank=0, world=2))

    class _Online:
        online = True

    class _Exp:
        cfg = load_config(None, ["agent=ppo", "task=Pendulum-v1"])
        progress = False
        agent = _Online()

    with pytest.raises(ConfigError, match="learns online"):
        run_experiment(_Exp())  # type: ignore[arg-type]


def test_baseline_resume_is_exact_in_one_process(tiny_maze_dataset, tmp_path):
    """The baselines' buffer RNG is checkpointed (it was not: a resumed BC run redrew its first batches)."""
    straight, halves = tmp_path / "s", tmp_path / "h"
    train(_cfg(BC, tiny_maze_dataset, straight, f"train_steps={STEPS}"), progress=False)
    train(_cfg(BC, tiny_maze_dataset, halves, f"train_steps={STEPS // 2}"), progress=False)
    train(_cfg(BC, tiny_maze_dataset, halves, f"train_steps={STEPS}"), resume=halves, progress=False)
    a, b = _weights(straight), _weights(halves)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _offline_cases() -> dict[str, tuple[list[str], str]]:
    from .test_agents import CASES

    return {name: case for name, case in CASES.items() if case[1] is not None}


@pytest.mark.parametrize("case", sorted(_offline_cases()))
def test_every_optimizer_that_steps_is_all_reduced(case, request):
    """Each torch optimizer that steps during an offline update (the agents' own, Tianshou's actor/critic
    wrappers, SAC's temperature, CQL's Lagrange multiplier) is one the data-parallel hook is put on: no
    optimizer steps on rank-local gradients."""
    from diffplan.training.distributed import torch_optimizers
    from diffplan.training.experiment import setup
    from diffplan.training.loop import OfflineSteps

    overrides, fixture = _offline_cases()[case]
    exp = setup(load_config(None, [*overrides, f"dataset={request.getfixturevalue(fixture)}"]), progress=False)
    hooked = {id(opt) for opt, _, _ in torch_optimizers(exp.agent.algorithm)}
    stepped: set[int] = set()
    handle = register_optimizer_step_pre_hook(lambda opt, *_: stepped.add(id(opt)))
    try:
        steps = OfflineSteps(exp)
        for _ in range(3):
            steps.step()
    finally:
        handle.remove()
    assert stepped and stepped <= hooked, (len(stepped), len(hooked))
