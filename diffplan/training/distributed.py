"""Data-parallel training of offline agents with ``torch.distributed`` (launched by ``torchrun``).

``torchrun --nproc-per-node N -m diffplan train <config> ...`` starts N copies of the ordinary training command;
torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...) makes :func:`init` join
them into one process group: gloo on CPU, NCCL when the run's ``device`` is a CUDA device. Across machines the
same command runs on every node with torchrun's rendezvous (``--nnodes M --rdzv-backend c10d
--rdzv-endpoint host:port``). Without torchrun's variables nothing here does anything: a plain run is one rank.

What makes N ranks one training run:

* **The global batch.** ``batch_size`` stays the batch of one update; each rank computes the loss of its shard
  of ``batch_size / N`` samples (a config whose batch does not divide is refused). Batch indices are drawn, as
  ``torch.utils.data.DistributedSampler`` draws its permutation, from a generator that is seeded alike and
  advanced alike on every rank; each rank gathers only its own rows (:class:`ShardedBatches`). The data of
  every update is therefore exactly the data of a one-process run with the same global batch and seed.
* **Per-rank randomness.** Everything else that is random in an update (diffusion timesteps and noise,
  dropout, TD3's target noise) comes from the agent's own generators and the global RNGs, which rank r > 0
  reseeds from ``(seed, r)``: the ranks' shards see independent noise, as N/N-th of one big batch would.
* **Gradient all-reduce before every optimizer step** (:func:`all_reduce_gradients`), for every torch optimizer
  the algorithm holds: the diffusion agents' optimizers, Tianshou's actor/critic optimizers of the baselines,
  SAC's temperature and CQL's Lagrange multiplier. The state starts equal (rank 0's, broadcast), every step
  applies the same averaged gradient, so weights, optimizer moments, EMA copies and normalizer statistics are
  the same on every rank (:func:`check_replicas` verifies it).
* **Rank 0 alone writes** TensorBoard, checkpoints, plan figures and results.json, and runs the evaluations.
  A checkpoint holds every rank's generators and RNG states (gathered to rank 0) and the number of ranks; it
  resumes exactly with the same number of ranks and is refused, in one line, with another (the per-rank noise
  streams cannot be re-split). Evaluating it (``diffplan eval``) or starting from it (``init_from``) needs no
  process group.

Why not ``torch.nn.parallel.DistributedDataParallel``: DDP all-reduces inside the backward pass of the wrapped
module's ``forward``, but Tianshou's algorithms call their sub-networks directly (``policy.actor``,
``critic``, ``critic2``...), run several forward/backward passes per update (the actor loss goes through the
critic whose optimizer does not step then), and save ``state_dict`` keys that a ``module.`` wrapper would
change (breaking every existing checkpoint). An explicit, bucketed all-reduce at the optimizer step is the same
arithmetic as DDP's (average of the ranks' gradients, before clipping), works for every agent unchanged and
keeps checkpoints interchangeable between one-process and distributed runs. What it gives up is DDP's overlap
of communication with the backward pass, which matters for large models on many GPUs, not for these sizes.

Online agents (PPO, DPPO) are refused: their data comes from their own rollouts; scale their collection
instead (``vector_env=ray``).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tianshou.algorithm.algorithm_base import Algorithm
from tianshou.data import Batch, ReplayBuffer

from diffplan.agent import Agent
from diffplan.checkpoint import CheckpointError
from diffplan.config import ConfigError, RunConfig
from diffplan.data.batches import WindowSampler

log = logging.getLogger("diffplan")

TIMEOUT = timedelta(minutes=60)
"""How long a rank waits at a collective: rank 0 evaluates while the others wait at the next all-reduce, and a
long locomotion evaluation with a planner takes many minutes."""


INDEX_STREAM = 1 << 20
"""Spawn key of the batch-index stream of a data-parallel run (``SeedSequence([seed, INDEX_STREAM])``): far from
the rank numbers, whose noise streams are ``SeedSequence([seed, rank, i])``."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the run: ``rank`` of ``world`` (1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True inside a process group of two or more ranks."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """The rank that writes files and evaluates."""
        return self.rank == 0


def launched() -> bool:
    """Whether torchrun (or another launcher setting its variables) started this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def backend_for(device: str) -> str:
    """``nccl`` for a CUDA run on a machine that has CUDA, else ``gloo``."""
    return "nccl" if device.startswith("cuda") and torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def init(cfg: RunConfig) -> DistContext:
    """Join torchrun's process group (once per process) and return this rank's context.

    A CUDA run uses the GPU of its local rank: ``device=cuda`` becomes ``cuda:<LOCAL_RANK>`` in ``cfg``.
    """
    if not launched():
        return DistContext()
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        backend = backend_for(cfg.device)
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
        log.info("rank %d of %d joined the %s process group", rank, world, backend)
    if cfg.device == "cuda" and world > 1:
        cfg.device = f"cuda:{local_rank}"
    return DistContext(rank, world, local_rank)


def current() -> DistContext:
    """This process's context once :func:`init` ran (rank 0 of 1 otherwise)."""
    if not dist.is_available() or not dist.is_initialized():
        return DistContext()
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def is_main_process() -> bool:
    """True on rank 0 (and in every non-distributed process): the process that prints and writes."""
    return current().main


