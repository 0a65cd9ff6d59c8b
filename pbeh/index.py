"""TruncatedHammingIndex: one exact Hamming index over codes of several lengths, with explicit int64 ids.

A continual hashing model widens its codes over time (K_1 <= K_2 <= ...) and never re-encodes what it stored, so its
database holds codes of several lengths. This index keeps one *segment* per code length and ranks every stored code
for a query of any length: a query of ``K_q`` bits meets a stored code of ``K_s`` bits on their first
``L = min(K_q, K_s)`` bits (prefix compatibility: the first bits of a longer code mean what the shorter code meant).

Cross-length scoring
--------------------
A raw distance ``d`` over ``L`` compared bits is not comparable across lengths: 4 differing bits out of 32 is worse
evidence of a match than 4 out of 64, and raw distances favour short codes (on clustered codes stored at 32/48/64
bits, ranking by raw distance put 98 % of the top 100 in the 32-bit segment). The ranking is therefore an explicit
policy. Every score is **larger = better**:

``"hamming"``
    ``-d``. The raw prefix distance, ignoring the length.
``"normalized"``
    ``1 - d / L``: the fraction of compared bits that agree (ranking by ``d / L`` ascending).
``"zscore"`` (default)
    ``(L/2 - d) / (sqrt(L)/2) = (L - 2d) / sqrt(L)``. Under two *unrelated* random codes the number of agreeing
    bits ``L - d`` is Binomial(L, 1/2), with mean ``L/2`` and standard deviation ``sqrt(L)/2``; the score is how many
    standard deviations the observed agreement lies above chance. It rewards a long agreement more than a short one
    with the same fraction, because the long one is less likely to happen by chance.
``"llr"``
    ``(L - d) * log(2(1 - p)) + d * log(2p)`` with ``p = flip_probability``: the log-likelihood ratio of "related"
    (each bit of the stored code is the query's bit flipped with probability ``p``, a binary symmetric channel) against
    "unrelated" (each bit flipped with probability 1/2). Each agreeing bit adds ``log(2(1-p)) > 0``, each differing bit
    adds ``log(2p) < 0``. ``p`` should roughly match the bit disagreement of related pairs of the hashing model.

On clustered test codes stored at 32/48/64 bits (BENCHMARKS.md) ``"zscore"`` and ``"llr"`` give a P@100 of about 0.87,
against 0.51 for the raw distance and 0.65 for the normalised one (0.93 with everything stored at 64 bits). The demo
of ``bench/index_bench.py`` gives 0.78 (zscore), 0.78 (llr, p matched), 0.73 (llr, p = 0.2), 0.63, 0.44 (0.86 at 64
bits). Hence ``"zscore"`` as the default: as good as the best ``"llr"`` and no parameter to tune.

Exactness
---------
Every policy is strictly decreasing in ``d`` for a fixed ``L``, and ``L`` is constant within a segment for a given
query, so the best ``k`` of a segment by score are its best ``k`` by distance. The search is exact: faiss finds the
top ``k`` of every segment, then the candidates are merged by score. Ties are broken by ascending id, always: faiss
returns each segment's top ``k`` in (distance, position) order, segments are stored sorted by id (so position order is
id order), and the merge sorts by (score descending, id ascending). Scores that are mathematically equal across
lengths compare equal: ``"normalized"`` divides integers (correctly rounded, so equal fractions give the same float)
and ``"zscore"`` is computed as ``sign(m) * sqrt(m^2 / L)`` with ``m = L - 2d`` for the same reason (exact for codes up
to 65,536 bits). ``"llr"`` is exact within a length; across lengths two values that differ only by float rounding are
not merged into a tie (such ties need a special ``p`` and do not occur for generic values).

Speed
-----
Each segment is kept padded with zero bytes to a code size with a fast faiss kernel (4, 8, 16, 20, 32, 64 bytes; see
:mod:`pbeh._faiss`). A stored code longer than the query is compared on a truncated, re-padded copy of its segment,
built on the first query of that length and cached until the segment changes (:meth:`clear_cache` frees it).
faiss's OpenMP thread count is set to ``threads`` around each call and restored afterwards.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _faiss
from ._validation import check_choice, check_codes, check_in_interval, check_positive_int
from .codes import Codes
from .serialization import FormatError, load_safetensors, read_safetensors_metadata, save_safetensors

__all__ = ["SCORE_POLICIES", "SearchResult", "TruncatedHammingIndex", "score_distances"]

_logger = logging.getLogger(__name__)

#: The cross-length score policies :class:`TruncatedHammingIndex` accepts (see the module docstring).
SCORE_POLICIES: tuple[str, ...] = ("hamming", "normalized", "zscore", "llr")

FORMAT_VERSION = 1
_KIND = "index"
_BIT_ORDER = "big"
_INT64_MAX = int(np.iinfo(np.int64).max)

#: Fill values of :class:`SearchResult` where fewer than ``k`` items exist.
FILL_ID = -1
FILL_DISTANCE = -1
FILL_SCORE = -np.inf
FILL_N_BITS = 0

# Queries are searched in blocks of at most this many (query, candidate) pairs, so that searching many queries for a
# large k does not build multi-gigabyte merge arrays.
_CANDIDATES_PER_BLOCK = 1 << 22


def _as_id_array(ids: Any, name: str = "ids") -> np.ndarray:
    """Validate ids: a 1-D array (or scalar) of non-negative integers, returned as int64."""
    if hasattr(ids, "detach") and hasattr(ids, "cpu"):
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of ids, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name}: expected integer ids, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.unsignedinteger) and int(arr.max()) > _INT64_MAX:
        raise ValueError(f"{name}: ids must fit in int64, got {int(arr.max())}")
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise ValueError(f"{name}: ids must be non-negative (-1 marks 'no result'), got {int(arr[arr < 0][0])}")
    return arr


def score_distances(distances: Any, n_bits_compared: Any, score: str, *, flip_probability: float = 0.2) -> np.ndarray:
    """Scores (float64, larger = better) of Hamming distances ``d`` over ``L`` compared bits, under a policy.

    ``"hamming"``: ``-d``; ``"normalized"``: ``1 - d / L``; ``"zscore"``: ``(L - 2d) / sqrt(L)``; ``"llr"``:
    ``(L - d) log(2(1 - p)) + d log(2p)``. See the module docstring for why.

    Example:
        >>> score_distances([8, 16], [32, 64], "zscore").tolist()
        [2.8284271247461903, 4.0]
        >>> score_distances([8, 16], [32, 64], "normalized").tolist()
        [0.75, 0.75]
    """
    score = check_choice(score, "score", SCORE_POLICIES, bracketed=False)
    d = np.asarray(distances, dtype=np.float64)
    n = np.asarray(n_bits_compared, dtype=np.float64)
    if score == "hamming":
        return -d + 0.0  # + 0.0 turns -0.0 into 0.0
    elif score == "normalized":
        return 1.0 - d / n
    elif score == "zscore":
        m = n - 2.0 * d
        return np.sign(m) * np.sqrt(m * m / n)
    elif score == "llr":
        p = check_in_interval(flip_probability, "flip_probability", 0, 0.5)
        return (n - d) * math.log(2.0 * (1.0 - p)) + d * math.log(2.0 * p)
    else:  # pragma: no cover - check_choice rejects everything else
        raise ValueError(f"score: unknown policy {score!r}")


@dataclass(frozen=True)
class SearchResult:
    """What :meth:`TruncatedHammingIndex.search` returns; every array has shape ``(n_queries, k)``.

    Row ``i`` lists the best ``k`` stored items for query ``i``, best first: by ``scores`` descending, ties by ``ids``
    ascending. Where the index holds fewer than ``k`` items the row ends with fill values: id ``-1``, distance
    ``-1``, score ``-inf``, ``n_bits_compared`` ``0``.

    Attributes:
        ids: ``int64``, the stored ids.
        distances: ``int32``, the raw Hamming distance on the compared bits.
        scores: ``float64``, the ranking score under ``score`` (larger = better).
        n_bits_compared: ``int32``, the number of compared bits ``min(query bits, stored bits)``.
        score: the score policy that produced the ranking.
    """

    ids: np.ndarray
    distances: np.ndarray
    scores: np.ndarray
    n_bits_compared: np.ndarray
    score: str

    def __len__(self) -> int:
        return int(self.ids.shape[0])


class _Segment:
    """Codes of one length, sorted by id, padded to a fast faiss code size. Immutable: changes build a new one."""

    __slots__ = ("_truncated", "ids", "n_bits", "padded")

    def __init__(self, n_bits: int, padded: np.ndarray, ids: np.ndarray) -> None:
        self.n_bits = n_bits
        self.padded = padded  # uint8 (n, padded_code_size(ceil(n_bits / 8))), C-contiguous, zero padding
        self.ids = ids  # int64 (n,), strictly increasing
        self.padded.setflags(write=False)
        self.ids.setflags(write=False)
        self._truncated: dict[int, np.ndarray] = {}

    @property
    def n_bytes(self) -> int:
        return (self.n_bits + 7) // 8

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def codes(self, positions: np.ndarray | slice = slice(None)) -> Codes:
        return Codes(self.padded[positions, : self.n_bytes], self.n_bits)

    def database(self, n_bits: int) -> np.ndarray:
        """The segment's codes on their first ``n_bits`` bits, padded for faiss (cached per length)."""
        if n_bits >= self.n_bits:
            return self.padded
        cached = self._truncated.get(n_bits)
        if cached is None:
            truncated = self.codes().truncate(n_bits).packed
            cached = _faiss.pad_codes(truncated, _faiss.padded_code_size(truncated.shape[1]))
            cached.setflags(write=False)
            self._truncated[n_bits] = cached
            _logger.debug("cached a %d-bit copy of the %d-bit segment (%d codes)", n_bits, self.n_bits, len(self))
        return cached

    def locate(self, ids: np.ndarray) -> np.ndarray:
        """Positions of ``ids`` in this segment, ``-1`` where absent."""
        pos = np.searchsorted(self.ids, ids)
        pos_clipped = np.minimum(pos, max(len(self) - 1, 0))
        found = (pos < len(self)) & (self.ids[pos_clipped] == ids) if len(self) else np.zeros(len(ids), bool)
        return np.where(found, pos, -1)


