"""Precision and recall at a cut-off (:func:`precision_at_k`, :func:`recall_at_k`, with :func:`expected_hits` for
tie-averaged counts) and over Hamming radii (:func:`pr_curve`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validation import check_choice, check_optional_positive_int, check_positive_int
from ..codes import Codes
from ._ranking import (
    _NO_RELEVANT_RULES,
    _TIE_RULES,
    _histograms,
    _iter_blocks,
    _prepare,
    _reduce,
    _sorted_relevance,
)

logger = logging.getLogger(__name__)


def expected_hits(n_hist: np.ndarray, r_hist: np.ndarray, k: int) -> np.ndarray:
    """Expected number of marked items among the first ``k`` of a ranking with ties in random order.

    ``n_hist[q, l]`` items (``r_hist[q, l]`` of them marked) sit at score level ``l`` (0 = best) for query ``q``.
    Levels better than the one straddling position ``k`` count fully; the straddling level contributes its
    hypergeometric mean ``(k - before) * r / n``. ``k`` is capped at the number of items.
    """
    n = np.asarray(n_hist, dtype=np.float64)
    r = np.asarray(r_hist, dtype=np.float64)
    total = n.sum(axis=1)
    k_eff = np.minimum(float(k), total)
    cum_n = np.cumsum(n, axis=1)
    cum_r = np.cumsum(r, axis=1)
    rows = np.arange(len(n))
    boundary = np.argmax(cum_n >= k_eff[:, None], axis=1)
    before = cum_n[rows, boundary] - n[rows, boundary]
    marked_before = cum_r[rows, boundary] - r[rows, boundary]
    size = n[rows, boundary]
    part = np.divide((k_eff - before) * r[rows, boundary], size, out=np.zeros(len(n)), where=size > 0)
    return marked_before + part


def _hits_at_k(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    k: Any,
    ties: str,
    relevance: Any,
    chunk_size: Any,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(relevant items within the top k, relevant items in the database) per query, and the effective k."""
    ties = check_choice(ties, "ties", _TIE_RULES, bracketed=False)
    k = check_positive_int(k, "k")
    chunk_size = check_optional_positive_int(chunk_size, "chunk_size")
    problem = _prepare(query_codes, db_codes, query_labels, db_labels, relevance)
    k_eff = min(k, problem.n_db)
    hits = np.empty(problem.n_queries, dtype=np.float64)
    total = np.empty(problem.n_queries, dtype=np.float64)
    for start, stop, dist, rel in _iter_blocks(problem, chunk_size):
        total[start:stop] = rel.sum(axis=1)
        if ties == "reference":
            hits[start:stop] = [np.count_nonzero(ranked) for ranked in _sorted_relevance(dist, rel, k_eff)]
            continue
        n_hist, r_hist = _histograms(dist, rel, problem.n_bits)
        hits[start:stop] = expected_hits(n_hist, r_hist, k_eff)
    return hits, total, k_eff


def precision_at_k(
    query_codes: Codes | np.ndarray,
    db_codes: Codes | np.ndarray,
    query_labels: np.ndarray | None = None,
    db_labels: np.ndarray | None = None,
    *,
    k: int,
    ties: str = "reference",
    relevance: np.ndarray | None = None,
    no_relevant: str = "zero",
    chunk_size: int | None = None,
) -> float:
    """Mean precision@k: relevant items among the first ``min(k, n_db)`` ranked items, divided by that number.

    Arguments as in :func:`map_at_k`; ``k`` is required. With ``ties="average"`` the count in the boundary tie group
    is its expectation under a random order (the hypergeometric mean).

    Example:
        >>> q = Codes.from_bool([[0, 0]])
        >>> db = Codes.from_bool([[0, 1], [1, 0], [1, 1]])  # distances 1, 1, 2
        >>> precision_at_k(q, db, relevance=[[False, True, True]], k=1)
        0.0
        >>> precision_at_k(q, db, relevance=[[False, True, True]], k=1, ties="average")
        0.5
    """
    no_relevant = check_choice(no_relevant, "no_relevant", _NO_RELEVANT_RULES, bracketed=False)
    hits, total, k_eff = _hits_at_k(query_codes, db_codes, query_labels, db_labels, k, ties, relevance, chunk_size)
    return _reduce(np.where(total > 0, hits / k_eff, np.nan), no_relevant)


