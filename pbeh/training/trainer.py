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

This module holds the class and its training loop; three mixins hold the rest of its methods: the objective of step 3
(the optimiser, the class centres, the stored-code targets and each minibatch's loss, also under DDP) in
:mod:`pbeh.training.objective`, the evaluation after each task (step 5) in :mod:`pbeh.training.evaluation`, saving,
loading and checkpoints (step 6) in :mod:`pbeh.training.checkpoints`. The options are
:class:`~pbeh.training.config.TrainerConfig`, the per-task result :class:`~pbeh.training.report.TaskReport`.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..centers import ClassCenters
from ..codes import Codes
from ..data import Split, Task, TaskStream
from ..extension import ExtensionPolicy, ModeCenterRule, NeverExtend
from ..index import TruncatedHammingIndex
from ..losses import LossWeights
from ..metrics import ContinualMatrix
from ..model import CrossModalHashModel
from ..prototypes import ClassPrototypes
from ._arrays import _tensor
from .checkpoints import ResumeMismatchError, TrainerCheckpoints, _latest_state_dir, resume_differences
from .config import TrainerConfig
from .ddp import wrap_for_training
from .distributed import DistributedMinibatchSampler, all_gather_objects, barrier, broadcast_object
from .distributed import current as current_distributed
from .evaluation import TrainerEvaluation
from .objective import TrainerObjective
from .report import TaskReport, _json_safe, _StoredTask, top_of_index_summary

__all__ = ["ContinualTrainer"]

_logger = logging.getLogger(__name__)


class ContinualTrainer(TrainerObjective, TrainerEvaluation, TrainerCheckpoints):
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
        self._centers: ClassCenters | None = None
        self._training_centers: ClassCenters | None = None
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
        "_centers", "_pending_extension",
    )  # fmt: skip

    def _snapshot(self) -> dict[str, Any]:
        """Copies of everything a task changes (model, indexes, matrix, bookkeeping) for :meth:`_rollback`."""
        deep = {"model", "image_index", "text_index", "matrix", "_centers"}
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
        if self.loss_weights.class_centers > 0:
            self._prepare_centers(task)
        # The task's class statistics (features only, no item kept): replay for later tasks, and the class prior
        # of every query encoded from here on (the task's evaluation included).
        # Groups serve replay only: without replay they would be fitted for nothing.
        clusters = cfg.prototype_clusters if cfg.prototype_replay else 1
        self._prototypes.append(
            ClassPrototypes.fit(
                task.train.image, task.train.text, task.train.labels, clusters=clusters, seed=cfg.seed + t
            )
        )
        self._fit_class_prior()

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
        if cfg.old_class_targets == "stored" and self.loss_weights.class_centers > 0:
            self._training_centers = self._stored_center_table()
        try:
            best_epoch, best_score, last_loss, terms, history = self._train_task(t, train, validation, task)
        finally:
            self._training_centers = None

        n_bits = self.model.n_bits
        db = task.database
        image_codes, text_codes = self._store(task)
        if cfg.prior_targets == "stored":
            self._fit_class_prior()  # the new codes' classes: queries now aim where they were stored
        with torch.no_grad():
            self._anchors.append(self.model.anchor_codes(t).detach().clone())

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
        self._record_top_of_index(t, unified)
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
        ev._record_top_of_index(t, unified)
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
        # The earlier tasks' class statistics (the last entry is this task's; a state saved before prototypes existed
        # has none for its tasks).
        earlier = self._prototypes[:-1]
        replay = ClassPrototypes.concatenate(earlier) if cfg.prototype_replay and t > 0 and earlier else None
        replay_rng = np.random.default_rng(cfg.seed * 7907 + t)
        # Feature translation: pseudo items vary by the within-class deviations of this task's training items, held
        # for this task only (never stored). A task without labelled items has none: Gaussian replay then.
        deviations = None
        if replay is not None and cfg.replay_spread == "translated" and len(self._prototypes[-1]):
            deviations = self._prototypes[-1].deviations(train.image, train.text, train.labels)

        # The previous-model term's reference: the model as this task begins (after any extension), frozen.
        previous = None
        if t > 0 and self.loss_weights.previous_model > 0:
            previous = copy.deepcopy(self.model).eval().requires_grad_(False)

        def pseudo_items() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            assert replay is not None
            return replay.sample(cfg.prototype_replay, replay_rng, noise=cfg.prototype_noise, deviations=deviations)

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
                        pseudo = pseudo_items()
                        batch = tuple(
                            torch.cat([part, _tensor(extra, device)]) for part, extra in zip(batch, pseudo, strict=True)
                        )
                    loss, terms = self._loss(*batch, t, stored_anchors, stored_targets, previous)
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
                        pseudo = pseudo_items()
                    loss, terms = self._distributed_step(
                        step_module, optimizer, ctx, share, (image, text, labels), pseudo, stored_anchors,
                        stored_targets, previous,
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

    # ------------------------------------------------------------------ bookkeeping and checks
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

    # ------------------------------------------------------------------ resuming
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
            "image_index", "text_index", "_stored", "_anchors", "_prototypes", "_centers", "_pending_extension",
            "reports", "matrix",
        ):  # fmt: skip
            setattr(self, name, getattr(loaded, name))

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
            # What a user sees at the top of the one index: per query task, P@10, mAP@100 and the share of the top 10
            # that comes from the newest task.
            out.update(top_of_index_summary(last.unified))
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
