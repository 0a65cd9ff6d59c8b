"""torch.distributed helpers for training and feature extraction past one process.

pbeh runs under ``torchrun`` (one process per GPU, or several gloo processes on CPUs) with the stock
:mod:`torch.distributed` engine; this module holds the few pieces the trainer and the feature cache share:

* :func:`init_from_env` joins the process group that ``torchrun`` describes in the environment (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); :func:`current` says whether this process is
  one of several;
* :func:`shard_bounds` and :class:`DistributedMinibatchSampler`: every rank draws the same seeded global minibatch
  order and takes its contiguous share of each batch, so the global batch is the one a single process would train on;
* :func:`all_gather_rows`: the outputs of every rank, in the global batch order, with the gradient flowing to the
  local part only (open_clip's pattern: gather, then put the local tensor that carries the gradient back in place of
  its gathered copy). A loss over the gathered batch, summed over ranks, then has the gradient of the global loss;
* :func:`broadcast_object` (rank 0's decision to every rank), :func:`all_gather_objects` (small results of every
  rank, such as the features each rank extracted) and :func:`barrier`.

Every function is a no-op or the identity when ``ctx`` is ``None`` (a single process).
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "BACKENDS",
    "DistributedContext",
    "DistributedMinibatchSampler",
    "MinibatchShare",
    "all_gather_objects",
    "all_gather_rows",
    "barrier",
    "broadcast_object",
    "current",
    "init_from_env",
    "shard_bounds",
]

_logger = logging.getLogger(__name__)

BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in an initialised process group of more than one process.

    Attributes:
        rank: this process's rank, ``0 .. world_size - 1``.
        world_size: number of processes.
        local_rank: rank on this machine (``LOCAL_RANK``): the GPU this process uses.
        backend: ``"gloo"`` (CPU tensors) or ``"nccl"`` (CUDA tensors).
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that evaluates, decides and writes files."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """The device this process computes on: ``cuda:<local_rank>`` under NCCL, the CPU under gloo."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


def current() -> DistributedContext | None:
    """The context of an initialised process group with more than one process, else ``None`` (one process).

    Example:
        >>> current() is None  # no process group in a plain Python process
        True
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world_size = dist.get_world_size()
    if world_size < 2:
        return None
    backend = str(dist.get_backend()).lower()
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistributedContext(dist.get_rank(), world_size, local_rank, backend)


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name}: expected an int in the environment (torchrun sets it), got {value!r}") from None
    if number < 0:
        raise ValueError(f"{name}: expected an int >= 0 in the environment, got {number}")
    return number


def init_from_env(*, backend: str | None = None, timeout_s: float = 1800.0) -> DistributedContext | None:
    """Join the process group ``torchrun`` describes in the environment; ``None`` when not launched by it.

    Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing is initialised and ``None`` is returned, so the same
    script runs as one process. An already initialised group is reused.

    Args:
        backend: ``"nccl"`` (one process per GPU; the default when CUDA is available) or ``"gloo"`` (CPU; the
            default otherwise).
        timeout_s: how long a collective waits for the other processes before failing.

    Raises:
        ValueError: a backend other than ``"gloo"``/``"nccl"``, a bad timeout, or a malformed environment.
        RuntimeError: ``"nccl"`` without enough CUDA devices for ``LOCAL_RANK``.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS} or None, got {backend!r}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"timeout_s: expected a positive number of seconds, got {timeout_s!r}")
    if dist.is_available() and dist.is_initialized():
        return current()
    if "WORLD_SIZE" not in os.environ or _env_int("WORLD_SIZE") <= 1:
        return None
    if not dist.is_available():  # pragma: no cover - every supported torch build has it
        raise RuntimeError("torch.distributed is not available in this torch build; run as one process")
    world_size, rank = _env_int("WORLD_SIZE"), _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    if rank >= world_size:
        raise ValueError(f"RANK: expected an int below WORLD_SIZE={world_size}, got {rank}")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK: process {local_rank} needs its own GPU but this machine shows "
                f"{torch.cuda.device_count()}; launch at most one process per GPU (--nproc_per_node) or use gloo"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend=backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=float(timeout_s))
    )
    _logger.info("rank %d of %d joined the %s process group", rank, world_size, backend)
    return current()


