"""Training past one process: torch.distributed helpers (:mod:`pbeh.training.distributed`) and the trainer's forward
pass in DistributedDataParallel (:mod:`pbeh.training.ddp`). See docs/distributed.md."""

from __future__ import annotations

from .ddp import TrainingForward, wrap_for_training
from .distributed import (
    DistributedContext,
    DistributedMinibatchSampler,
    MinibatchShare,
    all_gather_objects,
    all_gather_rows,
    barrier,
    broadcast_object,
    current,
    init_from_env,
    shard_bounds,
)

__all__ = [
    "DistributedContext",
    "DistributedMinibatchSampler",
    "MinibatchShare",
    "TrainingForward",
    "all_gather_objects",
    "all_gather_rows",
    "barrier",
    "broadcast_object",
    "current",
    "init_from_env",
    "shard_bounds",
    "wrap_for_training",
]
