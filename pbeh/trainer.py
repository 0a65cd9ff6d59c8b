"""ContinualTrainer, TrainerConfig, TaskReport: the names of :mod:`pbeh.training`, importable from here as before.

The trainer lives in :mod:`pbeh.training`, one concept per module:

* :mod:`pbeh.training.trainer`: :class:`ContinualTrainer` (fit, fit_task, the training loop, resuming);
* :mod:`pbeh.training.objective`: what one minibatch's loss is made of (loss terms, class centres, stored-code
  targets, the step under DDP) and the optimiser;
* :mod:`pbeh.training.config`: :class:`TrainerConfig` (options, their checks, :meth:`TrainerConfig.reference`);
* :mod:`pbeh.training.report`: :class:`TaskReport` (what happened on one task);
* :mod:`pbeh.training.evaluation`: the evaluation after each task (matrix row, unified score, drift, collapse check,
  extension decision);
* :mod:`pbeh.training.checkpoints`: save, load, per-task checkpoints, :func:`checkpoint_state_dir`,
  :func:`resume_differences`, :class:`ResumeMismatchError`.

The trainer logs as ``pbeh.training.trainer`` and ``pbeh.training.evaluation`` (children of ``pbeh``).
"""

from __future__ import annotations

from .training._arrays import _tensor as _tensor
from .training.checkpoints import LATEST_NAME as LATEST_NAME
from .training.checkpoints import TRAINER_FORMAT_VERSION as TRAINER_FORMAT_VERSION
from .training.checkpoints import ResumeMismatchError, checkpoint_state_dir, resume_differences
from .training.config import TrainerConfig
from .training.objective import _fan_in_scale as _fan_in_scale
from .training.report import TaskReport
from .training.trainer import ContinualTrainer

__all__ = [
    "ContinualTrainer",
    "ResumeMismatchError",
    "TaskReport",
    "TrainerConfig",
    "checkpoint_state_dir",
    "resume_differences",
]
