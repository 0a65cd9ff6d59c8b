"""ContinualTrainer: the PBEH recipe, task after task.

For every task of a :class:`~pbeh.data.TaskStream` the trainer

1. applies an extension decided after the previous task (the code grows *before* the next task, as in PBEH),
2. grows the prompt pool (a new pool for the task, earlier pools frozen),
3. trains the new pool, the hashing heads and the input maps on cached features with the PBEH loss terms
   (:mod:`pbeh.losses`) plus the prompt-hash anchor against earlier pools, with AdamW rebuilt for the task
   (heads at ``lr * later_task_head_lr_scale`` from the second task on, as the reference),
4. selects the best epoch on a validation split carved from the training items (``select_on="validation"``), on the
   test queries (``"test"``, reference parity, reported as such), or keeps the last epoch (``"last"``),
5. encodes the task's database once into the image and text indexes at the current length (stored codes are never
   re-encoded), stores the anchor codes, evaluates R[t, i] for every seen task, the unified mixed-length score and the
   prefix drift, warns when codes collapse, and asks the extension policy whether to widen the code,
6. writes a checkpoint (whole state, safetensors + JSON) from which :meth:`ContinualTrainer.fit` resumes.

Only features are used: the frozen encoder never runs during training (see :mod:`pbeh.encoders` and its cache).

Under ``torch.distributed`` (launched with ``torchrun``; :mod:`pbeh.training`) the same trainer runs data-parallel:
each rank trains its share of the seeded global minibatches in DistributedDataParallel with the losses over the
gathered global batch, rank 0 selects, evaluates, decides on extension and writes checkpoints, and every rank ends
with the same state (docs/distributed.md). With one process nothing of this runs.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .codes import Codes
from .data import Split, Task, TaskStream
from .evaluation import unified_metrics
from .extension import (
    ExtensionDecision,
    ExtensionPolicy,
    ModeCenterRule,
    NeverExtend,
    code_collapse_report,
    extension_policy_from_config,
)
from .index import TruncatedHammingIndex
from .losses import SIMILARITY_TARGETS, LossWeights, anchor_loss, label_similarity, pbeh_loss, stored_code_loss
from .metrics import ContinualMatrix, map_at_k
from .model import CrossModalHashModel
from .prototypes import ClassPrototypes
from .serialization import (
    FormatError,
    json_field,
    load_safetensors,
    read_json,
    replace_directory,
    resolve_directory,
    save_safetensors,
    staging_directory,
    write_json,
)
from .training.ddp import wrap_for_training
from .training.distributed import (
    DistributedContext,
    DistributedMinibatchSampler,
    MinibatchShare,
    all_gather_objects,
    all_gather_rows,
    barrier,
    broadcast_object,
    shard_bounds,
)
from .training.distributed import current as current_distributed

__all__ = ["ContinualTrainer", "ResumeMismatchError", "TaskReport", "TrainerConfig"]

_logger = logging.getLogger(__name__)

TRAINER_FORMAT_VERSION = 1
_SELECT_ON = ("validation", "test", "last")


class ResumeMismatchError(ValueError):
    """A checkpoint directory holds a run trained with other options than the trainer asked to resume it."""


@dataclass(frozen=True)
class TrainerConfig:
    """Optimisation and protocol options of :class:`ContinualTrainer`.

    The defaults are sized for a CPU and were chosen from measurements on Wikipedia-5 and MIRFLICKR730-4
    (docs/results.md): 30 epochs of batches of 128 at lr 1e-3 train a task of a few hundred items in seconds, where the
    reference's 100 epochs of 512 at 1e-4 leave such a task with one optimiser step per epoch and undertrained,
    collapsing codes. :meth:`reference` gives the released PBEH's settings.

    Example:
        >>> TrainerConfig().epochs, TrainerConfig().prototype_replay, TrainerConfig.reference().lr
        (30, 128, 0.0001)
        >>> TrainerConfig(epochs=0)
        Traceback (most recent call last):
        ...
        ValueError: epochs: expected a positive int, got 0

    Attributes:
        epochs: epochs per task (reference: 100).
        batch_size: minibatch size (reference: 512).
        lr: AdamW learning rate of the new prompt pool, and of the heads on the first task (reference: 1e-4).
        later_task_head_lr_scale: heads and input maps train at ``lr * scale`` from the second task on
            (reference: 0.1, the "asymmetric optimisation"). pbeh's default is 1.0: with class-prototype replay
            (``prototype_replay``) holding old classes in place, full-rate heads measured a higher unified score on
            Wikipedia-5 (32 bits, one seed: T→I 0.616 against 0.474 at 0.1).
        weight_decay: AdamW weight decay (PyTorch default 0.01, as the reference).
        select_on: ``"validation"`` (best epoch on a validation split carved from the training items, default),
            ``"test"`` (on the task's queries against its database: the reference protocol, optimistic), or
            ``"last"`` (no selection).
        validation_fraction: fraction of the training items held out for ``select_on="validation"``.
        eval_every: evaluate the selection score every this many epochs (and always after the last one).
        eval_k: the k of mAP@k for selection and evaluation (reference: 1000); ``None`` for mAP@all.
        prompts_per_task: explicit pool size; ``None`` uses the reference's adaptive
            ``ceil(n_train / samples_per_prompt)``.
        samples_per_prompt: η of the adaptive pool size (reference: 400 for NUS-WIDE, 800 for COCO; pbeh 100, so
            that tasks of a few hundred items get more than one prompt).
        prompt_init: ``"kmeans"`` (centroids of the task's features, pbeh's default) or ``"normal"`` (the
            reference's seeded draw). With k-means prompts and ``selection="all"`` (:meth:`for_stream`'s default),
            an old item tends to select its own task's pool, so new pools change its context less (measured on
            Wikipedia-5, 32 bits: BWT I→T −0.03 against −0.11 with random prompts from the newest pool).
        freeze_old_bits: when the code is extended, keep training the path of the old bits at the low rate (the
            reference, and the default) or freeze it (``True``: old bits exact for a fixed input, new bits from a new
            branch). Freezing trades retrieval for stability: on Wikipedia-5 from 32 bits with 4 new bits after
            every task (one seed), frozen gave per-task mAP 0.605/0.608 and unified 0.196/0.221 at prefix drift
            0.14; trained gave 0.681/0.776 and 0.254/0.344 at drift 0.36. New tasks cannot reshape frozen bits, so
            they learn through a few new bits only.
        straight_through: give the sign-based loss terms a straight-through gradient (the reference has none).
        similarity_target: target of the similarity terms (:func:`pbeh.losses.label_similarity`):
            ``"signed_cosine"`` (pbeh's default: ``2 cos(l_i, l_j) − 1``, disjoint label sets pushed to opposite
            codes), ``"cosine"`` of the label vectors, or the reference's ``2σ(l·l/16) − 1``, which is near 0 for every
            pair of single-label or sparsely labelled items and then lets the codes collapse. Measured at 32 bits
            (one seed, unified mAP I→T/T→I): MIRFLICKR730-4 0.706/0.646 signed against 0.645/0.636 cosine (whose
            first task collapsed to one code); Wikipedia-5 0.258/0.580 against 0.265/0.649, where the signed target
            also cut the newest task's share of old image queries' top 10 from 0.85–0.89 to 0.23–0.30.
        binary_similarity_normalize: divide the sign-code inner products of the binary similarity term by K
            (pbeh) or not (the reference; the term has no gradient without ``straight_through`` either way).
        temperature: temperature of the supervised contrastive term.
        stored_codes_per_task: stored database codes per earlier task (a seeded sample) that the stored-code term
            (:func:`pbeh.losses.stored_code_loss`) compares new outputs with.
        seed: seeds the minibatch order and the validation split (the model has its own seed).
        show_progress: a progress bar over epochs.
        prototype_replay: pseudo items of earlier tasks' classes added to every minibatch from the second task on,
            drawn from :class:`~pbeh.prototypes.ClassPrototypes` (per-class feature means and spreads kept after each
            task; no item's features are kept). The loss terms then see old classes too: the stored-code term pins
            them to the codes stored for their class, so old tasks' queries keep meeting their stored codes, and
            the pairwise terms keep new items away from them. 0 switches it off.
        prototype_noise: the pseudo items' spread around their class mean, in units of the class's per-dimension
            standard deviation (Wikipedia-5, 32 bits, one seed, unified mAP I→T/T→I: 0.5 gave 0.283/0.638, 1.0
            0.260/0.616, 2.0 0.248/0.574).
        lr_fan_in: weight matrices with more inputs than this train at ``lr * lr_fan_in / fan_in``
            (``None``: every weight at ``lr``). AdamW's step moves a unit's input by about ``lr`` times the L1 norm of
            its inputs, so at a fixed lr wide inputs take large, common-mode steps: on MIRFLICKR730's 1024-d features
            the first task's codes collapsed to one code within a few steps at lr 1e-3 without this scaling.
        ties: how every reported figure ranks items whose scores tie: ``"average"`` (pbeh's default: the exact
            expectation over random order inside tie groups, so no figure depends on the order items were stored
            in) or ``"reference"`` (stable order, ties in database order: the released evaluation code; for parity
            only, and labelled as such).
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    later_task_head_lr_scale: float = 1.0
    weight_decay: float = 0.01
    select_on: str = "validation"
    validation_fraction: float = 0.1
    eval_every: int = 3
    eval_k: int | None = 1000
    prompts_per_task: int | None = None
    samples_per_prompt: int = 100
    prompt_init: str = "kmeans"
    freeze_old_bits: bool = False
    straight_through: bool = False
    similarity_target: str = "signed_cosine"
    binary_similarity_normalize: bool = True
    temperature: float = 0.1
    stored_codes_per_task: int = 1024
    seed: int = 2025
    show_progress: bool = False
    ties: str = "average"
    prototype_replay: int = 128
    lr_fan_in: int | None = 256
    prototype_noise: float = 0.5

    def __post_init__(self) -> None:
        for name in ("freeze_old_bits", "straight_through", "binary_similarity_normalize", "show_progress"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed: expected an int, got {self.seed!r}")
        if self.lr_fan_in is not None and (
            isinstance(self.lr_fan_in, bool) or not isinstance(self.lr_fan_in, int) or self.lr_fan_in < 1
        ):
            raise ValueError(f"lr_fan_in: expected a positive int or None, got {self.lr_fan_in!r}")
        if (
            isinstance(self.prototype_replay, bool)
            or not isinstance(self.prototype_replay, int)
            or (self.prototype_replay < 0)
        ):
            raise ValueError(f"prototype_replay: expected an int >= 0, got {self.prototype_replay!r}")
        if not (
            isinstance(self.prototype_noise, (int, float))
            and math.isfinite(self.prototype_noise)
            and self.prototype_noise >= 0
        ):
            raise ValueError(f"prototype_noise: expected a finite number >= 0, got {self.prototype_noise!r}")
        for name in ("epochs", "batch_size", "eval_every", "samples_per_prompt", "stored_codes_per_task"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
        for name in ("later_task_head_lr_scale", "weight_decay"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        if self.select_on not in _SELECT_ON:
            raise ValueError(f"select_on: expected one of {_SELECT_ON}, got {self.select_on!r}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction: expected a number in (0, 1), got {self.validation_fraction!r}")
        if self.eval_k is not None and (
            isinstance(self.eval_k, bool) or not isinstance(self.eval_k, int) or self.eval_k < 1
        ):
            raise ValueError(f"eval_k: expected a positive int or None (mAP@all), got {self.eval_k!r}")
        if self.prompts_per_task is not None and (
            isinstance(self.prompts_per_task, bool)
            or not isinstance(self.prompts_per_task, int)
            or self.prompts_per_task < 1
        ):
            raise ValueError(f"prompts_per_task: expected a positive int or None, got {self.prompts_per_task!r}")
        if self.similarity_target not in SIMILARITY_TARGETS:
            raise ValueError(f"similarity_target: expected one of {SIMILARITY_TARGETS}, got {self.similarity_target!r}")
        if self.ties not in ("average", "reference"):
            raise ValueError(f"ties: expected 'average' or 'reference', got {self.ties!r}")
        if self.prompt_init not in ("normal", "kmeans"):
            raise ValueError(f"prompt_init: expected 'normal' or 'kmeans', got {self.prompt_init!r}")

    @classmethod
    def reference(cls, **overrides: Any) -> TrainerConfig:
        """The released PBEH's settings (REFERENCE.md §2): 100 epochs, batch 512, lr 1e-4, heads at 0.1·lr from
        task 2, η = 400, best epoch chosen on the test queries every epoch, random prompts, its similarity target,
        mAP@1000 with ties in database order, no prototype replay."""
        values: dict[str, Any] = {
            "epochs": 100,
            "batch_size": 512,
            "lr": 1e-4,
            "later_task_head_lr_scale": 0.1,
            "eval_every": 1,
            "eval_k": 1000,
            "samples_per_prompt": 400,
            "select_on": "test",
            "prompt_init": "normal",
            "similarity_target": "reference",
            "binary_similarity_normalize": False,
            "ties": "reference",
            "prototype_replay": 0,
            "lr_fan_in": None,
        }
        return cls(**{**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown TrainerConfig keys {unknown}")
        return cls(**data)


@dataclass
class TaskReport:
    """What happened on one task: training, selection, storage, evaluation and the extension decision.

    ``unified`` holds, per direction (``"i2t"``, ``"t2i"``), the figures of the one index over every stored task
    (:class:`pbeh.evaluation.UnifiedMetrics` as a dict): mAP, mAP@100 and P@10, per query task too, and the share of
    each task's top 10 that comes from the newest task.

    Example:
        >>> from pbeh.data import synthetic_stream
        >>> stream = synthetic_stream(n_tasks=2, seed=0)
        >>> trainer = ContinualTrainer.for_stream(stream, n_bits=8, hidden_dims=(16,), config=TrainerConfig(epochs=1))
        >>> report = trainer.fit(stream)[-1]
        >>> report.task, report.n_bits, len(report.map_i2t), len(report.unified["i2t"]["per_task_p_at_10"])
        (1, 8, 2, 2)
    """

    task: int
    name: str
    n_bits: int
    n_prompts: int
    n_train: int
    n_validation: int
    n_database: int
    epochs: int
    best_epoch: int
    selection_score: float | None
    final_loss: float
    loss_terms: dict[str, float]
    map_i2t: list[float]
    map_t2i: list[float]
    unified_i2t: float
    unified_t2i: float
    unified_chance: float
    prefix_drift: float | None
    collapse: dict[str, Any]
    extension: dict[str, Any]
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    unified: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskReport:
        return cls(**{k: (float("nan") if v is None and k.startswith("unified") else v) for k, v in data.items()})


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return _json_safe(obj.item())
    return obj


@dataclass
class _StoredTask:
    """Bookkeeping for a task whose database is in the indexes."""

    name: str
    ids: np.ndarray
    labels: np.ndarray
    n_bits: int


class ContinualTrainer:
    """Learns codes task after task: composes a model (prompt pool + extensible hasher), two
    :class:`~pbeh.index.TruncatedHammingIndex` (image and text databases), the PBEH loss terms and an extension policy.

    Args:
        model: the :class:`~pbeh.model.CrossModalHashModel` to train (it holds the PromptPool and ExtensibleHasher).
        config: optimisation and protocol options.
        loss_weights: weights of the loss terms (default :meth:`LossWeights.pbeh`: the reference's weights plus the
            stored-code term; ``LossWeights()`` is the reference).
        extension_policy: decides after each task whether to widen the code (default: the reference's mode-centre
            rule with rho = 0.1, delta = 1).
        index_score: the cross-length score policy of the unified indexes (see :mod:`pbeh.index`).
        checkpoint_dir: when given, a checkpoint is written after every task and :meth:`fit` can resume from it.
        keep_task_checkpoints: keep every task's state (``task_000``, ``task_001``, ...) in ``checkpoint_dir``
            instead of only the newest one (the default: the newest state is all that resuming needs, and a state
            holds a whole model).
        callbacks: functions called with each :class:`TaskReport` after its task.

    Example:
        >>> from pbeh.data import synthetic_stream
        >>> stream = synthetic_stream(n_tasks=2, seed=0)
        >>> trainer = ContinualTrainer.for_stream(
        ...     stream, n_bits=16, hidden_dims=(32,), config=TrainerConfig(epochs=2, batch_size=64))
        >>> reports = trainer.fit(stream)
        >>> len(reports), trainer.matrix.matrix("i2t").shape
        (2, (2, 2))
    """

    def __init__(
        self,
        model: CrossModalHashModel,
        *,
        config: TrainerConfig | None = None,
        loss_weights: LossWeights | None = None,
        extension_policy: ExtensionPolicy | None = None,
        index_score: str = "zscore",
        checkpoint_dir: str | Path | None = None,
        keep_task_checkpoints: bool = False,
        callbacks: Sequence[Callable[[TaskReport], None]] = (),
    ) -> None:
        if not isinstance(model, CrossModalHashModel):
            raise TypeError(f"model: expected a CrossModalHashModel, got {type(model).__name__}")
        if config is not None and not isinstance(config, TrainerConfig):
            raise TypeError(f"config: expected a TrainerConfig, got {type(config).__name__}")
        if loss_weights is not None and not isinstance(loss_weights, LossWeights):
            raise TypeError(f"loss_weights: expected a LossWeights, got {type(loss_weights).__name__}")
        if extension_policy is not None and not isinstance(extension_policy, ExtensionPolicy):
            raise TypeError(
                f"extension_policy: expected an ExtensionPolicy (ModeCenterRule, NeverExtend, FixedSchedule), "
                f"got {type(extension_policy).__name__}"
            )
        self.model = model
        self.config = config or TrainerConfig()
        self.loss_weights = loss_weights or LossWeights.pbeh()
        self.extension_policy: ExtensionPolicy = extension_policy or ModeCenterRule()
        self.image_index = TruncatedHammingIndex(score=index_score)
        self.text_index = TruncatedHammingIndex(score=index_score)
        self.index_score = index_score
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if not isinstance(keep_task_checkpoints, bool):
            raise TypeError(f"keep_task_checkpoints: expected a bool, got {keep_task_checkpoints!r}")
        self.keep_task_checkpoints = keep_task_checkpoints
        self.callbacks = list(callbacks)
        self.matrix = ContinualMatrix(1)
        self.reports: list[TaskReport] = []
        self._stored: list[_StoredTask] = []
        self._seen: list[Task] = []
        self._anchors: list[torch.Tensor] = []
        self._prototypes: list[ClassPrototypes] = []
        self._pending_extension = 0

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_stream(
        cls,
        stream: TaskStream,
        *,
        n_bits: int = 32,
        hidden_dims: Sequence[int] = (512, 512),
        dim: int | None = None,
        normalize_features: bool = True,
        use_prompts: bool = True,
        center_features: bool = True,
        pool_kwargs: dict[str, Any] | None = None,
        model_seed: int = 2025,
        **kwargs: Any,
    ) -> ContinualTrainer:
        """Build the model for a stream's feature widths and wrap it in a trainer (``kwargs`` go to the trainer).

        The prompt pool searches every task's pool (``selection="all"``) unless ``pool_kwargs`` says otherwise.
        """
        if not (hasattr(stream, "image_dim") and hasattr(stream, "text_dim")):
            raise TypeError(
                f"stream: expected a pbeh.data.TaskStream (it gives the feature widths), got {type(stream).__name__}; "
                "wrap a list of tasks with pbeh.data.TaskStream(tasks)"
            )
        pool_kwargs = {"selection": "all", **(pool_kwargs or {})}
        model = CrossModalHashModel(
            stream.image_dim,
            stream.text_dim,
            n_bits=n_bits,
            dim=dim,
            hidden_dims=tuple(hidden_dims),
            normalize_features=normalize_features,
            use_prompts=use_prompts,
            center_features=center_features,
            pool_kwargs=pool_kwargs,
            seed=model_seed,
        )
        return cls(model, **kwargs)

    @property
    def n_tasks_done(self) -> int:
        return len(self.reports)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ the stream
    def fit(self, stream: TaskStream | Sequence[Task], *, resume: bool = True) -> list[TaskReport]:
        """Train on every task of ``stream`` in order; returns one report per task.

        With a ``checkpoint_dir`` and ``resume=True``, a previous run's checkpoint is loaded first and its completed
        tasks are skipped (their names must match the stream's).
        """
        tasks = list(stream)
        if not tasks:
            raise ValueError("stream: expected at least one task, got none")
        if resume and self.checkpoint_dir is not None and (self.checkpoint_dir / "latest.json").is_file():
            self._restore(self.checkpoint_dir)
            _logger.info("resumed from %s after %d task(s)", self.checkpoint_dir, self.n_tasks_done)
        ctx = current_distributed()
        if ctx is not None:  # every rank must continue from the same state, or the collectives would not match
            done_per_rank = all_gather_objects(self.n_tasks_done, ctx)
            if len(set(done_per_rank)) > 1:
                raise ValueError(
                    f"checkpoint_dir: the ranks start after different numbers of completed tasks {done_per_rank} "
                    f"({str(self.checkpoint_dir)!r}); every rank must see the same checkpoint directory (a filesystem "
                    "shared by every machine) and start from the same trainer state"
                )
        done = self.n_tasks_done
        if done > len(tasks):
            raise ValueError(f"stream: {done} tasks are already done but the stream has only {len(tasks)}")
        for i in range(done):
            if self._stored[i].name != tasks[i].name:
                raise ValueError(
                    f"stream: task {i} is {tasks[i].name!r} but this trainer already trained {self._stored[i].name!r}; "
                    "continue with the same stream (or start a new trainer / checkpoint_dir)"
                )
        # The tasks already done are needed again for evaluation (their queries) and prefix drift (their items).
        self._seen = tasks[:done]
        self._grow_matrix(len(tasks))
        for task in tasks[self.n_tasks_done :]:
            self.fit_task(task)
        return list(self.reports)

    def fit_task(self, task: Task) -> TaskReport:
        """Train on one task, store its database, evaluate, and decide on extension. Returns the task's report.

        The whole task is validated before anything trains (see :meth:`_validate_task`). If anything fails while
        the task trains, is stored or evaluated (a diverging loss, an interrupt, a failing callback), the trainer is
        rolled back to its state before the call, so the next ``fit_task`` starts from a consistent state.
        """
        if not isinstance(task, Task):
            raise TypeError(f"task: expected a pbeh.data.Task, got {type(task).__name__}")
        self._validate_task(task)
        snapshot = self._snapshot()
        try:
            return self._fit_task(task)
        except BaseException:
            self._rollback(snapshot)
            _logger.warning("task %r failed; the trainer was rolled back to its state before the task", task.name)
            raise

    _ROLLBACK_FIELDS = (
        "model", "image_index", "text_index", "matrix", "reports", "_stored", "_seen", "_anchors", "_prototypes",
        "_pending_extension",
    )  # fmt: skip

    def _snapshot(self) -> dict[str, Any]:
        """Copies of everything a task changes (model, indexes, matrix, bookkeeping) for :meth:`_rollback`."""
        deep = {"model", "image_index", "text_index", "matrix"}
        return {
            name: copy.deepcopy(getattr(self, name)) if name in deep else copy.copy(getattr(self, name))
            for name in self._ROLLBACK_FIELDS
        }

    def _rollback(self, snapshot: dict[str, Any]) -> None:
        for name, value in snapshot.items():
            setattr(self, name, value)

    def _validate_task(self, task: Task) -> None:
        """Refuse a task that cannot be trained, stored or evaluated, before anything is trained or grown.

        Checks: feature widths against the model; database ids unique, not stored yet, and non-negative (as all ids);
        the label width against earlier tasks; a non-empty query split and database. Features are finite (``Split``
        checks that). All-zero labels train to a meaningless run: a warning names the split.
        """
        self._check_widths(task)
        for split_name in ("train", "query", "database"):
            split = getattr(task, split_name)
            if len(split.ids) and int(split.ids.min()) < 0:
                raise ValueError(
                    f"task {task.name!r}: {split_name} ids must be non-negative, got {int(split.ids.min())}"
                )
        for split_name in ("query", "database"):
            if len(getattr(task, split_name)) == 0:
                raise ValueError(
                    f"task {task.name!r}: the {split_name} split is empty; a task needs queries and a database to "
                    "be stored and evaluated"
                )
        if self._stored:
            expected = self._stored[0].labels.shape[1]
            for split_name in ("train", "query", "database"):
                got = getattr(task, split_name).labels.shape[1]
                if got != expected:
                    raise ValueError(
                        f"task {task.name!r}: {split_name} labels have {got} classes, earlier tasks have {expected}; "
                        "every task must use the stream's global label space"
                    )
        for split_name in ("train", "query", "database"):
            labels = getattr(task, split_name).labels
            if labels.size and not labels.any():
                _logger.warning(
                    "task %r: every %s label is zero; the similarity targets are meaningless and so will the "
                    "codes and mAP be",
                    task.name,
                    split_name,
                )
        self._check_new_ids(task)

    def _fit_task(self, task: Task) -> TaskReport:
        self._check_widths(task)
        self._check_new_ids(task)
        started = time.perf_counter()
        t = self.n_tasks_done
        self._grow_matrix(t + 1)
        cfg = self.config
        if self._pending_extension:
            self.model.extend(self._pending_extension, freeze_old=cfg.freeze_old_bits)
            _logger.info(
                "task %d (%s): code extended by %d bits to %d", t + 1, task.name, self._pending_extension,
                self.model.n_bits,
            )  # fmt: skip
            self._pending_extension = 0

        if cfg.select_on == "validation":
            train, validation = task.split_validation(cfg.validation_fraction, seed=cfg.seed + t)
        else:
            train, validation = task.train, None
        if len(train) == 0:
            raise ValueError(f"task {task.name!r}: no training items")
        pool_task = self.model.add_task(
            cfg.prompts_per_task,
            n_train=len(train),
            samples_per_prompt=cfg.samples_per_prompt,
            init=cfg.prompt_init,
            image_features=_tensor(train.image, self.device),
            text_features=_tensor(train.text, self.device),
        )
        if pool_task != t:
            raise RuntimeError(f"model: expected prompt pool {t} for task {t}, the model created pool {pool_task}")
        best_epoch, best_score, last_loss, terms, history = self._train_task(t, train, validation, task)

        n_bits = self.model.n_bits
        db = task.database
        image_codes, text_codes = self._store(task)
        with torch.no_grad():
            self._anchors.append(self.model.anchor_codes(t).detach().clone())
        self._prototypes.append(ClassPrototypes.fit(task.train.image, task.train.text, task.train.labels))

        ctx = current_distributed()
        if ctx is None:
            collapse, row_i2t, row_t2i, unified, drift, decision = self._evaluate_and_decide(
                t, task, image_codes, text_codes
            )
        else:
            # Evaluation and the extension decision run on rank 0; every rank takes its results, so the next task
            # (extension, replay, stored-code targets) and the reports are the same everywhere.
            results = None
            if ctx.is_main:
                results = (*self._evaluate_and_decide(t, task, image_codes, text_codes), self.matrix.to_dict())
            collapse, row_i2t, row_t2i, unified, drift, decision, matrix = broadcast_object(results, ctx)
            if not ctx.is_main:
                self.matrix = ContinualMatrix.from_dict(matrix)
                self._pending_extension = int(decision.n_new_bits)
        unified_i2t, unified_t2i = unified["i2t"]["map_all"], unified["t2i"]["map_all"]
        chance = unified["i2t"]["chance"]

        self.matrix.record_scalar("n_bits", t, float(n_bits))
        self.matrix.record_scalar("unified_i2t", t, unified_i2t)
        self.matrix.record_scalar("unified_t2i", t, unified_t2i)
        self.matrix.record_scalar("unified_chance", t, chance)
        self.matrix.record_scalar("prefix_drift", t, float("nan") if drift is None else drift)
        report = TaskReport(
            task=t,
            name=task.name,
            n_bits=n_bits,
            n_prompts=self.model.pool_sizes[t],
            n_train=len(train),
            n_validation=0 if validation is None else len(validation),
            n_database=len(db),
            epochs=cfg.epochs,
            best_epoch=best_epoch,
            selection_score=best_score,
            final_loss=last_loss,
            loss_terms=terms,
            map_i2t=row_i2t,
            map_t2i=row_t2i,
            unified_i2t=unified_i2t,
            unified_t2i=unified_t2i,
            unified_chance=chance,
            prefix_drift=drift,
            collapse=collapse,
            extension={"n_new_bits": decision.n_new_bits, "reason": decision.reason, "stats": dict(decision.stats)},
            seconds=time.perf_counter() - started,
            history=history,
            unified=unified,
        )
        self.reports.append(report)
        p10 = (unified["i2t"]["p_at_10"], unified["t2i"]["p_at_10"])
        _logger.info(
            "task %d (%s): %d bits, mAP i2t %.4f t2i %.4f, unified %.4f/%.4f (chance %.4f), unified P@10 %.4f/%.4f; %s",
            t + 1, task.name, n_bits, row_i2t[-1], row_t2i[-1], unified_i2t, unified_t2i, chance, *p10,
            decision.reason,
        )  # fmt: skip
        if self.checkpoint_dir is not None:
            barrier(ctx)  # every rank has finished the task before rank 0 replaces the checkpoint
            if ctx is None or ctx.is_main:
                self._write_checkpoint(self.checkpoint_dir)
            barrier(ctx)  # and no rank goes on (or exits) before the checkpoint is complete
        if ctx is None or ctx.is_main:
            for callback in self.callbacks:
                callback(report)
        return report

    def _evaluate_and_decide(
        self, t: int, task: Task, image_codes: Codes, text_codes: Codes
    ) -> tuple[dict[str, Any], list[float], list[float], dict[str, Any], float | None, ExtensionDecision]:
        """After task ``t`` is stored: collapse check, row ``t`` of the matrix, the unified scores, the prefix drift
        and the extension decision (rank 0's work under torch.distributed)."""
        collapse = self._collapse_check(task, image_codes, text_codes)
        query_codes = self._encode_queries()
        row_i2t, row_t2i = self._evaluate_rows(t, query_codes)
        unified = self._unified_scores(query_codes)
        drift = self._prefix_drift()
        decision = self._decide_extension(t)
        return collapse, row_i2t, row_t2i, unified, drift, decision

    def _store(self, task: Task) -> tuple[Codes, Codes]:
        """Encode the task's database once, at the current length, into the indexes; it is never re-encoded."""
        db = task.database
        image_codes = self.model.encode(_tensor(db.image, self.device), "image")
        text_codes = self.model.encode(_tensor(db.text, self.device), "text")
        self.image_index.add(image_codes, ids=db.ids)
        self.text_index.add(text_codes, ids=db.ids)
        self._stored.append(
            _StoredTask(task.name, np.asarray(db.ids, dtype=np.int64), np.asarray(db.labels), self.model.n_bits)
        )
        self._seen.append(task)
        return image_codes, text_codes

    def evaluate_stream(self, stream: TaskStream | Sequence[Task]) -> ContinualTrainer:
        """Store and evaluate every task of ``stream`` with the current model, without training.

        For a model trained otherwise (the joint upper bound): returns a new trainer sharing this model whose
        indexes hold every task's database and whose matrix has its final row (and unified score) filled.
        """
        tasks = list(stream)
        if not tasks:
            raise ValueError("stream: expected at least one task, got none")
        started = time.perf_counter()
        ev = ContinualTrainer(
            self.model,
            config=self.config,
            loss_weights=self.loss_weights,
            extension_policy=NeverExtend(),
            index_score=self.index_score,
        )
        ev._grow_matrix(len(tasks))
        self.model.eval()
        for task in tasks:
            ev._check_widths(task)
            ev._store(task)
        t = len(tasks) - 1
        query_codes = ev._encode_queries()
        row_i2t, row_t2i = ev._evaluate_rows(t, query_codes)
        unified = ev._unified_scores(query_codes)
        unified_i2t, unified_t2i = unified["i2t"]["map_all"], unified["t2i"]["map_all"]
        chance = unified["i2t"]["chance"]
        for name, value in (("unified_i2t", unified_i2t), ("unified_t2i", unified_t2i), ("unified_chance", chance)):
            ev.matrix.record_scalar(name, t, value)
        ev.matrix.record_scalar("n_bits", t, float(self.model.n_bits))
        last = self.reports[-1] if self.reports else None
        ev.reports = [
            TaskReport(
                task=t,
                name="evaluation of " + ", ".join(task.name for task in tasks),
                n_bits=self.model.n_bits,
                n_prompts=0 if last is None else last.n_prompts,
                n_train=0 if last is None else last.n_train,
                n_validation=0 if last is None else last.n_validation,
                n_database=sum(len(task.database) for task in tasks),
                epochs=0 if last is None else last.epochs,
                best_epoch=0 if last is None else last.best_epoch,
                selection_score=None if last is None else last.selection_score,
                final_loss=float("nan") if last is None else last.final_loss,
                loss_terms={} if last is None else last.loss_terms,
                map_i2t=row_i2t,
                map_t2i=row_t2i,
                unified_i2t=unified_i2t,
                unified_t2i=unified_t2i,
                unified_chance=chance,
                prefix_drift=None,
                collapse={},
                extension={"n_new_bits": 0, "reason": "evaluation only", "stats": {}},
                seconds=time.perf_counter() - started,
                unified=unified,
            )
        ]
        return ev

    # ------------------------------------------------------------------ training
    def _optimizer(self, t: int) -> torch.optim.Optimizer:
        """AdamW rebuilt for every task (and so after every extension): heads slower from the second task on."""
        cfg = self.config
        slow = cfg.lr * (cfg.later_task_head_lr_scale if t > 0 else 1.0)
        groups = []
        heads = [p for p in self.model.head_parameters() if p.requires_grad]
        maps = [p for p in self.model.projection_parameters() if p.requires_grad]
        prompts = [p for p in self.model.prompt_parameters(t) if p.requires_grad]
        seen: set[int] = set()
        rest = [p for p in self.model.parameters() if p.requires_grad and not any(p is q for q in (*prompts, *heads))]
        # Anything trainable the model did not classify (e.g. attention inside the pool) trains with the heads.
        for params, lr in ((prompts, cfg.lr), (heads, slow), (maps, slow), (rest, slow)):
            unique = [p for p in params if id(p) not in seen]
            seen.update(id(p) for p in unique)
            by_lr: dict[float, list[torch.nn.Parameter]] = {}
            for param in unique:
                by_lr.setdefault(lr * _fan_in_scale(param, cfg.lr_fan_in), []).append(param)
            groups += [{"params": ps, "lr": value} for value, ps in by_lr.items()]
        if not groups:
            raise RuntimeError("model: nothing to train (every parameter is frozen)")
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _train_task(
        self, t: int, train: Split, validation: Split | None, task: Task
    ) -> tuple[int, float | None, float, dict[str, float], list[dict[str, float]]]:
        cfg = self.config
        device = self.device
        image = _tensor(train.image, device)
        text = _tensor(train.text, device)
        labels = _tensor(train.labels, device)
        optimizer = self._optimizer(t)
        ctx = current_distributed()
        # Under torch.distributed: DDP over this task's trainable parameters (rebuilt every task, so after a new
        # prompt pool and an extension) and each rank's share of the same seeded global minibatches.
        step_module = wrap_for_training(self.model, ctx) if ctx is not None else None
        sampler = (
            DistributedMinibatchSampler(len(train), cfg.batch_size, rank=ctx.rank, world_size=ctx.world_size)
            if ctx is not None
            else None
        )
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + t)
        stored_anchors = self._anchors[:t] if self.loss_weights.anchor > 0 else []
        stored_targets = self._stored_targets(t) if self.loss_weights.stored_codes > 0 else []
        replay = ClassPrototypes.concatenate(self._prototypes[:t]) if cfg.prototype_replay and t > 0 else None
        replay_rng = np.random.default_rng(cfg.seed * 7907 + t)
        best_state: dict[str, torch.Tensor] | None = None
        best_epoch, best_score = cfg.epochs, None
        last_loss, last_terms = float("nan"), {}
        history: list[dict[str, float]] = []
        epochs = range(1, cfg.epochs + 1)
        if cfg.show_progress and (ctx is None or ctx.is_main):  # one progress bar, rank 0's
            from tqdm.auto import tqdm

            epochs = tqdm(epochs, desc=f"task {t + 1} ({task.name})", leave=False)
        n = len(train)
        for epoch in epochs:
            self.model.train()
            sums: dict[str, float] = {}
            total, batches = 0.0, 0
            if sampler is None:
                order = torch.randperm(n, generator=generator).to(device)
                for start in range(0, n, cfg.batch_size):
                    idx = order[start : start + cfg.batch_size]
                    if len(idx) < 2 and n >= 2:
                        continue  # a single item gives no pairwise signal
                    batch = (image[idx], text[idx], labels[idx])
                    if replay is not None:
                        pseudo = replay.sample(cfg.prototype_replay, replay_rng, noise=cfg.prototype_noise)
                        batch = tuple(
                            torch.cat([part, _tensor(extra, device)]) for part, extra in zip(batch, pseudo, strict=True)
                        )
                    loss, terms = self._loss(*batch, t, stored_anchors, stored_targets)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach())
                    batches += 1
                    for key, value in terms.items():
                        sums[key] = sums.get(key, 0.0) + value
            else:
                assert ctx is not None
                assert step_module is not None
                for share in sampler.epoch(generator):  # the same randperm draw, cut into the same batches
                    pseudo = None
                    if replay is not None:  # every rank draws the same pseudo items and keeps its share
                        pseudo = replay.sample(cfg.prototype_replay, replay_rng, noise=cfg.prototype_noise)
                    loss, terms = self._distributed_step(
                        step_module, optimizer, ctx, share, (image, text, labels), pseudo, stored_anchors,
                        stored_targets,
                    )  # fmt: skip
                    total += float(loss.detach())
                    batches += 1
                    for key, value in terms.items():
                        sums[key] = sums.get(key, 0.0) + value
            last_loss = total / max(batches, 1)
            last_terms = {k: v / max(batches, 1) for k, v in sums.items()}
            record = {"epoch": float(epoch), "loss": last_loss}
            if cfg.select_on != "last" and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
                score = self._selection_score(train, validation, task) if ctx is None or ctx.is_main else None
                score = broadcast_object(score, ctx)  # rank 0 selects; every rank keeps the same best epoch
                record["selection_score"] = score
                if best_score is None or score > best_score:
                    best_score, best_epoch = score, epoch
                    best_state = copy.deepcopy(self.model.state_dict())
            history.append(record)
            if not math.isfinite(last_loss):
                raise FloatingPointError(
                    f"task {t + 1} ({task.name}): the loss became {last_loss} at epoch {epoch}; lower lr (now "
                    f"{cfg.lr:g}) or check the features for huge values"
                )
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.model.eval()
        return best_epoch, best_score, last_loss, last_terms, history

    def _loss(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        labels: torch.Tensor,
        t: int,
        stored_anchors: list[torch.Tensor],
        stored_targets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = (),  # type: ignore[assignment]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        w = self.loss_weights
        h_image, z_image = self.model(image, "image", return_z=True)
        h_text, z_text = self.model(text, "text", return_z=True)
        cross_image = cross_text = None
        if w.distill > 0:
            cross_image = (h_image, self.model.hash_from_z(z_image, "text"))
            cross_text = (h_text, self.model.hash_from_z(z_text, "image"))
        anchor_current = [self.model.anchor_codes(s) for s in range(len(stored_anchors))]
        return self._loss_from_outputs(
            h_image, h_text, labels, cross_image, cross_text, stored_anchors, anchor_current, stored_targets
        )

    def _loss_from_outputs(
        self,
        h_image: torch.Tensor,
        h_text: torch.Tensor,
        labels: torch.Tensor,
        cross_image: tuple[torch.Tensor, torch.Tensor] | None,
        cross_text: tuple[torch.Tensor, torch.Tensor] | None,
        stored_anchors: Sequence[torch.Tensor],
        anchor_current: Sequence[torch.Tensor],
        stored_targets: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The PBEH objective plus the stored-code term, from the batch's outputs."""
        w = self.loss_weights
        total, terms = pbeh_loss(
            h_image,
            h_text,
            labels,
            weights=w,
            cross_image=cross_image,
            cross_text=cross_text,
            anchor_stored=stored_anchors,
            anchor_current=anchor_current,
            straight_through=self.config.straight_through,
            temperature=self.config.temperature,
            similarity_target=self.config.similarity_target,
            binary_similarity_normalize=self.config.binary_similarity_normalize,
        )
        if stored_targets:
            term = h_image.new_zeros(())
            for image_codes, text_codes, stored_labels in stored_targets:
                S = label_similarity(labels, stored_labels, kind=self.config.similarity_target)
                # cross-modal, as retrieval compares: image outputs vs stored text codes, and vice versa
                term = term + stored_code_loss(h_image, text_codes, S) + stored_code_loss(h_text, image_codes, S)
            total = total + w.stored_codes * term
            terms["stored_codes"] = float(term.detach())
        return total, terms

    def _distributed_step(
        self,
        step_module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        ctx: DistributedContext,
        share: MinibatchShare,
        features: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        pseudo: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
        stored_anchors: list[torch.Tensor],
        stored_targets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One optimiser step of one rank under DDP; returns the global batch's loss (the same on every rank).

        The rank runs the model on its share of the batch (and of the replayed pseudo items), gathers every rank's
        outputs in one process's batch order with the gradient kept on its own rows (:func:`all_gather_rows`), and
        evaluates the whole objective on the global batch, so the pairwise and contrastive terms see every pair.
        Each rank's backward then yields its part of the global gradient. DDP averages the ranks' gradients, so the
        batch terms are backpropagated ``world_size`` times over (the sum of the parts is the gradient) while the
        prompt-hash anchor term, which every rank computes whole, is backpropagated once.
        """
        image, text, labels = features
        device = image.device
        local = share.local.to(device)
        indices = share.indices.to(device)
        local_image, local_text, global_labels = image[local], text[local], labels[indices]
        counts = [list(share.counts)]
        if pseudo is not None:
            p_image, p_text, p_labels = (_tensor(part, device) for part in pseudo)
            bounds = shard_bounds(len(p_image), ctx.world_size)
            first, last = bounds[ctx.rank]
            local_image = torch.cat([local_image, p_image[first:last]])
            local_text = torch.cat([local_text, p_text[first:last]])
            global_labels = torch.cat([global_labels, p_labels])
            counts.append([stop - begin for begin, stop in bounds])
        w = self.loss_weights
        outputs, anchor_current = step_module(local_image, local_text, len(stored_anchors), w.distill > 0)
        widths = [part.shape[1] for part in outputs]
        gathered = all_gather_rows(torch.cat(outputs, dim=1), counts, ctx).split(widths, dim=1)
        h_image, h_text = gathered[0], gathered[1]
        cross_image = (h_image, gathered[2]) if w.distill > 0 else None
        cross_text = (h_text, gathered[3]) if w.distill > 0 else None
        batch_loss, terms = self._loss_from_outputs(
            h_image, h_text, global_labels, cross_image, cross_text, [], [], stored_targets
        )
        total, to_backward = batch_loss, batch_loss * ctx.world_size
        if stored_anchors:
            anchor = anchor_loss(stored_anchors, anchor_current)
            total = total + w.anchor * anchor
            to_backward = to_backward + w.anchor * anchor
            terms["anchor"] = float(anchor.detach())
        optimizer.zero_grad(set_to_none=True)
        to_backward.backward()
        optimizer.step()
        return total.detach(), terms

    def _stored_targets(self, t: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """±1 stored image and text codes (at their own lengths) and labels of a seeded sample of each earlier
        task's database, for the stored-code term."""
        out = []
        rng = np.random.default_rng(self.config.seed * 7919 + t)
        for stored in self._stored[:t]:
            ids = stored.ids
            rows = np.arange(len(ids))
            if len(ids) > self.config.stored_codes_per_task:
                rows = np.sort(rng.choice(len(ids), self.config.stored_codes_per_task, replace=False))
            image_codes = self.image_index.get_codes(ids[rows]).to_signs()
            text_codes = self.text_index.get_codes(ids[rows]).to_signs()
            out.append(
                (
                    _tensor(image_codes, self.device),
                    _tensor(text_codes, self.device),
                    _tensor(stored.labels[rows], self.device),
                )
            )
        return out

    def _selection_score(self, train: Split, validation: Split | None, task: Task) -> float:
        """I→T + T→I mAP@k used to pick the epoch: validation items against the remaining training items, or the
        task's queries against its database (``select_on="test"``)."""
        if self.config.select_on == "test":
            queries, database = task.query, task.database
        else:
            if validation is None:  # pragma: no cover - guarded by the caller
                raise RuntimeError("validation split missing")
            queries, database = validation, train
        i2t, t2i = self._cross_modal_map(queries, database)
        return i2t + t2i

    def _cross_modal_map(self, queries: Split, database: Split) -> tuple[float, float]:
        device, k = self.device, self.config.eval_k
        q_img = self.model.encode(_tensor(queries.image, device), "image")
        q_txt = self.model.encode(_tensor(queries.text, device), "text")
        d_img = self.model.encode(_tensor(database.image, device), "image")
        d_txt = self.model.encode(_tensor(database.text, device), "text")
        i2t = map_at_k(q_img, d_txt, queries.labels, database.labels, k=k, ties=self.config.ties)
        t2i = map_at_k(q_txt, d_img, queries.labels, database.labels, k=k, ties=self.config.ties)
        return float(i2t), float(t2i)

    # ------------------------------------------------------------------ evaluation
    def _encode_queries(self) -> list[tuple[Codes, Codes]]:
        """(image, text) codes of every seen task's queries, encoded once with the current model."""
        device = self.device
        return [
            (
                self.model.encode(_tensor(task.query.image, device), "image"),
                self.model.encode(_tensor(task.query.text, device), "text"),
            )
            if task is not None  # None: a task loaded from a checkpoint without its stream (queries unknown)
            else None
            for task in self._seen
        ]

    def _evaluate_rows(self, t: int, query_codes: list[tuple[Codes, Codes]]) -> tuple[list[float], list[float]]:
        """R[t, i] for i <= t: queries of task i (encoded now) against the stored database codes of task i."""
        k = self.config.eval_k
        row_i2t, row_t2i = [], []
        for i in range(t + 1):
            if self._seen[i] is None:  # loaded without its stream: R[t, i] stays unfilled (NaN)
                row_i2t.append(float("nan"))
                row_t2i.append(float("nan"))
                continue
            query = self._seen[i].query
            stored = self._stored[i]
            q_img, q_txt = query_codes[i]
            db_txt = self.text_index.get_codes(stored.ids)
            db_img = self.image_index.get_codes(stored.ids)
            i2t = float(map_at_k(q_img, db_txt, query.labels, stored.labels, k=k, ties=self.config.ties))
            t2i = float(map_at_k(q_txt, db_img, query.labels, stored.labels, k=k, ties=self.config.ties))
            self.matrix.record(t, i, "i2t", i2t)
            self.matrix.record(t, i, "t2i", t2i)
            row_i2t.append(i2t)
            row_t2i.append(t2i)
        return row_i2t, row_t2i

    def _unified_scores(self, query_codes: list[tuple[Codes, Codes]]) -> dict[str, Any]:
        """Every seen query against every stored code (each at its own length), ranked as one index ranks them.

        Returns the :class:`~pbeh.evaluation.UnifiedMetrics` of both directions as dicts (``"i2t"``, ``"t2i"``):
        mAP@all, mAP@100, P@10, per query task, and the share of each task's top 10 that comes from the newest task.
        """
        known = [i for i, task in enumerate(self._seen) if task is not None]  # None: loaded without its stream
        query_codes = [query_codes[i] for i in known]
        q_labels = np.concatenate([self._seen[i].query.labels for i in known])
        q_tasks = np.concatenate([np.full(len(self._seen[i].query), i, dtype=np.int64) for i in known])
        labels = [s.labels for s in self._stored]
        out: dict[str, Any] = {}
        for direction, q_index, db_index in (("i2t", 0, self.text_index), ("t2i", 1, self.image_index)):
            queries = Codes.concatenate([codes[q_index] for codes in query_codes])
            stored = [db_index.get_codes(s.ids) for s in self._stored]
            metrics = unified_metrics(
                queries,
                q_labels,
                q_tasks,
                stored,
                labels,
                score=self.index_score,
                flip_probability=db_index.flip_probability,
                ties=self.config.ties,
                db_ids=[s.ids for s in self._stored],
            )
            out[direction] = metrics.to_dict()
        return out

    def _prefix_drift(self) -> float | None:
        """Fraction of stored bits of earlier tasks that the current model would flip (None on the first task)."""
        if len(self._stored) < 2:
            return None
        device = self.device
        flipped, total = 0.0, 0
        for task, stored in zip(self._seen[:-1], self._stored[:-1], strict=True):
            if task is None:  # loaded without its stream: its features are unknown
                continue
            db = task.database
            img = self.image_index.get_codes(stored.ids)
            txt = self.text_index.get_codes(stored.ids)
            for codes, feats, modality in ((img, db.image, "image"), (txt, db.text, "text")):
                bits = len(codes) * codes.n_bits
                flipped += self.model.prefix_drift(codes, _tensor(feats, device), modality) * bits
                total += bits
        return flipped / total if total else None

    def _collapse_check(self, task: Task, image_codes: Codes, text_codes: Codes) -> dict[str, Any]:
        """Report degenerate codes; warn, with what to change, when they cannot separate the task's label sets.

        A few constant bits are normal (a task of two classes needs one bit to separate them). The codes have
        collapsed when every item got the same code, or when more than half the bits are constant and there are fewer
        distinct codes than distinct label sets among the task's stored items: then the codes merge items the labels
        tell apart, and searches return ties.
        """
        out: dict[str, Any] = {}
        label_sets = len(np.unique(np.asarray(task.database.labels) > 0, axis=0))
        steps = self.config.epochs * max(1, math.ceil(max(1, len(task.train)) / self.config.batch_size))
        for modality, codes in (("image", image_codes), ("text", text_codes)):
            report = code_collapse_report(codes)
            report["n_label_sets"] = label_sets
            out[modality] = report
            severe = report["all_equal"] or (
                report["n_constant_bits"] > codes.n_bits // 2 and report["n_distinct_codes"] < label_sets
            )
            if not report["collapsed"]:
                continue
            if not severe:
                _logger.info(
                    "task %s: %d of %d %s bits are constant over the task (%d distinct codes for %d label sets)",
                    task.name, report["n_constant_bits"], codes.n_bits, modality, report["n_distinct_codes"],
                    label_sets,
                )  # fmt: skip
                continue
            _logger.warning(
                "task %s: %s codes collapsed: %d of %d bits constant over the task, %d distinct codes for %d items "
                "with %d distinct label sets, so searches return ties. The task trained for %d optimiser steps "
                "(epochs %d x %d batches of %d): if that is few, raise epochs or lower batch_size; if the loss did "
                "not fall, raise lr (now %g); keep center_features and normalize_features on for features that are "
                "all positive or far from unit norm",
                task.name, modality, report["n_constant_bits"], codes.n_bits, report["n_distinct_codes"], len(codes),
                label_sets, steps, self.config.epochs, steps // max(1, self.config.epochs), self.config.batch_size,
                self.config.lr,
            )  # fmt: skip
        return out

    def _decide_extension(self, t: int) -> ExtensionDecision:
        """Ask the policy about the codes stored at the newest length; an extension applies before the next task."""
        newest = self.model.n_bits
        stored = [s for s in self._stored if s.n_bits == newest]
        image_codes = Codes.concatenate([self.image_index.get_codes(s.ids) for s in stored])
        text_codes = Codes.concatenate([self.text_index.get_codes(s.ids) for s in stored])
        labels = np.concatenate([s.labels for s in stored])
        decision = self.extension_policy.decide(image_codes=image_codes, text_codes=text_codes, task=t, labels=labels)
        self._pending_extension = int(decision.n_new_bits)
        return decision

    def _grow_matrix(self, n_tasks: int) -> None:
        if self.matrix.n_tasks >= n_tasks:
            return
        data = self.matrix.to_dict()
        grown = ContinualMatrix(n_tasks, directions=tuple(self.matrix.directions))
        old = self.matrix
        for direction in old.directions:
            values = old.matrix(direction)
            for t, i in zip(*np.nonzero(np.isfinite(values)), strict=True):
                grown.record(int(t), int(i), direction, float(values[t, i]))
        for name, series in (data.get("scalars") or {}).items():
            for t, value in enumerate(series):
                if value is not None:
                    grown.record_scalar(name, t, float(value))
        self.matrix = grown

    def _check_new_ids(self, task: Task) -> None:
        """Refuse a task whose database ids are already stored, before anything is trained or grown."""
        ids = np.asarray(task.database.ids, dtype=np.int64)
        if len(np.unique(ids)) != len(ids):
            raise ValueError(f"task {task.name!r}: its database ids repeat")
        clash = [int(i) for i in ids[:100_000] if int(i) in self.image_index]
        if clash:
            raise ValueError(
                f"task {task.name!r}: database ids {clash[:5]} are already stored by an earlier task; item ids must "
                "be unique across the stream"
            )

    def _check_widths(self, task: Task) -> None:
        expected = (self.model.feature_dim("image"), self.model.feature_dim("text"))
        got = (task.train.image.shape[1], task.train.text.shape[1])
        if got != expected:
            raise ValueError(
                f"task {task.name!r}: feature widths (image, text) {got} do not match the model's {expected}"
            )

    # ------------------------------------------------------------------ saving and resuming
    def save(self, directory: str | Path) -> None:
        """Save the whole continual state: model, indexes, anchors, stored-task bookkeeping, reports and matrices.

        The state is written into a fresh sibling directory which then replaces ``directory``, so a crash leaves the
        previous save intact.
        """
        target = Path(directory)
        if target.exists() and not target.is_dir():
            raise NotADirectoryError(f"directory: expected a directory path, got the existing file {str(target)!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = staging_directory(target)
        try:
            self._save_into(tmp)
            replace_directory(tmp, target)  # one step: load(directory) sees the old state or the new one
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _save_into(self, tmp: Path) -> None:
        self.model.save_pretrained(tmp / "model")
        self.image_index.save(tmp / "image_index.safetensors")
        self.text_index.save(tmp / "text_index.safetensors")
        arrays: dict[str, np.ndarray] = {}
        for s, anchor in enumerate(self._anchors):
            arrays[f"anchor.{s}"] = anchor.detach().cpu().numpy()
        for s, stored in enumerate(self._stored):
            arrays[f"stored.{s}.ids"] = stored.ids
            arrays[f"stored.{s}.labels"] = np.asarray(stored.labels, dtype=np.uint8)
        for s, prototypes in enumerate(self._prototypes):
            arrays.update(prototypes.to_arrays(f"prototypes.{s}."))
        save_safetensors(tmp / "trainer_state.safetensors", arrays, kind="trainer_state", format_version=1)
        write_json(
            tmp / "trainer.json",
            {
                "pbeh_kind": "trainer",
                "format_version": TRAINER_FORMAT_VERSION,
                "pbeh_version": __version__,
                "config": self.config.to_dict(),
                "loss_weights": self.loss_weights.to_dict(),
                "extension_policy": self.extension_policy.to_config(),
                "index_score": self.index_score,
                "pending_extension": self._pending_extension,
                "stored": [{"name": s.name, "n_bits": s.n_bits} for s in self._stored],
                "reports": [r.to_dict() for r in self.reports],
                "matrix": self.matrix.to_dict(),
            },
        )

    @classmethod
    def load(cls, directory: str | Path, *, checkpoint_dir: str | Path | None = None) -> ContinualTrainer:
        """Load a state written by :meth:`save`, or the newest state of a run directory (a ``checkpoint_dir``).

        ``directory`` is a state directory (``run/task_003``) or a run directory holding ``latest.json``; for a run
        directory ``checkpoint_dir`` defaults to it, so further tasks keep checkpointing there. Training continues
        with :meth:`fit` on the same stream (all rows of the matrix are evaluated) or with :meth:`fit_task` on new
        tasks (rows of the earlier tasks stay unfilled: their queries are not part of the state).

        Raises:
            FormatError: a missing, damaged or inconsistent state or pointer.
        """
        directory = Path(directory)
        if (directory / LATEST_NAME).is_file() and not (directory / "trainer.json").is_file():
            if checkpoint_dir is None:
                checkpoint_dir = directory
            directory = _latest_state_dir(directory)
        directory = resolve_directory(directory)
        meta = read_json(directory / "trainer.json", what="trainer state")
        if not isinstance(meta, dict) or meta.get("pbeh_kind", "trainer") != "trainer":
            raise FormatError(f"{str(directory)!r}: trainer.json does not describe a pbeh trainer state")
        if meta.get("format_version") != TRAINER_FORMAT_VERSION:
            raise FormatError(
                f"{str(directory)!r}: trainer format_version {meta.get('format_version')!r}, "
                f"this pbeh reads {TRAINER_FORMAT_VERSION}"
            )
        source = f"trainer state {str(directory / 'trainer.json')!r}"
        for key, kind in (("config", dict), ("loss_weights", dict), ("extension_policy", dict), ("index_score", str)):
            json_field(meta, key, kind, source=source)
        model = CrossModalHashModel.from_pretrained(directory / "model")
        try:
            trainer = cls(
                model,
                config=TrainerConfig.from_dict(meta["config"]),
                loss_weights=LossWeights.from_dict(meta["loss_weights"]),
                extension_policy=extension_policy_from_config(meta["extension_policy"]),
                index_score=meta["index_score"],
                checkpoint_dir=checkpoint_dir,
            )
            trainer._load_state(directory, meta)
        except FormatError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise FormatError(f"{source} is damaged or inconsistent: {type(exc).__name__}: {exc}") from exc
        trainer._seen = [None] * len(trainer._stored)  # type: ignore[list-item]  # queries unknown until fit(stream)
        return trainer

    def _load_state(self, directory: Path, meta: dict[str, Any]) -> None:
        self.image_index = TruncatedHammingIndex.load(directory / "image_index.safetensors")
        self.text_index = TruncatedHammingIndex.load(directory / "text_index.safetensors")
        arrays, _ = load_safetensors(directory / "trainer_state.safetensors", kind="trainer_state", format_version=1)
        source = f"trainer state {str(directory / 'trainer.json')!r}"
        stored = json_field(meta, "stored", list, source=source)
        reports = json_field(meta, "reports", list, source=source)
        json_field(meta, "matrix", dict, source=source)
        json_field(meta, "pending_extension", int, source=source, minimum=0, maximum=1 << 20)
        for i, entry in enumerate(stored):
            json_field(entry, "name", str, source=f"{source} stored[{i}]")
            json_field(entry, "n_bits", int, source=f"{source} stored[{i}]", minimum=1, maximum=1 << 20)
            for key in (f"stored.{i}.ids", f"stored.{i}.labels", f"anchor.{i}"):
                if key not in arrays:
                    raise FormatError(f"{source}: trainer_state.safetensors has no tensor {key!r}")
        if len(reports) != len(stored):
            raise FormatError(f"{source}: {len(reports)} reports for {len(stored)} stored tasks")
        self._stored = [
            _StoredTask(s["name"], arrays[f"stored.{i}.ids"], arrays[f"stored.{i}.labels"], int(s["n_bits"]))
            for i, s in enumerate(meta["stored"])
        ]
        index_ids = [
            np.concatenate([index.get_ids(n_bits=n) for n, _ in index.segments] or [np.empty(0, np.int64)])
            for index in (self.image_index, self.text_index)
        ]
        for i, task in enumerate(self._stored):  # the bookkeeping must agree with the indexes it describes
            ids, labels = task.ids, task.labels
            if ids.ndim != 1 or labels.ndim != 2 or len(labels) != len(ids) or ids.dtype != np.int64:
                raise FormatError(f"{source}: stored task {i} has ids {ids.shape} and labels {labels.shape}")
            if labels.shape[1] != self._stored[0].labels.shape[1]:
                raise FormatError(
                    f"{source}: stored task {i} has {labels.shape[1]} label columns, task 0 has "
                    f"{self._stored[0].labels.shape[1]}"
                )
            for present in index_ids:
                missing = ids[~np.isin(ids, present)].tolist()
                if missing:
                    raise FormatError(f"{source}: stored task {i} names ids {missing[:5]} that its indexes lack")
        self._anchors = [torch.from_numpy(arrays[f"anchor.{i}"].copy()) for i in range(len(self._stored))]
        # States written before class prototypes existed have none: replay then starts from the next task's classes.
        self._prototypes = [
            ClassPrototypes.from_arrays(arrays, f"prototypes.{i}.", n_classes=self._stored[i].labels.shape[1])
            for i in range(len(self._stored))
            if f"prototypes.{i}.classes" in arrays
        ]
        self._pending_extension = int(meta["pending_extension"])
        self.reports = [TaskReport.from_dict(r) for r in meta["reports"]]
        self.matrix = ContinualMatrix.from_dict(meta["matrix"])

    def _restore(self, checkpoint_dir: Path) -> None:
        loaded = ContinualTrainer.load(_latest_state_dir(checkpoint_dir))
        differences = resume_differences(self, loaded)
        if differences:
            raise ResumeMismatchError(
                f"checkpoint_dir: {str(checkpoint_dir)!r} holds a run trained with other options ("
                + "; ".join(differences)
                + "). Resume with the run's options, or start afresh with fit(..., resume=False) / "
                "`pbeh train --no-resume` (which overwrites it) or another checkpoint directory / --out"
            )
        for name in (
            "model", "config", "loss_weights", "extension_policy", "index_score",
            "image_index", "text_index", "_stored", "_anchors", "_prototypes", "_pending_extension", "reports",
            "matrix",
        ):  # fmt: skip
            setattr(self, name, getattr(loaded, name))

    def _write_checkpoint(self, checkpoint_dir: Path) -> None:
        """Save the state after task t into ``task_<t>``, point ``latest.json`` at it (atomically), then remove the
        earlier task states unless ``keep_task_checkpoints``."""
        name = f"task_{self.n_tasks_done - 1:03d}"
        self.save(checkpoint_dir / name)
        write_json(checkpoint_dir / "latest.json", {"directory": name, "tasks_done": self.n_tasks_done})
        if not self.keep_task_checkpoints:
            for old in checkpoint_dir.glob("task_*"):
                if old.is_dir() and old.name != name and re.fullmatch(r"task_\d{3,9}", old.name):
                    shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------------ summaries
    def summary(self) -> dict[str, Any]:
        """Final figures: mean mAP of the last row, BWT, forgetting, unified scores, bits and drift."""
        out: dict[str, Any] = {"tasks": self.n_tasks_done, "final_bits": self.model.n_bits}
        if self.reports:
            out["bits_per_task"] = [r.n_bits for r in self.reports]
            last = self.reports[-1]
            out["unified_i2t"] = last.unified_i2t
            out["unified_t2i"] = last.unified_t2i
            out["unified_chance"] = last.unified_chance
            drifts = [r.prefix_drift for r in self.reports if r.prefix_drift is not None]
            out["prefix_drift"] = drifts[-1] if drifts else None
            for direction, figures in (last.unified or {}).items():
                # What a user sees at the top of the one index: per query task, P@10, mAP@100 and the share of the
                # top 10 that comes from the newest task.
                out[f"unified_{direction}_p10"] = figures["p_at_10"]
                out[f"unified_{direction}_map100"] = figures["map_at_100"]
                out[f"unified_{direction}_p10_per_task"] = figures["per_task_p_at_10"]
                out[f"unified_{direction}_map100_per_task"] = figures["per_task_map_at_100"]
                out[f"unified_{direction}_newest_share_per_task"] = figures["per_task_newest_share"]
            out["ties"] = self.config.ties
        if self._stored:
            # packed bytes per stored item and modality (before faiss's padding to a fast code size)
            items = sum(len(s.ids) for s in self._stored)
            out["bytes_per_item"] = sum(len(s.ids) * ((s.n_bits + 7) // 8) for s in self._stored) / items
        for direction in ("i2t", "t2i"):
            out[f"mean_{direction}"] = self.matrix.final_mean(direction)
            out[f"bwt_{direction}"] = self.matrix.bwt(direction)
            out[f"forgetting_{direction}"] = self.matrix.forgetting(direction)
        return _json_safe(out)


LATEST_NAME = "latest.json"

# Model options that a resumed run must share with the run in its checkpoint (the rest grows with the tasks).
_RESUME_MODEL_KEYS = (
    "image_dim", "text_dim", "dim", "hidden_dims", "branch_hidden_dims", "normalize_features", "feature_norm",
    "seed", "use_prompts", "center_features", "dtype",
)  # fmt: skip
# Options that do not change what is trained.
_RESUME_IGNORED_CONFIG = ("show_progress",)


def resume_differences(current: ContinualTrainer, saved: ContinualTrainer) -> list[str]:
    """The options in which ``current`` (about to resume) differs from ``saved`` (the checkpoint), as
    ``"name: checkpoint X, now Y"`` strings; empty when resuming is consistent.

    The initial code length, the model widths, every :class:`TrainerConfig` field that affects training (epochs,
    lr, batch size, seed, ...), the loss weights, the extension policy and the index score are compared.
    """

    def note(name: str, old: Any, new: Any) -> None:
        if old != new:
            out.append(f"{name}: checkpoint {old!r}, now {new!r}")

    out: list[str] = []
    note("n_bits", saved.model.width_history[0], current.model.width_history[0])
    saved_model, current_model = saved.model.get_config(), current.model.get_config()
    for key in _RESUME_MODEL_KEYS:
        note(key, saved_model.get(key), current_model.get(key))
    saved_cfg, current_cfg = saved.config.to_dict(), current.config.to_dict()
    for key in sorted(set(saved_cfg) | set(current_cfg)):
        if key not in _RESUME_IGNORED_CONFIG:
            note(key, saved_cfg.get(key), current_cfg.get(key))
    note("loss_weights", saved.loss_weights.to_dict(), current.loss_weights.to_dict())
    note("extension_policy", saved.extension_policy.to_config(), current.extension_policy.to_config())
    note("index_score", saved.index_score, current.index_score)
    return out


def checkpoint_state_dir(run: str | Path) -> Path:
    """The state directory of a run: ``run`` itself when it holds ``trainer.json``, else the one its
    ``latest.json`` names (checked to lie inside ``run``).

    Raises:
        FormatError: neither, or a damaged or escaping pointer.
    """
    run = Path(run)
    if (run / "trainer.json").is_file():
        return run
    if (run / LATEST_NAME).is_file():
        return resolve_directory(_latest_state_dir(run))
    raise FormatError(f"{str(run)!r} holds no pbeh run (no trainer.json or {LATEST_NAME})")


def _latest_state_dir(checkpoint_dir: Path) -> Path:
    """The state directory ``latest.json`` names, checked to be a ``task_<t>`` (or ``joint``) inside the run."""
    path = Path(checkpoint_dir) / LATEST_NAME
    source = f"checkpoint pointer {str(path)!r}"
    latest = read_json(path, what="checkpoint pointer", expect=dict)
    name = json_field(latest, "directory", str, source=source)
    json_field(latest, "tasks_done", int, source=source, minimum=0)
    if not re.fullmatch(r"task_\d{3,9}|joint", name):
        raise FormatError(
            f"{source}: 'directory' must name a state inside the run directory (task_<t> or joint), got {name[:80]!r}"
        )
    return Path(checkpoint_dir) / name


def _fan_in_scale(param: torch.Tensor, reference: int | None) -> float:
    """``reference / fan_in`` for a weight matrix wider than ``reference`` inputs, else 1.

    AdamW moves every weight by about ``lr`` per step whatever its gradient's size, so a unit's input moves by about
    ``lr * |x|_1``, which grows with the fan-in. On 1024-d features (MIRFLICKR730) at lr 1e-3 one step moved every
    hidden unit by more than its spread across items, the same way for all items: after a few steps the ReLUs were on or
    off for every item alike and each task's codes collapsed to one or two codes.
    """
    if reference is None or param.ndim != 2 or param.shape[1] <= reference:
        return 1.0
    return reference / param.shape[1]


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float32), device=device)
