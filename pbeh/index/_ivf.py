"""Approximate segments: a faiss binary inverted-file index (``IndexBinaryIVF``) beside the exact flat storage.

See :class:`pbeh.index.IVFBackend` for when the inverted lists are built and used. Results of an IVF search are
sorted by (distance, id) like every segment's, so the cross-length merge treats them as any other candidates; only
the candidate set is approximate (codes in lists that were not visited are missed).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from .. import _faiss
from ._flat import FlatSegment, TruncationCache
from ._scoring import merge_by_distance

__all__ = ["IVFSegment"]

_logger = logging.getLogger(__name__)


class IVFSegment(FlatSegment):
    """A flat segment that also keeps inverted lists once it holds ``min_size`` codes."""

    kind = "ivf"

    def __init__(self, n_bits: int, cache: TruncationCache, options: Any) -> None:
        super().__init__(n_bits, cache, chunk_bytes=options.chunk_bytes)
        self.options = options
        self._ivf: Any = None

    @property
    def trained(self) -> bool:
        """Whether the inverted lists exist (they are built by the first full-length search of a large segment)."""
        return self._ivf is not None

    def add(self, padded: np.ndarray, ids: np.ndarray) -> None:
        super().add(padded, ids)
        if self._ivf is not None and len(ids):
            _faiss.ivf_add(self._ivf, padded, ids)

    def adopt(self, chunks: list[np.ndarray], ids: np.ndarray) -> None:
        super().adopt(chunks, ids)
        self._ivf = None

    def remove(self, ids: np.ndarray) -> int:
        removed = super().remove(ids)
        if self._ivf is not None and removed:
            _faiss.ivf_remove(self._ivf, ids)
        return removed

    def build(self) -> None:
        """Train the inverted lists on a random sample and add every code (done lazily by :meth:`search`)."""
        n = len(self)
        nlist = min(n, self.options.nlist or max(1, round(math.sqrt(n))))
        train_size = min(n, self.options.train_size or 64 * nlist)
        rng = np.random.default_rng(self.options.seed)
        sample = np.sort(rng.choice(n, size=train_size, replace=False))
        train = self.get_padded(self.ids()[sample])
        index = _faiss.binary_ivf(train, nlist, seed=self.options.seed)
        for codes, ids in self.blocks():
            _faiss.ivf_add(index, np.ascontiguousarray(codes), ids)
        self._ivf = index
        _logger.info(
            "built %d inverted lists over %d codes of %d bits (trained on %d)", nlist, n, self.n_bits, train_size
        )

    def search(
        self, queries: np.ndarray, compared: int, k: int, *, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if compared < self.n_bits or len(self) < self.options.min_size:
            return super().search(queries, compared, k)
        if self._ivf is None:
            self.build()
        q = _faiss.pad_codes(np.ascontiguousarray(queries[:, : self.n_bytes]), self.code_size)
        dist, ids = _faiss.ivf_search(self._ivf, q, min(k, len(self)), nprobe or self.options.nprobe)
        # faiss orders ties by list, not id: sort each row by (distance, id), missing results last.
        return merge_by_distance([(dist, ids), (dist[:, :0], ids[:, :0])], k)
