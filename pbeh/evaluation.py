"""Evaluation of a continual state: the unified mixed-length ranking, tie-averaged, and what a user sees at its top.

The per-task matrices R[t, i] use :func:`pbeh.metrics.map_at_k` on query codes (current length) against the stored
database codes of task ``i`` (their own length; compared on the common prefix). The *unified* figures rank every
stored code of every seen task together, each at its own length, under the cross-length score policy of
:class:`~pbeh.index.TruncatedHammingIndex` (:func:`pbeh.index.score_distances`): that is what one index over the
whole stream returns. :func:`unified_metrics` computes them exactly by brute force over all stored codes.

**Ties.** Hamming scores tie in large groups. An index breaks ties by id, and an evaluation that did the same would
report figures that depend on the order in which items were stored (items stored grouped by class score far above
chance with constant codes). Every figure here is therefore, by default, tie-averaged (``ties="average"``): the
expectation over a uniformly random order inside each tie group, computed exactly from per-query histograms of the
score levels (no sampling, no sort). ``ties="reference"`` (stable order: database order inside ties) is kept for
parity with the released evaluation code only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from .codes import Codes
from .index import score_distances
from .metrics import _ap_average, _harmonic
from .metrics import expected_hits as expected_hits

__all__ = [
    "LabelTable",
    "UnifiedMetrics",
    "chance_level",
    "expected_hits",
    "map_of_ranking",
    "neutral_newest_share",
    "unified_metrics",
]

_TIES = ("average", "reference")
#: (query, item) pairs per block of the brute-force unified evaluation.
_BLOCK_PAIRS = 1 << 22


class LabelTable:
    """Multi-hot labels looked up by int64 item id (vectorised)."""

    def __init__(self, ids: np.ndarray, labels: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        labels = np.asarray(labels)
        if ids.ndim != 1 or labels.ndim != 2 or labels.shape[0] != ids.shape[0]:
            raise ValueError(f"ids, labels: expected shapes (n,) and (n, C), got {ids.shape} and {labels.shape}")
        order = np.argsort(ids, kind="stable")
        self._ids = ids[order]
        if np.any(self._ids[1:] == self._ids[:-1]):
            raise ValueError("ids: expected unique item ids")
        self._labels = labels[order].astype(np.float32)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Labels of ``ids`` (any shape); rows for id -1 (no result) are all zero."""
        ids = np.asarray(ids, dtype=np.int64)
        flat = ids.ravel()
        pos = np.clip(np.searchsorted(self._ids, flat), 0, len(self._ids) - 1)
        found = self._ids[pos] == flat
        if np.any(~found & (flat != -1)):
            missing = flat[~found & (flat != -1)][:5].tolist()
            raise KeyError(f"ids: no labels for item ids {missing}")
        out = self._labels[pos] * found[:, None]
        return out.reshape((*ids.shape, self._labels.shape[1]))


def map_of_ranking(ranked_ids: np.ndarray, query_labels: np.ndarray, table: LabelTable) -> float:
    """mAP of ranked result lists with the reference's normalisation.

    ``ranked_ids`` is ``(nq, k)`` best first (``-1`` = no result). Relevant = shares at least one label. AP of a query
    is the mean over the relevant retrieved items of (rank among relevant / position), i.e. normalised by the
    relevant items retrieved within k; a query with none counts as 0 and stays in the mean.
    """
    ranked_ids = np.asarray(ranked_ids)
    q = np.asarray(query_labels, dtype=np.float32)
    if ranked_ids.ndim != 2 or q.ndim != 2 or ranked_ids.shape[0] != q.shape[0]:
        raise ValueError(
            f"ranked_ids, query_labels: expected (nq, k) and (nq, C), got {ranked_ids.shape} and {q.shape}"
        )
    if ranked_ids.shape[0] == 0:
        return float("nan")
    relevant = np.einsum("qkc,qc->qk", table.lookup(ranked_ids), q) > 0
    hits = np.cumsum(relevant, axis=1)
    positions = np.arange(1, ranked_ids.shape[1] + 1)
    precision_at_hits = np.where(relevant, hits / positions, 0.0)
    n_rel = relevant.sum(axis=1)
    ap = np.divide(precision_at_hits.sum(axis=1), n_rel, out=np.zeros(len(n_rel)), where=n_rel > 0)
    return float(ap.mean())


def chance_level(query_labels: np.ndarray, db_labels: np.ndarray) -> float:
    """Expected mAP of a random ranking: the mean fraction of relevant database items per query."""
    q = np.asarray(query_labels, dtype=np.float32)
    d = np.asarray(db_labels, dtype=np.float32)
    if len(q) == 0 or len(d) == 0:
        return float("nan")
    relevant = (q @ d.T) > 0
    return float(relevant.mean(axis=1).mean())