def shard_bounds(n: int, world_size: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` shares of ``n`` rows over ``world_size`` ranks, the first ``n % world_size``
    ranks one row longer (a share may be empty when ``n < world_size``).

    Example:
        >>> shard_bounds(5, 2), shard_bounds(1, 3)
        ([(0, 3), (3, 5)], [(0, 1), (1, 1), (1, 1)])
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected an int >= 0, got {n!r}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size: expected a positive int, got {world_size!r}")
    base, extra = divmod(n, world_size)
    bounds, start = [], 0
    for rank in range(world_size):
        stop = start + base + (1 if rank < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


@dataclass(frozen=True)
class MinibatchShare:
    """One global minibatch and this rank's part of it.

    Attributes:
        indices: the global batch's item positions, in the order one process would use them.
        start: first position of this rank's share within ``indices``.
        stop: one past its last position.
        counts: the share size of every rank (what :func:`all_gather_rows` needs).
    """

    indices: torch.Tensor
    start: int
    stop: int
    counts: tuple[int, ...]

    @property
    def local(self) -> torch.Tensor:
        """This rank's item positions."""
        return self.indices[self.start : self.stop]


class DistributedMinibatchSampler:
    """The seeded minibatch order of one process, shared out over ranks.

    Every epoch draws ``torch.randperm(n_items, generator=generator)`` (the same draw on every rank, from a generator
    seeded alike) and cuts it into batches of ``batch_size``; each rank takes a contiguous share of every batch
    (:func:`shard_bounds`). With ``world_size=1`` the batches are exactly a single process's. A trailing batch of one
    item is skipped (one item gives no pairwise signal) unless the whole epoch holds one item.

    Args:
        n_items: items per epoch.
        batch_size: global batch size (over all ranks).
        rank: this process's rank.
        world_size: number of processes.

    Example:
        >>> sampler = DistributedMinibatchSampler(5, 4, rank=1, world_size=2)
        >>> [(b.indices.tolist(), b.local.tolist(), b.counts) for b in sampler.epoch(torch.Generator().manual_seed(0))]
        [([4, 0, 1, 3], [1, 3], (2, 2))]

        The global batch is one process's first batch; rank 1 trains on its second half. The last item of the epoch
        alone would be a batch of one and is skipped, as one process skips it.
    """

    def __init__(self, n_items: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> None:
        for name, value, minimum in (
            ("n_items", n_items, 0),
            ("batch_size", batch_size, 1),
            ("world_size", world_size, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank: expected an int in [0, {world_size}), got {rank!r}")
        self.n_items, self.batch_size, self.rank, self.world_size = n_items, batch_size, rank, world_size

    def epoch(self, generator: torch.Generator) -> Iterator[MinibatchShare]:
        """The batches of one epoch (consumes one ``randperm`` draw of ``generator``)."""
        order = torch.randperm(self.n_items, generator=generator)
        for begin in range(0, self.n_items, self.batch_size):
            indices = order[begin : begin + self.batch_size]
            if len(indices) < 2 and self.n_items >= 2:
                continue
            bounds = shard_bounds(len(indices), self.world_size)
            start, stop = bounds[self.rank]
            yield MinibatchShare(indices, start, stop, tuple(b - a for a, b in bounds))


def all_gather_rows(
    local: torch.Tensor, counts: Sequence[int] | Sequence[Sequence[int]], ctx: DistributedContext | None
) -> torch.Tensor:
    """Every rank's rows in the global order, the gradient flowing to this rank's rows only.

    ``counts[r]`` is how many rows rank ``r`` holds. ``local`` may also be made of segments (for example a share of
    the real items followed by a share of replayed pseudo items): then ``counts[s][r]`` is the rows of segment ``s``
    on rank ``r`` and the result is segment 0 of every rank in rank order, then segment 1, and so on, which is the
    order of one process's batch.

    The rows of the other ranks are constants here (``dist.all_gather`` has no gradient); the local rows are the
    tensor passed in, so a loss over the result backpropagates into this rank's computation. Summed over the ranks
    (as DDP's gradient all-reduce does, up to its ``1/world_size``), these partial gradients are the gradient of the
    loss over the global batch.

    Raises:
        ValueError: ``counts`` that do not match ``local`` or the world size.
    """
    if not isinstance(local, torch.Tensor) or local.ndim < 1:
        raise TypeError(f"local: expected a tensor with a row axis, got {type(local).__name__}")
    segments = [list(counts)] if counts and not isinstance(counts[0], Sequence) else [list(c) for c in counts]
    world = 1 if ctx is None else ctx.world_size
    rank = 0 if ctx is None else ctx.rank
    for s, seg in enumerate(segments):
        if len(seg) != world or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in seg):
            raise ValueError(f"counts[{s}]: expected {world} row counts >= 0 (one per rank), got {seg!r}")
    mine = sum(seg[rank] for seg in segments)
    if mine != local.shape[0]:
        raise ValueError(f"local: expected {mine} rows (this rank's counts), got {local.shape[0]}")
    if ctx is None:
        return local
    totals = [sum(seg[r] for seg in segments) for r in range(world)]
    longest = max(totals)
    padded = local.detach()
    if local.shape[0] < longest:
        pad = local.new_zeros((longest - local.shape[0], *local.shape[1:]))
        padded = torch.cat([padded, pad])
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous())
    parts = [gathered[r][: totals[r]] for r in range(world)]
    parts[rank] = local  # the local rows keep their autograd history
    ordered = []
    offsets = [0] * world
    for seg in segments:
        for r in range(world):
            ordered.append(parts[r][offsets[r] : offsets[r] + seg[r]])
            offsets[r] += seg[r]
    return torch.cat(ordered)


def broadcast_object(value: Any, ctx: DistributedContext | None, *, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` on every rank (pickled; for decisions, scores and reports, not for big tensors).

    Every rank must call it; the value passed on the other ranks is ignored.
    """
    if ctx is None:
        return value
    box = [value if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=ctx.device if ctx.backend == "nccl" else None)
    return box[0]


def all_gather_objects(value: Any, ctx: DistributedContext | None) -> list[Any]:
    """Every rank's ``value`` (pickled), in rank order; ``[value]`` for one process. Every rank must call it."""
    if ctx is None:
        return [value]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out


def barrier(ctx: DistributedContext | None) -> None:
    """Wait for every rank (no-op for one process)."""
    if ctx is not None:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.local_rank])
        else:
            dist.barrier()
