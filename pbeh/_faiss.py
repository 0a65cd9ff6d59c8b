"""Thin, typed wrappers around faiss's binary (Hamming) search: the only pbeh module that imports faiss.

faiss is imported lazily, on the first call that needs it, so ``import pbeh`` neither loads faiss nor touches its
OpenMP thread pool.

What the wrappers encode (measured on the project's 2-core AVX2 machines, 1 thread):

* faiss has specialised Hamming kernels for code sizes of 4, 8, 16, 20, 32 and 64 bytes; every other size falls back
  to a generic loop that is about 3.5x slower (e.g. 6 bytes: 0.29 G comparisons/s against about 1 G/s for 8 bytes).
  :func:`padded_code_size` therefore rounds a code size up to the next fast size. Padding bytes are zero on both sides
  of a comparison, so the XOR-popcount, hence the distance, is unchanged. Above 64 bytes all sizes take the generic
  loop, whose cost grows with the size; multiples of 8 bytes are the fastest there (65 bytes is slower than 72), so
  sizes above 64 bytes are rounded up to a multiple of 8.
* ``hammings_knn_hc`` (what ``IndexBinaryFlat.search`` runs) scans the database in position order and keeps a heap
  ordered by (distance, position), so its top-k is exactly the first k items in (distance, position) order: ties are
  broken by ascending position, deterministically. pbeh relies on this (and tests it) to break ties by id.
* Two OpenMP threads on a shared 2-core machine can be 100x slower than one; :func:`omp_threads` sets faiss's
  thread count around a call and restores it afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = [
    "FAST_CODE_SIZES",
    "binary_ivf",
    "flat_index",
    "get_num_threads",
    "ivf_add",
    "ivf_remove",
    "ivf_search",
    "knn_hamming",
    "knn_hamming_unchecked",
    "omp_threads",
    "pad_codes",
    "padded_code_size",
]

#: Code sizes in bytes for which faiss has a specialised Hamming kernel.
FAST_CODE_SIZES: tuple[int, ...] = (4, 8, 16, 20, 32, 64)


_heaps = threading.local()  # knn_hamming_unchecked's heap descriptor (it holds pointers into the call's arrays)


@functools.cache
def _faiss() -> Any:
    import faiss

    return faiss


def padded_code_size(n_bytes: int) -> int:
    """The code size (bytes) to pad ``n_bytes``-byte codes to for faiss's fastest kernel.

    Example:
        >>> [padded_code_size(n) for n in (1, 4, 6, 12, 17, 24, 40, 65, 100)]
        [4, 4, 8, 16, 20, 32, 64, 72, 104]
    """
    if isinstance(n_bytes, bool) or not isinstance(n_bytes, (int, np.integer)) or n_bytes < 1:
        raise ValueError(f"n_bytes: expected a positive int, got {n_bytes!r}")
    for size in FAST_CODE_SIZES:
        if n_bytes <= size:
            return size
    return -(-int(n_bytes) // 8) * 8


def pad_codes(packed: np.ndarray, code_size: int) -> np.ndarray:
    """Right-pad packed codes ``uint8 (n, b)`` with zero bytes to ``(n, code_size)``, C-contiguous.

    Returns ``packed`` itself (made contiguous) when it already has ``code_size`` bytes per row.

    Example:
        >>> pad_codes(np.array([[1, 2, 3]], dtype=np.uint8), 4).tolist()
        [[1, 2, 3, 0]]
    """
    arr = np.asarray(packed)
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ValueError(f"packed: expected a uint8 array of shape (n, n_bytes), got {arr.dtype} {arr.shape}")
    if arr.shape[1] > code_size:
        raise ValueError(f"code_size: {code_size} bytes cannot hold codes of {arr.shape[1]} bytes")
    if arr.shape[1] == code_size:
        return np.ascontiguousarray(arr)
    out = np.zeros((arr.shape[0], code_size), dtype=np.uint8)
    out[:, : arr.shape[1]] = arr
    return out


def get_num_threads() -> int:
    """faiss's current OpenMP thread count (``faiss.omp_get_max_threads()``)."""
    return int(_faiss().omp_get_max_threads())


