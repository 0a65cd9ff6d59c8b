"""TruncatedHammingIndex: the backend-independent part (ids, validation, cross-length merge, files)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from .. import _faiss
from .._validation import check_bool, check_choice, check_codes, check_in_interval, check_int, check_positive_int
from ..codes import Codes
from . import _files
from ._backends import Backend, resolve_backend
from ._flat import TruncationCache, truncate_padded
from ._scoring import (
    FILL_DISTANCE,
    FILL_ID,
    FILL_N_BITS,
    FILL_SCORE,
    INT64_MAX,
    SCORE_POLICIES,
    SearchResult,
    as_id_array,
    first_duplicates,
    score_distances,
)

__all__ = ["DEFAULT_CACHE_BYTES", "TruncatedHammingIndex"]

_logger = logging.getLogger(__name__)

#: Default bound of the truncated-copy cache (bytes); see :class:`TruncatedHammingIndex`.
DEFAULT_CACHE_BYTES = 1 << 30

# Queries are searched in blocks of at most this many (query, candidate) pairs, so that searching many queries for a
# large k does not build multi-gigabyte merge arrays.
_CANDIDATES_PER_BLOCK = 1 << 22
# A single query with at most this many candidates (k x segments) is merged in Python lists (_search_one).
_ONE_QUERY_CANDIDATES = 1024


class TruncatedHammingIndex:
    """Hamming search over stored codes of several lengths, with explicit int64 ids.

    Each stored code is compared with a query on their common prefix, ``min(query bits, stored bits)`` bits, and the
    results of all lengths are ranked together by a cross-length ``score`` policy (see :mod:`pbeh.index`):
    ``"hamming"``, ``"normalized"``, ``"zscore"`` (default) or ``"llr"``. Scores are larger = better.

    Args:
        score: the default score policy of :meth:`search`.
        threads: faiss OpenMP threads used during a search (restored afterwards). Keep 1 on shared machines.
        flip_probability: ``p`` of the ``"llr"`` policy, the assumed per-bit disagreement of related codes, in
            ``(0, 0.5)``.
        backend: where the codes live and how a segment is searched: ``"flat"`` (default; exact, in memory),
            ``"ivf"`` or an :class:`~pbeh.index.IVFBackend` (approximate inverted lists for large segments, exact
            flat scan for the rest), or a :class:`~pbeh.index.MilvusBackend` (a Milvus Lite file or a Milvus
            server/cluster; exact on ``BIN_FLAT``). Everything else about the index is the same.
        cache_bytes: bound (bytes) of the truncated copies kept for queries shorter than the stored codes; ``0``
            keeps none (each such search truncates on the fly, one chunk at a time).

    Example:
        >>> import numpy as np
        >>> index = TruncatedHammingIndex()
        >>> rng = np.random.default_rng(0)
        >>> short = Codes.from_bool(rng.random((3, 16)) < 0.5)
        >>> long = Codes.from_bool(rng.random((2, 32)) < 0.5)
        >>> index.add(short).tolist(), index.add(long, ids=[10, 11]).tolist()
        ([0, 1, 2], [10, 11])
        >>> index.segments
        [(16, 3), (32, 2)]
        >>> result = index.search(long, k=2)
        >>> result.ids[:, 0].tolist(), result.distances[:, 0].tolist(), result.n_bits_compared[:, 0].tolist()
        ([10, 11], [0, 0], [32, 32])
    """

    def __init__(
        self,
        *,
        score: str = "zscore",
        threads: int = 1,
        flip_probability: float = 0.2,
        backend: str | Backend = "flat",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self._score = check_choice(score, "score", SCORE_POLICIES, bracketed=False)
        self._threads = check_positive_int(threads, "threads")
        self._flip_probability = check_in_interval(flip_probability, "flip_probability", 0, 0.5)
        self._backend = resolve_backend(backend)
        self._cache = TruncationCache(check_int(cache_bytes, "cache_bytes", minimum=0))
        self._segments: dict[int, Any] = self._backend.open_segments(self._cache)
        self._tables: dict[tuple[str, tuple[int, ...]], tuple[list, list, tuple]] = {}
        self._plans: dict[tuple[str, int], tuple[list, tuple[int, ...], list, list, tuple, tuple]] = {}  # _plan
        self._next_id = max((int(seg.ids()[-1]) + 1 for seg in self._segments.values() if len(seg)), default=0)

    # ------------------------------------------------------------------ info
    @property
    def score(self) -> str:
        """The default score policy of :meth:`search`."""
        return self._score

    @property
    def threads(self) -> int:
        """faiss OpenMP threads used during a search."""
        return self._threads

    @property
    def flip_probability(self) -> float:
        """``p`` of the ``"llr"`` policy."""
        return self._flip_probability

    @property
    def backend(self) -> Backend:
        """The storage and search backend (see the class docstring)."""
        return self._backend

    @property
    def cache_bytes(self) -> int:
        """The bound of the truncated-copy cache, in bytes."""
        return self._cache.max_bytes

    @property
    def cached_bytes(self) -> int:
        """Bytes held by truncated copies right now (at most :attr:`cache_bytes`)."""
        return self._cache.n_bytes

    @property
    def next_id(self) -> int:
        """The first id :meth:`add` assigns when called without ids (one past the largest id ever added)."""
        return self._next_id

    @property
    def segments(self) -> list[tuple[int, int]]:
        """``[(n_bits, count), ...]`` for every stored code length, shortest first."""
        return [(n_bits, len(self._segments[n_bits])) for n_bits in sorted(self._segments)]

    def __len__(self) -> int:
        return sum(len(s) for s in self._segments.values())

    def __contains__(self, id_: object) -> bool:
        if isinstance(id_, bool) or not isinstance(id_, (int, np.integer)) or id_ < 0 or id_ > INT64_MAX:
            return False
        target = np.array([id_], dtype=np.int64)
        return any(bool(seg.contains(target)[0]) for seg in self._segments.values())

    def __repr__(self) -> str:
        return (
            f"TruncatedHammingIndex(n={len(self)}, segments={self.segments}, score={self._score!r}, "
            f"backend={self._backend!r})"
        )

    def get_ids(self, *, n_bits: int | None = None) -> np.ndarray:
        """All stored ids, ascending, as ``int64``; only those stored at ``n_bits`` bits when given."""
        if n_bits is not None:
            n_bits = check_positive_int(n_bits, "n_bits")
            seg = self._segments.get(n_bits)
            return np.zeros(0, dtype=np.int64) if seg is None else seg.ids()
        if not self._segments:
            return np.zeros(0, dtype=np.int64)
        return np.sort(np.concatenate([seg.ids() for seg in self._segments.values()]))

    def _segment_of(self, ids: np.ndarray) -> np.ndarray:
        """For each id: the n_bits of its segment, 0 if it is not stored."""
        seg_bits = np.zeros(len(ids), dtype=np.int64)
        for n_bits, seg in self._segments.items():
            seg_bits[seg.contains(ids)] = n_bits
        return seg_bits

    def get_codes(self, ids: Iterable[int] | np.ndarray, *, n_bits: int | None = None) -> Codes:
        """The stored codes of ``ids``, in the order given, as one :class:`Codes`.

        A :class:`Codes` has one length, so either every requested id must be stored at the same length, or
        ``n_bits`` names a length to truncate them all to (each must be stored with at least ``n_bits`` bits).
        The trainer reads back a task's stored codes this way to measure prefix drift.

        Raises:
            KeyError: an id is not stored.
            ValueError: the ids have several lengths and ``n_bits`` is None, or a code is shorter than ``n_bits``.
        """
        wanted = as_id_array(ids)
        if n_bits is not None:
            n_bits = check_positive_int(n_bits, "n_bits")
        seg_bits = self._segment_of(wanted)
        missing = wanted[seg_bits == 0]
        if missing.size:
            raise KeyError(f"ids: {missing.size} id(s) not in the index, e.g. {missing[:5].tolist()}")
        lengths = np.unique(seg_bits)
        if n_bits is None:
            if lengths.size > 1:
                raise ValueError(
                    f"ids: the requested codes have several lengths {lengths.tolist()}; pass n_bits= to truncate "
                    "them to a common length"
                )
            if lengths.size == 0:
                raise ValueError("ids: expected at least one id when n_bits is not given (the length is unknown)")
            n_bits = int(lengths[0])
        elif lengths.size and lengths[0] < n_bits:
            raise ValueError(
                f"n_bits: {n_bits} exceeds the length of some requested codes (stored at {int(lengths[0])} bits)"
            )
        out = np.zeros((len(wanted), (n_bits + 7) // 8), dtype=np.uint8)
        for length in lengths.tolist():
            rows = np.flatnonzero(seg_bits == length)
            padded = self._segments[length].get_padded(wanted[rows])
            out[rows] = Codes(np.ascontiguousarray(padded[:, : (length + 7) // 8]), length).truncate(n_bits).packed
        return Codes(out, n_bits)

    # ------------------------------------------------------------------ changes
    def add(self, codes: Codes, ids: Iterable[int] | np.ndarray | None = None) -> np.ndarray:
        """Store a batch of codes (all of one length) under int64 ids; returns the ids.

        The codes are copied: changing the caller's buffer afterwards does not change what is stored. Adding ``n``
        codes in any number of batches costs O(n) for increasing ids (automatic ids, or explicit ids above every
        stored one) and O(n log n) otherwise.

        Args:
            codes: the codes; they join the segment of their length (created if new).
            ids: one non-negative id per code, unique within the batch and not already stored. ``None`` assigns
                ``next_id, next_id + 1, ...`` (ids of removed items are never reused).

        Returns:
            The ids, ``int64 (len(codes),)`` (a new array).

        Raises:
            ValueError: a wrong number of ids, a negative id, or a duplicate id (in the batch or already stored).
        """
        codes = check_codes(codes, "codes")
        n = len(codes)
        if ids is None:
            if self._next_id + n - 1 > INT64_MAX:
                raise ValueError("ids: automatic ids would overflow int64; pass explicit ids")
            new_ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
            order = None
        else:
            new_ids = as_id_array(ids)
            if new_ids.shape[0] != n:
                raise ValueError(f"ids: expected one id per code ({n}), got {new_ids.shape[0]}")
            order = None if n < 2 or bool(np.all(new_ids[1:] > new_ids[:-1])) else np.argsort(new_ids, kind="stable")
            sorted_ids = new_ids if order is None else new_ids[order]
            duplicates = first_duplicates(sorted_ids)
            if duplicates:
                raise ValueError(f"ids: duplicate ids in the batch, e.g. {duplicates}")
            stored = np.zeros(n, dtype=bool)
            for seg in self._segments.values():
                stored |= seg.contains(sorted_ids)
            if stored.any():
                raise ValueError(f"ids: already in the index, e.g. {sorted_ids[stored][:5].tolist()}")
        if n == 0:
            return new_ids
        seg = self._segments.get(codes.n_bits)
        if seg is None:
            seg = self._segments[codes.n_bits] = self._backend.new_segment(codes.n_bits, self._cache)
            self._segments_changed()
        packed = codes.packed
        if order is not None:
            packed = packed[order]  # fancy indexing copies
        seg.add(_faiss.pad_codes(packed, seg.code_size), new_ids if order is None else new_ids[order])
        self._next_id = max(self._next_id, int(new_ids.max()) + 1)
        _logger.debug("added %d codes of %d bits (index now %d items)", n, codes.n_bits, len(self))
        return new_ids  # a new array: the segment stored its own copy

    def remove(self, ids: Iterable[int] | np.ndarray, *, missing: str = "raise") -> int:
        """Remove stored items by id; returns how many were removed.

        Args:
            ids: the ids to remove (repeats count once).
            missing: ``"raise"`` (default): raise ``KeyError`` naming unknown ids and remove nothing;
                ``"ignore"``: skip unknown ids (the return value tells how many were found).
        """
        if missing not in ("raise", "ignore"):
            raise ValueError(f"missing: expected 'raise' or 'ignore', got {missing!r}")
        wanted = np.sort(as_id_array(ids))
        if wanted.size > 1:
            wanted = wanted[np.concatenate([[True], wanted[1:] != wanted[:-1]])]
        seg_bits = self._segment_of(wanted)
        if missing == "raise" and np.any(seg_bits == 0):
            unknown = wanted[seg_bits == 0]
            raise KeyError(f"ids: {unknown.size} id(s) not in the index, e.g. {unknown[:5].tolist()}")
        removed = 0
        for n_bits in np.unique(seg_bits[seg_bits > 0]).tolist():
            seg = self._segments[n_bits]
            removed += seg.remove(wanted[seg_bits == n_bits])
            if len(seg) == 0:
                self._backend.drop_segment(seg)
                del self._segments[n_bits]
                self._segments_changed()
        _logger.debug("removed %d items (index now %d items)", removed, len(self))
        return removed

    def clear_cache(self) -> None:
        """Free the truncated segment copies built for queries shorter than the stored codes."""
        self._cache.clear()
        for seg in self._segments.values():
            seg.drop_cache()

    # ------------------------------------------------------------------ search
    def search(
        self, query_codes: Codes, k: int, *, score: str | None = None, nprobe: int | None = None
    ) -> SearchResult:
        """The ``k`` best stored items for each query, best first (ties by ascending id).

        Exact for the flat and Milvus backends; for IVF segments the candidates of each segment come from its
        ``nprobe`` nearest inverted lists (then merged exactly with the other segments).

        Args:
            query_codes: queries of one length ``K_q``; each stored code of ``K_s`` bits is compared on the first
                ``min(K_q, K_s)`` bits.
            k: results per query.
            score: the cross-length policy for this call (default: the index's ``score``).
            nprobe: inverted lists visited per IVF segment (default: the backend's); ignored by the other backends.

        Returns:
            A :class:`SearchResult` of ``(len(query_codes), k)`` arrays, filled with id ``-1`` (distance ``-1``,
            score ``-inf``, ``n_bits_compared`` 0) where the index holds fewer than ``k`` items.
        """
        query_codes = check_codes(query_codes, "query_codes")
        k = check_positive_int(k, "k")
        policy = self._score if score is None else check_choice(score, "score", SCORE_POLICIES, bracketed=False)
        if nprobe is not None:
            nprobe = check_positive_int(nprobe, "nprobe")
        nq = len(query_codes)
        segments, compared_lengths, tables, ranks, merged, lists = self._plan(policy, query_codes.n_bits)
        sizes = [len(seg) for seg in segments]
        if len(segments) == 1 and nq and nq * k <= _CANDIDATES_PER_BLOCK and sizes[0] >= k:
            # One segment holding at least k codes: its (distance, id) order is the answer (no merge, no fill).
            seg, compared, table = segments[0], compared_lengths[0], tables[0]
            packed = _truncated_queries(query_codes, compared)
            with _faiss.omp_threads(self._threads):
                dist, found = seg.search(packed, compared, k, nprobe=nprobe)
            if found.shape[1] == k and found.min() >= 0:
                return SearchResult(found, dist, table[dist], np.full((nq, k), compared, np.int32), policy)
        if nq == 1 and segments and k * len(segments) <= _ONE_QUERY_CANDIDATES:
            return self._search_one(query_codes, k, policy, segments, compared_lengths, lists, nprobe)
        n_candidates = sum(min(k, size) for size in sizes)
        width = min(k, n_candidates)
        if nq and width == k and len(segments) > 1:  # the merge writes every entry: no fill needed
            ids = np.empty((nq, k), dtype=np.int64)
            distances = np.empty((nq, k), dtype=np.int32)
            scores = np.empty((nq, k), dtype=np.float64)
            n_compared = np.empty((nq, k), dtype=np.int32)
        else:
            ids = np.full((nq, k), FILL_ID, dtype=np.int64)
            distances = np.full((nq, k), FILL_DISTANCE, dtype=np.int32)
            scores = np.full((nq, k), FILL_SCORE, dtype=np.float64)
            n_compared = np.full((nq, k), FILL_N_BITS, dtype=np.int32)
        if nq == 0 or not segments:
            return SearchResult(ids, distances, scores, n_compared, policy)

        plan = list(zip(segments, compared_lengths, tables, strict=True))
        step = max(1, _CANDIDATES_PER_BLOCK // n_candidates)  # bounds the merge's memory for many queries
        truncated = {compared: _truncated_queries(query_codes, compared) for compared in set(compared_lengths)}
        whole = (ids, distances, scores, n_compared) if width == k else None
        with _faiss.omp_threads(self._threads):
            if nq <= step:  # one block (every search of up to thousands of queries): no row views to cut
                views = whole or (ids[:, :width], distances[:, :width], scores[:, :width], n_compared[:, :width])
                self._search_block(truncated, k, plan, ranks, merged, views, nprobe)
            else:
                for start in range(0, nq, step):
                    rows = slice(start, min(nq, start + step))
                    views = (ids[rows, :width], distances[rows, :width], scores[rows, :width], n_compared[rows, :width])
                    block = {compared: packed[rows] for compared, packed in truncated.items()}
                    self._search_block(block, k, plan, ranks, merged, views, nprobe)
        return SearchResult(ids, distances, scores, n_compared, policy)

    def count_at_least(self, query_codes: Codes, min_score: Any, *, score: str | None = None) -> np.ndarray:
        """How many stored items score at least ``min_score`` for each query, exactly, for every backend: it reads
        every stored code (numpy, one thread: about 25 ms per query over 1M codes of 32, 48 and 64 bits on a 2-core
        x86 machine, against under 1 ms for a search).

        A search lists ``k`` items, ties by ascending id; when its ``k``-th score is shared by items it did not list,
        which of them made the list is an accident of their ids. ``count_at_least(queries, result.scores[:, -1]) - k``
        says how many more items score exactly what the ``k``-th does (``pbeh search`` prints it).

        Args:
            query_codes: queries of one length (compared with each stored code on the common prefix, as ``search``).
            min_score: one score for all queries, or one per query (``(len(query_codes),)``); NaN is refused.
            score: the cross-length policy (default: the index's ``score``).

        Returns:
            ``int64 (len(query_codes),)``.

        Example:
            >>> from pbeh import Codes, TruncatedHammingIndex
            >>> index = TruncatedHammingIndex(score="hamming")
            >>> _ = index.add(Codes.from_bool([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]]))
            >>> query = Codes.from_bool([[0, 0, 0, 0]])
            >>> index.count_at_least(query, -0.0).tolist(), index.count_at_least(query, -2.0).tolist()
            ([2], [3])
        """
        query_codes = check_codes(query_codes, "query_codes")
        policy = self._score if score is None else check_choice(score, "score", SCORE_POLICIES, bracketed=False)
        nq = len(query_codes)
        try:
            thresholds = np.broadcast_to(np.asarray(min_score, dtype=np.float64), (nq,))
        except (TypeError, ValueError) as exc:
            got = np.shape(min_score)
            raise ValueError(f"min_score: expected a number or {nq} numbers (one per query), got shape {got}") from exc
        if np.isnan(thresholds).any():
            raise ValueError("min_score: expected numbers, got NaN")
        counts = np.zeros(nq, dtype=np.int64)
        if nq == 0:
            return counts
        segments, _, tables, *_ = self._plan(policy, query_codes.n_bits)
        for seg, table in zip(segments, tables, strict=True):
            # Every policy's score falls as the distance grows: the distances that reach a threshold are 0..d_max.
            d_max = np.searchsorted(-table, -thresholds, side="right") - 1
            if (d_max < 0).all():
                continue
            n_bytes = (seg.n_bits + 7) // 8
            for block, _ in seg.blocks(_COUNT_BLOCK_ROWS):
                stored = Codes(np.ascontiguousarray(block[:, :n_bytes]), seg.n_bits)
                for start in range(0, nq, _COUNT_QUERY_ROWS):  # (queries x block) distances: 64 MiB at most
                    rows = slice(start, start + _COUNT_QUERY_ROWS)
                    counts[rows] += (query_codes[rows].hamming(stored) <= d_max[rows, None]).sum(axis=1)
        return counts

    def _plan(self, policy: str, query_bits: int) -> tuple[list, tuple[int, ...], list, list, tuple, tuple]:
        """What a search with ``policy`` and ``query_bits``-bit queries needs besides the queries: the segments
        shortest first, the bits compared in each, their score tables (:meth:`_score_tables`), and the rank and
        score tables as Python lists (for :meth:`_search_one`). Cached until a segment is created or dropped
        (:meth:`_segments_changed`); a one-query search would otherwise spend about as long rebuilding this as
        scanning a small segment."""
        key = (policy, query_bits)
        plan = self._plans.get(key)
        if plan is None:
            segments = [self._segments[n_bits] for n_bits in sorted(self._segments)]
            compared_lengths = tuple(min(query_bits, seg.n_bits) for seg in segments)
            tables, ranks, merged = self._score_tables(policy, compared_lengths) if segments else ([], [], ())
            lists = ([r.tolist() for r in ranks], [t.tolist() for t in tables])
            plan = (segments, compared_lengths, tables, ranks, merged, lists)
            if len(self._plans) >= 64:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _search_one(
        self,
        query_codes: Codes,
        k: int,
        policy: str,
        segments: list,
        compared_lengths: tuple[int, ...],
        lists: tuple[list[list[int]], list[list[float]]],
        nprobe: int | None,
    ) -> SearchResult:
        """One query: each segment's top ``k`` by (distance, id), merged by (score rank, id) in Python lists.

        The same order as :meth:`_search_block`'s merge. For a few dozen candidates, list operations cost less than
        the numpy calls of the batched merge: a search over three segments of 100 codes took 40 µs against 51 µs,
        and over 1M codes, alternating with faiss's own search, about 940 µs against 975 µs (docs/backends.md).
        """
        rank_lists, score_lists = lists
        candidates: list[tuple[int, int, int, int]] = []  # (score rank, id, distance, segment)
        truncated: dict[int, np.ndarray] = {}
        with _faiss.omp_threads(self._threads):
            for i, (seg, compared) in enumerate(zip(segments, compared_lengths, strict=True)):
                packed = truncated.get(compared)
                if packed is None:
                    packed = truncated[compared] = _truncated_queries(query_codes, compared)
                dist, found = seg.search(packed, compared, k, nprobe=nprobe)
                rank = rank_lists[i]
                for d, id_ in zip(dist[0].tolist(), found[0].tolist(), strict=True):
                    if id_ >= 0:  # approximate segments may return fewer than k
                        candidates.append((rank[d], id_, d, i))
        candidates.sort()
        top = candidates[:k]
        n_fill = k - len(top)  # fewer than k stored (or returned) items
        ids = np.array([[c[1] for c in top] + [FILL_ID] * n_fill], dtype=np.int64)
        distances = np.array([[c[2] for c in top] + [FILL_DISTANCE] * n_fill], dtype=np.int32)
        scores = np.array([[score_lists[c[3]][c[2]] for c in top] + [FILL_SCORE] * n_fill], dtype=np.float64)
        n_compared = np.array([[compared_lengths[c[3]] for c in top] + [FILL_N_BITS] * n_fill], dtype=np.int32)
        return SearchResult(ids, distances, scores, n_compared, policy)

    def _segments_changed(self) -> None:
        """Forget the cached search plans: call whenever a segment is created, dropped or replaced."""
        self._plans.clear()

    def _score_tables(self, policy: str, compared_lengths: tuple[int, ...]) -> tuple[list, list, tuple]:
        """Per segment, the score of every possible distance 0..L (a lookup table); over all tables, the integer rank
        of every score (0 = best, equal scores share a rank) for the merge; and the rank and score tables of all
        segments end to end with the offset where each segment's start (one lookup over all candidates in the
        merge), and a dict for the merge's per-column copies of the offsets and lengths. Cached per (policy,
        lengths)."""
        key = (policy, compared_lengths)
        cached = self._tables.get(key)
        if cached is None:
            p = self._flip_probability
            tables = [score_distances(np.arange(n + 1), n, policy, flip_probability=p) for n in compared_lengths]
            values = np.unique(np.concatenate(tables))
            ranks = [len(values) - 1 - np.searchsorted(values, table) for table in tables]
            offsets = np.concatenate([[0], np.cumsum([len(table) for table in tables])[:-1]]).astype(np.int64)
            merged = (np.concatenate(ranks), np.concatenate(tables), offsets, {})  # {}: per-column copies by widths
            if len(self._tables) >= 64:
                self._tables.clear()
            cached = self._tables[key] = (tables, ranks, merged)
        return cached

    def _search_block(
        self,
        queries: dict[int, np.ndarray],
        k: int,
        plan: list[tuple[Any, int, np.ndarray]],
        ranks: list[np.ndarray],
        merged: tuple[np.ndarray, np.ndarray, np.ndarray, dict],
        views: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        nprobe: int | None,
    ) -> None:
        """Search one block of queries and write the merged top ``width`` into ``views`` (ids, distances, ...)."""
        ids, distances, scores, n_compared = views
        parts = [seg.search(queries[compared], compared, k, nprobe=nprobe) for seg, compared, _ in plan]
        if len(parts) == 1:
            # Each segment returns (distance, id) order = (score descending, id ascending).
            (dist, part_ids), (_, compared, table) = parts[0], plan[0]
            m = part_ids.shape[1]
            ids[:, :m], distances[:, :m] = part_ids, dist
            valid = part_ids >= 0
            scores[:, :m] = np.where(valid, table[np.where(valid, dist, 0)], FILL_SCORE)
            n_compared[:, :m] = np.where(valid, compared, FILL_N_BITS)
            distances[:, :m][~valid] = FILL_DISTANCE
            return

        # Merge: sort every candidate by (score rank, id). One int64 key rank * (max id + 2) + id + 1 sorts about 8x
        # faster than a two-key lexsort; missing candidates (id -1, from approximate segments) sort last. The score
        # and rank tables of all segments are concatenated (segment i's entry for distance d at offsets[i] + d), so
        # each lookup below is one indexing operation over all candidates instead of one per segment.
        all_ids = np.concatenate([part_ids for _, part_ids in parts], axis=1)
        all_dist = np.concatenate([dist for dist, _ in parts], axis=1)
        all_rank_table, all_score_table, offsets, columns_by_widths = merged
        widths = tuple(part_ids.shape[1] for _, part_ids in parts)
        columns = columns_by_widths.get(widths)
        if columns is None:  # per candidate column: where its segment's tables start, and its compared bits
            compared_of_part = np.array([compared for _, compared, _ in plan], dtype=np.int32)
            columns = columns_by_widths[widths] = (np.repeat(offsets, widths), np.repeat(compared_of_part, widths))
        column_offset, compared_of_column = columns
        all_valid = int(all_ids.min()) >= 0
        worst = len(ranks[0]) + len(all_rank_table)  # worse than every rank
        if all_valid:
            all_rank = all_rank_table[all_dist + column_offset]
        else:
            valid = all_ids >= 0
            all_rank = np.where(valid, all_rank_table[np.where(valid, all_dist, 0) + column_offset], worst)
        width = ids.shape[1]
        id_span = int(all_ids.max()) + 2
        if (worst + 1) * id_span <= INT64_MAX:
            order = np.argsort(all_rank * id_span + all_ids + 1, axis=1)[:, :width]
        else:  # ids too large to pack with the rank: two-key sort
            order = np.lexsort((all_ids, all_rank), axis=-1)[:, :width]
        rows = np.arange(order.shape[0])[:, None]
        ids[...] = all_ids[rows, order]
        distances[...] = all_dist[rows, order]
        if all_valid:
            scores[...] = all_score_table[distances + column_offset[order]]
            n_compared[...] = compared_of_column[order]
            return
        gone = ids < 0
        scores[...] = np.where(gone, FILL_SCORE, all_score_table[np.where(gone, 0, distances) + column_offset[order]])
        n_compared[...] = np.where(gone, FILL_N_BITS, compared_of_column[order])
        distances[gone] = FILL_DISTANCE

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str], *, checksum: str = "auto") -> None:
        """Write the index to a safetensors file (atomically, streamed: memory stays near the index's own).

        Tensors ``codes.<n_bits>`` (``uint8 (n, ceil(n_bits / 8))``, unpadded) and ``ids.<n_bits>`` (``int64 (n,)``,
        ascending), plus metadata and a checksum. Saving the same index twice gives identical bytes, whatever the
        backend.

        Args:
            path: the file (replaced atomically).
            checksum: the content checksum :meth:`load` verifies. ``"auto"`` (default): ``"xxh3_128"`` when the
                xxhash package is installed (``pip install "pbeh[fast-checksum]"``; about 18 GB/s, faster than the
                save itself), else ``"sha256"`` (standard library, about 1.5 GB/s). A SHA-256 file is format version 1,
                which every pbeh reads; an xxh3_128 file is version 2, and verifying it needs xxhash where it is
                loaded (without it :meth:`load` raises :class:`~pbeh.serialization.ChecksumUnavailableError` unless
                ``verify=False``). Choose ``"sha256"`` for files read by older pbeh versions or without xxhash.

        Raises:
            ValueError: ``checksum`` is not ``"auto"``, ``"sha256"`` or ``"xxh3_128"``.
            ImportError: ``checksum="xxh3_128"`` without the xxhash package.
        """
        _files.save_index(path, self._segments, self._header(), checksum=checksum)

    def _header(self) -> dict[str, Any]:
        return {
            "bit_order": _files.BIT_ORDER,
            "segment_n_bits": [n for n, _ in self.segments],
            "segment_sizes": [c for _, c in self.segments],
            "score": self._score,
            "flip_probability": self._flip_probability,
            "next_id": self._next_id,
        }

    @staticmethod
    def metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
        """Describe a saved index from its header only (no codes are read).

        Returns:
            ``{"format_version", "pbeh_version", "bit_order", "segments" ([(n_bits, count)]), "n_items", "score",
            "flip_probability", "next_id"}``.

        Raises:
            FormatError: the file is missing, truncated, not a pbeh index, or its header is malformed.
        """
        return _files.read_index_metadata(path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        threads: int = 1,
        backend: str | Backend = "flat",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        verify: bool = True,
    ) -> TruncatedHammingIndex:
        """Read an index written by :meth:`save` (score policy and ids included; nothing is unpickled).

        The file is read in blocks straight into the index's storage, so memory peaks near the loaded index's own
        size. ``backend`` chooses where the loaded codes go (a Milvus backend must start empty). ``verify=False``
        skips the content checksum for trusted files (SHA-256 costs two to four times a read of the file from the
        page cache, xxh3_128 a tenth of one; the file names its algorithm, see :meth:`save`); every structural check
        (shapes, sorted and disjoint ids, padding bits, next_id) still runs.

        Raises:
            FormatError: the file is missing, truncated, damaged (checksum; a malformed or unknown checksum entry),
                of another format version, not a pbeh index, or inconsistent (tensors that do not match the header,
                unsorted or negative ids, ...).
            ChecksumUnavailableError: (a FormatError) ``verify`` is true and the file's checksum needs a library
                that is not installed (xxh3_128: ``pip install "pbeh[fast-checksum]"``).
        """
        verify = check_bool(verify, "verify")
        with _files.IndexFile(path, verify=verify) as file:  # the header is read once, from the open file
            meta = file.meta
            index = cls(
                score=meta["score"],
                threads=threads,
                flip_probability=meta["flip_probability"],
                backend=backend,
                cache_bytes=cache_bytes,
            )
            if len(index):
                raise ValueError(f"backend: loading needs an empty backend, {index.backend!r} holds {len(index)} codes")
            index._segments = file.read_segments(lambda n_bits: index._backend.new_segment(n_bits, index._cache))
            index._segments_changed()
        index._next_id = meta["next_id"]
        return index


_COUNT_BLOCK_ROWS = 1 << 16  # count_at_least reads the stored codes this many rows at a time ...
_COUNT_QUERY_ROWS = 256  # ... against this many queries: int32 distances of 64 MiB at most


def _truncated_queries(query_codes: Codes, compared: int) -> np.ndarray:
    """The packed queries on their first ``compared`` bits, zero-padded to the code size the flat scan uses (every
    backend reads only the first ``ceil(compared / 8)`` bytes). The bytes are those of ``query_codes.truncate``."""
    if compared == query_codes.n_bits:
        return query_codes.packed
    return truncate_padded(query_codes.packed, compared, _faiss.padded_code_size((compared + 7) // 8))
