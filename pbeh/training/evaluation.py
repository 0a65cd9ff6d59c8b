"""The trainer's evaluation after each task: the epoch-selection score, row t of the continual matrix (every seen
task's queries against its stored codes), the unified mixed-length score, the prefix drift, the collapse check and
the extension decision. A mixin of :class:`~pbeh.training.ContinualTrainer`, whose state it reads; the figures
themselves come from :mod:`pbeh.metrics` and :mod:`pbeh.evaluation`."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from ..codes import Codes
from ..data import Split, Task
from ..evaluation import unified_metrics
from ..extension import ExtensionDecision, ExtensionPolicy, code_collapse_report
from ..index import TruncatedHammingIndex
from ..metrics import ContinualMatrix, map_at_k
from ..model import CrossModalHashModel
from ._arrays import _tensor
from .config import TrainerConfig
from .report import _StoredTask

_logger = logging.getLogger(__name__)


class TrainerEvaluation:
    """Evaluation steps of :class:`~pbeh.training.ContinualTrainer` (a mixin: the state is the trainer's)."""

    model: CrossModalHashModel
    config: TrainerConfig
    extension_policy: ExtensionPolicy
    image_index: TruncatedHammingIndex
    text_index: TruncatedHammingIndex
    index_score: str
    matrix: ContinualMatrix
    _stored: list[_StoredTask]
    _seen: list[Task]
    _pending_extension: int
    device: torch.device  # the trainer's property

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
        # The heads alone (role "database" for the queries too): the class prior does not train, and in this score
        # it masked the heads' progress so that early epochs won (openclipart-5, 16 bits, one seed: unified 0.426 /
        # 0.587 against 0.464 / 0.637 with an earlier form of the prior here; docs/design.md, the class prior).
        device, k = self.device, self.config.eval_k
        q_img = self.model.encode(_tensor(queries.image, device), "image")
        q_txt = self.model.encode(_tensor(queries.text, device), "text")
        d_img = self.model.encode(_tensor(database.image, device), "image")
        d_txt = self.model.encode(_tensor(database.text, device), "text")
        i2t = map_at_k(q_img, d_txt, queries.labels, database.labels, k=k, ties=self.config.ties)
        t2i = map_at_k(q_txt, d_img, queries.labels, database.labels, k=k, ties=self.config.ties)
        return float(i2t), float(t2i)

    def _encode_queries(self) -> list[tuple[Codes, Codes]]:
        """(image, text) codes of every seen task's queries, encoded once with the current model."""
        device = self.device
        return [
            (
                self.model.encode(_tensor(task.query.image, device), "image", role="query"),
                self.model.encode(_tensor(task.query.text, device), "text", role="query"),
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

    def _record_top_of_index(self, t: int, unified: dict[str, Any]) -> None:
        """Per-task scalar series of what the one index returns at its top after task ``t``, both directions:
        ``unified_<d>_p10`` and ``unified_<d>_map100`` (every seen query), ``unified_<d>_old_p10`` (the mean P@10 of
        the earlier tasks' queries), ``unified_<d>_newest_share`` (the largest share of an earlier task's top 10
        stored by the newest task) and ``unified_<d>_newest_share_neutral`` (that task's share if the ranking
        preferred no task, :func:`pbeh.evaluation.neutral_newest_share`); the last three are NaN after the first
        task. The per-query-task figures are in the task's report (``TaskReport.unified``)."""
        for direction, figures in unified.items():
            earlier_p10 = figures["per_task_p_at_10"][:-1]
            earlier_share = figures["per_task_newest_share"][:-1]
            worst = int(np.argmax(earlier_share)) if earlier_share else None
            series = {
                "p10": figures["p_at_10"],
                "map100": figures["map_at_100"],
                "old_p10": float(np.mean(earlier_p10)) if earlier_p10 else float("nan"),
                "newest_share": float(earlier_share[worst]) if worst is not None else float("nan"),
                "newest_share_neutral": (
                    float(figures["per_task_newest_share_neutral"][worst]) if worst is not None else float("nan")
                ),
            }
            for name, value in series.items():
                self.matrix.record_scalar(f"unified_{direction}_{name}", t, float(value))

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
