"""The Hamming-ranking problem shared by every metric: codes and labels checked, relevance (from labels or a
matrix) in blocks, exact prefix distances by XOR and popcount on 64-bit words, per-distance histograms, the reference
(stable sort) order, and the reduction over queries."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validation import to_numpy
from ..codes import Codes

logger = logging.getLogger(__name__)


#: (query, item) pairs per block when ``chunk_size`` is None.
_BLOCK_PAIRS = 1 << 22
#: (query, item) pairs per XOR/popcount tile (a cache-sized uint64 temporary).
_TILE_PAIRS = 1 << 16


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


def _sorted_relevance(dist: np.ndarray, rel: np.ndarray, k: int) -> Iterator[np.ndarray]:
    """Per query, the relevance in the reference order (stable ascending sort by distance), first ``k`` items.

    Row by row: the working set of one row stays in cache, which measured several times faster than sorting,
    gathering and scanning a whole 2-D block at once.
    """
    for d_row, r_row in zip(dist, rel, strict=True):
        order = np.argsort(d_row, kind="stable")  # a radix sort for these small unsigned ints
        yield r_row[order[:k]]


def _reduce(per_query: np.ndarray, no_relevant: str) -> float:
    if no_relevant == "zero":
        return float(np.nan_to_num(per_query, nan=0.0).mean())
    kept = per_query[~np.isnan(per_query)]
    if kept.size == 0:
        logger.warning("no query has a relevant item in the database; the metric is undefined (NaN)")
        return math.nan
    return float(kept.mean())