def shutdown() -> None:
    """Leave the process group (after the last collective of the run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own randomness; rank 0 keeps ``seed`` (a one-rank run is a plain run)."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0] % (2**31 - 1))


# ------------------------------------------------------------------------------------------------ batches


class ShardedBatches:
    """A batch source for ``Algorithm.update`` that gives this rank its shard of every global batch.

    ``sample(n)`` draws the global batch of ``n`` indices from the inner source and keeps this rank's
    ``n / world`` rows ``[rank * n / world, (rank + 1) * n / world)``: the inner source's index generator is seeded alike on every rank and only
    advanced here, so all ranks draw the same global batch (``DistributedSampler``'s rule) and together see
    exactly the batch a one-process run draws. Gathering the global batch of indices costs a little more than
    gathering one shard; on these datasets (preloaded tensors) that is far below one forward pass.

    Inner sources: a :class:`~diffplan.data.batches.WindowSampler` (diffusion agents) gets its own index
    generator here, apart from the algorithm's noise generator which it shared; a Tianshou ``ReplayBuffer``
    (the baselines) draws indices from its own ``RandomState``, whose state this class checkpoints. Tianshou's
    preprocessing (n-step returns, ``buffer.next``) reads the buffer through this object, so everything else
    is forwarded to the inner source.
    """

    def __init__(self, source: Any, rank: int, world: int, seed: int) -> None:
        self.source, self.rank, self.world = source, rank, world
        self.index_generator: torch.Generator | None = None
        # One rank: the sampler keeps the generator it shares with the algorithm (a plain run, unchanged).
        if world > 1 and isinstance(source, WindowSampler):
            # Alike on every rank, and apart from the noise stream that rank 0 keeps on the run's seed (the same
            # seed for both would pair each sample's index with its diffusion timestep at the first step).
            index_seed = int(np.random.SeedSequence([seed, INDEX_STREAM]).generate_state(1)[0])
            self.index_generator = torch.Generator().manual_seed(index_seed)
            source.generator = self.index_generator

    def sample(self, batch_size: int) -> tuple[Batch, np.ndarray]:
        """This rank's shard, ``(batch_size / world)`` rows, of a global batch of ``batch_size``."""
        batch, indices = self.source.sample(batch_size)
        if self.world == 1:
            return batch, indices
        shard = batch_size // self.world
        rows = slice(self.rank * shard, (self.rank + 1) * shard)
        return batch[rows], np.asarray(indices)[rows]

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: Any) -> Any:
        return self.source[index]

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class lacks: Tianshou's batch preprocessing reads the buffer's own.
        return getattr(self.__dict__["source"], name)

    def state_dict(self) -> dict[str, Any]:
        """The index stream's state (identical on every rank), for an exact resume."""
        if self.index_generator is not None:
            return {"index_generator": self.index_generator.get_state()}
        if isinstance(self.source, ReplayBuffer):
            _, keys, pos, has_gauss, gauss = self.source._random_state.get_state()
            return {"buffer_rng_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "buffer_rng_pos": int(pos),
                    "buffer_rng_gauss": [int(has_gauss), float(gauss)]}
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "index_generator" in state and self.index_generator is not None:
            self.index_generator.set_state(state["index_generator"])
        if "buffer_rng_keys" in state and isinstance(self.source, ReplayBuffer):
            has_gauss, gauss = state["buffer_rng_gauss"]
            self.source._random_state.set_state(
                ("MT19937", state["buffer_rng_keys"].numpy().astype(np.uint32), state["buffer_rng_pos"], has_gauss, gauss)
            )


# ---------------------------------------------------------------------------------------------- gradients


def torch_optimizers(algorithm: Algorithm) -> list[tuple[torch.optim.Optimizer, float | None, list[torch.nn.Parameter]]]:
    """Every torch optimizer of ``algorithm`` with the gradient-norm clip its Tianshou wrapper applies and the
    parameters that clip covers.

    Tianshou keeps most in ``Algorithm.Optimizer`` wrappers (``_optimizers``); SAC's ``AutoAlpha`` and CQL's
    Lagrange multiplier hold bare ``torch.optim`` optimizers as module attributes, found by walking the modules.
    """
    found: list[tuple[torch.optim.Optimizer, float | None, list[torch.nn.Parameter]]] = []
    seen: set[int] = set()
    for module in algorithm.modules():
        for value in vars(module).values():
            if isinstance(value, Algorithm.Optimizer):
                wrappers = [value]
            elif isinstance(value, list) and value and all(isinstance(v, Algorithm.Optimizer) for v in value):
                wrappers = value
            else:
                wrappers = []
            for w in wrappers:
                if id(w._optim) not in seen:
                    seen.add(id(w._optim))
                    found.append((w._optim, w._max_grad_norm, list(w._module.parameters())))
            if isinstance(value, torch.optim.Optimizer) and id(value) not in seen:
                seen.add(id(value))
                params = [p for g in value.param_groups for p in g["params"]]
                found.append((value, None, params))
    return found


