"""The RL Baselines3 Zoo's trained MuJoCo policies as torch actors, and the converter that ships them.

Source: ``DLR-RM/rl-trained-agents`` (the Zoo's trained agents, MIT license), folders ``<algo>/<Env>-v3_1/``,
exported to plain float arrays (``weights.npz``, read with ``allow_pickle=False``; the original zips also carry
pickled objects and are never read). :func:`convert_policy` keeps the actor's tensors of one such file and writes
them as safetensors with the architecture in the header; :func:`build_actor` rebuilds the actor from them.

Three architecture families, each the stable-baselines3 / sb3-contrib math (checked against an independent numpy
computation in ``tests/test_locomotion.py``):

* ``squashed_gaussian`` (TQC, SAC): ReLU MLP -> mean and state-dependent log-std (clipped to [-20, 2]) of a
  Gaussian over pre-tanh actions; deterministic action ``tanh(mean)``, sample ``tanh(mean + std * N(0, I))``.
* ``gaussian`` (PPO, A2C, TRPO): observations normalised by the run's running statistics (VecNormalize:
  ``clip((o - mean) / sqrt(var + eps), -clip_obs, clip_obs)``), a ReLU or tanh MLP -> mean, state-independent
  log-std; deterministic action ``clip(mean, low, high)``, sample ``clip(mean + std * N(0, I), low, high)``
  (SB3 clips these, it does not squash). PPO Walker2d also reads a time feature ``1 - t / 1000``.
* ``linear`` (ARS): ``clip(W o_n, -1, 1)`` on normalised observations; ARS's policy is deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffplan.envs import LOCOMOTION_ENVS, LOCOMOTION_MAX_STEPS

ZOO_REPO = "DLR-RM/rl-trained-agents"
ZOO_COMMIT = "cd35bde610f4045bf2e0731c8f4c88d22df8fc85"
ZOO_LICENSE = "LICENSE-rl-trained-agents"
ZOO_ALGOS = ("tqc", "sac", "ppo", "trpo", "ars", "a2c")
ZOO_ENV_NAMES = {"hopper": "Hopper", "walker2d": "Walker2d", "halfcheetah": "HalfCheetah"}
"""diffplan env name -> the Zoo's env folder name (``<algo>/<Name>/weights.npz`` in the exported tree)."""
ENV_DIMS = {"hopper": (11, 3), "walker2d": (17, 6), "halfcheetah": (17, 6)}
"""(observation size, action size) of each env (identical on v3, v4 and v5)."""
HEADER_KEY = "diffplan_zoo_policy"
"""The safetensors header key holding a converted policy's architecture and source (JSON)."""
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
"""SB3's clip of a squashed Gaussian's log-std (``sb3/sac/policies.py``)."""


class BehaviourPolicyError(ValueError):
    """A behaviour-policy file is missing, unreadable or does not fit the env."""


@dataclass(frozen=True)
class ZooArch:
    """Architecture of one Zoo policy, recorded in its safetensors header."""

    algo: str
    env: str
    family: str
    """squashed_gaussian | gaussian | linear."""
    activation: str
    """relu | tanh | none (linear)."""
    time_feature: bool
    """The observation carries sb3-contrib's TimeFeatureWrapper value ``1 - t / 1000`` last."""


def zoo_arch(algo: str, env: str) -> ZooArch:
    """The architecture of ``<algo>/<env>`` (the exported tree's MANIFEST.md)."""
    if algo not in ZOO_ALGOS:
        raise BehaviourPolicyError(f"unknown Zoo algorithm {algo!r}; expected one of {ZOO_ALGOS}")
    if env not in ZOO_ENV_NAMES:
        raise BehaviourPolicyError(f"unknown locomotion env {env!r}; expected one of {sorted(ZOO_ENV_NAMES)}")
    if algo in ("tqc", "sac"):
        return ZooArch(algo, env, "squashed_gaussian", "relu", False)
    if algo == "ars":
        return ZooArch(algo, env, "linear", "none", False)
    relu = algo == "ppo" and env in ("hopper", "halfcheetah")
    return ZooArch(algo, env, "gaussian", "relu" if relu else "tanh", algo == "ppo" and env == "walker2d")


def _actor_shapes(arch: ZooArch) -> dict[str, tuple[int, ...]]:
    """Every actor tensor's expected shape (critics and value nets are not needed to act and are dropped)."""
    obs, act = ENV_DIMS[arch.env]
    obs += int(arch.time_feature)
    norm = {"obs_mean": (obs,), "obs_var": (obs,), "clip_obs": (), "epsilon": ()}
    if arch.family == "linear":
        return {"action_net.weight": (act, obs), **norm}
    if arch.family == "squashed_gaussian":
        h = 256
        return {
            "actor.latent_pi.0.weight": (h, obs), "actor.latent_pi.0.bias": (h,),
            "actor.latent_pi.2.weight": (h, h), "actor.latent_pi.2.bias": (h,),
            "actor.mu.weight": (act, h), "actor.mu.bias": (act,),
            "actor.log_std.weight": (act, h), "actor.log_std.bias": (act,),
        }
    h = 256 if arch.activation == "relu" else 64
    return {
        "mlp_extractor.policy_net.0.weight": (h, obs), "mlp_extractor.policy_net.0.bias": (h,),
        "mlp_extractor.policy_net.2.weight": (h, h), "mlp_extractor.policy_net.2.bias": (h,),
        "action_net.weight": (act, h), "action_net.bias": (act,), "log_std": (act,), **norm,
    }


