"""TruncatedHammingIndex: one Hamming index over codes of several lengths, with explicit int64 ids.

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

Backends
--------
Where the segments live is one argument, ``backend=``: ``"flat"`` (default: exact, in memory; see
:mod:`pbeh.index._flat` for the linear-time growth and the bounded truncation cache), ``"ivf"`` /
:class:`IVFBackend` (faiss inverted lists for large segments: approximate, ``nprobe`` per search) and
:class:`MilvusBackend` (one Milvus collection per code length, a Milvus Lite file or a server/cluster; exact on
``BIN_FLAT``). ``docs/backends.md`` explains how to choose and sizes each for 100M codes.

Speed
-----
Each segment is kept padded with zero bytes to a code size with a fast faiss kernel (4, 8, 16, 20, 32, 64 bytes; see
:mod:`pbeh._faiss`). A stored code longer than the query is compared on a truncated, re-padded copy of its segment,
built on the first query of that length and kept in a cache bounded by ``cache_bytes`` (least recently used copies
are dropped first; :meth:`TruncatedHammingIndex.clear_cache` frees it). faiss's OpenMP thread count is set to
``threads`` around each call and restored afterwards.
"""

from __future__ import annotations

from ._backends import Backend, FlatBackend, IVFBackend
from ._core import DEFAULT_CACHE_BYTES, TruncatedHammingIndex
from ._files import FORMAT_VERSION
from ._scoring import FILL_DISTANCE, FILL_ID, FILL_N_BITS, FILL_SCORE, SCORE_POLICIES, SearchResult, score_distances

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "FILL_DISTANCE",
    "FILL_ID",
    "FILL_N_BITS",
    "FILL_SCORE",
    "FORMAT_VERSION",
    "SCORE_POLICIES",
    "Backend",
    "FlatBackend",
    "IVFBackend",
    "MilvusBackend",
    "SearchResult",
    "TruncatedHammingIndex",
    "score_distances",
]


def __getattr__(name: str) -> object:
    # MilvusBackend is imported on first use: pymilvus is an optional extra (pbeh[milvus]).
    if name == "MilvusBackend":
        from ._milvus import MilvusBackend

        return MilvusBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
