"""PIC-CMH's losses and continual protocol on pbeh's data, index and metrics.

Loss (released ``train.py``), with ``S = 2 sigmoid(l l^T / 16) - 1`` and ``H`` the L2-normalised outputs:
``delta MSE(H_v H_t^T, S) + alpha sum_i (1 - cos(h_v, h_t)) + beta sum_i (1 - cos(sign h_v, sign h_t))
+ gamma [MSE(h_v, sign h_v) + MSE(h_t, sign h_t)]`` with alpha 0.001, beta 1 (the sign term has no gradient: it is
reported, not trained), gamma 0.1, delta 1. No anti-forgetting term.

Protocol per task ``t``: a new expert pool; Adam (rebuilt per task) over everything that requires a gradient, the
learning rate decaying linearly from ``lr`` to ``end_lr`` over all tasks x epochs; shuffled passes in batches of
``batch_size``; epoch selection (I->T + T->I mAP@k) on a validation split (``select_on="validation"``, default), on
the task's queries against its database (``"test"``, released) or none (``"last"``). Then **every seen task's
queries and database are re-encoded** with the current model and ``R[t, i]`` and the unified score are computed;
``encoded_db_items`` counts every database item encoded, so ``encoder_passes`` = encoded / database size (1 + 2 + ...
+ T tasks' databases for T equal tasks: (T + 1) / 2 passes).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..._validation import check_int, check_positive_int, check_positive_real
from ...codes import Codes
from ...data import Split, Task, TaskStream
from ...metrics import ContinualMatrix
from .._peer_protocol import as_tensor, check_protocol_fields, evaluate_row, grow_matrix, summarize, unified_score
from .model import PICMHModel

__all__ = ["PICMHConfig", "PICMHTrainer", "picmh_loss"]

_logger = logging.getLogger(__name__)

SELECTION = ("validation", "test", "last")


@dataclass(frozen=True)
class PICMHConfig:
    """Optimisation, protocol and loss weights of :class:`PICMHTrainer` (defaults: the released ``config.yaml``,
    except ``select_on="validation"``; :meth:`reference` gives the released protocol).

    Attributes:
        epochs: epochs per task (100).
        batch_size: items per step (512).
        lr, end_lr: the linear learning-rate schedule's start and end over all tasks x epochs (1e-4, 5e-5).
        select_on: ``"validation"``, ``"test"`` or ``"last"``.
        validation_fraction: share of training items held out for ``"validation"``.
        eval_every: epochs between selection scores.
        eval_k: k of mAP@k (``None`` = mAP@all).
        ties: ``"average"`` (tie-averaged, pbeh's figures) or ``"reference"`` (the released stable order).
        index_score: the unified index's score policy.
        alpha, beta, gamma, delta: loss weights (0.001, 1, 0.1, 1).
        seed: seeds shuffling and the validation split (88).
    """

    epochs: int = 100
    batch_size: int = 512
    lr: float = 1e-4
    end_lr: float = 5e-5
    select_on: str = "validation"
    validation_fraction: float = 0.1
    eval_every: int = 1
    eval_k: int | None = 1000
    ties: str = "average"
    index_score: str = "zscore"
    alpha: float = 0.001
    beta: float = 1.0
    gamma: float = 0.1
    delta: float = 1.0
    seed: int = 88

    def __post_init__(self) -> None:
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size")
        check_positive_real(self.lr, "lr")
        check_positive_real(self.end_lr, "end_lr")
        check_protocol_fields(self, SELECTION, ("alpha", "beta", "gamma", "delta"))
        check_int(self.seed, "seed")

    @classmethod
    def reference(cls, **overrides: Any) -> PICMHConfig:
        """The released protocol: selection on the task's queries against its database, reference ties."""
        return cls(**{"select_on": "test", "ties": "reference", **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def picmh_loss(
    h_image: torch.Tensor, h_text: torch.Tensor, labels: torch.Tensor, config: PICMHConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """PIC-CMH's loss of a batch and its weighted terms (``sign_cos`` carries no gradient)."""
    labels = labels.float()
    target = 2 * torch.sigmoid(labels @ labels.T / 16.0) - 1
    terms = {
        "similarity": config.delta * F.mse_loss(h_image @ h_text.T, target),
        "cos": config.alpha * (1 - F.cosine_similarity(h_image, h_text, dim=1)).sum(),
        "sign_cos": config.beta * (1 - F.cosine_similarity(torch.sign(h_image), torch.sign(h_text), dim=1)).sum(),
        "quantization": config.gamma
        * (F.mse_loss(h_image, torch.sign(h_image)) + F.mse_loss(h_text, torch.sign(h_text))),
    }
    return sum(terms.values()), {name: float(value.detach()) for name, value in terms.items()}


class PICMHTrainer:
    """Trains a :class:`PICMHModel` task after task, re-encoding every seen database after each task.

    Args:
        model: the model (tasks are added by :meth:`fit_task`).
        config: a :class:`PICMHConfig`.
    """

    def __init__(self, model: PICMHModel, *, config: PICMHConfig | None = None) -> None:
        if not isinstance(model, PICMHModel):
            raise TypeError(f"model: expected a PICMHModel, got {type(model).__name__}")
        if config is not None and not isinstance(config, PICMHConfig):
            raise TypeError(f"config: expected a PICMHConfig, got {type(config).__name__}")
        self.model = model
        self.config = config or PICMHConfig()
        self.matrix = ContinualMatrix(1)
        self.seen: list[Task] = []
        self.encoded_db_items = 0
        self.selection_db_items = 0
        self.seconds = 0.0
        self.history: list[dict[str, Any]] = []
        self.total_tasks: int | None = None
        self._last_codes: list[tuple[Codes, Codes]] = []

    @classmethod
    def for_stream(
        cls, stream: TaskStream, *, n_bits: int, config: PICMHConfig | None = None, **model_kwargs: Any
    ) -> PICMHTrainer:
        """A trainer with a fresh :class:`PICMHModel` for ``stream``'s widths (``model_kwargs`` go to the model;
        its ``seed`` defaults to the config's)."""
        cfg = config or PICMHConfig()
        model_kwargs.setdefault("seed", cfg.seed)
        return cls(PICMHModel(stream.image_dim, stream.text_dim, n_bits=n_bits, **model_kwargs), config=cfg)

    @property
    def device(self) -> torch.device:
        return self.model.global_prompts["image"].device

    def fit(self, stream: TaskStream | Sequence[Task]) -> list[dict[str, Any]]:
        """Train on every task in order (the learning-rate schedule spans all of them); one record per task."""
        tasks = list(stream)
        if not tasks:
            raise ValueError("stream: expected at least one task, got none")
        self.total_tasks = len(self.seen) + len(tasks)
        self.matrix = grow_matrix(self.matrix, self.total_tasks)
        for task in tasks:
            self.fit_task(task)
        return list(self.history)

    def _lr(self, t: int, epoch: int) -> float:
        cfg = self.config
        total = max(self.total_tasks or (t + 1), t + 1) * cfg.epochs
        return cfg.lr + (cfg.end_lr - cfg.lr) * (t * cfg.epochs + epoch) / total

    def fit_task(self, task: Task) -> dict[str, Any]:
        """Train on one task, then re-encode and evaluate every seen task."""
        if not isinstance(task, Task):
            raise TypeError(f"task: expected a pbeh.data.Task, got {type(task).__name__}")
        started = time.perf_counter()
        cfg, model = self.config, self.model
        t = model.add_task()
        self.matrix = grow_matrix(self.matrix, t + 1)
        if cfg.select_on == "validation":
            train, validation = task.split_validation(cfg.validation_fraction, seed=cfg.seed + t)
            selection: tuple[Split, Split] | None = (validation, train)
        elif cfg.select_on == "test":
            train, selection = task.train, (task.query, task.database)
        else:
            train, selection = task.train, None
        image = as_tensor(train.image, self.device)
        text = as_tensor(train.text, self.device)
        labels = as_tensor(train.labels, self.device)
        model.inputs.fit(image, text)
        optimizer = torch.optim.Adam(model.trainable_parameters(), lr=self._lr(t, 0))
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + t)
        best: tuple[int, float | None, dict[str, torch.Tensor]] | None = None
        terms: dict[str, float] = {}
        for epoch in range(cfg.epochs):
            for group in optimizer.param_groups:
                group["lr"] = self._lr(t, epoch)
            model.train()
            order = torch.randperm(len(image), generator=gen).to(self.device)
            for start in range(0, len(image), cfg.batch_size):
                rows = order[start : start + cfg.batch_size]
                h_image = model.hash(image[rows], "image")
                h_text = model.hash(text[rows], "text")
                loss, terms = picmh_loss(h_image, h_text, labels[rows], cfg)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            last_epoch = epoch == cfg.epochs - 1
            if selection is None or (epoch % cfg.eval_every and not last_epoch):
                continue
            score = self._selection_score(*selection)
            if best is None or best[1] is None or score > best[1]:
                best = (epoch, score, copy.deepcopy(model.state_dict()))
        if best is not None:
            model.load_state_dict(best[2])
        model.eval()
        self.seen.append(task)
        record: dict[str, Any] = {
            "task": t,
            "name": task.name,
            "best_epoch": cfg.epochs - 1 if best is None else best[0],
            "score": None if best is None else best[1],
            "loss_terms": terms,
        }
        record.update(self._evaluate(t))
        record["seconds"] = time.perf_counter() - started
        self.seconds += record["seconds"]
        self.history.append(record)
        _logger.info(
            "PIC-CMH task %d (%s): mAP %.4f/%.4f, unified %.4f/%.4f",
            t,
            task.name,
            record["row_i2t"][-1],
            record["row_t2i"][-1],
            record["unified_i2t"],
            record["unified_t2i"],
        )
        return record

    def _selection_score(self, queries: Split, database: Split) -> float:
        self.selection_db_items += len(database)
        q = (self.model.encode(queries.image, "image"), self.model.encode(queries.text, "text"))
        d = (self.model.encode(database.image, "image"), self.model.encode(database.text, "text"))
        i2t, t2i = evaluate_row(
            ContinualMatrix(1),
            0,
            [q],
            [queries.labels],
            [d],
            [database.labels],
            k=self.config.eval_k,
            ties=self.config.ties,
        )
        return i2t[0] + t2i[0]

    def _evaluate(self, t: int) -> dict[str, Any]:
        """Re-encode every seen task's queries and database with the current model; fill ``R[t, :]`` and the
        unified score."""
        cfg, model = self.config, self.model
        query_codes, db_codes = [], []
        for task in self.seen:
            query_codes.append((model.encode(task.query.image, "image"), model.encode(task.query.text, "text")))
            db = task.database
            db_codes.append((model.encode(db.image, "image"), model.encode(db.text, "text")))
            self.encoded_db_items += len(db)
        self._last_codes = db_codes
        q_labels = [task.query.labels for task in self.seen]
        db_labels = [task.database.labels for task in self.seen]
        row_i2t, row_t2i = evaluate_row(
            self.matrix, t, query_codes, q_labels, db_codes, db_labels, k=cfg.eval_k, ties=cfg.ties
        )
        u_i2t, u_t2i, chance = unified_score(
            query_codes,
            q_labels,
            db_codes,
            [np.asarray(task.database.ids) for task in self.seen],
            db_labels,
            ties=cfg.ties,
            index_score=cfg.index_score,
        )
        for name, value in (("unified_i2t", u_i2t), ("unified_t2i", u_t2i), ("unified_chance", chance)):
            self.matrix.record_scalar(name, t, value)
        self.matrix.record_scalar("n_bits", t, float(model.n_bits))
        return {"row_i2t": row_i2t, "row_t2i": row_t2i, "unified_i2t": u_i2t, "unified_t2i": u_t2i}

    def summary(self) -> dict[str, Any]:
        """Final figures with the keys of :meth:`pbeh.trainer.ContinualTrainer.summary` plus ``encoder_passes``
        (re-encoding counted), ``kept_feature_bytes_per_item`` (the float32 features of both modalities that the
        protocol must keep to re-encode) and ``seconds``."""
        n_db = sum(len(task.database) for task in self.seen)
        inputs = self.model.inputs
        out = summarize(
            self.matrix,
            n_bits=self.model.n_bits,
            stored_items=n_db,
            encoded_db_items=self.encoded_db_items,
            kept_feature_bytes_per_item=4.0 * (inputs.image_dim + inputs.text_dim),
        )
        out.update(tasks=len(self.seen), seconds=self.seconds)
        out["selection_passes"] = self.selection_db_items / n_db if n_db else None
        return out
