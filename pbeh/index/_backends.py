"""Backends of :class:`~pbeh.index.TruncatedHammingIndex`: where each code-length segment lives and how it is searched.

A backend makes segments; a segment holds the codes of one length and answers ``add``, ``remove``, ``contains``,
``get_padded``, ``ids``, ``blocks`` (for saving) and ``search`` (top ``k`` by (distance, id) on the first ``compared``
bits). Everything else (ids, validation, the cross-length merge, files) is shared, so switching backends is one
argument.
"""

from __future__ import annotations

from typing import Any

from .._validation import check_int, check_positive_int
from ._flat import DEFAULT_CHUNK_BYTES, FlatSegment, TruncationCache

__all__ = ["Backend", "FlatBackend", "IVFBackend", "resolve_backend"]


class Backend:
    """Base class: how a backend makes, opens and drops segments."""

    name = "backend"

    def new_segment(self, n_bits: int, cache: TruncationCache) -> Any:
        raise NotImplementedError

    def open_segments(self, cache: TruncationCache) -> dict[int, Any]:
        """Segments that already exist when an index is created on this backend (none for in-memory backends)."""
        return {}

    def drop_segment(self, segment: Any) -> None:
        """Release what an emptied segment holds outside the process (nothing for in-memory backends)."""


class FlatBackend(Backend):
    """Exact in-memory segments (the default): faiss's flat Hamming scan over id-sorted chunks.

    Args:
        chunk_bytes: bytes of padded codes per chunk (a segment is scanned chunk by chunk); at least 1024.
    """

    name = "flat"

    def __init__(self, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        self.chunk_bytes = check_int(chunk_bytes, "chunk_bytes", minimum=1024)

    def new_segment(self, n_bits: int, cache: TruncationCache) -> FlatSegment:
        return FlatSegment(n_bits, cache, chunk_bytes=self.chunk_bytes)

    def __repr__(self) -> str:
        return (
            "FlatBackend()"
            if self.chunk_bytes == DEFAULT_CHUNK_BYTES
            else f"FlatBackend(chunk_bytes={self.chunk_bytes})"
        )


class IVFBackend(Backend):
    """Approximate segments for large databases: a faiss ``IndexBinaryIVF`` over each segment of ``min_size`` codes.

    A segment with at least ``min_size`` codes gets an inverted-file index, trained (binary k-means) on a random
    sample of ``train_size`` of its codes the first time a full-length query searches it, then kept up to date by
    every add and remove (no retraining). A query searches the ``nprobe`` inverted lists nearest to it. Smaller
    segments, and queries shorter than a segment's codes (which compare a prefix the lists were not built on), use
    the exact flat scan. The flat codes are kept as well, so memory is about twice the flat backend's (codes + ids
    in the inverted lists); the index file is the same.

    Args:
        nlist: inverted lists per segment; ``None``: ``round(sqrt(n))`` at training time, at least 1.
        nprobe: lists searched per query (default of :meth:`TruncatedHammingIndex.search`).
        min_size: segments below this size stay flat.
        train_size: codes sampled for training; ``None``: ``min(n, 64 * nlist)``.
        seed: seed of the training sample and k-means.
        chunk_bytes: as for :class:`FlatBackend` (the flat copy).
    """

    name = "ivf"

    def __init__(
        self,
        *,
        nlist: int | None = None,
        nprobe: int = 16,
        min_size: int = 100_000,
        train_size: int | None = None,
        seed: int = 0,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        self.nlist = None if nlist is None else check_positive_int(nlist, "nlist")
        self.nprobe = check_positive_int(nprobe, "nprobe")
        self.min_size = check_positive_int(min_size, "min_size")
        self.train_size = None if train_size is None else check_positive_int(train_size, "train_size")
        self.seed = check_int(seed, "seed", minimum=0)
        self.chunk_bytes = check_int(chunk_bytes, "chunk_bytes", minimum=1024)

    def new_segment(self, n_bits: int, cache: TruncationCache) -> Any:
        from ._ivf import IVFSegment

        return IVFSegment(n_bits, cache, self)

    def __repr__(self) -> str:
        return f"IVFBackend(nlist={self.nlist}, nprobe={self.nprobe}, min_size={self.min_size})"


def resolve_backend(backend: Any) -> Backend:
    """A :class:`Backend` from ``"flat"``, ``"ivf"`` or a backend object."""
    if isinstance(backend, Backend):
        return backend
    if backend == "flat":
        return FlatBackend()
    elif backend == "ivf":
        return IVFBackend()
    else:
        raise ValueError(
            f"backend: expected 'flat', 'ivf', FlatBackend(...), IVFBackend(...) or MilvusBackend(...), got {backend!r}"
        )
