"""CASH's continual protocol on pbeh's data, index and metrics.

Per task ``t`` (as the released ``train.py``, unless a config option says otherwise):

1. a new prompt set and discriminator (earlier ones frozen); AdamW over the branches, mask net, attention, input
   maps, the new prompts and the new discriminator at ``lr`` (task 0) or ``lr * later_task_lr_scale``; learning rate
   times ``lr_decay`` after every epoch;
2. ``ceil(N / batch_size)`` steps per epoch, each on a random batch of ``batch_size`` training items; memory
   buffers of the whole task's continuous codes (initialised ``randn``) feed the coarse term;
3. every ``eval_every`` epochs a selection score (I->T + T->I mAP@k, oracle task): on a validation split carved from
   the training items (``select_on="validation"``, pbeh's clean protocol), on the task's queries against its database
   (``"test"``, the released protocol), or no selection (``"last"``); the best epoch's weights and fused train-code
   buffers are kept;
4. the task's database is encoded once with the oracle task id and stored at the fixed length (never re-encoded);
   the fused train buffers become the next task's exclusion targets;
5. evaluation in both modes: queries encoded with the task inferred from the discriminators (``"inferred"``) and with
   the oracle task id (``"oracle"``), each against the stored codes: ``R[t, i]`` and the unified score.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..._validation import check_choice, check_int, check_positive_int, check_positive_real
from ...codes import Codes
from ...data import Split, Task, TaskStream
from ...metrics import ContinualMatrix
from .._peer_protocol import as_tensor, check_protocol_fields, evaluate_row, grow_matrix, summarize, unified_score
from . import losses
from .model import CASHModel, fuse

__all__ = ["EVALUATION_MODES", "CASHConfig", "CASHTrainer"]

_logger = logging.getLogger(__name__)

EVALUATION_MODES = ("inferred", "oracle")
SELECTION = ("validation", "test", "last")


@dataclass(frozen=True)
class CASHConfig:
    """Optimisation, protocol and loss weights of :class:`CASHTrainer` (defaults: the released ``main.py``, except
    ``select_on="validation"``; :meth:`reference` gives the released protocol).

    Attributes:
        epochs: epochs per task (100).
        batch_size: items per step (64).
        lr: learning rate of task 0 (1e-5).
        later_task_lr_scale: learning rate factor from the second task on (0.1).
        lr_decay: ExponentialLR factor per epoch (0.99).
        weight_decay: AdamW weight decay (0.01, AdamW's default, as released).
        select_on: ``"validation"``, ``"test"`` (released: the task's queries against its database) or ``"last"``.
        validation_fraction: share of training items held out when ``select_on="validation"``.
        eval_every: epochs between selection scores.
        eval_k: k of mAP@k for selection and evaluation (``None`` = mAP@all).
        ties: ``"average"`` (tie-averaged, pbeh's figures) or ``"reference"`` (the released stable order).
        index_score: the unified index's cross-length score policy.
        quantization_weight, fine_weight, coarse_weight, task_weight, distill_weight, exclude_weight: loss weights
            (1, 0.01, 10, 1, 10, 1).
        temperature: InfoNCE temperature (0.07).
        seed: seeds the batch sampling, the code buffers and the validation split (88).
    """

    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-5
    later_task_lr_scale: float = 0.1
    lr_decay: float = 0.99
    weight_decay: float = 0.01
    select_on: str = "validation"
    validation_fraction: float = 0.1
    eval_every: int = 1
    eval_k: int | None = 1000
    ties: str = "average"
    index_score: str = "zscore"
    quantization_weight: float = 1.0
    fine_weight: float = 0.01
    coarse_weight: float = 10.0
    task_weight: float = 1.0
    distill_weight: float = 10.0
    exclude_weight: float = 1.0
    temperature: float = 0.07
    seed: int = 88

    def __post_init__(self) -> None:
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size")
        check_positive_real(self.lr, "lr")
        check_positive_real(self.later_task_lr_scale, "later_task_lr_scale")
        check_positive_real(self.lr_decay, "lr_decay")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay: expected a number >= 0, got {self.weight_decay!r}")
        check_protocol_fields(
            self,
            SELECTION,
            [f"{name}_weight" for name in ("quantization", "fine", "coarse", "task", "distill", "exclude")],
        )
        check_positive_real(self.temperature, "temperature")
        check_int(self.seed, "seed")

    @classmethod
    def reference(cls, **overrides: Any) -> CASHConfig:
        """The released protocol: epoch selection on the task's queries against its database, reference ties."""
        return cls(**{"select_on": "test", "ties": "reference", **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Stored:
    ids: np.ndarray
    labels: np.ndarray
    image: Codes
    text: Codes


class CASHTrainer:
    """Trains a :class:`CASHModel` task after task and evaluates it in both modes.

    Args:
        model: the model (tasks are added by :meth:`fit_task`).
        config: a :class:`CASHConfig`.

    Example:
        >>> from pbeh.data import synthetic_stream
        >>> stream = synthetic_stream(n_tasks=2, seed=0)
        >>> trainer = CASHTrainer.for_stream(stream, n_bits=8, hidden_dim=32, config=CASHConfig(epochs=1))
        >>> _ = trainer.fit(stream)
        >>> trainer.matrices["oracle"].matrix("i2t").shape, trainer.encoded_db_items == sum(
        ...     len(t.database) for t in stream)
        ((2, 2), True)
    """

    def __init__(self, model: CASHModel, *, config: CASHConfig | None = None) -> None:
        if not isinstance(model, CASHModel):
            raise TypeError(f"model: expected a CASHModel, got {type(model).__name__}")
        if config is not None and not isinstance(config, CASHConfig):
            raise TypeError(f"config: expected a CASHConfig, got {type(config).__name__}")
        self.model = model
        self.config = config or CASHConfig()
        self.matrices = {mode: ContinualMatrix(1) for mode in EVALUATION_MODES}
        self.stored: list[_Stored] = []
        self.seen: list[Task] = []
        self.encoded_db_items = 0
        self.selection_db_items = 0
        self.seconds = 0.0
        self.history: list[dict[str, Any]] = []
        self._previous: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # labels, image, text buffers

    @classmethod
    def for_stream(
        cls, stream: TaskStream, *, n_bits: int, config: CASHConfig | None = None, **model_kwargs: Any
    ) -> CASHTrainer:
        """A trainer with a fresh :class:`CASHModel` for ``stream``'s widths (``model_kwargs`` go to the model;
        its ``seed`` defaults to the config's)."""
        cfg = config or CASHConfig()
        model_kwargs.setdefault("seed", cfg.seed)
        return cls(CASHModel(stream.image_dim, stream.text_dim, n_bits=n_bits, **model_kwargs), config=cfg)

    @property
    def device(self) -> torch.device:
        return self.model.attention.in_proj_weight.device

    # ------------------------------------------------------------------ the stream
    def fit(self, stream: TaskStream | Sequence[Task]) -> list[dict[str, Any]]:
        """Train on every task in order; returns one record per task."""
        tasks = list(stream)
        if not tasks:
            raise ValueError("stream: expected at least one task, got none")
        for mode in EVALUATION_MODES:
            self.matrices[mode] = grow_matrix(self.matrices[mode], len(self.seen) + len(tasks))
        for task in tasks:
            self.fit_task(task)
        return list(self.history)

    def fit_task(self, task: Task) -> dict[str, Any]:
        """Train on one task, store its database codes, evaluate in both modes."""
        if not isinstance(task, Task):
            raise TypeError(f"task: expected a pbeh.data.Task, got {type(task).__name__}")
        started = time.perf_counter()
        cfg = self.config
        t = self.model.add_task()
        for mode in EVALUATION_MODES:
            self.matrices[mode] = grow_matrix(self.matrices[mode], t + 1)
        if cfg.select_on == "validation":
            train, validation = task.split_validation(cfg.validation_fraction, seed=cfg.seed + t)
        else:
            train, validation = task.train, None
        image = as_tensor(train.image, self.device)
        text = as_tensor(train.text, self.device)
        labels = as_tensor(train.labels, self.device)
        self.model.inputs.fit(image, text)
        if cfg.select_on == "test":
            selection: tuple[Split, Split] | None = (task.query, task.database)
        elif cfg.select_on == "validation":
            selection = (validation, train)
        else:
            selection = None
        best_epoch, best_score, buffers, last_terms = self._train(t, image, text, labels, selection)
        self._previous = (labels, buffers[0], buffers[1])

        db = task.database
        stored = _Stored(
            np.asarray(db.ids, dtype=np.int64),
            np.asarray(db.labels),
            self.model.encode(db.image, "image", task=t),
            self.model.encode(db.text, "text", task=t),
        )
        self.stored.append(stored)
        self.seen.append(task)
        self.encoded_db_items += len(db)
        record: dict[str, Any] = {"task": t, "name": task.name, "best_epoch": best_epoch, "score": best_score}
        record["loss_terms"] = last_terms
        for mode in EVALUATION_MODES:
            record[mode] = self._evaluate(t, mode)
        record["task_accuracy"] = self.task_accuracy()
        record["seconds"] = time.perf_counter() - started
        self.seconds += record["seconds"]
        self.history.append(record)
        _logger.info(
            "CASH task %d (%s): best epoch %d, inferred mAP %.4f/%.4f, oracle %.4f/%.4f",
            t,
            task.name,
            best_epoch,
            record["inferred"]["row_i2t"][-1],
            record["inferred"]["row_t2i"][-1],
            record["oracle"]["row_i2t"][-1],
            record["oracle"]["row_t2i"][-1],
        )
        return record

    # ------------------------------------------------------------------ training
    def _optimizer(self, t: int) -> torch.optim.Optimizer:
        lr = self.config.lr * (self.config.later_task_lr_scale if t > 0 else 1.0)
        params = [p for p in self.model.shared_parameters() + self.model.task_parameters(t) if p.requires_grad]
        return torch.optim.AdamW(params, lr=lr, weight_decay=self.config.weight_decay)

    def _train(
        self,
        t: int,
        image: torch.Tensor,
        text: torch.Tensor,
        labels: torch.Tensor,
        selection: tuple[Split, Split] | None,
    ) -> tuple[int, float | None, tuple[torch.Tensor, torch.Tensor], dict[str, float]]:
        cfg, model = self.config, self.model
        n, k = len(image), model.n_bits
        optimizer = self._optimizer(t)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, cfg.lr_decay)
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + t)
        rng = np.random.RandomState(cfg.seed + t)
        buffers = {
            name: torch.randn(n, k, generator=gen).to(self.device)
            for name in ("fused_image", "fused_text", "coarse_image", "coarse_text")
        }
        previous = None
        if t > 0 and cfg.exclude_weight > 0 and self._previous is not None:
            prev_labels, prev_image, prev_text = self._previous
            previous = ((labels @ prev_labels.T) > 0).float(), prev_image, prev_text
        steps = math.ceil(n / cfg.batch_size)
        best: tuple[int, float | None, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
        terms: dict[str, float] = {}
        for epoch in range(cfg.epochs):
            model.train()
            for _ in range(steps):
                rows = torch.as_tensor(rng.permutation(n)[: cfg.batch_size], device=self.device)
                loss, terms = self._step(model, rows, image, text, labels, buffers, previous)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            scheduler.step()
            last_epoch = epoch == cfg.epochs - 1
            if selection is None:
                if last_epoch:
                    best = (epoch, None, {}, (buffers["fused_image"].clone(), buffers["fused_text"].clone()))
                continue
            if epoch % cfg.eval_every and not last_epoch:
                continue
            score = self._selection_score(t, *selection)
            if best is None or best[1] is None or score > best[1]:
                state = copy.deepcopy(model.state_dict())
                best = (epoch, score, state, (buffers["fused_image"].clone(), buffers["fused_text"].clone()))
        assert best is not None  # the last epoch always records
        if best[2]:
            model.load_state_dict(best[2])
        model.eval()
        return best[0], best[1], best[3], terms

    def _step(
        self,
        model: CASHModel,
        rows: torch.Tensor,
        image: torch.Tensor,
        text: torch.Tensor,
        labels: torch.Tensor,
        buffers: dict[str, torch.Tensor],
        previous: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        t = model.n_tasks - 1
        out = model.train_outputs(image[rows], text[rows], t)
        mask = out["mask"]
        fused = {m: fuse(out[f"fine_{m}"], out[f"coarse_{m}"], mask) for m in ("image", "text")}
        # distillation: each modality's enhanced input through the other modality's branches
        cross = {m: model.branches(out[f"z_{m}"], "text" if m == "image" else "image") for m in ("image", "text")}
        buffers["fused_image"][rows] = fused["image"].detach()
        buffers["fused_text"][rows] = fused["text"].detach()
        buffers["coarse_image"][rows] = out["coarse_image"].detach()
        buffers["coarse_text"][rows] = out["coarse_text"].detach()
        batch_labels = labels[rows]

        quant = sum(losses.quantization(h) + losses.bit_balance(h) for h in (fused["image"], fused["text"], mask))
        fine = losses.info_nce(out["fine_image"], out["fine_text"], temperature=cfg.temperature) + losses.info_nce(
            fused["image"], fused["text"], temperature=cfg.temperature
        )
        coarse = sum(
            losses.coarse_similarity(batch_labels, labels, h, buffers[name])
            for h, name in (
                (out["coarse_image"], "coarse_image"),
                (out["coarse_text"], "coarse_text"),
                (fused["image"], "fused_image"),
                (fused["text"], "fused_text"),
            )
        )
        task_term = (1 - out["gate_image"]).mean() + (1 - out["gate_text"]).mean()
        distill = torch.zeros((), device=rows.device)
        for m in ("image", "text"):
            cross_fine, cross_coarse = cross[m]
            distill = distill + F.mse_loss(fused[m], fuse(cross_fine, cross_coarse, mask))
            distill = distill + F.mse_loss(out[f"fine_{m}"], cross_fine) + F.mse_loss(out[f"coarse_{m}"], cross_coarse)
        terms = {
            "quantization": cfg.quantization_weight * quant,
            "fine": cfg.fine_weight * fine,
            "coarse": cfg.coarse_weight * coarse,
            "task": cfg.task_weight * task_term,
            "distill": cfg.distill_weight * distill,
        }
        if previous is not None:
            similarity, prev_image, prev_text = previous
            sim = similarity[rows]
            exclude = losses.exclude_loss(fused["image"], prev_image, sim, model.n_bits) + losses.exclude_loss(
                fused["text"], prev_text, sim, model.n_bits
            )
            terms["exclude"] = cfg.exclude_weight * exclude
        loss = sum(terms.values())
        return loss, {name: float(value.detach()) for name, value in terms.items()}

    def _selection_score(self, t: int, queries: Split, database: Split) -> float:
        """I->T + T->I mAP@k of ``queries`` against ``database``, both encoded with the oracle task ``t``."""
        self.selection_db_items += len(database)
        q = (self.model.encode(queries.image, "image", task=t), self.model.encode(queries.text, "text", task=t))
        d = (self.model.encode(database.image, "image", task=t), self.model.encode(database.text, "text", task=t))
        scratch = ContinualMatrix(1)
        i2t, t2i = evaluate_row(
            scratch, 0, [q], [queries.labels], [d], [database.labels], k=self.config.eval_k, ties=self.config.ties
        )
        return i2t[0] + t2i[0]

    # ------------------------------------------------------------------ evaluation
    def encode_queries(self, mode: str) -> list[tuple[Codes, Codes]]:
        """(image, text) codes of every seen task's queries: ``"inferred"`` (task from the discriminators) or
        ``"oracle"`` (each task's own id)."""
        mode = check_choice(mode, "mode", EVALUATION_MODES)
        out = []
        for i, task in enumerate(self.seen):
            task_id = None if mode == "inferred" else i
            out.append(
                (
                    self.model.encode(task.query.image, "image", task=task_id),
                    self.model.encode(task.query.text, "text", task=task_id),
                )
            )
        return out

    def _evaluate(self, t: int, mode: str) -> dict[str, Any]:
        cfg = self.config
        query_codes = self.encode_queries(mode)
        matrix = self.matrices[mode]
        row_i2t, row_t2i = evaluate_row(
            matrix,
            t,
            query_codes,
            [task.query.labels for task in self.seen],
            [(s.image, s.text) for s in self.stored],
            [s.labels for s in self.stored],
            k=cfg.eval_k,
            ties=cfg.ties,
        )
        u_i2t, u_t2i, chance = unified_score(
            query_codes,
            [task.query.labels for task in self.seen],
            [(s.image, s.text) for s in self.stored],
            [s.ids for s in self.stored],
            [s.labels for s in self.stored],
            ties=cfg.ties,
            index_score=cfg.index_score,
        )
        for name, value in (("unified_i2t", u_i2t), ("unified_t2i", u_t2i), ("unified_chance", chance)):
            matrix.record_scalar(name, t, value)
        matrix.record_scalar("n_bits", t, float(self.model.n_bits))
        return {"row_i2t": row_i2t, "row_t2i": row_t2i, "unified_i2t": u_i2t, "unified_t2i": u_t2i}

    def task_accuracy(self) -> dict[str, float]:
        """Share of seen queries routed to their own task by the discriminators, per modality."""
        out = {}
        for modality in ("image", "text"):
            hits, total = 0, 0
            for i, task in enumerate(self.seen):
                predicted = self.model.predicted_tasks(getattr(task.query, modality), modality)
                hits += int((predicted == i).sum())
                total += len(predicted)
            out[modality] = hits / total if total else float("nan")
        return out

    def summary(self, mode: str = "inferred") -> dict[str, Any]:
        """Final figures of ``mode`` with the keys of :meth:`pbeh.trainer.ContinualTrainer.summary` plus
        ``encoder_passes``, ``task_accuracy`` and ``seconds``."""
        mode = check_choice(mode, "mode", EVALUATION_MODES)
        out = summarize(
            self.matrices[mode],
            n_bits=self.model.n_bits,
            stored_items=sum(len(s.ids) for s in self.stored),
            encoded_db_items=self.encoded_db_items,
        )
        out.update(tasks=len(self.stored), mode=mode, seconds=self.seconds, task_accuracy=self.task_accuracy())
        out["selection_passes"] = (
            self.selection_db_items / sum(len(s.ids) for s in self.stored) if self.stored else None
        )
        return out
