"""Training: the continual trainer and what it needs to run past one process.

* :class:`ContinualTrainer` (:mod:`pbeh.training.trainer`): the PBEH recipe, task after task (fit, fit_task, the
  training loop, resuming); what one minibatch's loss is made of and the optimiser are in
  :mod:`pbeh.training.objective`, its evaluation after each task in :mod:`pbeh.training.evaluation`, saving, loading
  and checkpoints in :mod:`pbeh.training.checkpoints`.
* :class:`TrainerConfig` (:mod:`pbeh.training.config`): the optimisation and protocol options.
* :class:`TaskReport` (:mod:`pbeh.training.report`): what happened on one task.
* :class:`ResumeMismatchError`, :func:`checkpoint_state_dir`, :func:`resume_differences`
  (:mod:`pbeh.training.checkpoints`).
* torch.distributed helpers (:mod:`pbeh.training.distributed`) and the trainer's forward pass in
  DistributedDataParallel (:mod:`pbeh.training.ddp`). See docs/distributed.md.

``pbeh.trainer`` re-exports the trainer's names, so ``from pbeh.trainer import ContinualTrainer`` keeps working.
"""

from __future__ import annotations

from .checkpoints import ResumeMismatchError, checkpoint_state_dir, resume_differences
from .config import TrainerConfig
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
from .report import TaskReport
from .trainer import ContinualTrainer

__all__ = [
    "ContinualTrainer",
    "DistributedContext",
    "DistributedMinibatchSampler",
    "MinibatchShare",
    "ResumeMismatchError",
    "TaskReport",
    "TrainerConfig",
    "TrainingForward",
    "all_gather_objects",
    "all_gather_rows",
    "barrier",
    "broadcast_object",
    "checkpoint_state_dir",
    "current",
    "init_from_env",
    "resume_differences",
    "shard_bounds",
    "wrap_for_training",
]
