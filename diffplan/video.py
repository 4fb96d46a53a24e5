"""Rollout videos: one evaluation episode rendered by MuJoCo, as an animated GIF in TensorBoard or on disk.

TensorBoard's image plugin plays animated GIFs; torch's ``SummaryWriter.add_video`` makes exactly that summary
but imports ``moviepy.editor``, which moviepy 2 removed. Encoding the GIF with Pillow (a matplotlib dependency,
already installed) and writing the same image summary avoids pinning moviepy 1.

On a machine without a display MuJoCo renders through EGL (``MUJOCO_GL=egl``, set here when nothing else is).
Without a GPU that is Mesa's software renderer: about 0.4 s a frame on this project's 2-core CPU, which is why
frames are taken every ``every`` env steps and capped at ``max_frames``.
"""

from __future__ import annotations

import io
import os
from typing import Any

import gymnasium as gym
import numpy as np

VIDEO_SIDE = 160
"""Frames are scaled so that their longer side is at most this many pixels (small GIFs, fast encoding)."""


class RenderError(RuntimeError):
    """MuJoCo could not render (no OpenGL platform: set MUJOCO_GL=egl or osmesa, or install Mesa's EGL)."""


def _use_headless_gl() -> None:
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"


class FrameRecorder(gym.Wrapper):
    """Keeps ``env.render()`` every ``every`` steps (and at reset), at most ``max_frames`` frames (H, W, 3) uint8.

    Gymnasium's ``RenderCollection`` renders at every step; here rendering is the slow part, so it is thinned.
    """

    def __init__(self, env: gym.Env, every: int = 4, max_frames: int = 100) -> None:
        super().__init__(env)
        if every < 1 or max_frames < 1:
            raise ValueError(f"every={every} and max_frames={max_frames} must be >= 1")
        self.every, self.max_frames = every, max_frames
        self.frames: list[np.ndarray] = []
        self._steps = 0

    def _grab(self) -> None:
        if len(self.frames) < self.max_frames:
            try:
                frame = self.env.render()
            except Exception as exc:  # MuJoCo raises FatalError / AttributeError without a GL context
                raise RenderError(f"MuJoCo could not render ({type(exc).__name__}: {exc})") from exc
            self.frames.append(_shrink(np.asarray(frame)))

    def reset(self, **kwargs: Any) -> Any:
        out = self.env.reset(**kwargs)
        self._steps = 0
        self._grab()
        return out

    def step(self, action: Any) -> Any:
        out = self.env.step(action)
        self._steps += 1
        if self._steps % self.every == 0:
            self._grab()
        return out


def _shrink(frame: np.ndarray) -> np.ndarray:
    from PIL import Image

    h, w = frame.shape[:2]
    scale = VIDEO_SIDE / max(h, w)
    if scale >= 1:
        return frame.astype(np.uint8)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(frame.astype(np.uint8)).resize(size, Image.BILINEAR))


def record_episode(policy: Any, task: str, seed: int, every: int = 4, max_frames: int = 100) -> np.ndarray:
    """Run one episode of ``policy`` on ``task`` through a Tianshou Collector and return its frames (T, H, W, 3).

    The env is the evaluation env of ``seed`` (the same start as the first evaluation episode of that seed).
    """
    from tianshou.data import Collector, VectorReplayBuffer
    from tianshou.env import DummyVectorEnv

    from diffplan.agent import Reseedable
    from diffplan.envs import make_env

    _use_headless_gl()
    recorder = FrameRecorder(make_env(task, seed=seed, render_mode="rgb_array"), every, max_frames)
    venv = DummyVectorEnv([lambda: recorder])
    try:
        if isinstance(policy, Reseedable):
            policy.reseed(seed)
        policy.eval()
        collector = Collector(policy, venv, VectorReplayBuffer(2000, 1))
        collector.reset()
        collector.collect(n_episode=1)
    finally:
        venv.close()
    return np.stack(recorder.frames)


def gif_bytes(frames: np.ndarray, fps: float = 15.0) -> bytes:
    """Animated GIF (looping) of frames (T, H, W, 3) uint8."""
    from PIL import Image

    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be (T, H, W, 3) with T >= 1, got {frames.shape}")
    images = [Image.fromarray(f.astype(np.uint8)) for f in frames]
    buf = io.BytesIO()
    images[0].save(
        buf, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0
    )
    return buf.getvalue()


def add_gif(writer: Any, tag: str, frames: np.ndarray, step: int, fps: float = 15.0) -> None:
    """Log frames (T, H, W, 3) to a torch ``SummaryWriter`` as an animated image (what ``add_video`` writes)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    image = Summary.Image(
        height=int(frames.shape[1]), width=int(frames.shape[2]), colorspace=3,
        encoded_image_string=gif_bytes(frames, fps),
    )
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
