"""Checkpoints: one directory per save, written atomically, loaded without unpickling arbitrary objects.

Layout of ``<run_dir>/checkpoints/step_<N>/``::

    state.pt      torch.save of a nested dict of tensors / numbers / strings (loaded with weights_only=True)
    config.yaml   the resolved experiment config
    meta.json     step, sha256 of state.pt, diffplan version

``<run_dir>/checkpoints/latest`` holds the name of the newest complete checkpoint. A checkpoint directory is
built under a temporary name and renamed into place, so a crash mid-save never leaves a half-written
checkpoint under a real name; the checksum catches files damaged afterwards.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffplan import __version__

STATE_FILE = "state.pt"
META_FILE = "meta.json"
CONFIG_FILE = "config.yaml"
LATEST_FILE = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, truncated or incompatible."""


class DiskFullError(CheckpointError):
    """A write failed because the disk (or the user's quota) is full; the previous file or checkpoint is kept."""


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_umask_lock = threading.Lock()


def _umask() -> int:
    """The process umask. ``os.umask`` can only be read by setting it, so set and restore it under a lock."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _disk_full(exc: OSError, what: str, kept: str) -> DiskFullError:
    return DiskFullError(f"cannot write {what}: the disk is full ({exc.strerror or exc}); {kept}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename: readers see the old or the new file.

    The file gets the permissions an ordinary ``open(path, "w")`` would give (``0o666`` minus the umask), not
    ``mkstemp``'s private 0600. A full disk raises :class:`DiskFullError` and leaves the old file and no
    temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            raise _disk_full(exc, str(path), "the previous file is unchanged") from exc
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Atomic text write (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode())


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[bool]:
    """Hold ``<run_dir>.lock`` (beside the run directory) exclusively for the block: yields True when this process
    got it, False when another process holds it (the caller skips or refuses the run; nothing waits).

    Benchmarks that train several runs (``bench suite``, ``bench dppo``) take it around each run, so processes
    side by side never train one run twice. ``flock``: released when the block ends or the process dies.
    """
    import fcntl  # POSIX only, like the training machines

    path = Path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def rng_state() -> dict[str, Any]:
    """Global RNG states (python, numpy, torch) as weights_only-loadable values."""
    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global RNG states saved by :func:`rng_state`."""
    random.setstate((state["python_version"], tuple(state["python"]), None))
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])


def save_checkpoint(
    run_dir: str | os.PathLike, step: int, state: dict[str, Any], config_yaml: str, keep: int = 3
) -> Path:
    """Atomically write checkpoint ``step`` under ``run_dir/checkpoints`` and point ``latest`` at it.

    Args:
        state: nested dict of tensors and plain values (anything ``torch.load(weights_only=True)`` accepts).
        config_yaml: the resolved config as YAML text.
        keep: how many checkpoints to keep: the one just saved (which ``latest`` names) and the ``keep - 1``
            highest other steps; older ones are deleted. 0 keeps all. The checkpoint ``latest`` names is never
            deleted, even when older runs left higher step numbers in the directory.

    Raises:
        DiskFullError: the disk filled up mid-save; the partial save is removed and ``latest`` still names
            the previous checkpoint, which stays loadable.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = root / name
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{name}-"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700); a checkpoint is an ordinary directory
    try:
        state_path = tmp / STATE_FILE
        with open(state_path, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        (tmp / CONFIG_FILE).write_text(config_yaml)
        meta = {"step": step, "sha256": _sha256(state_path), "diffplan_version": __version__}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            previous = (root / LATEST_FILE).read_text().strip() if (root / LATEST_FILE).exists() else None
            kept = f"the previous checkpoint {previous} is kept" if previous else "no earlier checkpoint exists"
            raise _disk_full(exc, f"checkpoint {final}", kept + "; free space and resume") from exc
        raise
    write_text_atomic(root / LATEST_FILE, name)
    if keep > 0:
        others = sorted((p for p in root.glob("step_*") if p.is_dir() and p.name != name), key=_step_of)
        for old in others[: max(len(others) - (keep - 1), 0)]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _step_of(path: Path) -> int:
    """The step number of a ``step_<N>`` directory (by value, not by name: names sort wrongly past 8 digits)."""
    digits = path.name.removeprefix("step_")
    return int(digits) if digits.isdigit() else -1


def parse_saved_config(text: str, where: str) -> dict[str, Any]:
    """A saved run's ``config.yaml`` as a mapping, read with ``yaml.safe_load`` (no tag ever builds an object).

    Raises CheckpointError for YAML that is not plain data (e.g. a ``!!python/object`` tag) or not a mapping.
    """
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CheckpointError(f"{where}: not a plain YAML config ({problem}); refusing to load it") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: a saved config must be a mapping of keys to values")
    return data


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Map a run directory, a ``checkpoints`` directory or a checkpoint directory to a checkpoint directory."""
    path = Path(path)
    if (path / STATE_FILE).exists() or (path / META_FILE).exists():
        return path
    for root in (path / "checkpoints", path):
        latest = root / LATEST_FILE
        if latest.exists():
            ckpt = root / latest.read_text().strip()
            if not ckpt.is_dir():
                raise CheckpointError(f"{latest} points to {ckpt.name}, which does not exist")
            return ckpt
    raise CheckpointError(f"no checkpoint found at {path} (expected a run directory or a step_* directory)")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[dict, str]:
    """Load ``(state, config_yaml)`` from a checkpoint, run directory or checkpoint directory.

    Raises CheckpointError with the file name for a missing, corrupt or truncated checkpoint. Loading uses
    ``weights_only=True``: no arbitrary object is ever unpickled.
    """
    ckpt = resolve_checkpoint(path)
    state_path, meta_path, config_path = ckpt / STATE_FILE, ckpt / META_FILE, ckpt / CONFIG_FILE
    for required in (state_path, meta_path, config_path):
        if not required.exists():
            raise CheckpointError(f"checkpoint {ckpt} is incomplete: {required.name} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {ckpt}: {META_FILE} is corrupt ({exc})") from exc
    expected = meta.get("sha256")
    if expected and _sha256(state_path) != expected:
        raise CheckpointError(
            f"checkpoint {ckpt}: {STATE_FILE} is corrupt or truncated (checksum mismatch, "
            f"{state_path.stat().st_size} bytes)"
        )
    try:
        state = torch.load(state_path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for bad zips and forbidden globals
        raise CheckpointError(f"checkpoint {ckpt}: cannot load {STATE_FILE}: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {ckpt}: {STATE_FILE} does not hold a state dict")
    return state, config_path.read_text()