def tianshou_optimizers(algorithm: Algorithm) -> list[Algorithm.Optimizer]:
    """Tianshou's optimizer wrappers of ``algorithm`` and of any algorithm inside it."""
    return [w for module in algorithm.modules() if isinstance(module, Algorithm) for w in module._optimizers]


def all_reduce_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Average the gradients of ``params`` over the ranks in one flat all-reduce (DDP's bucket, in one piece).

    A parameter without a gradient on this rank contributes zeros, so every rank sends the same tensor layout
    whatever branch its loss took; afterwards every such parameter holds the averaged gradient.
    """
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(world)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def _step_pre_hook(
    params: list[torch.nn.Parameter], clip: float | None, world: int, optimizer: torch.optim.Optimizer, *_: Any
) -> None:
    trained = [p for p in params if p.requires_grad]
    all_reduce_gradients(trained, world)
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(trained, max_norm=clip)


# ----------------------------------------------------------------------------------------------- the run


def prepare(agent: Agent, cfg: RunConfig, ctx: DistContext) -> ShardedBatches | None:
    """Make ``agent`` one replica of a data-parallel run; returns its sharded batch source.

    On one rank this only wraps the batch source (so a one-rank run also checkpoints the baselines' buffer
    RNG). On N ranks: refuse what cannot run data-parallel, broadcast rank 0's parameters and buffers, reseed
    this rank's own randomness, and all-reduce the gradients of every optimizer before it steps.
    """
    if agent.batch_source is None:
        return None
    sharded = ShardedBatches(agent.batch_source, ctx.rank, ctx.world, cfg.seed)
    if not ctx.enabled:
        return sharded
    if cfg.batch_size % ctx.world != 0:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is the global batch and must divide among the {ctx.world} ranks"
        )
    algorithm = agent.algorithm
    # Every rank starts from rank 0's complete state: weights, EMA, normalizer statistics (module extra state,
    # which a broadcast of parameters and buffers would miss) and optimizer state.
    state = broadcast(_to_cpu(algorithm.state_dict()) if ctx.main else None, ctx)
    if not ctx.main:
        algorithm.load_state_dict(state)
    if ctx.rank:
        # Rank 0 keeps the run's seeds; rank r reseeds its noise (its generators and the global RNGs). The
        # baselines' buffer has its own RandomState, untouched: it is the index stream, alike on every rank.
        for i, generator in enumerate(agent.generators().values()):
            generator.manual_seed(int(np.random.SeedSequence([cfg.seed, ctx.rank, i]).generate_state(1)[0]))
        seed = rank_seed(cfg.seed, ctx.rank)
        torch.manual_seed(seed)
        np.random.seed(seed)
    found = torch_optimizers(algorithm)
    for wrapper in tianshou_optimizers(algorithm):
        # The wrapper clips between backward and step; the clip moves behind the all-reduce (into the hook),
        # because clipping must see the averaged gradient, as in a one-process run.
        wrapper._max_grad_norm = None
    for optimizer, clip, params in found:
        optimizer.register_step_pre_hook(functools.partial(_step_pre_hook, params, clip, ctx.world))
    return sharded


def _to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor (in nested dicts, lists, tuples) on the CPU: what crosses between ranks as a
    pickled object must not name one rank's GPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in ``obj`` (nested dicts, lists, tuples), in a fixed order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _tensors(v)]
    return []


def gather(obj: Any, ctx: DistContext) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (None elsewhere); ``[obj]`` in a one-rank run."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] | None = [None] * ctx.world if ctx.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (a loaded checkpoint: other nodes need no shared file system)."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def _comm_device() -> torch.device:
    """Where a tensor must be for a collective: NCCL reduces GPU tensors only, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def agree_max(value: float, ctx: DistContext) -> float:
    """The largest ``value`` over the ranks: decisions that must be the same everywhere (stop on the time
    budget) use it, or one rank would stop while the others wait for it at the next all-reduce."""
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def check_world(saved: int, ctx: DistContext, path: Any) -> None:
    """Refuse to resume a checkpoint of ``saved`` ranks with another number."""
    if saved != ctx.world:
        how = "plain `diffplan train --resume`" if saved == 1 else f"torchrun --nproc-per-node {saved} (in all)"
        raise CheckpointError(
            f"{path}: written by a run of {saved} rank(s), resumed with {ctx.world}; each rank's noise streams "
            f"are in the checkpoint, so resume it with {how} (or start a new run with init_from)"
        )


def check_replicas(agent: Agent, ctx: DistContext) -> float:
    """Largest difference between this rank's algorithm state and rank 0's (0.0 in a one-rank run): weights,
    EMA, normalizer statistics and optimizer moments.

    A test and a debugging aid: after any number of steps every replica must equal rank 0.
    """
    if not ctx.enabled:
        return 0.0
    tensors = _tensors(agent.algorithm.state_dict())
    flat = torch.cat([t.detach().double().reshape(-1).to(_comm_device()) for t in tensors])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    return agree_max((flat - reference).abs().max().item(), ctx)
