"""Evaluation of a continual state: ranked-list mAP and the unified mixed-length score.

The per-task matrices R[t, i] use :func:`pbeh.metrics.map_at_k` on query codes (current length) against the stored
database codes of task ``i`` (their own length; compared on the common prefix). The *unified* score ranks every
stored code of every seen task in one :class:`~pbeh.index.TruncatedHammingIndex` (mixed lengths, the index's
cross-length score policy) and is computed here from the index's ranked ids.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LabelTable", "chance_level", "map_of_ranking"]


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