class TruncatedHammingIndex:
    """Exact Hamming search over stored codes of several lengths, with explicit int64 ids.

    Each stored code is compared with a query on their common prefix, ``min(query bits, stored bits)`` bits, and the
    results of all lengths are ranked together by a cross-length ``score`` policy (see the module docstring):
    ``"hamming"``, ``"normalized"``, ``"zscore"`` (default) or ``"llr"``. Scores are larger = better.

    Args:
        score: the default score policy of :meth:`search`.
        threads: faiss OpenMP threads used during a search (restored afterwards). Keep 1 on shared machines.
        flip_probability: ``p`` of the ``"llr"`` policy, the assumed per-bit disagreement of related codes, in
            ``(0, 0.5)``.

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

    def __init__(self, *, score: str = "zscore", threads: int = 1, flip_probability: float = 0.2) -> None:
        self._score = check_choice(score, "score", SCORE_POLICIES, bracketed=False)
        self._threads = check_positive_int(threads, "threads")
        self._flip_probability = check_in_interval(flip_probability, "flip_probability", 0, 0.5)
        self._segments: dict[int, _Segment] = {}
        self._next_id = 0

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
        if isinstance(id_, bool) or not isinstance(id_, (int, np.integer)) or id_ < 0 or id_ > _INT64_MAX:
            return False
        target = np.array([id_], dtype=np.int64)
        return any(seg.locate(target)[0] >= 0 for seg in self._segments.values())

    def __repr__(self) -> str:
        return f"TruncatedHammingIndex(n={len(self)}, segments={self.segments}, score={self._score!r})"

    def get_ids(self, *, n_bits: int | None = None) -> np.ndarray:
        """All stored ids, ascending, as ``int64``; only those stored at ``n_bits`` bits when given."""
        if n_bits is not None:
            n_bits = check_positive_int(n_bits, "n_bits")
            seg = self._segments.get(n_bits)
            return np.zeros(0, dtype=np.int64) if seg is None else seg.ids.copy()
        if not self._segments:
            return np.zeros(0, dtype=np.int64)
        return np.sort(np.concatenate([seg.ids for seg in self._segments.values()]))

    def _locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each id: the n_bits of its segment (0 if absent) and its position there (-1 if absent)."""
        seg_bits = np.zeros(len(ids), dtype=np.int64)
        positions = np.full(len(ids), -1, dtype=np.int64)
        for n_bits, seg in self._segments.items():
            pos = seg.locate(ids)
            hit = pos >= 0
            seg_bits[hit] = n_bits
            positions[hit] = pos[hit]
        return seg_bits, positions

    def get_codes(self, ids: Iterable[int] | np.ndarray, *, n_bits: int | None = None) -> Codes:
        """The stored codes of ``ids``, in the order given, as one :class:`Codes`.

        A :class:`Codes` has one length, so either every requested id must be stored at the same length, or
        ``n_bits`` names a length to truncate them all to (each must be stored with at least ``n_bits`` bits).
        The trainer reads back a task's stored codes this way to measure prefix drift.

        Raises:
            KeyError: an id is not stored.
            ValueError: the ids have several lengths and ``n_bits`` is None, or a code is shorter than ``n_bits``.
        """
        wanted = _as_id_array(ids)
        if n_bits is not None:
            n_bits = check_positive_int(n_bits, "n_bits")
        seg_bits, positions = self._locate(wanted)
        missing = wanted[positions < 0]
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
            out[rows] = self._segments[length].codes(positions[rows]).truncate(n_bits).packed
        return Codes(out, n_bits)

    # ------------------------------------------------------------------ changes
    def add(self, codes: Codes, ids: Iterable[int] | np.ndarray | None = None) -> np.ndarray:
        """Store a batch of codes (all of one length) under int64 ids; returns the ids.

        Args:
            codes: the codes; they join the segment of their length (created if new).
            ids: one non-negative id per code, unique within the batch and not already stored. ``None`` assigns
                ``next_id, next_id + 1, ...`` (ids of removed items are never reused).

        Returns:
            The ids, ``int64 (len(codes),)``.

        Raises:
            ValueError: a wrong number of ids, a negative id, or a duplicate id (in the batch or already stored).
        """
        codes = check_codes(codes, "codes")
        n = len(codes)
        if ids is None:
            if self._next_id + n - 1 > _INT64_MAX:
                raise ValueError("ids: automatic ids would overflow int64; pass explicit ids")
            new_ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        else:
            new_ids = _as_id_array(ids)
            if new_ids.shape[0] != n:
                raise ValueError(f"ids: expected one id per code ({n}), got {new_ids.shape[0]}")
            uniq, counts = np.unique(new_ids, return_counts=True)
            if uniq.size != n:
                raise ValueError(f"ids: duplicate ids in the batch, e.g. {uniq[counts > 1][:5].tolist()}")
            _, positions = self._locate(new_ids)
            if np.any(positions >= 0):
                raise ValueError(f"ids: already in the index, e.g. {new_ids[positions >= 0][:5].tolist()}")
        if n == 0:
            return new_ids
        padded = _faiss.pad_codes(codes.packed, _faiss.padded_code_size(codes.n_bytes))
        seg = self._segments.get(codes.n_bits)
        if seg is not None:
            padded = np.concatenate([seg.padded, padded])
            all_ids = np.concatenate([seg.ids, new_ids])
        else:
            all_ids = new_ids.copy()
        if np.any(all_ids[1:] < all_ids[:-1]):
            order = np.argsort(all_ids, kind="stable")
            padded, all_ids = padded[order], all_ids[order]
        self._segments[codes.n_bits] = _Segment(codes.n_bits, np.ascontiguousarray(padded), all_ids)
        self._next_id = max(self._next_id, int(new_ids.max()) + 1)
        _logger.debug("added %d codes of %d bits (index now %d items)", n, codes.n_bits, len(self))
        return new_ids

    def remove(self, ids: Iterable[int] | np.ndarray, *, missing: str = "raise") -> int:
        """Remove stored items by id; returns how many were removed.

        Args:
            ids: the ids to remove (repeats count once).
            missing: ``"raise"`` (default): raise ``KeyError`` naming unknown ids and remove nothing;
                ``"ignore"``: skip unknown ids (the return value tells how many were found).
        """
        if missing not in ("raise", "ignore"):
            raise ValueError(f"missing: expected 'raise' or 'ignore', got {missing!r}")
        wanted = np.unique(_as_id_array(ids))
        seg_bits, positions = self._locate(wanted)
        if missing == "raise" and np.any(positions < 0):
            unknown = wanted[positions < 0]
            raise KeyError(f"ids: {unknown.size} id(s) not in the index, e.g. {unknown[:5].tolist()}")
        removed = 0
        for n_bits in np.unique(seg_bits[positions >= 0]).tolist():
            seg = self._segments[n_bits]
            keep = np.ones(len(seg), dtype=bool)
            keep[positions[seg_bits == n_bits]] = False
            removed += int(len(seg) - keep.sum())
            if keep.any():
                self._segments[n_bits] = _Segment(n_bits, np.ascontiguousarray(seg.padded[keep]), seg.ids[keep])
            else:
                del self._segments[n_bits]
        _logger.debug("removed %d items (index now %d items)", removed, len(self))
        return removed

    def clear_cache(self) -> None:
        """Free the truncated segment copies built for queries shorter than the stored codes."""
        for seg in self._segments.values():
            seg._truncated.clear()

    # ------------------------------------------------------------------ search
    def search(self, query_codes: Codes, k: int, *, score: str | None = None) -> SearchResult:
        """The ``k`` best stored items for each query, best first (exact; ties by ascending id).

        Args:
            query_codes: queries of one length ``K_q``; each stored code of ``K_s`` bits is compared on the first
                ``min(K_q, K_s)`` bits.
            k: results per query.
            score: the cross-length policy for this call (default: the index's ``score``).

        Returns:
            A :class:`SearchResult` of ``(len(query_codes), k)`` arrays, filled with id ``-1`` (distance ``-1``,
            score ``-inf``, ``n_bits_compared`` 0) where the index holds fewer than ``k`` items.
        """
        query_codes = check_codes(query_codes, "query_codes")
        k = check_positive_int(k, "k")
        policy = self._score if score is None else check_choice(score, "score", SCORE_POLICIES, bracketed=False)
        nq = len(query_codes)
        ids = np.full((nq, k), FILL_ID, dtype=np.int64)
        distances = np.full((nq, k), FILL_DISTANCE, dtype=np.int32)
        scores = np.full((nq, k), FILL_SCORE, dtype=np.float64)
        n_compared = np.full((nq, k), FILL_N_BITS, dtype=np.int32)
        if nq == 0 or not self._segments:
            return SearchResult(ids, distances, scores, n_compared, policy)

        # Per segment: the compared length and the score of every possible distance 0..L (a lookup table); over all
        # tables, the integer rank of every score (0 = best, equal scores share a rank) for the merge.
        plan: list[tuple[_Segment, int, np.ndarray]] = []
        for n_bits in sorted(self._segments):
            seg = self._segments[n_bits]
            compared = min(query_codes.n_bits, n_bits)
            table = score_distances(np.arange(compared + 1), compared, policy, flip_probability=self._flip_probability)
            plan.append((seg, compared, table))
        values = np.unique(np.concatenate([table for _, _, table in plan]))
        ranks = [len(values) - 1 - np.searchsorted(values, table) for _, _, table in plan]
        n_candidates = sum(min(k, len(seg)) for seg, _, _ in plan)
        width = min(k, n_candidates)
        step = max(1, _CANDIDATES_PER_BLOCK // n_candidates)  # bounds the merge's memory for many queries
        with _faiss.omp_threads(self._threads):
            for start in range(0, nq, step):
                rows = slice(start, min(nq, start + step))
                views = (ids[rows, :width], distances[rows, :width], scores[rows, :width], n_compared[rows, :width])
                self._search_block(query_codes[rows], k, plan, ranks, views)
        return SearchResult(ids, distances, scores, n_compared, policy)

    def _search_block(
        self,
        queries: Codes,
        k: int,
        plan: list[tuple[_Segment, int, np.ndarray]],
        ranks: list[np.ndarray],
        views: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    ) -> None:
        """Search one block of queries and write the merged top ``width`` into ``views`` (ids, distances, ...)."""
        ids, distances, scores, n_compared = views
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        for seg, compared, _ in plan:
            database = seg.database(compared)
            padded_queries = _faiss.pad_codes(queries.truncate(compared).packed, database.shape[1])
            dist, pos = _faiss.knn_hamming(padded_queries, database, min(k, len(seg)))
            parts.append((dist, seg.ids[pos]))

        if len(parts) == 1:
            # faiss's order is (distance, position) = (score descending, id ascending) already.
            (dist, part_ids), (_, compared, table) = parts[0], plan[0]
            ids[...], distances[...], scores[...], n_compared[...] = part_ids, dist, table[dist], compared
            return

        # Merge: sort every candidate by (score rank, id). One int64 key rank * (max id + 1) + id sorts about 8x
        # faster than a two-key lexsort.
        all_dist = np.concatenate([dist for dist, _ in parts], axis=1)
        all_ids = np.concatenate([part_ids for _, part_ids in parts], axis=1)
        all_rank = np.concatenate([rank[dist] for rank, (dist, _) in zip(ranks, parts, strict=True)], axis=1)
        all_part = np.concatenate([np.full(dist.shape, i, dtype=np.int16) for i, (dist, _) in enumerate(parts)], axis=1)
        width = ids.shape[1]
        id_span = int(all_ids.max()) + 1
        if (int(all_rank.max()) + 1) * id_span <= _INT64_MAX:
            order = np.argsort(all_rank * id_span + all_ids, axis=1)[:, :width]
        else:  # ids too large to pack with the rank: two-key sort
            order = np.lexsort((all_ids, all_rank), axis=-1)[:, :width]
        ids[...] = np.take_along_axis(all_ids, order, axis=1)
        distances[...] = np.take_along_axis(all_dist, order, axis=1)
        part = np.take_along_axis(all_part, order, axis=1)
        for i, (_, compared, table) in enumerate(plan):
            mask = part == i
            n_compared[mask] = compared
            scores[mask] = table[distances[mask]]

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to a safetensors file (atomically): per length a codes and an ids tensor, plus metadata.

        Tensors ``codes.<n_bits>`` (``uint8 (n, ceil(n_bits / 8))``, unpadded) and ``ids.<n_bits>`` (``int64 (n,)``,
        ascending). Saving the same index twice gives identical bytes.
        """
        tensors: dict[str, np.ndarray] = {}
        for n_bits, seg in self._segments.items():
            tensors[f"codes.{n_bits}"] = seg.codes().packed
            tensors[f"ids.{n_bits}"] = seg.ids
        save_safetensors(path, tensors, kind=_KIND, format_version=FORMAT_VERSION, metadata=self._header())

    def _header(self) -> dict[str, Any]:
        return {
            "bit_order": _BIT_ORDER,
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
        return _parse_header(path, read_safetensors_metadata(path, kind=_KIND))

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, threads: int = 1) -> TruncatedHammingIndex:
        """Read an index written by :meth:`save` (score policy and ids included; nothing is unpickled).

        Raises:
            FormatError: the file is missing, truncated, of another format version, not a pbeh index, or
                inconsistent (tensors that do not match the header, unsorted or negative ids, ...).
        """
        arrays, raw_meta = load_safetensors(path, kind=_KIND, format_version=FORMAT_VERSION)
        meta = _parse_header(path, raw_meta)
        index = cls(score=meta["score"], threads=threads, flip_probability=meta["flip_probability"])
        expected = {f"{kind}.{n}" for n, _ in meta["segments"] for kind in ("codes", "ids")}
        if set(arrays) != expected:
            raise FormatError(f"{str(path)!r}: tensors {sorted(arrays)} do not match the header's {sorted(expected)}")
        seen: list[np.ndarray] = []
        for n_bits, count in meta["segments"]:
            codes, ids = arrays[f"codes.{n_bits}"], arrays[f"ids.{n_bits}"]
            if ids.dtype != np.int64 or ids.shape != (count,):
                raise FormatError(
                    f"{str(path)!r}: ids.{n_bits} should be int64 ({count},), got {ids.dtype} {ids.shape}"
                )
            if count == 0 or ids[0] < 0 or np.any(ids[1:] <= ids[:-1]):
                raise FormatError(
                    f"{str(path)!r}: ids.{n_bits} must be non-empty, non-negative and strictly increasing"
                )
            try:
                packed = Codes.from_packed(codes, n_bits)
            except (TypeError, ValueError) as exc:
                raise FormatError(f"{str(path)!r}: codes.{n_bits} are not valid {n_bits}-bit codes: {exc}") from exc
            if len(packed) != count:
                raise FormatError(f"{str(path)!r}: codes.{n_bits} has {len(packed)} rows, the header says {count}")
            padded = _faiss.pad_codes(packed.packed, _faiss.padded_code_size(packed.n_bytes))
            index._segments[n_bits] = _Segment(n_bits, padded, ids)
            seen.append(ids)
        if seen:
            all_ids = np.concatenate(seen)
            if np.unique(all_ids).size != all_ids.size:
                raise FormatError(f"{str(path)!r}: an id is stored in several segments")
            if int(all_ids.max()) >= meta["next_id"]:
                raise FormatError(f"{str(path)!r}: next_id {meta['next_id']} is not above the largest id")
        index._next_id = meta["next_id"]
        return index


def _parse_header(path: str | os.PathLike[str], meta: dict[str, str]) -> dict[str, Any]:
    """Decode and validate the metadata of a saved index; every problem is a FormatError."""

    def fail(what: str) -> FormatError:
        return FormatError(f"{str(path)!r} is not a valid pbeh index: {what}")

    try:
        bit_order = meta["bit_order"]
        n_bits = json.loads(meta["segment_n_bits"])
        sizes = json.loads(meta["segment_sizes"])
        score = meta["score"]
        flip_probability = json.loads(meta["flip_probability"])
        next_id = json.loads(meta["next_id"])
        format_version = int(meta["format_version"])
    except KeyError as exc:
        raise fail(f"metadata key {exc.args[0]!r} is missing") from exc
    except (ValueError, json.JSONDecodeError) as exc:
        raise fail(f"malformed metadata ({exc})") from exc
    if bit_order != _BIT_ORDER:
        raise fail(f"bit_order {bit_order!r}, expected {_BIT_ORDER!r}")
    ints = (n_bits, sizes)
    if not all(isinstance(v, list) and all(type(x) is int and x > 0 for x in v) for v in ints):
        raise fail("segment_n_bits and segment_sizes must be lists of positive ints")
    if len(n_bits) != len(sizes) or len(set(n_bits)) != len(n_bits):
        raise fail("segment_n_bits must be distinct and as long as segment_sizes")
    if score not in SCORE_POLICIES:
        raise fail(f"unknown score policy {score!r}")
    if type(flip_probability) not in (int, float) or not 0 < flip_probability < 0.5:
        raise fail(f"flip_probability {flip_probability!r} outside (0, 0.5)")
    if type(next_id) is not int or not 0 <= next_id <= _INT64_MAX + 1:
        raise fail(f"next_id {next_id!r} is not a non-negative int")
    segments = sorted(zip(n_bits, sizes, strict=True))
    return {
        "format_version": format_version,
        "pbeh_version": meta.get("pbeh_version", ""),
        "bit_order": bit_order,
        "segments": segments,
        "n_items": sum(sizes),
        "score": score,
        "flip_probability": float(flip_probability),
        "next_id": next_id,
    }
