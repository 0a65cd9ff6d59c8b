"""Average precision of Hamming ranking: :func:`average_precision_per_query` (reference and tie-averaged AP@k) and
:func:`map_at_k`, its mean over queries."""

from __future__ import annotations

import numpy as np

from .._validation import check_choice, check_optional_positive_int
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

#: entries of the hypergeometric grid evaluated at once for ties="average" with a finite k.
_GRID_ENTRIES = 1 << 20


def _harmonic(n: int) -> np.ndarray:
    """Harmonic numbers ``H[0..n]`` (``H[0] = 0``)."""
    out = np.zeros(n + 1, dtype=np.float64)
    np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.float64), out=out[1:])
    return out


def _ap_reference(dist: np.ndarray, rel: np.ndarray, k: int) -> np.ndarray:
    """Reference AP@k per query: mean of (rank among relevant) / position over the relevant items in the top k."""
    out = np.zeros(dist.shape[0])
    for i, ranked in enumerate(_sorted_relevance(dist, rel, k)):
        positions = np.flatnonzero(ranked) + 1.0
        if positions.size:
            out[i] = np.mean(np.arange(1, positions.size + 1) / positions)
    return out


def _group_sums(
    n: np.ndarray, r: np.ndarray, before: np.ndarray, rel_before: np.ndarray, harmonic: np.ndarray
) -> np.ndarray:
    """Expected sum of precisions of the relevant items of tie groups of ``n`` items (``r`` relevant) preceded by
    ``before`` items (``rel_before`` relevant), under a uniformly random order inside the group."""
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(n > 1, (r - 1.0) / (n - 1.0), 0.0)
        h = harmonic[(before + n).astype(np.int64)] - harmonic[before.astype(np.int64)]
        g = r * c + (r / n) * (rel_before + 1.0 - c * (before + 1.0)) * h
    return np.where(r > 0, g, 0.0)