def recall_at_k(
    query_codes: Codes | np.ndarray,
    db_codes: Codes | np.ndarray,
    query_labels: np.ndarray | None = None,
    db_labels: np.ndarray | None = None,
    *,
    k: int,
    ties: str = "reference",
    relevance: np.ndarray | None = None,
    no_relevant: str = "zero",
    chunk_size: int | None = None,
) -> float:
    """Mean recall@k: relevant items among the first ``k`` ranked items over all relevant items of the query.

    Arguments as in :func:`precision_at_k`.

    Example:
        >>> q = Codes.from_bool([[0, 0]])
        >>> db = Codes.from_bool([[0, 1], [1, 0], [1, 1]])
        >>> recall_at_k(q, db, relevance=[[True, False, True]], k=2)
        0.5
    """
    no_relevant = check_choice(no_relevant, "no_relevant", _NO_RELEVANT_RULES, bracketed=False)
    hits, total, _ = _hits_at_k(query_codes, db_codes, query_labels, db_labels, k, ties, relevance, chunk_size)
    return _reduce(np.divide(hits, total, out=np.full(len(total), np.nan), where=total > 0), no_relevant)


@dataclass(frozen=True)
class PRCurve:
    """Precision and recall of Hamming-radius retrieval at every radius ``0..n_bits``.

    Attributes:
        radius: ``int64 (n_bits + 1,)``, the radii 0, 1, ..., n_bits.
        precision: mean over queries that retrieve at least one item within the radius of (relevant retrieved) /
            (retrieved); NaN at a radius where no query retrieves anything.
        recall: mean over queries of (relevant retrieved) / (relevant in the database).
        n_bits: the compared code length.
    """

    radius: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    n_bits: int


def pr_curve(
    query_codes: Codes | np.ndarray,
    db_codes: Codes | np.ndarray,
    query_labels: np.ndarray | None = None,
    db_labels: np.ndarray | None = None,
    *,
    relevance: np.ndarray | None = None,
    no_relevant: str = "zero",
    chunk_size: int | None = None,
) -> PRCurve:
    """The standard hashing PR curve: retrieve every item within Hamming radius ``r``, for ``r = 0..n_bits``.

    Arguments as in :func:`map_at_k`. Queries with no relevant item in the database have recall 0 and precision 0
    (``no_relevant="zero"``) or are left out of both means (``"exclude"``). Ties need no rule: a radius retrieves a
    whole tie group or none of it.

    Example:
        >>> q = Codes.from_bool([[0, 0]])
        >>> db = Codes.from_bool([[0, 0], [0, 1], [1, 1]])  # distances 0, 1, 2
        >>> curve = pr_curve(q, db, relevance=[[True, False, True]])
        >>> curve.precision.tolist(), curve.recall.tolist()
        ([1.0, 0.5, 0.6666666666666666], [0.5, 0.5, 1.0])
    """
    no_relevant = check_choice(no_relevant, "no_relevant", _NO_RELEVANT_RULES, bracketed=False)
    chunk_size = check_optional_positive_int(chunk_size, "chunk_size")
    problem = _prepare(query_codes, db_codes, query_labels, db_labels, relevance)
    n_levels = problem.n_bits + 1
    precision_sum = np.zeros(n_levels)
    precision_count = np.zeros(n_levels)
    recall_sum = np.zeros(n_levels)
    n_kept = 0
    for _, _, dist, rel in _iter_blocks(problem, chunk_size):
        n_hist, r_hist = _histograms(dist, rel, problem.n_bits)
        total = r_hist.sum(axis=1)
        if no_relevant == "exclude":
            n_hist, r_hist, total = n_hist[total > 0], r_hist[total > 0], total[total > 0]
        n_kept += len(total)
        retrieved = np.cumsum(n_hist, axis=1).astype(np.float64)
        hits = np.cumsum(r_hist, axis=1).astype(np.float64)
        precision_sum += np.divide(hits, retrieved, out=np.zeros_like(hits), where=retrieved > 0).sum(axis=0)
        precision_count += (retrieved > 0).sum(axis=0)
        recall_sum += np.divide(hits, total[:, None], out=np.zeros_like(hits), where=total[:, None] > 0).sum(axis=0)
    if n_kept == 0:
        logger.warning("no query has a relevant item in the database; the PR curve is undefined (NaN)")
    precision = np.divide(precision_sum, precision_count, out=np.full(n_levels, np.nan), where=precision_count > 0)
    recall = recall_sum / n_kept if n_kept else np.full(n_levels, np.nan)
    return PRCurve(np.arange(n_levels, dtype=np.int64), precision, recall, problem.n_bits)