@contextlib.contextmanager
def omp_threads(n_threads: int | None) -> Iterator[None]:
    """Run the body with faiss using ``n_threads`` OpenMP threads, then restore the previous count.

    ``None`` leaves the current setting alone.

    Example:
        >>> before = get_num_threads()
        >>> with omp_threads(1):
        ...     get_num_threads()
        1
        >>> get_num_threads() == before
        True
    """
    if n_threads is None:
        yield
        return
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) or n_threads < 1:
        raise ValueError(f"n_threads: expected a positive int or None, got {n_threads!r}")
    faiss = _faiss()
    previous = int(faiss.omp_get_max_threads())
    if previous == n_threads:
        yield
        return
    faiss.omp_set_num_threads(int(n_threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _check_database(name: str, arr: np.ndarray) -> np.ndarray:
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 2:
        got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise ValueError(f"{name}: expected a uint8 array of shape (n, code_size), got {got}")
    return np.ascontiguousarray(arr)


def knn_hamming(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by Hamming distance, without building an index.

    Runs faiss's heap search (the kernel of ``IndexBinaryFlat.search``) directly on the arrays, so the database is
    neither copied nor kept. The result of each query is sorted by (distance, database position): ties are broken
    by ascending position.

    Args:
        queries: ``uint8 (nq, code_size)`` packed codes.
        database: ``uint8 (nb, code_size)`` packed codes, same ``code_size``.
        k: neighbours per query, ``1 <= k``; positions past ``nb`` come back as ``-1`` (distance ``INT32_MAX``).

    Returns:
        ``(distances int32 (nq, k), positions int64 (nq, k))``.

    Example:
        >>> db = np.array([[0, 0, 0, 0], [255, 0, 0, 0], [1, 0, 0, 0]], dtype=np.uint8)
        >>> d, i = knn_hamming(np.zeros((1, 4), dtype=np.uint8), db, 2)
        >>> d.tolist(), i.tolist()
        ([[0, 1]], [[0, 2]])
    """
    q = _check_database("queries", queries)
    db = _check_database("database", database)
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"queries: expected {db.shape[1]} bytes per code like the database, got {q.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    return knn_hamming_unchecked(q, db, int(k))


def knn_hamming_unchecked(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`knn_hamming` without its argument checks, for the index's own scans (a few microseconds less per
    call, which a one-query search over several segments pays once per segment).

    The caller guarantees: C-contiguous ``uint8`` 2-d arrays of the same width, and ``k`` a positive Python int.
    """
    faiss = _faiss()
    nq = queries.shape[0]
    distances = np.empty((nq, k), dtype=np.int32)
    positions = np.empty((nq, k), dtype=np.int64)
    if nq == 0:
        return distances, positions
    heap = getattr(_heaps, "heap", None)
    if heap is None:  # one result-heap descriptor per thread, refilled per call (building one costs about 1 µs)
        heap = _heaps.heap = faiss.int_maxheap_array_t()
    heap.k = k
    heap.nh = nq
    heap.ids = faiss.swig_ptr(positions)
    heap.val = faiss.swig_ptr(distances)
    n, code_size = database.shape[0], queries.shape[1]
    faiss.hammings_knn_hc(heap, faiss.swig_ptr(queries), faiss.swig_ptr(database), n, code_size, 1)
    return distances, positions


def flat_index(packed: np.ndarray) -> Any:
    """A ``faiss.IndexBinaryFlat`` holding ``packed`` (``uint8 (n, code_size)``); the benchmarks' baseline."""
    db = _check_database("packed", packed)
    index = _faiss().IndexBinaryFlat(db.shape[1] * 8)
    if db.shape[0]:
        index.add(db)
    return index


def binary_ivf(train: np.ndarray, nlist: int, *, seed: int = 0) -> Any:
    """A ``faiss.IndexBinaryIVF`` over codes of ``train.shape[1]`` bytes with ``nlist`` lists, trained on ``train``.

    Training is binary k-means (faiss clusters the codes as 0/1 vectors), seeded with ``seed``.
    """
    db = _check_database("train", train)
    faiss = _faiss()
    quantizer = faiss.IndexBinaryFlat(db.shape[1] * 8)
    index = faiss.IndexBinaryIVF(quantizer, db.shape[1] * 8, int(nlist))
    index.own_fields = True
    quantizer.this.disown()
    index.cp.seed = int(seed)
    index.train(db)
    return index


def ivf_add(index: Any, codes: np.ndarray, ids: np.ndarray) -> None:
    """Add ``codes`` (``uint8 (n, code_size)``) under ``ids`` (``int64 (n,)``) to a binary IVF index."""
    db = _check_database("codes", codes)
    index.add_with_ids(db, np.ascontiguousarray(ids, dtype=np.int64))


def ivf_remove(index: Any, ids: np.ndarray) -> int:
    """Remove ``ids`` from a binary IVF index; returns how many were removed."""
    return int(index.remove_ids(_faiss().IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))))


def ivf_search(index: Any, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top ``k`` of a binary IVF index visiting ``nprobe`` lists: ``(distances int32, ids int64)``.

    Missing results (fewer than ``k`` codes in the visited lists) have id ``-1``.
    """
    q = _check_database("queries", queries)
    index.nprobe = int(nprobe)
    distances, ids = index.search(q, int(k))
    return distances.astype(np.int32, copy=False), ids.astype(np.int64, copy=False)