def _ap_average(n_hist: np.ndarray, r_hist: np.ndarray, k: int, harmonic: np.ndarray) -> np.ndarray:
    """Tie-averaged AP@k per query from the distance histograms (see average_precision_per_query)."""
    n = n_hist.astype(np.float64)
    r = r_hist.astype(np.float64)
    n_db = int(n_hist[0].sum())
    cum_n = np.cumsum(n, axis=1)
    before, rel_before = cum_n - n, np.cumsum(r, axis=1) - r
    groups = _group_sums(n, r, before, rel_before, harmonic)
    if k >= n_db:
        total_rel = r.sum(axis=1)
        return np.divide(groups.sum(axis=1), total_rel, out=np.zeros(len(n)), where=total_rel > 0)

    rows = np.arange(len(n))
    boundary = np.argmax(cum_n > k, axis=1)  # the tie group that straddles position k
    full = np.arange(n.shape[1])[None, :] < boundary[:, None]
    full_sum = np.where(full, groups, 0.0).sum(axis=1)
    a = before[rows, boundary]  # items ranked before the boundary group
    b = rel_before[rows, boundary]  # relevant items among them
    size, n_rel = n[rows, boundary], r[rows, boundary]
    m = k - a  # positions of the boundary group inside the top k (0 <= m < size)
    y_lo = np.maximum(0.0, m - (size - n_rel))
    y_hi = np.minimum(m, n_rel)
    span = (y_hi - y_lo).astype(np.int64) + 1
    h_m = harmonic[(a + m).astype(np.int64)] - harmonic[a.astype(np.int64)]
    out = np.empty(len(n))
    step = max(1, _GRID_ENTRIES // max(1, int(span.max())))
    for s0 in range(0, len(n), step):
        sl = slice(s0, s0 + step)
        width = int(span[sl].max())
        j = np.arange(width, dtype=np.float64)[None, :]
        y = y_lo[sl, None] + j
        valid = j < span[sl, None]
        # Hypergeometric pmf of Y (relevant items among the m boundary positions), by the ratio recurrence
        # P(y) / P(y - 1) = (R - y + 1)(m - y + 1) / (y (n - R - m + y)), normalised at the end.
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.log((n_rel[sl, None] - y + 1) * (m[sl, None] - y + 1)) - np.log(
                y * (size[sl, None] - n_rel[sl, None] - m[sl, None] + y)
            )
        ratio = np.where(valid & (j > 0), ratio, 0.0)
        log_w = np.cumsum(ratio, axis=1)
        log_w = np.where(valid, log_w, -np.inf)
        w = np.exp(log_w - log_w.max(axis=1, keepdims=True))
        p = w / w.sum(axis=1, keepdims=True)
        retrieved = b[sl, None] + y  # relevant items in the top k
        inv = np.divide(1.0, retrieved, out=np.zeros_like(retrieved), where=retrieved > 0)
        mm = m[sl, None]
        c_y = np.divide(y - 1.0, mm - 1.0, out=np.zeros_like(y), where=mm > 1)
        s_y = (
            y * c_y
            + np.divide(y, mm, out=np.zeros_like(y), where=mm > 0)
            * (b[sl, None] + 1.0 - c_y * (a[sl, None] + 1.0))
            * h_m[sl, None]
        )
        out[sl] = full_sum[sl] * (p * inv).sum(axis=1) + (p * s_y * inv).sum(axis=1)
    return out


def average_precision_per_query(
    query_codes: Codes | np.ndarray,
    db_codes: Codes | np.ndarray,
    query_labels: np.ndarray | None = None,
    db_labels: np.ndarray | None = None,
    *,
    k: int | None = None,
    ties: str = "reference",
    relevance: np.ndarray | None = None,
    chunk_size: int | None = None,
) -> np.ndarray:
    """AP@k of every query, float64 ``(n_queries,)``; NaN for a query with no relevant item in the database.

    Arguments are those of :func:`map_at_k` (which averages this).

    Tie-averaged AP (``ties="average"``). For one query, let ``n_d`` items (``r_d`` relevant) lie at distance
    ``d``, ``A_d = sum_{e<d} n_e`` items (``B_d`` relevant) before that group, ``R`` relevant items in all, and
    ``H_j = 1 + 1/2 + ... + 1/j``. Under a uniformly random order inside the group, a position ``p`` of the group
    holds a relevant item with probability ``r/n`` and then has ``(p-1)(r-1)/(n-1)`` relevant items before it in the
    group on average, so the expected sum of the precisions of the group's relevant items is exactly::

        G_d = r c + (r / n) (B_d + 1 - c (A_d + 1)) (H_{A_d + n} - H_{A_d}),   c = (r - 1) / (n - 1)  (0 if n = 1)

    and with ``k = None`` (or ``k >= n_db``) the tie-averaged AP is ``sum_d G_d / R``. For a finite ``k`` the
    denominator (relevant items retrieved within k) is random too: with the boundary group ``d*`` straddling position
    ``k``, ``m = k - A_{d*}`` of its positions in the top k, and ``Y`` (its relevant items among them)
    hypergeometric, the exact expectation is::

        E[AP@k] = (sum_{d<d*} G_d) E[1 / (B_{d*} + Y)] + sum_y P(Y = y) S(y) / (B_{d*} + y)

    where ``S(y)`` is ``G`` for a group of ``m`` items with ``y`` relevant, and terms with ``B_{d*} + y = 0`` are 0.
    This costs O(L + min(k, r_{d*})) per query after the histograms; no sort. Without ties both rules agree.

    Example:
        >>> q = Codes.from_bool([[0, 0]])
        >>> db = Codes.from_bool([[1, 0], [0, 1], [0, 0]])  # distances 1, 1, 0
        >>> rel = [[True, False, False]]
        >>> average_precision_per_query(q, db, relevance=rel).tolist()  # order: item 2, item 0, item 1
        [0.5]
        >>> average_precision_per_query(q, db, relevance=rel, ties="average").tolist()  # (1/2 + 1/3) / 2
        [0.41666666666666663]
    """
    ties = check_choice(ties, "ties", _TIE_RULES, bracketed=False)
    k = check_optional_positive_int(k, "k")
    chunk_size = check_optional_positive_int(chunk_size, "chunk_size")
    problem = _prepare(query_codes, db_codes, query_labels, db_labels, relevance)
    k_eff = problem.n_db if k is None else min(k, problem.n_db)
    harmonic = _harmonic(problem.n_db) if ties == "average" else None
    out = np.empty(problem.n_queries, dtype=np.float64)
    for start, stop, dist, rel in _iter_blocks(problem, chunk_size):
        if ties == "reference":
            ap = _ap_reference(dist, rel, k_eff)
            has_relevant = rel.any(axis=1)
        else:
            n_hist, r_hist = _histograms(dist, rel, problem.n_bits)
            ap = _ap_average(n_hist, r_hist, k_eff, harmonic)
            has_relevant = r_hist.sum(axis=1) > 0
        out[start:stop] = np.where(has_relevant, ap, np.nan)
    return out


def map_at_k(
    query_codes: Codes | np.ndarray,
    db_codes: Codes | np.ndarray,
    query_labels: np.ndarray | None = None,
    db_labels: np.ndarray | None = None,
    *,
    k: int | None = None,
    ties: str = "reference",
    relevance: np.ndarray | None = None,
    no_relevant: str = "zero",
    chunk_size: int | None = None,
) -> float:
    """Mean average precision of Hamming ranking, mAP@k (``k=None``: mAP@all).

    Args:
        query_codes: query codes, :class:`~pbeh.Codes` or an array of real/±1 values (binarised by sign, ``>= 0``
            is bit 1) or booleans (bits). Queries and database are compared on their common prefix.
        db_codes: database codes, same conventions.
        query_labels: multi-hot ``(n_queries, n_classes)`` (relevant = at least one shared class) or 1-D integer
            class ids (relevant = same class).
        db_labels: the database labels, same form as ``query_labels``.
        k: cut-off; ``None`` ranks the whole database. A ``k`` above the database size means the whole database.
        ties: ``"reference"`` (stable sort, ties in database order, bit-exact with the released reference code) or
            ``"average"`` (expected AP over random orders inside tie groups, computed without sorting).
        relevance: instead of labels, a boolean matrix ``(n_queries, n_db)``.
        no_relevant: queries with no relevant item in the whole database count as 0 (``"zero"``, the reference) or
            are left out of the mean (``"exclude"``; NaN if no query is left).
        chunk_size: queries per block; ``None`` sizes blocks to about four million (query, item) pairs.

    Returns:
        The mean over queries of AP@k as defined in the module docstring.

    Raises:
        ValueError: mismatched rows or label widths, labels and relevance both or neither given, an unknown option.
        TypeError: non-numeric inputs, a non-int ``k`` or ``chunk_size``.

    Example:
        >>> import numpy as np
        >>> q = Codes.from_bool([[0, 0, 0], [1, 1, 1]])
        >>> db = Codes.from_bool([[0, 0, 1], [1, 1, 1], [0, 1, 1]])
        >>> labels_q, labels_db = np.array([0, 1]), np.array([0, 1, 1])
        >>> map_at_k(q, db, labels_q, labels_db)
        1.0
        >>> round(map_at_k(q, db, labels_q, labels_db[::-1]), 4)  # the relevant item of query 0 now ranks 2nd
        0.6667
    """
    no_relevant = check_choice(no_relevant, "no_relevant", _NO_RELEVANT_RULES, bracketed=False)
    per_query = average_precision_per_query(
        query_codes, db_codes, query_labels, db_labels, k=k, ties=ties, relevance=relevance, chunk_size=chunk_size
    )
    return _reduce(per_query, no_relevant)