def check_actor_tensors(arrays: Mapping[str, np.ndarray | torch.Tensor], arch: ZooArch, where: str) -> None:
    """Every actor tensor of ``arch`` is present with its shape; else one BehaviourPolicyError line."""
    for key, shape in _actor_shapes(arch).items():
        if key not in arrays:
            raise BehaviourPolicyError(f"{where} lacks {key!r}: not a {arch.algo} {arch.env} policy")
        got = tuple(arrays[key].shape)
        if got != shape:
            raise BehaviourPolicyError(
                f"{where}: {key} has shape {got}, a {arch.algo} {arch.env} policy needs {shape}"
            )


def read_zoo_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an exported ``weights.npz`` (no pickle); a missing or corrupt file is one error line."""
    path = Path(path)
    if not path.exists():
        raise BehaviourPolicyError(f"Zoo weights file {path} is missing")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except Exception as exc:  # zipfile / numpy raise several types for a truncated or garbled archive
        raise BehaviourPolicyError(f"corrupt Zoo weights file {path}: {str(exc).splitlines()[0]}") from exc


def zoo_folder(algo: str, env: str) -> str:
    """The policy's folder in ``DLR-RM/rl-trained-agents`` (trained on the mujoco-py ``-v3`` envs)."""
    return f"{algo}/{ZOO_ENV_NAMES[env]}-v3_1"


def convert_policy(zoo_dir: str | Path, algo: str, env: str, out: str | Path) -> Path:
    """Write ``<zoo_dir>/<algo>/<Env>/weights.npz``'s actor tensors to the safetensors file ``out``.

    Network weights become float32 (SB3 trained them in float32, so this is exact); VecNormalize's statistics
    stay float64 (SB3 normalises in float64 numpy before the float32 network). The header records the
    architecture and the source. Returns ``out``.
    """
    from safetensors.torch import save

    from diffplan.checkpoint import write_bytes_atomic

    arch = zoo_arch(algo, env)
    src = Path(zoo_dir) / algo / ZOO_ENV_NAMES[env] / "weights.npz"
    arrays = read_zoo_npz(src)
    check_actor_tensors(arrays, arch, str(src))
    keep = {}
    for key in _actor_shapes(arch):
        a = arrays[key]
        dtype = np.float64 if key in ("obs_mean", "obs_var", "clip_obs", "epsilon") else np.float32
        if dtype == np.float32 and not np.array_equal(a.astype(np.float32).astype(a.dtype), a):
            raise BehaviourPolicyError(f"{src}: {key} is not float32-exact; refusing a lossy conversion")
        keep[key] = torch.from_numpy(np.array(a, dtype=dtype, order="C"))  # 0-d stays 0-d
    # One header key holding sorted JSON: safetensors writes its metadata map in hash order, so several keys
    # would make every conversion a different file (and its sha256, which the datasets record, with it).
    meta = {HEADER_KEY: json.dumps({**asdict(arch), "source_repo": ZOO_REPO, "source_commit": ZOO_COMMIT,
                                    "source_folder": zoo_folder(algo, env)}, sort_keys=True)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, save(keep, metadata=meta))
    return out


# ------------------------------------------------------------------------------------------------ actors


