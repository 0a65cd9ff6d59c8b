"""Cross-length score policies, the search result type and id validation shared by every index backend."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validation import check_choice, check_in_interval

__all__ = [
    "FILL_DISTANCE",
    "FILL_ID",
    "FILL_N_BITS",
    "FILL_SCORE",
    "SCORE_POLICIES",
    "SearchResult",
    "as_id_array",
    "score_distances",
]

#: The cross-length score policies :class:`~pbeh.index.TruncatedHammingIndex` accepts (see :mod:`pbeh.index`).
SCORE_POLICIES: tuple[str, ...] = ("hamming", "normalized", "zscore", "llr")

#: Fill values of :class:`SearchResult` where fewer than ``k`` items exist.
FILL_ID = -1
FILL_DISTANCE = -1
FILL_SCORE = -np.inf
FILL_N_BITS = 0

INT64_MAX = int(np.iinfo(np.int64).max)


def as_id_array(ids: Any, name: str = "ids") -> np.ndarray:
    """Validate ids: a 1-D array (or scalar) of non-negative integers, returned as a new int64 array."""
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
    if np.issubdtype(arr.dtype, np.unsignedinteger) and int(arr.max()) > INT64_MAX:
        raise ValueError(f"{name}: ids must fit in int64, got {int(arr.max())}")
    arr = arr.astype(np.int64, copy=True)
    if arr.min() < 0:
        raise ValueError(f"{name}: ids must be non-negative (-1 marks 'no result'), got {int(arr[arr < 0][0])}")
    return arr


def first_duplicates(sorted_ids: np.ndarray, limit: int = 5) -> list[int]:
    """Up to ``limit`` values that occur more than once in an ascending array (O(n), no hash table)."""
    if sorted_ids.size < 2:
        return []
    same = sorted_ids[1:] == sorted_ids[:-1]
    return np.unique(sorted_ids[1:][same][: 4 * limit])[:limit].tolist() if same.any() else []


def score_distances(distances: Any, n_bits_compared: Any, score: str, *, flip_probability: float = 0.2) -> np.ndarray:
    """Scores (float64, larger = better) of Hamming distances ``d`` over ``L`` compared bits, under a policy.

    ``"hamming"``: ``-d``; ``"normalized"``: ``1 - d / L``; ``"zscore"``: ``(L - 2d) / sqrt(L)``; ``"llr"``:
    ``(L - d) log(2(1 - p)) + d log(2p)``. See :mod:`pbeh.index` for why.

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

    Example:
        >>> from pbeh import Codes, TruncatedHammingIndex
        >>> index = TruncatedHammingIndex()
        >>> _ = index.add(Codes.from_bool([[0, 0, 0, 0], [1, 1, 1, 1]]), ids=[7, 9])
        >>> result = index.search(Codes.from_bool([[0, 0, 0, 1]]), k=3)
        >>> result.ids.tolist(), result.distances.tolist(), result.n_bits_compared.tolist()
        ([[7, 9, -1]], [[1, 3, -1]], [[4, 4, 0]])
    """

    ids: np.ndarray
    distances: np.ndarray
    scores: np.ndarray
    n_bits_compared: np.ndarray
    score: str

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def merge_by_distance(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-part top lists ``(distances int32 (nq, ki), ids int64 (nq, ki))`` into one top ``k``.

    Each part is sorted by (distance, id); missing entries carry id ``-1`` and sort last. The result is sorted by
    (distance ascending, id ascending), width ``min(k, sum ki)``.
    """
    if len(parts) == 1:
        dist, ids = parts[0]
        return dist[:, :k], ids[:, :k]
    dist = np.concatenate([d for d, _ in parts], axis=1).astype(np.int64)
    ids = np.concatenate([i for _, i in parts], axis=1)
    width = min(k, dist.shape[1])
    missing = ids < 0
    if missing.any():
        dist = np.where(missing, np.iinfo(np.int32).max, dist)
    id_span = int(ids.max()) + 2  # missing ids (-1) become 0 below, real ids shift by one
    shifted = np.where(missing, 0, ids + 1) if missing.any() else ids + 1
    if (int(dist.max()) + 1) * id_span <= INT64_MAX:
        order = np.argsort(dist * id_span + shifted, axis=1)[:, :width]
    else:
        order = np.lexsort((shifted, dist), axis=-1)[:, :width]
    rows = np.arange(order.shape[0])[:, None]  # (same as take_along_axis, without its per-call index building)
    return dist[rows, order].astype(np.int32), ids[rows, order]