@dataclasses.dataclass(frozen=True)
class UnifiedMetrics:
    """Figures of one direction (say image queries against stored text codes) in the unified ranking.

    All per-query figures are tie-averaged unless ``ties == "reference"``. ``per_task_*`` lists are indexed by the
    query's task (the order of the stored tasks).

    Attributes:
        map_all: mAP over the whole ranking (every stored code of every task), queries without a relevant item count
            as 0 (the reference's rule).
        map_at_100: mAP@100 (AP normalised by the relevant items retrieved within the top 100, as the reference).
        p_at_10: precision of the top 10.
        per_task_map_all, per_task_map_at_100, per_task_p_at_10: the same, per query task.
        per_task_newest_share: share of the top 10 that comes from the newest stored task (for the newest task's own
            queries this is their own task).
        per_task_newest_share_neutral: the newest task's share a ranking with the same relevant hits in the top 10
            would give if it preferred no stored task: relevant hits drawn in proportion from the relevant stored
            items, the other hits from the others (:func:`neutral_newest_share`). A share above it is a pull toward
            the newest task; a share at or below it is not, however high it looks (an old query that finds few
            relevant items fills its top 10 with other items, and the newest task holds its part of those).
        per_task_own_share: share of the top 10 that comes from the query's own task.
        chance: mean fraction of relevant stored items per query (the mAP of a random ranking).
        ties: the tie rule used.
    """

    map_all: float
    map_at_100: float
    p_at_10: float
    per_task_map_all: list[float]
    per_task_map_at_100: list[float]
    per_task_p_at_10: list[float]
    per_task_newest_share: list[float]
    per_task_newest_share_neutral: list[float]
    per_task_own_share: list[float]
    chance: float
    ties: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_unified_inputs(
    query_codes: Codes, query_labels: Any, query_tasks: Any, db_codes: Sequence[Codes], db_labels: Sequence[Any]
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    if not isinstance(query_codes, Codes):
        raise TypeError(f"query_codes: expected pbeh.Codes, got {type(query_codes).__name__}")
    q_labels = np.asarray(query_labels, dtype=np.float32)
    q_tasks = np.asarray(query_tasks, dtype=np.int64)
    if q_labels.ndim != 2 or len(q_labels) != len(query_codes):
        raise ValueError(
            f"query_labels: expected multi-hot labels ({len(query_codes)}, n_classes), got shape {q_labels.shape}"
        )
    if q_tasks.shape != (len(query_codes),):
        raise ValueError(f"query_tasks: expected shape ({len(query_codes)},), got {q_tasks.shape}")
    if len(db_codes) != len(db_labels) or not len(db_codes):
        raise ValueError(
            f"db_codes, db_labels: expected one (codes, labels) pair per stored task (at least one), got "
            f"{len(db_codes)} and {len(db_labels)}"
        )
    labels = []
    for s, (codes, lab) in enumerate(zip(db_codes, db_labels, strict=True)):
        if not isinstance(codes, Codes):
            raise TypeError(f"db_codes[{s}]: expected pbeh.Codes, got {type(codes).__name__}")
        lab = np.asarray(lab, dtype=np.float32)
        if lab.shape != (len(codes), q_labels.shape[1]):
            raise ValueError(f"db_labels[{s}]: expected shape ({len(codes)}, {q_labels.shape[1]}), got {lab.shape}")
        labels.append(lab)
    if q_tasks.size and (q_tasks.min() < 0 or q_tasks.max() >= len(db_codes)):
        raise ValueError(
            f"query_tasks: expected task indices in [0, {len(db_codes)}), got {q_tasks.min()}..{q_tasks.max()}"
        )
    return q_labels, q_tasks, labels


def unified_metrics(
    query_codes: Codes,
    query_labels: np.ndarray,
    query_tasks: np.ndarray,
    db_codes: Sequence[Codes],
    db_labels: Sequence[np.ndarray],
    *,
    score: str = "zscore",
    flip_probability: float = 0.2,
    ties: str = "average",
    db_ids: Sequence[np.ndarray] | None = None,
) -> UnifiedMetrics:
    """Rank every stored code of every task for every query, as one mixed-length index would, and measure it.

    Args:
        query_codes: all queries' codes (one length, the current model's).
        query_labels: their multi-hot labels ``(n_queries, n_classes)``; relevant = at least one shared label.
        query_tasks: the task index of each query (``0..len(db_codes) - 1``), for the per-task figures.
        db_codes: the stored codes of each task, each at its own length (a query meets them on the common prefix).
        db_labels: their labels, one array per task.
        score: the index's cross-length score policy (:func:`pbeh.index.score_distances`).
        flip_probability: the ``"llr"`` policy's parameter.
        ties: ``"average"`` (expected value over random order inside ties; pbeh's reported figures) or
            ``"reference"`` (ties keep database order, or ascending id order when ``db_ids`` is given, which is
            the order :class:`~pbeh.index.TruncatedHammingIndex` returns; for parity only).
        db_ids: the stored items' ids, one array per task (only used by ``ties="reference"``).

    Example:
        >>> q = Codes.from_bool([[0, 0, 0, 0]])
        >>> db = [Codes.from_bool([[0, 0, 0, 0], [1, 1, 1, 1]]), Codes.from_bool([[0, 0], [0, 0]])]
        >>> labels = [np.array([[1, 0], [0, 1]]), np.array([[0, 1], [0, 1]])]
        >>> m = unified_metrics(q, np.array([[1, 0]]), np.array([0]), db, labels)
        >>> m.map_all, m.p_at_10, m.per_task_newest_share[0]  # 4 stored items: 1 relevant (ranked 1st), 2 of task 1
        (1.0, 0.25, 0.5)
    """
    if ties not in _TIES:
        raise ValueError(f"ties: expected one of {_TIES}, got {ties!r}")
    q_labels, q_tasks, labels = _check_unified_inputs(query_codes, query_labels, query_tasks, db_codes, db_labels)
    n_db = sum(len(c) for c in db_codes)
    n_tasks = len(db_codes)
    nq = len(query_codes)
    if nq == 0 or n_db == 0:
        raise ValueError(f"query_codes, db_codes: expected at least one query and one stored item, got {nq} and {n_db}")
    # Score level of every (segment, distance): one shared descending order of all distinct scores.
    compared = [min(query_codes.n_bits, c.n_bits) for c in db_codes]
    tables = [score_distances(np.arange(c + 1), c, score, flip_probability=flip_probability) for c in compared]
    values = np.unique(np.concatenate(tables))[::-1]
    level_of = [np.searchsorted(-values, -t).astype(np.int64) for t in tables]
    n_levels = len(values)
    db_all_labels = np.concatenate(labels)
    db_task = np.concatenate([np.full(len(c), s, dtype=np.int64) for s, c in enumerate(db_codes)])
    queries = [query_codes.truncate(c) for c in compared]
    dbs = [codes.truncate(c) for codes, c in zip(db_codes, compared, strict=True)]
    harmonic = _harmonic(n_db)
    tie_order = None
    if ties == "reference" and db_ids is not None:
        all_ids = np.concatenate([np.asarray(i, dtype=np.int64) for i in db_ids])
        if all_ids.shape != (n_db,):
            raise ValueError(f"db_ids: expected {n_db} ids in all (one per stored code), got {all_ids.shape}")
        tie_order = np.argsort(all_ids, kind="stable")

    ap_all = np.zeros(nq)
    ap_100 = np.zeros(nq)
    p10 = np.zeros(nq)
    newest = np.zeros(nq)
    neutral = np.zeros(nq)
    own = np.zeros(nq)
    newest_mask = db_task == n_tasks - 1
    k10, k100 = min(10, n_db), min(100, n_db)
    rows_per_block = max(1, _BLOCK_PAIRS // n_db)
    for start in range(0, nq, rows_per_block):
        stop = min(nq, start + rows_per_block)
        level = np.concatenate([level_of[s][queries[s][start:stop].hamming(dbs[s])] for s in range(n_tasks)], axis=1)
        rel = (q_labels[start:stop] @ db_all_labels.T) > 0
        from_newest = np.broadcast_to(db_task == n_tasks - 1, rel.shape)
        from_own = db_task[None, :] == q_tasks[start:stop, None]
        if ties == "reference":
            if tie_order is None:
                order = np.argsort(level, axis=1, kind="stable")
            else:  # ties by ascending id: sort the id-ordered columns stably by level
                order = tie_order[np.argsort(level[:, tie_order], axis=1, kind="stable")]
            ranked_rel = np.take_along_axis(rel, order, axis=1)
            ap_all[start:stop] = _reference_ap(ranked_rel, n_db)
            ap_100[start:stop] = _reference_ap(ranked_rel, k100)
            p10[start:stop] = ranked_rel[:, :k10].sum(axis=1) / k10
            newest[start:stop] = np.take_along_axis(from_newest, order, axis=1)[:, :k10].sum(axis=1) / k10
            own[start:stop] = np.take_along_axis(from_own, order, axis=1)[:, :k10].sum(axis=1) / k10
            neutral[start:stop] = neutral_newest_share(p10[start:stop] * k10, rel, newest_mask, k10)
            continue
        n_hist = _level_histogram(level, np.ones_like(rel), n_levels)
        r_hist = _level_histogram(level, rel, n_levels)
        has_rel = r_hist.sum(axis=1) > 0
        ap_all[start:stop] = np.where(has_rel, _ap_average(n_hist, r_hist, n_db, harmonic), 0.0)
        ap_100[start:stop] = np.where(has_rel, _ap_average(n_hist, r_hist, k100, harmonic), 0.0)
        p10[start:stop] = expected_hits(n_hist, r_hist, k10) / k10
        newest[start:stop] = expected_hits(n_hist, _level_histogram(level, from_newest, n_levels), k10) / k10
        own[start:stop] = expected_hits(n_hist, _level_histogram(level, from_own, n_levels), k10) / k10
        neutral[start:stop] = neutral_newest_share(p10[start:stop] * k10, rel, newest_mask, k10)

    def per_task(values: np.ndarray) -> list[float]:
        return [float(values[q_tasks == t].mean()) if np.any(q_tasks == t) else float("nan") for t in range(n_tasks)]

    return UnifiedMetrics(
        map_all=float(ap_all.mean()),
        map_at_100=float(ap_100.mean()),
        p_at_10=float(p10.mean()),
        per_task_map_all=per_task(ap_all),
        per_task_map_at_100=per_task(ap_100),
        per_task_p_at_10=per_task(p10),
        per_task_newest_share=per_task(newest),
        per_task_newest_share_neutral=per_task(neutral),
        per_task_own_share=per_task(own),
        chance=chance_level(q_labels, db_all_labels),
        ties=ties,
    )


def neutral_newest_share(hits: Any, relevant: Any, newest: Any, k: int) -> np.ndarray:
    """The newest task's share of a top ``k`` holding ``hits`` relevant items, if the ranking preferred no task.

    Per query: ``(hits * R_new / R + (k - hits) * O_new / O) / k``, where ``R`` and ``O`` count the stored items
    relevant and not relevant to it and ``R_new``, ``O_new`` those of them stored by the newest task (a term whose
    count is 0 is 0). It is the expected share when the relevant hits are drawn uniformly from the relevant items and
    the rest from the others; ``hits`` may be an expectation (tie-averaged P@10 times ``k``), the formula being linear
    in it.

    Args:
        hits: ``(n_queries,)`` relevant items in each query's top ``k`` (a count or its expectation).
        relevant: ``(n_queries, n_stored)`` bool, which stored items are relevant to each query.
        newest: ``(n_stored,)`` bool, which stored items the newest task stored.
        k: the top's size (at most the number of stored items).

    Example:
        >>> relevant = np.array([[True, True, False, False, False, False]])
        >>> newest = np.array([False, False, False, False, True, True])  # the newest task holds 2 of the 4 others
        >>> neutral_newest_share(np.array([1.0]), relevant, newest, k=3).tolist()  # 2 other hits, half of them new
        [0.3333333333333333]
    """
    hits = np.asarray(hits, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    newest = np.asarray(newest, dtype=bool)
    n_rel = relevant.sum(axis=1)
    n_other = relevant.shape[1] - n_rel
    new_rel = (relevant & newest).sum(axis=1)
    new_other = int(newest.sum()) - new_rel
    from_rel = np.divide(hits * new_rel, n_rel, out=np.zeros_like(hits), where=n_rel > 0)
    from_other = np.divide((k - hits) * new_other, n_other, out=np.zeros_like(hits), where=n_other > 0)
    return (from_rel + from_other) / k


def _level_histogram(level: np.ndarray, marked: np.ndarray, n_levels: int) -> np.ndarray:
    """Per row, the count of marked items at each score level (int64 ``(rows, n_levels)``)."""
    rows = level.shape[0]
    key = level + (np.arange(rows, dtype=np.int64) * n_levels)[:, None]
    counts = np.bincount(key[np.asarray(marked, dtype=bool)], minlength=rows * n_levels)
    return counts.reshape(rows, n_levels)


def _reference_ap(ranked_rel: np.ndarray, k: int) -> np.ndarray:
    """The reference's AP@k of rankings given as relevance rows (best first)."""
    top = ranked_rel[:, :k]
    hits = np.cumsum(top, axis=1)
    precision = np.where(top, hits / np.arange(1, top.shape[1] + 1), 0.0)
    n_rel = top.sum(axis=1)
    return np.divide(precision.sum(axis=1), n_rel, out=np.zeros(len(top)), where=n_rel > 0)
