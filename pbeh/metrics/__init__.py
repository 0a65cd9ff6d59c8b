"""Retrieval metrics for binary codes (mAP, precision, recall, PR curves) and continual-learning matrices.

Everything here is numpy only (no torch, no faiss), so users with their own codes can use it alone.

**Relevance.** A database item is relevant to a query when their multi-hot labels ``(n, n_classes)`` share at least
one class, when their 1-D integer class labels are equal, or as given by an explicit boolean ``relevance`` matrix
``(n_queries, n_db)``.

**Distances.** Hamming distances on the common prefix of the query and database codes (a 64-bit query against
32-bit database codes compares the first 32 bits, as truncated retrieval does). They are computed exactly by XOR and
popcount on 64-bit words; on the development machine (one thread) this measured 1.5-3x faster than the ±1 float32
BLAS matmul ``d = (L - q.b) / 2`` at 32 to 256 bits (``bench/map_bench.py`` prints both).

**Tie rules.** Hamming distances tie in large groups, so the ranking within a tie group must be fixed:

* ``ties="reference"``: the rule of the released PBEH/PIC-CMH/CASH evaluation code. Items are sorted by distance with
  a stable sort (ties keep database order); AP@k is the mean, over the relevant items within the top k, of
  (rank among the relevant items) / (position), i.e. it is normalised by the number of relevant items *retrieved*
  within k. A query with no relevant item in its top k scores 0 and stays in the mean.
* ``ties="average"``: the expectation of that same AP@k when the order inside every tie group is uniformly random.
  It needs no sort: per query, only the histogram of distances of all items (``n_d``) and of the relevant items
  (``r_d``), ``d = 0..L``, is used (O(N + L) per query after the distances). The formula is in
  :func:`average_precision_per_query`.

**Queries with no relevant item in the whole database** score 0 (``no_relevant="zero"``, the reference's rule) or
are left out of the mean (``no_relevant="exclude"``).

**Memory.** Queries are processed in blocks so that a block holds about four million (query, item) pairs, whatever
the database size (against 1,000,000 items the working memory measured about 40 MB, for any number of queries).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validation import check_choice, check_optional_positive_int, check_positive_int, check_real, to_numpy
from ..codes import Codes
from ..serialization import FormatError, atomic_write_bytes, read_json, write_json

__all__ = [
    "ContinualMatrix",
    "PRCurve",
    "average_precision_per_query",
    "expected_hits",
    "map_at_k",
    "pr_curve",
    "precision_at_k",
    "recall_at_k",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: (query, item) pairs per block when ``chunk_size`` is None.
_BLOCK_PAIRS = 1 << 22
#: (query, item) pairs per XOR/popcount tile (a cache-sized uint64 temporary).
_TILE_PAIRS = 1 << 16
#: entries of the hypergeometric grid evaluated at once for ties="average" with a finite k.
_GRID_ENTRIES = 1 << 20

_TIE_RULES = ("reference", "average")
_NO_RELEVANT_RULES = ("zero", "exclude")


# ====================================================================================================== validation
def _as_codes(values: Any, name: str) -> Codes:
    """``Codes`` pass through; boolean arrays are bits; real or ±1 arrays are binarised by sign (>= 0 is bit 1)."""
    if isinstance(values, Codes):
        return values
    arr = to_numpy(values, name)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected Codes or a 2-D array (n, n_bits), got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return Codes.from_bool(arr)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name}: expected Codes or a real-valued array, got dtype {arr.dtype}")
    if arr.size and np.all((arr == 0) | (arr == 1)) and np.any(arr == 0):
        # Binarising a 0/1 array by sign would make every bit 1: refuse the ambiguity.
        raise ValueError(
            f"{name}: got an array of 0s and 1s, which is ambiguous (signs would map 0 to +1); "
            "pass Codes.from_bool(array) for bits, or ±1 / real values for signs"
        )
    try:
        return Codes.from_signs(arr)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc


def _pack_words(bits: np.ndarray) -> np.ndarray:
    """Boolean ``(n, m)`` -> unsigned words ``(n_words, n)``, one contiguous row per word.

    The narrowest word that holds ``m`` bits is used (uint8 up to 8, ..., uint64 beyond 32 bits).
    """
    packed = np.packbits(bits, axis=1, bitorder="big")
    if packed.shape[1] > 4:
        return _packed_to_words(packed)
    dtype = {1: np.uint8, 2: np.uint16, 3: np.uint32, 4: np.uint32}[max(1, packed.shape[1])]
    width = np.dtype(dtype).itemsize
    padded = np.zeros((packed.shape[0], width), dtype=np.uint8)
    padded[:, : packed.shape[1]] = packed
    return np.ascontiguousarray(padded.view(dtype).T)


def _packed_to_words(packed: np.ndarray) -> np.ndarray:
    """Packed bytes ``(n, n_bytes)`` -> uint64 words ``(ceil(n_bytes / 8), n)``, zero padded."""
    n, n_bytes = packed.shape
    n_words = max(1, (n_bytes + 7) // 8)
    padded = np.zeros((n, n_words * 8), dtype=np.uint8)
    padded[:, :n_bytes] = packed
    # The byte order inside a word is irrelevant: XOR/AND then popcount or != 0 are invariant under it.
    return np.ascontiguousarray(padded.view(np.uint64).T)


class _Relevance:
    """Relevance of a block of queries against the whole database, from labels or a given matrix."""

    def __init__(self, kind: str, query: np.ndarray, db: np.ndarray | None) -> None:
        self.kind = kind  # "multi_hot" (uint64 label words), "class" (int64 ids) or "matrix" (bool)
        self.query = query
        self.db = db

    def block(self, start: int, stop: int) -> np.ndarray:
        if self.kind == "matrix":
            return self.query[start:stop]
        if self.kind == "class":
            return self.query[start:stop, None] == self.db[None, :]
        q, db = self.query[:, start:stop], self.db
        rows, n_db = stop - start, db.shape[1]
        out = np.empty((rows, n_db), dtype=bool)
        width = max(256, _TILE_PAIRS // rows)
        for c0 in range(0, n_db, width):
            c1 = min(n_db, c0 + width)
            both = np.empty((rows, c1 - c0), dtype=q.dtype)
            tile = out[:, c0:c1]
            np.not_equal(np.bitwise_and(q[0][:, None], db[0][None, c0:c1], out=both), 0, out=tile)
            for w in range(1, q.shape[0]):
                tile |= np.bitwise_and(q[w][:, None], db[w][None, c0:c1], out=both) != 0
        return out


def _labels_array(labels: Any, name: str) -> np.ndarray:
    arr = to_numpy(labels, name)
    if arr.ndim not in (1, 2):
        raise ValueError(
            f"{name}: expected 1-D class ids (n,) or 2-D multi-hot labels (n, n_classes), got shape {arr.shape}"
        )
    if not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name}: expected a numeric or boolean label array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return arr


def _prepare_relevance(query_labels: Any, db_labels: Any, relevance: Any, n_queries: int, n_db: int) -> _Relevance:
    if relevance is not None:
        if query_labels is not None or db_labels is not None:
            raise ValueError("relevance: give either relevance or query_labels and db_labels, not both")
        rel = to_numpy(relevance, "relevance")
        if rel.shape != (n_queries, n_db):
            raise ValueError(f"relevance: expected shape (n_queries, n_db) = ({n_queries}, {n_db}), got {rel.shape}")
        if rel.dtype != np.bool_:
            if not (np.issubdtype(rel.dtype, np.integer) or np.issubdtype(rel.dtype, np.floating)):
                raise TypeError(f"relevance: expected a boolean (or 0/1) matrix, got dtype {rel.dtype}")
            if rel.size and not np.all((rel == 0) | (rel == 1)):
                raise ValueError("relevance: expected only 0/1 or booleans")
            rel = rel.astype(bool)
        return _Relevance("matrix", np.ascontiguousarray(rel), None)
    if query_labels is None or db_labels is None:
        missing = [n for n, v in (("query_labels", query_labels), ("db_labels", db_labels)) if v is None]
        raise ValueError(
            f"{' and '.join(missing)}: required unless a relevance matrix is given "
            "(pass query_labels and db_labels, or relevance=)"
        )
    ql, dl = _labels_array(query_labels, "query_labels"), _labels_array(db_labels, "db_labels")
    if ql.ndim != dl.ndim:
        raise ValueError(
            f"query_labels, db_labels: expected both 1-D class ids or both 2-D multi-hot, got shapes {ql.shape} "
            f"and {dl.shape}"
        )
    if ql.shape[0] != n_queries:
        raise ValueError(f"query_labels: expected {n_queries} rows (one per query code), got {ql.shape[0]}")
    if dl.shape[0] != n_db:
        raise ValueError(f"db_labels: expected {n_db} rows (one per database code), got {dl.shape[0]}")
    if ql.ndim == 1:
        ids = []
        for arr, name in ((ql, "query_labels"), (dl, "db_labels")):
            if arr.dtype == np.bool_ or (np.issubdtype(arr.dtype, np.floating) and np.any(arr != np.round(arr))):
                raise TypeError(f"{name}: 1-D labels must be integer class ids, got dtype {arr.dtype}")
            ids.append(arr.astype(np.int64))
        return _Relevance("class", ids[0], ids[1])
    if ql.shape[1] != dl.shape[1]:
        raise ValueError(
            f"query_labels, db_labels: multi-hot widths differ ({ql.shape[1]} and {dl.shape[1]} classes); "
            "both must use the same global label space"
        )
    words = []
    for arr, name in ((ql, "query_labels"), (dl, "db_labels")):
        if arr.dtype != np.bool_:
            if arr.size and not np.all((arr == 0) | (arr == 1)):
                raise ValueError(f"{name}: multi-hot labels must be 0/1 or booleans")
            arr = arr != 0
        words.append(_pack_words(arr))
    return _Relevance("multi_hot", words[0], words[1])


@dataclass
class _Problem:
    n_bits: int  # the compared (common prefix) length
    query_words: np.ndarray  # uint64 (n_words, n_queries)
    db_words: np.ndarray  # uint64 (n_words, n_db)
    relevance: _Relevance

    @property
    def n_queries(self) -> int:
        return self.query_words.shape[1]

    @property
    def n_db(self) -> int:
        return self.db_words.shape[1]


def _prepare(query_codes: Any, db_codes: Any, query_labels: Any, db_labels: Any, relevance: Any) -> _Problem:
    q = _as_codes(query_codes, "query_codes")
    db = _as_codes(db_codes, "db_codes")
    if len(q) == 0:
        raise ValueError("query_codes: expected at least one query, got 0")
    if len(db) == 0:
        raise ValueError("db_codes: expected at least one database code, got 0")
    rel = _prepare_relevance(query_labels, db_labels, relevance, len(q), len(db))
    n_bits = min(q.n_bits, db.n_bits)
    if q.n_bits != db.n_bits:
        logger.debug("comparing %d-bit queries with %d-bit database codes on %d bits", q.n_bits, db.n_bits, n_bits)
    q_words = _packed_to_words(q.truncate(n_bits).packed)
    db_words = _packed_to_words(db.truncate(n_bits).packed)
    return _Problem(n_bits, q_words, db_words, rel)


# ====================================================================================================== kernels
def _popcount64(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x, out=out)
    from ..codes import popcount  # numpy < 2: table lookup on bytes

    out[...] = popcount(x.view(np.uint8)).reshape(*x.shape, 8).sum(axis=-1, dtype=out.dtype)
    return out


def _distance_dtype(n_bits: int) -> type:
    return np.uint8 if n_bits <= 255 else (np.uint16 if n_bits <= 65535 else np.uint32)


def _distances(problem: _Problem, start: int, stop: int) -> np.ndarray:
    """Exact Hamming distances of queries ``start:stop`` against the whole database, as small unsigned ints."""
    qw, dw = problem.query_words[:, start:stop], problem.db_words
    rows, n_db, n_words = stop - start, problem.n_db, qw.shape[0]
    out = np.empty((rows, n_db), dtype=_distance_dtype(problem.n_bits))
    width = min(n_db, max(256, _TILE_PAIRS // rows))
    xor_buffer = np.empty((rows, width), dtype=np.uint64)
    count_buffer = np.empty((rows, width), dtype=np.uint8)
    for c0 in range(0, n_db, width):
        c1 = min(n_db, c0 + width)
        xor, count = xor_buffer[:, : c1 - c0], count_buffer[:, : c1 - c0]
        tile = out[:, c0:c1]
        for w in range(n_words):
            np.bitwise_xor(qw[w][:, None], dw[w][None, c0:c1], out=xor)
            if w == 0 and out.dtype == np.uint8:
                _popcount64(xor, tile)
            elif w == 0:
                tile[...] = _popcount64(xor, count)
            else:
                tile += _popcount64(xor, count)
    return out


def _iter_blocks(problem: _Problem, chunk_size: int | None) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Yield ``(start, stop, distances, relevance)`` for consecutive blocks of queries."""
    rows = chunk_size if chunk_size is not None else max(1, _BLOCK_PAIRS // problem.n_db)
    rows = min(rows, problem.n_queries)
    for start in range(0, problem.n_queries, rows):
        stop = min(problem.n_queries, start + rows)
        yield start, stop, _distances(problem, start, stop), problem.relevance.block(start, stop)


def _histograms(dist: np.ndarray, rel: np.ndarray, n_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query counts of all items and of relevant items at each distance ``0..n_bits`` (two int64 arrays)."""
    n_levels = n_bits + 1
    key_dtype = np.uint8 if 2 * n_levels <= 256 else (np.uint16 if 2 * n_levels <= 65536 else np.uint32)
    key = dist.astype(key_dtype, copy=True)
    key *= key_dtype(2)
    key += rel  # key = 2 * distance + relevant
    hist = np.empty((dist.shape[0], 2 * n_levels), dtype=np.int64)
    for i in range(dist.shape[0]):
        hist[i] = np.bincount(key[i], minlength=2 * n_levels)
    hist = hist.reshape(dist.shape[0], n_levels, 2)
    relevant = hist[:, :, 1]
    return hist[:, :, 0] + relevant, np.ascontiguousarray(relevant)


def _harmonic(n: int) -> np.ndarray:
    """Harmonic numbers ``H[0..n]`` (``H[0] = 0``)."""
    out = np.zeros(n + 1, dtype=np.float64)
    np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.float64), out=out[1:])
    return out


def _sorted_relevance(dist: np.ndarray, rel: np.ndarray, k: int) -> Iterator[np.ndarray]:
    """Per query, the relevance in the reference order (stable ascending sort by distance), first ``k`` items.

    Row by row: the working set of one row stays in cache, which measured several times faster than sorting,
    gathering and scanning a whole 2-D block at once.
    """
    for d_row, r_row in zip(dist, rel, strict=True):
        order = np.argsort(d_row, kind="stable")  # a radix sort for these small unsigned ints
        yield r_row[order[:k]]


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


# ====================================================================================================== public API
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


def _reduce(per_query: np.ndarray, no_relevant: str) -> float:
    if no_relevant == "zero":
        return float(np.nan_to_num(per_query, nan=0.0).mean())
    kept = per_query[~np.isnan(per_query)]
    if kept.size == 0:
        logger.warning("no query has a relevant item in the database; the metric is undefined (NaN)")
        return math.nan
    return float(kept.mean())


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


# ====================================================================================================== continual
_FORMAT_KIND = "pbeh.continual_matrix"
_FORMAT_VERSION = 1


def _check_index(value: Any, name: str, upper: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int task index, got {type(value).__name__}")
    if not 0 <= value < upper:
        raise ValueError(f"{name}: expected a task index in 0..{upper - 1}, got {value}")
    return int(value)


def _check_value(value: Any, name: str, *, allow_nan: bool = False) -> float:
    value = check_real(value, name)
    if math.isnan(value) and allow_nan:
        return value
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return value


def _json_list(values: np.ndarray) -> list:
    return [None if math.isnan(v) else float(v) for v in values.tolist()]


class ContinualMatrix:
    """Per-task retrieval results of a continual run, with BWT and forgetting.

    ``R[t, i]`` is the score (e.g. mAP@1000) after training task ``t`` of query set ``i`` against database ``i``,
    for ``i <= t``, one matrix per direction (``"i2t"``, ``"t2i"``). Unfilled entries are NaN. Tasks are 0-based.
    Extra per-task scalar series (``"unified_i2t"``, ``"prefix_drift"``, ``"n_bits"``, ...) are kept beside.

    Definitions, over the rows evaluated so far (``t_last`` = the last complete row, i.e. with every ``i <= t``):

    * row mean: mean of ``R[t, 0..t]`` (NaN for an incomplete row);
    * BWT (Lopez-Paz & Ranzato): ``1/t_last * sum_{i < t_last} (R[t_last, i] - R[i, i])``; negative = forgetting;
    * forgetting (CODA-Prompt): ``1/t_last * sum_{t=1}^{t_last} (1/t) sum_{i<t} (R[t-1, i] - R[t, i])``;
      positive = forgetting.

    Both are None when undefined (fewer than two tasks evaluated, or a needed entry missing).

    Example:
        >>> m = ContinualMatrix(2)
        >>> m.record(0, 0, "i2t", 0.8)
        >>> m.record(1, 0, "i2t", 0.6)
        >>> m.record(1, 1, "i2t", 0.7)
        >>> round(m.bwt("i2t"), 6), round(m.forgetting("i2t"), 6), round(m.final_mean("i2t"), 6)
        (-0.2, 0.2, 0.65)
    """

    def __init__(self, n_tasks: int, *, directions: Sequence[str] = ("i2t", "t2i")) -> None:
        self.n_tasks = check_positive_int(n_tasks, "n_tasks")
        if isinstance(directions, str) or not isinstance(directions, Sequence):
            raise TypeError(f"directions: expected a sequence of names such as ('i2t', 't2i'), got {directions!r}")
        names = tuple(directions)
        if not names:
            raise ValueError("directions: expected at least one direction name, got none")
        for d in names:
            if not isinstance(d, str) or not d:
                raise ValueError(f"directions: expected non-empty strings, got {d!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"directions: expected distinct names, got {names}")
        self.directions: tuple[str, ...] = names
        self._matrices = {d: np.full((self.n_tasks, self.n_tasks), np.nan) for d in names}
        self._scalars: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ recording
    def _check_direction(self, direction: Any) -> str:
        return check_choice(direction, "direction", self.directions, bracketed=False)

    def record(self, t: int, i: int, direction: str, value: float) -> None:
        """Set ``R[t, i]`` of ``direction`` (after training task ``t``, query/database set ``i <= t``)."""
        direction = self._check_direction(direction)
        t = _check_index(t, "t", self.n_tasks)
        i = _check_index(i, "i", self.n_tasks)
        if i > t:
            raise ValueError(f"i: task {i} is evaluated only after it is trained, so i <= t is required (t={t})")
        self._matrices[direction][t, i] = _check_value(value, "value")

    def record_scalar(self, name: str, t: int, value: float) -> None:
        """Set the per-task scalar ``name`` (e.g. ``"unified_i2t"``, ``"prefix_drift"``) for task ``t``.

        NaN is accepted and means "undefined" (e.g. no prefix drift before the first extension); it is stored as
        ``null`` in JSON. Infinite values are rejected.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: expected a non-empty string, got {name!r}")
        t = _check_index(t, "t", self.n_tasks)
        series = self._scalars.setdefault(name, np.full(self.n_tasks, np.nan))
        series[t] = _check_value(value, "value", allow_nan=True)

    @property
    def scalars(self) -> dict[str, np.ndarray]:
        """Copies of the scalar series, ``name -> float64 (n_tasks,)`` with NaN where not recorded."""
        return {name: series.copy() for name, series in self._scalars.items()}

    # ------------------------------------------------------------------ summaries
    def matrix(self, direction: str) -> np.ndarray:
        """A copy of ``R`` for ``direction``, float64 ``(n_tasks, n_tasks)``, NaN where not filled."""
        return self._matrices[self._check_direction(direction)].copy()

    def row_means(self, direction: str) -> np.ndarray:
        """Mean of ``R[t, 0..t]`` for every ``t``; NaN for a row with a missing entry."""
        r = self._matrices[self._check_direction(direction)]
        out = np.full(self.n_tasks, np.nan)
        for t in range(self.n_tasks):
            row = r[t, : t + 1]
            if not np.isnan(row).any():
                out[t] = row.mean()
        return out

    def _last_complete_row(self, direction: str) -> int | None:
        complete = np.flatnonzero(~np.isnan(self.row_means(direction)))
        return int(complete[-1]) if complete.size else None

    def final_mean(self, direction: str) -> float | None:
        """Row mean of the last complete row (the usual headline number); None if no row is complete."""
        t = self._last_complete_row(direction)
        return None if t is None else float(self.row_means(direction)[t])

    def bwt(self, direction: str) -> float | None:
        """Backward transfer ``1/t_last * sum_{i<t_last} (R[t_last, i] - R[i, i])``; None when undefined."""
        t = self._last_complete_row(direction)
        if t is None or t < 1:
            return None
        r = self._matrices[direction]
        diag = np.diag(r)[:t]
        if np.isnan(diag).any():
            return None
        return float(np.mean(r[t, :t] - diag))

    def forgetting(self, direction: str) -> float | None:
        """CODA-Prompt forgetting over rows ``0..t_last`` (all must be complete); None when undefined."""
        t_last = self._last_complete_row(direction)
        if t_last is None or t_last < 1:
            return None
        if np.isnan(self.row_means(direction)[: t_last + 1]).any():
            return None
        r = self._matrices[direction]
        per_step = [float(np.mean(r[t - 1, :t] - r[t, :t])) for t in range(1, t_last + 1)]
        return float(np.mean(per_step))

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (NaN becomes ``None``)."""
        return {
            "kind": _FORMAT_KIND,
            "format_version": _FORMAT_VERSION,
            "n_tasks": self.n_tasks,
            "directions": list(self.directions),
            "matrices": {d: [_json_list(row) for row in self._matrices[d]] for d in self.directions},
            "scalars": {name: _json_list(series) for name, series in self._scalars.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContinualMatrix:
        """Rebuild from :meth:`to_dict` output; raises :class:`~pbeh.serialization.FormatError` if malformed."""
        if not isinstance(data, Mapping):
            raise FormatError(f"data: expected a dict from ContinualMatrix.to_dict, got {type(data).__name__}")
        if data.get("kind") != _FORMAT_KIND:
            raise FormatError(f"data: expected kind {_FORMAT_KIND!r}, got {data.get('kind')!r}")
        if data.get("format_version") != _FORMAT_VERSION:
            raise FormatError(
                f"data: this pbeh reads ContinualMatrix format_version {_FORMAT_VERSION}, "
                f"got {data.get('format_version')!r}"
            )
        # Bound what the file may ask to allocate by what it holds: n_tasks rows must be present in the matrices.
        n_claimed, held = data.get("n_tasks"), data.get("matrices")
        if isinstance(n_claimed, int) and isinstance(held, Mapping):
            rows = max((len(v) for v in held.values() if isinstance(v, list)), default=0)
            if n_claimed > rows:
                raise FormatError(f"data: n_tasks is {n_claimed} but the matrices hold {rows} rows")
        directions = data.get("directions")
        if isinstance(directions, list) and len(directions) > 16:
            raise FormatError(f"data: 'directions' must list at most 16 directions, got {len(directions)}")
        try:
            out = cls(data["n_tasks"], directions=data["directions"])
        except KeyError as exc:
            raise FormatError(f"data: missing key {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise FormatError(f"data: {exc}") from exc
        matrices, scalars = data.get("matrices"), data.get("scalars", {})
        if not isinstance(matrices, Mapping) or set(matrices) != set(out.directions):
            raise FormatError(f"data: 'matrices' must hold exactly the directions {list(out.directions)}")
        if not isinstance(scalars, Mapping):
            raise FormatError("data: 'scalars' must be a dict of per-task lists")
        n = out.n_tasks
        for d in out.directions:
            rows = matrices[d]
            square = isinstance(rows, list) and len(rows) == n
            if not square or any(not isinstance(x, list) or len(x) != n for x in rows):
                raise FormatError(f"data: matrix {d!r} must be a {n}x{n} list of lists")
            for t, row in enumerate(rows):
                for i, value in enumerate(row):
                    if value is None:
                        continue
                    if i > t:
                        raise FormatError(f"data: matrix {d!r} has a value above the diagonal at [{t}, {i}]")
                    try:
                        out.record(t, i, d, value)
                    except (TypeError, ValueError) as exc:
                        raise FormatError(f"data: matrix {d!r} [{t}, {i}]: {exc}") from exc
        for name, series in scalars.items():
            if not isinstance(series, list) or len(series) != n:
                raise FormatError(f"data: scalar {name!r} must be a list of {n} values")
            for t, value in enumerate(series):
                if value is None:
                    continue
                try:
                    out.record_scalar(name, t, value)
                except (TypeError, ValueError) as exc:
                    raise FormatError(f"data: scalar {name!r} [{t}]: {exc}") from exc
            out._scalars.setdefault(name, np.full(n, np.nan))
        return out

    def save_json(self, path: PathLike) -> None:
        """Write :meth:`to_dict` as JSON, atomically."""
        write_json(path, self.to_dict())

    @classmethod
    def load_json(cls, path: PathLike) -> ContinualMatrix:
        """Read a file written by :meth:`save_json`."""
        return cls.from_dict(read_json(path, what="continual matrix JSON"))

    def to_csv(self, path: PathLike | None = None) -> str:
        """CSV text, one row per (direction, t): ``direction, t, task_0 .. task_{T-1}, mean`` (empty = NaN).

        Written atomically to ``path`` when given; the text is returned either way.
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["direction", "t", *[f"task_{i}" for i in range(self.n_tasks)], "mean"])

        def cell(v: float) -> str:
            return "" if math.isnan(v) else repr(float(v))

        for d in self.directions:
            means = self.row_means(d)
            for t in range(self.n_tasks):
                writer.writerow([d, t, *[cell(v) for v in self._matrices[d][t]], cell(means[t])])
        text = buffer.getvalue()
        if path is not None:
            atomic_write_bytes(path, text.encode("utf-8"))
        return text

    def format_table(self, direction: str | None = None) -> str:
        """A plain-text table per direction (rows t, columns i, row means) with BWT and forgetting."""
        directions = self.directions if direction is None else (self._check_direction(direction),)

        def fmt(v: float | None) -> str:
            return "-" if v is None or math.isnan(v) else f"{v:.4f}"

        blocks = []
        for d in directions:
            header = ["after t"] + [f"i={i}" for i in range(self.n_tasks)] + ["mean"]
            rows = [header]
            means = self.row_means(d)
            for t in range(self.n_tasks):
                rows.append([str(t)] + [fmt(v) for v in self._matrices[d][t]] + [fmt(means[t])])
            widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
            lines = [f"{d}: R[t, i] after training task t, query set i against database i"]
            lines += ["  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
            summary = f"final mean {fmt(self.final_mean(d))}  BWT {fmt(self.bwt(d))}"
            lines.append(f"{summary}  forgetting {fmt(self.forgetting(d))}")
            blocks.append("\n".join(lines))
        if direction is None and self._scalars:
            names = sorted(self._scalars)
            width = max(len(n) for n in names)
            lines = ["scalars (per task t)"]
            for name in names:
                lines.append(name.ljust(width) + "  " + "  ".join(fmt(v) for v in self._scalars[name]))
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)

    def __repr__(self) -> str:
        return f"ContinualMatrix(n_tasks={self.n_tasks}, directions={self.directions})"
