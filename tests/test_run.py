"""Runner and CLI: exact resume, results.json, TensorBoard output, eval of a run, error exits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tianshou.data import Batch

from diffplan.cli import main
from diffplan.compose import load_config
from diffplan.config import ConfigError
from diffplan.envs import make_env
from diffplan.training import load_trained, setup, train

from .conftest import TINY_DIFFUSER


def _cfg(dataset, run_dir, *extra):
    return load_config(None, [*TINY_DIFFUSER, f"dataset={dataset}", f"run_dir={run_dir}", *extra])


def _weights(run_dir):
    exp = load_trained(run_dir)
    return {k: v for k, v in exp.agent.algorithm.state_dict().items() if isinstance(v, torch.Tensor)}, exp


def test_resume_continues_exactly(tiny_maze_dataset, tmp_path):
    """N steps straight == N/2 steps, stop, resume, N/2 steps: model, EMA, optimizer, counters identical."""
    n = 8
    straight = tmp_path / "straight"
    train(_cfg(tiny_maze_dataset, straight, f"train_steps={n}", "final_eval_episodes=1"), progress=False)
    halves = tmp_path / "halves"
    train(_cfg(tiny_maze_dataset, halves, f"train_steps={n // 2}", "final_eval_episodes=1"), progress=False)
    resumed = train(_cfg(tiny_maze_dataset, halves, f"train_steps={n}", "final_eval_episodes=1"), resume=halves,
                    progress=False)
    # the first run's final evaluation stays in the resumed run's history (learning curves span the resume)
    assert [h["step"] for h in resumed["history"]] == [n // 2, n]
    a, exp_a = _weights(straight)
    b, _ = _weights(halves)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # optimizer state too
    opt_a = exp_a.agent.algorithm.state_dict()["_optimizers"][0]["state"]
    opt_b = load_trained(halves).agent.algorithm.state_dict()["_optimizers"][0]["state"]
    for k in opt_a:
        assert torch.equal(opt_a[k]["exp_avg"], opt_b[k]["exp_avg"])
    assert int(a["num_updates"]) == n


def test_train_writes_results_tensorboard_and_plans(tiny_maze_dataset, tmp_path):
    run_dir = tmp_path / "run"
    results = train(_cfg(tiny_maze_dataset, run_dir, "eval_every=3", "checkpoint_every=3"), progress=False)
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["gradient_steps"] == 6 and saved["final"]["episodes"] == 2
    for key in ("normalized_score", "normalized_score_se", "success_rate", "plan_ms_median"):
        assert key in saved["final"], key
    assert [h["step"] for h in saved["history"]] == [3, 6]
    assert results["ref_max_score"] > results["ref_min_score"]
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert list((run_dir / "plans").glob("*.png"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "eval/normalized_score", "eval/success_rate", "eval/plan_ms_median"} <= set(tags["scalars"])
    assert "eval/plans" in tags["images"]


def test_cli_smoke(tiny_maze_dataset, tmp_path, capsys):
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text("\n".join(o.replace("=", ": ", 1) for o in TINY_DIFFUSER) + "\n")
    run_dir = tmp_path / "cli-run"
    assert main(["train", str(cfg_path), f"dataset={tiny_maze_dataset}", f"run_dir={run_dir}", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "normalized score" in out and str(run_dir) in out
    assert main(["eval", str(run_dir), "--episodes", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 2 and "normalized_score" in summary
    assert main(["train", "--resume", str(run_dir), "train_steps=8", "--no-progress"]) == 0
    assert json.loads((run_dir / "results.json").read_text())["gradient_steps"] == 8
    capsys.readouterr()
    # Benchmarks over the finished run write JSON (and the learning-curve picture).
    curve_out = tmp_path / "bench" / "curve.json"
    assert main(["bench", "curve", str(run_dir), "--out", str(curve_out)]) == 0
    curve = json.loads(curve_out.read_text())
    (history,) = curve["curves"].values()
    assert [h["step"] for h in history][-1] == 8 and curve_out.with_suffix(".png").stat().st_size > 0
    plan_out = tmp_path / "bench" / "plan.json"
    assert main(["bench", "plan", str(run_dir), "--repeats", "2", "--out", str(plan_out)]) == 0
    assert json.loads(plan_out.read_text())["plan_ms_median"] > 0
    assert main(["bench", "curve", str(tmp_path / "no-run")]) == 2
    assert "finished run directory" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent: diffuser\nhorizn: 8\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'horizn'" in err and "Traceback" not in err
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "no checkpoint found" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "no-run")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["data", "info", "minari:diffplan/does-not-exist-v0"]) == 2
    assert "diffplan: error:" in capsys.readouterr().err


def test_data_info(tiny_maze_dataset, capsys):
    assert main(["data", "info", tiny_maze_dataset]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["steps"] == 4000 and info["episodes"] >= 2 and info["ref_max_score"] > info["ref_min_score"]
    assert info["recipe"] and info["task"] == "pointmaze-umaze"


@pytest.mark.parametrize("bad", ["truncate", "garbage"])
def test_eval_of_corrupt_checkpoint_is_a_clear_error(tiny_maze_dataset, tmp_path, capsys, bad):
    run_dir = tmp_path / "run"
    train(_cfg(tiny_maze_dataset, run_dir, "final_eval_episodes=1"), progress=False)
    ckpt = next((run_dir / "checkpoints").glob("step_*")) / "state.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 3] if bad == "truncate" else b"\0" * 100)
    assert main(["eval", str(run_dir), "--episodes", "1"]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err


def _can_render() -> bool:
    from diffplan.envs import make_env
    from diffplan.video import FrameRecorder, RenderError, _use_headless_gl

    _use_headless_gl()
    try:
        env = FrameRecorder(make_env("pointmaze-umaze", render_mode="rgb_array"))
        env.reset(seed=0)
        env.close()
    except RenderError:
        return False
    return True


def test_rollout_video_in_tensorboard_and_eval_gif(tiny_maze_dataset, tmp_path, capsys):
    """A GIF of one protocol episode: a frame at reset and every `video_every` steps, capped at video_frames."""
    if not _can_render():
        pytest.skip("MuJoCo has no OpenGL platform here (MUJOCO_GL=egl needs Mesa's libEGL)")
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "video-run"
    train(_cfg(tiny_maze_dataset, run_dir, "video_frames=3", "video_every=100"), progress=False)
    gifs = list((run_dir / "videos").glob("*.gif"))
    assert len(gifs) == 1
    with Image.open(gifs[0]) as gif:
        assert gif.n_frames == 3 and max(gif.size) <= 160
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    assert "eval/rollout" in acc.Tags()["images"]

    out = tmp_path / "eval.gif"
    assert main(["eval", str(run_dir), "video_frames=2", "--episodes", "1", "--no-progress", "--video", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["video"] == str(out)
    with Image.open(out) as gif:
        assert gif.n_frames == 2


def test_gif_of_bad_frames_is_refused():
    import numpy as np

    from diffplan.video import gif_bytes

    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        gif_bytes(np.zeros((4, 8, 8), dtype=np.uint8))


def _ppo_cfg(run_dir, *extra):
    from .conftest import TINY_PPO

    return load_config(None, [*TINY_PPO, f"run_dir={run_dir}", "final_eval_episodes=1", *extra])


def test_online_resume_continues_exactly(tmp_path):
    """The online loop (collector over vector envs + PPO updates): N updates straight == N/2, stop, resume, N/2."""
    n = 4
    straight = tmp_path / "straight"
    train(_ppo_cfg(straight, f"train_steps={n}", f"checkpoint_every={n // 2}"), progress=False)
    halves = tmp_path / "halves"
    train(_ppo_cfg(halves, f"train_steps={n // 2}"), progress=False)
    resumed = train(_ppo_cfg(halves, f"train_steps={n}", f"checkpoint_every={n // 2}"), resume=halves, progress=False)
    assert resumed["updates"] == n and resumed["env_steps"] == n * 64
    a, _ = _weights(straight)
    b, _ = _weights(halves)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_online_tensorboard_has_rollout_scalars(tmp_path):
    run_dir = tmp_path / "ppo"
    train(_ppo_cfg(run_dir, "train_steps=2", "log_every=1", "env_steps_per_update=128"), progress=False)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    assert {"train/loss", "train/env_steps", "train/episode_return", "eval/return_mean"} <= set(acc.Tags()["scalars"])


def test_ppo_warm_starts_from_a_bc_run(tiny_hopper_dataset, tmp_path):
    """A bc run's actor becomes the Gaussian policy's mean: before any update PPO acts exactly as the BC policy."""
    from .conftest import tiny_baseline

    bc_dir = tmp_path / "bc"
    bc = [*tiny_baseline("bc"), "task=Hopper-v5", f"dataset={tiny_hopper_dataset}", f"run_dir={bc_dir}",
          "final_eval_episodes=1"]
    train(load_config(None, bc), progress=False)
    bc_policy = load_trained(bc_dir).agent.policy
    ppo = setup(_ppo_cfg(tmp_path / "ppo", f"init_from={bc_dir}"), progress=False)
    ppo.agent.algorithm.warm_start(str(bc_dir))
    obs = np.stack([make_env("Hopper-v5", seed=i).reset(seed=i)[0] for i in range(3)]).astype(np.float32)
    ppo.agent.policy.eval()
    np.testing.assert_allclose(ppo.agent.policy(Batch(obs=obs, info=Batch())).act, bc_policy(Batch(obs=obs)).act,
                               atol=1e-6)
    # the loop warm-starts a fresh run by itself; a wrong source is one clear error
    train(_ppo_cfg(tmp_path / "ppo-run", f"init_from={bc_dir}", "train_steps=1"), progress=False)
    with pytest.raises(ConfigError, match="PPO starts from a 'bc' run"):
        train(_ppo_cfg(tmp_path / "x", f"init_from={tmp_path / 'ppo-run'}", "train_steps=1"), progress=False)
    with pytest.raises(ConfigError, match="no such run directory"):
        train(_ppo_cfg(tmp_path / "y", f"init_from={tmp_path / 'nowhere'}", "train_steps=1"), progress=False)
    with pytest.raises(ConfigError, match="hidden"):
        train(_ppo_cfg(tmp_path / "z", f"init_from={bc_dir}", "hidden=[8,8]", "train_steps=1"), progress=False)