class ZooActor(nn.Module):
    """A Zoo policy's actor. ``distribution(obs, t)`` -> (mean, std) of its Gaussian, each (B, A) (std None for
    the deterministic linear policy); :meth:`act` turns them into actions the way SB3 does."""

    squashed: bool = False

    def __init__(self, arch: ZooArch) -> None:
        super().__init__()
        self.arch = arch

    def _features(self, obs: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        """(B, O) float64 env observations [+ the time feature] -> the network's (B, O') float32 input."""
        if self.arch.time_feature:
            if t is None:
                raise ValueError(f"{self.arch.algo} {self.arch.env} reads a time feature: pass t (steps since reset)")
            feat = 1.0 - t.to(torch.float64) / LOCOMOTION_MAX_STEPS
            obs = torch.cat([obs.to(torch.float64), feat[:, None]], dim=1)
        return obs

    def distribution(self, obs: torch.Tensor, t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    @torch.no_grad()
    def act(self, obs: torch.Tensor, t: torch.Tensor | None = None, generator: torch.Generator | None = None,
            deterministic: bool = False) -> torch.Tensor:
        """(B, A) float32 actions in [-1, 1]: the mean action, or a sample drawn with ``generator``."""
        mean, std = self.distribution(obs, t)
        x = mean if deterministic or std is None else mean + std * torch.randn(mean.shape, generator=generator)
        return torch.tanh(x) if self.squashed else x.clamp(-1.0, 1.0)


class _Normalized(ZooActor):
    """VecNormalize's observation normalisation, in float64 as SB3 does it, then float32 for the network."""

    def __init__(self, arch: ZooArch, t: Mapping[str, torch.Tensor]) -> None:
        super().__init__(arch)
        self.register_buffer("obs_mean", t["obs_mean"].to(torch.float64))
        self.register_buffer("obs_var", t["obs_var"].to(torch.float64))
        self.clip_obs = float(t["clip_obs"])
        self.epsilon = float(t["epsilon"])

    def _features(self, obs: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        o = super()._features(obs.to(torch.float64), t)
        z = (o - self.obs_mean) / torch.sqrt(self.obs_var + self.epsilon)
        return z.clamp(-self.clip_obs, self.clip_obs).to(torch.float32)


def _linear(w: torch.Tensor, b: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    layer.weight.data.copy_(w)
    if b is not None:
        layer.bias.data.copy_(b)
    return layer


def _mlp(t: Mapping[str, torch.Tensor], prefix: str, act: type[nn.Module]) -> nn.Sequential:
    """SB3's two-layer extractor ``<prefix>.{0,2}`` (activations at 1 and 3, as in the state-dict keys)."""
    return nn.Sequential(_linear(t[f"{prefix}.0.weight"], t[f"{prefix}.0.bias"]), act(),
                         _linear(t[f"{prefix}.2.weight"], t[f"{prefix}.2.bias"]), act())


class SquashedGaussianActor(ZooActor):
    """TQC / SAC actor (SB3 ``sac.policies.Actor``): obs (B, O) -> pre-tanh mean and std (B, A)."""

    squashed = True

    def __init__(self, arch: ZooArch, t: Mapping[str, torch.Tensor]) -> None:
        super().__init__(arch)
        self.latent = _mlp(t, "actor.latent_pi", nn.ReLU)
        self.mu = _linear(t["actor.mu.weight"], t["actor.mu.bias"])
        self.log_std = _linear(t["actor.log_std.weight"], t["actor.log_std.bias"])

    def distribution(self, obs: torch.Tensor, t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.latent(self._features(obs, t).to(torch.float32))
        return self.mu(h), self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX).exp()


class GaussianActor(_Normalized):
    """PPO / A2C / TRPO actor (SB3 ``ActorCriticPolicy``): normalised obs -> mean (B, A), std (B, A)."""

    def __init__(self, arch: ZooArch, t: Mapping[str, torch.Tensor]) -> None:
        super().__init__(arch, t)
        self.latent = _mlp(t, "mlp_extractor.policy_net", nn.ReLU if arch.activation == "relu" else nn.Tanh)
        self.action_net = _linear(t["action_net.weight"], t["action_net.bias"])
        self.log_std = nn.Parameter(t["log_std"].to(torch.float32).clone())

    def distribution(self, obs: torch.Tensor, t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.action_net(self.latent(self._features(obs, t)))
        return mean, self.log_std.exp().expand_as(mean)


class LinearActor(_Normalized):
    """ARS's linear policy: normalised obs -> ``W o_n`` (B, A); deterministic (std None)."""

    def __init__(self, arch: ZooArch, t: Mapping[str, torch.Tensor]) -> None:
        super().__init__(arch, t)
        self.action_net = _linear(t["action_net.weight"], None)

    def distribution(self, obs: torch.Tensor, t: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        return self.action_net(self._features(obs, t)), None


_FAMILIES: dict[str, type[ZooActor]] = {
    "squashed_gaussian": SquashedGaussianActor, "gaussian": GaussianActor, "linear": LinearActor,
}


def build_actor(tensors: Mapping[str, torch.Tensor], arch: ZooArch, where: str = "tensors") -> ZooActor:
    """The torch actor of ``arch`` holding ``tensors`` (checked first: one error line for a wrong file)."""
    check_actor_tensors(tensors, arch, where)
    return _FAMILIES[arch.family](arch, tensors).eval()


def load_policy_file(path: str | Path) -> ZooActor:
    """The actor stored by :func:`convert_policy` at ``path``; a missing, corrupt or ill-shaped file is one
    :class:`BehaviourPolicyError` line."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise BehaviourPolicyError(
            f"behaviour-policy file {path} is missing; `diffplan data convert-zoo <behaviour-policies dir>` writes it"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no mapping)
    except Exception as exc:  # safetensors raises its own error types for truncated/garbled headers
        raise BehaviourPolicyError(f"corrupt behaviour-policy file {path}: {str(exc).splitlines()[0]}") from exc
    try:
        header = json.loads(meta[HEADER_KEY])
        arch = ZooArch(header["algo"], header["env"], header["family"], header["activation"],
                       bool(header["time_feature"]))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise BehaviourPolicyError(f"behaviour-policy file {path} has no architecture header ({exc!r})") from exc
    if arch.family not in _FAMILIES or arch.env not in LOCOMOTION_ENVS:
        raise BehaviourPolicyError(f"behaviour-policy file {path}: unknown architecture {json.dumps(asdict(arch))}")
    return build_actor(tensors, arch, str(path))
