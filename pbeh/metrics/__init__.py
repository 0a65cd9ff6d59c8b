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

Modules (private; everything public is imported from here): ``_ranking`` (inputs, relevance, distances, histograms),
``_average_precision`` (:func:`average_precision_per_query`, :func:`map_at_k`), ``_precision_recall``
(:func:`expected_hits`, :func:`precision_at_k`, :func:`recall_at_k`, :func:`pr_curve`) and ``_continual``
(:class:`ContinualMatrix`).
"""

from __future__ import annotations

# The private helpers (aliased) are imported from pbeh.metrics by pbeh.evaluation, bench/map_bench.py and the tests.
from ._average_precision import _ap_average as _ap_average
from ._average_precision import _harmonic as _harmonic
from ._average_precision import average_precision_per_query, map_at_k
from ._continual import ContinualMatrix
from ._continual import PathLike as PathLike
from ._precision_recall import PRCurve, expected_hits, pr_curve, precision_at_k, recall_at_k
from ._ranking import _BLOCK_PAIRS as _BLOCK_PAIRS
from ._ranking import _distances as _distances
from ._ranking import _prepare as _prepare

# In reading order (the API page lists the names in this order).
__all__ = [  # noqa: RUF022
    "average_precision_per_query",
    "map_at_k",
    "expected_hits",
    "precision_at_k",
    "recall_at_k",
    "PRCurve",
    "pr_curve",
    "ContinualMatrix",
]
