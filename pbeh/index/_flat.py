"""Exact flat segments: the codes of one length in growable, id-sorted runs of fixed-size chunks.

Storage
-------
A segment holds its codes padded to a fast faiss code size (:func:`pbeh._faiss.padded_code_size`) in one or more
*runs*. A run is sorted by id; its codes live in *chunks* of at most ``chunk_rows`` rows (all full but the last),
its ids in one growable array. Growth is geometric (the last chunk doubles up to ``chunk_rows``, the id array grows
by half), so adding ``n`` codes in any number of batches costs O(n) copies in total.

* A batch whose ids are all above the last run's largest id (automatic ids, or any increasing explicit ids) is
  appended to the last run in place.
* Any other batch becomes a new run; runs are then merged like a binary counter (while the last run is at least half
  as long as the one before it, the two are merged), so there are at most ``log2(n) + 1`` runs and each code is
  copied O(log n) times: O(n log n) in the worst case, O(n) for increasing ids.

Search is exact: every chunk gives its top ``k`` in (distance, position) order, which is (distance, id) order inside
a run; the parts are merged by (distance, id).

Truncated copies
----------------
A query shorter than the stored codes compares them on a truncated, re-padded copy of each chunk. Copies are kept in
a :class:`TruncationCache` bounded in bytes (least recently used first out); a copy larger than the whole bound is
built for the search and dropped. Changing a chunk drops its copies.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np

from .. import _faiss
from ._scoring import merge_by_distance

__all__ = ["DEFAULT_CHUNK_BYTES", "FlatSegment", "TruncationCache", "truncate_padded"]

_logger = logging.getLogger(__name__)

#: Bytes of padded codes per chunk (the last chunk of a run grows up to this).
DEFAULT_CHUNK_BYTES = 16 << 20
_serials = itertools.count()


def _tail_mask(n_bits: int) -> int:
    r = n_bits % 8
    return 0xFF if r == 0 else (0xFF << (8 - r)) & 0xFF


def truncate_padded(block: np.ndarray, n_bits: int, width: int) -> np.ndarray:
    """The first ``n_bits`` bits of every row of ``block`` (uint8, padded codes), zero-padded to ``width`` bytes."""
    n_bytes = (n_bits + 7) // 8
    out = np.zeros((block.shape[0], width), dtype=np.uint8)
    out[:, :n_bytes] = block[:, :n_bytes]
    if n_bits % 8:
        out[:, n_bytes - 1] &= _tail_mask(n_bits)
    return out


class TruncationCache:
    """Truncated chunk copies for queries shorter than the stored codes, bounded by ``max_bytes`` (LRU)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self.n_bytes = 0

    def get(self, serial: int, n_bits: int, build: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached copy for (chunk ``serial``, ``n_bits``), built with ``build()`` and cached if it fits."""
        key = (serial, n_bits)
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            return hit
        value = build()
        if value.nbytes <= self.max_bytes:
            while self._entries and self.n_bytes + value.nbytes > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self.n_bytes -= old.nbytes
            value.setflags(write=False)
            self._entries[key] = value
            self.n_bytes += value.nbytes
        return value

    def discard(self, serials: list[int]) -> None:
        """Drop every copy of the given chunks."""
        drop = set(serials)
        for key in [key for key in self._entries if key[0] in drop]:
            self.n_bytes -= self._entries.pop(key).nbytes

    def clear(self) -> None:
        self._entries.clear()
        self.n_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)


class _Run:
    """Codes sorted by id: fixed-size chunks of padded codes and one growable id array."""

    __slots__ = ("_ids", "chunk_rows", "chunks", "code_size", "n", "serials")

    def __init__(self, code_size: int, chunk_rows: int) -> None:
        self.code_size = code_size
        self.chunk_rows = chunk_rows
        self.chunks: list[np.ndarray] = []  # each (capacity, code_size); all but the last hold chunk_rows rows
        self.serials: list[int] = []
        self._ids = np.zeros(0, dtype=np.int64)
        self.n = 0

    def __len__(self) -> int:
        return self.n

    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self.n]

    def chunk_views(self) -> Iterator[tuple[int, np.ndarray, int]]:
        """(serial, filled rows of the chunk, position of its first row) for every chunk."""
        for i, chunk in enumerate(self.chunks):
            start = i * self.chunk_rows
            yield self.serials[i], chunk[: min(self.chunk_rows, self.n - start)], start

    def append(self, padded: np.ndarray, ids: np.ndarray, cache: TruncationCache | None) -> None:
        """Append codes whose ids are ascending and above every id of the run (amortised O(len(ids)))."""
        b = len(ids)
        if self.n + b > self._ids.shape[0]:
            grown = np.empty(max(self.n + b, self._ids.shape[0] * 3 // 2 + 16), dtype=np.int64)
            grown[: self.n] = self._ids[: self.n]
            self._ids = grown
        self._ids[self.n : self.n + b] = ids
        done = 0
        while done < b:
            used = self.n - (len(self.chunks) - 1) * self.chunk_rows if self.chunks else self.chunk_rows
            if used == self.chunk_rows:  # last chunk full (or none): open a new one
                capacity = min(self.chunk_rows, max(b - done, 64))
                self.chunks.append(np.empty((capacity, self.code_size), dtype=np.uint8))  # rows past n: never read
                self.serials.append(next(_serials))
                used = 0
            chunk = self.chunks[-1]
            take = min(b - done, self.chunk_rows - used)
            if used + take > chunk.shape[0]:  # grow the last chunk geometrically
                bigger = np.empty(
                    (min(self.chunk_rows, max(used + take, 2 * chunk.shape[0])), self.code_size), np.uint8
                )
                bigger[:used] = chunk[:used]
                self.chunks[-1] = chunk = bigger
            chunk[used : used + take] = padded[done : done + take]
            if cache is not None and used:
                cache.discard([self.serials[-1]])
            self.serials[-1] = next(_serials)
            done += take
            self.n += take

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """Padded codes at ``positions`` (int array), in that order."""
        out = np.empty((len(positions), self.code_size), dtype=np.uint8)
        which = positions // self.chunk_rows
        for c in range(len(self.chunks)):
            mask = which == c
            if mask.any():
                out[mask] = self.chunks[c][positions[mask] - c * self.chunk_rows]
        return out

    def rows_range(self, start: int, stop: int) -> np.ndarray:
        """Padded codes of positions ``start:stop`` (a copy)."""
        return self.rows(np.arange(start, stop, dtype=np.int64))

    def drop(self, cache: TruncationCache | None) -> None:
        if cache is not None:
            cache.discard(self.serials)


def merged_blocks(runs: list[_Run], block_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (padded codes, ids) of all runs in ascending id order, in blocks of at most ``len(runs) * block_rows``."""
    if len(runs) == 1:  # views, no copies
        run = runs[0]
        for _, codes, first in run.chunk_views():
            for start in range(0, codes.shape[0], block_rows):
                stop = min(codes.shape[0], start + block_rows)
                yield codes[start:stop], run.ids[first + start : first + stop]
        return
    lo = [0] * len(runs)
    while any(lo[r] < len(run) for r, run in enumerate(runs)):
        bounds = [run.ids[lo[r] + block_rows] for r, run in enumerate(runs) if lo[r] + block_rows < len(run)]
        hi = [len(run) if not bounds else int(np.searchsorted(run.ids, min(bounds))) for run in runs]
        ids = np.concatenate([run.ids[lo[r] : hi[r]] for r, run in enumerate(runs)])
        codes = np.concatenate([run.rows_range(lo[r], hi[r]) for r, run in enumerate(runs)])
        order = np.argsort(ids, kind="stable")
        yield codes[order], ids[order]
        lo = hi


class FlatSegment:
    """The codes of one length, searched exactly (see the module docstring)."""

    kind = "flat"

    def __init__(self, n_bits: int, cache: TruncationCache, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        self.n_bits = n_bits
        self.n_bytes = (n_bits + 7) // 8
        self.code_size = _faiss.padded_code_size(self.n_bytes)
        self.chunk_rows = max(16, chunk_bytes // self.code_size)
        self.cache = cache
        self.runs: list[_Run] = []

    def __len__(self) -> int:
        return sum(len(run) for run in self.runs)

    # ------------------------------------------------------------------ reading
    def ids(self) -> np.ndarray:
        """All ids, ascending (a new array)."""
        if len(self.runs) == 1:
            return self.runs[0].ids.copy()
        if not self.runs:
            return np.zeros(0, dtype=np.int64)
        return np.sort(np.concatenate([run.ids for run in self.runs]), kind="stable")

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each id: its run (-1 if absent) and position in that run. O(len(ids) log n), no hash table."""
        run_of = np.full(len(ids), -1, dtype=np.int64)
        position = np.zeros(len(ids), dtype=np.int64)
        for r, run in enumerate(self.runs):
            pos = np.searchsorted(run.ids, ids)
            clipped = np.minimum(pos, len(run) - 1)
            hit = (pos < len(run)) & (run.ids[clipped] == ids)
            run_of[hit], position[hit] = r, pos[hit]
        return run_of, position

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return self.locate(ids)[0] >= 0

    def get_padded(self, ids: np.ndarray) -> np.ndarray:
        """Padded codes of ``ids`` (all stored here), in the order given."""
        run_of, position = self.locate(ids)
        out = np.empty((len(ids), self.code_size), dtype=np.uint8)
        for r, run in enumerate(self.runs):
            mask = run_of == r
            if mask.any():
                out[mask] = run.rows(position[mask])
        return out

    def adopt(self, chunks: list[np.ndarray], ids: np.ndarray) -> None:
        """Take ownership of loaded storage: ``chunks`` of ``chunk_rows`` rows (the last may be shorter) and ``ids``.

        The segment must be empty; ``ids`` ascending and unique (the loader checks).
        """
        if self.runs:
            raise RuntimeError("adopt: the segment is not empty")
        run = _Run(self.code_size, self.chunk_rows)
        run.chunks = chunks
        run.serials = [next(_serials) for _ in chunks]
        run._ids = ids
        run.n = len(ids)
        if run.n:
            self.runs = [run]

    def blocks(self, block_rows: int = 1 << 18) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(padded codes, ids) of the whole segment in ascending id order, block by block."""
        if self.runs:
            yield from merged_blocks(self.runs, block_rows)

    # ------------------------------------------------------------------ changes
    def add(self, padded: np.ndarray, ids: np.ndarray) -> None:
        """Store padded codes under ``ids`` (ascending, unique, none stored yet). The codes are copied."""
        if len(ids) == 0:
            return
        if self.runs and ids[0] > self.runs[-1].ids[-1]:
            self.runs[-1].append(padded, ids, self.cache)
        else:
            run = _Run(self.code_size, self.chunk_rows)
            run.append(padded, ids, self.cache)
            self.runs.append(run)
        while len(self.runs) >= 2 and 2 * len(self.runs[-1]) >= len(self.runs[-2]):
            self._merge_last_two()

    def _merge_last_two(self) -> None:
        a, b = self.runs[-2], self.runs[-1]
        merged = _Run(self.code_size, self.chunk_rows)
        for codes, ids in merged_blocks([a, b], self.chunk_rows):
            merged.append(codes, ids, None)
        a.drop(self.cache)
        b.drop(self.cache)
        self.runs[-2:] = [merged]
        _logger.debug("merged two runs of %d-bit codes into one of %d", self.n_bits, len(merged))

    def remove(self, ids: np.ndarray) -> int:
        """Remove the stored ones of ``ids``; returns how many were removed."""
        run_of, position = self.locate(ids)
        removed = 0
        for r in np.unique(run_of[run_of >= 0]).tolist():
            run = self.runs[r]
            keep = np.ones(len(run), dtype=bool)
            keep[position[run_of == r]] = False
            removed += int(len(run) - keep.sum())
            rebuilt = _Run(self.code_size, self.chunk_rows)
            kept = np.flatnonzero(keep)
            for start in range(0, len(kept), self.chunk_rows):
                rows = kept[start : start + self.chunk_rows]
                rebuilt.append(run.rows(rows), run.ids[rows], None)
            run.drop(self.cache)
            self.runs[r] = rebuilt
        self.runs = [run for run in self.runs if len(run)]
        return removed

    def drop_cache(self) -> None:
        for run in self.runs:
            run.drop(self.cache)

    # ------------------------------------------------------------------ search
    def search(
        self, queries: np.ndarray, compared: int, k: int, *, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` by (distance, id) of ``queries`` (packed, ``compared`` bits, zero-padded to any width).

        Returns ``(distances int32 (nq, min(k, n)), ids int64 (nq, min(k, n)))``.
        """
        n_bytes = (compared + 7) // 8
        width = self.code_size if compared >= self.n_bits else _faiss.padded_code_size(n_bytes)
        q = (
            np.ascontiguousarray(queries)
            if queries.shape[1] == width
            else _faiss.pad_codes(np.ascontiguousarray(queries[:, :n_bytes]), width)
        )
        # Every database block below is C-contiguous uint8 of `width` bytes (chunk rows or cached truncated copies).
        if compared >= self.n_bits and len(self.runs) == 1 and len(self.runs[0].chunks) == 1:
            run = self.runs[0]  # one chunk: faiss's (distance, position) order is (distance, id)
            dist, pos = _faiss.knn_hamming_unchecked(q, run.chunks[0][: run.n], min(int(k), run.n))
            return dist, run.ids[pos]
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        for run in self.runs:
            for serial, codes, start in run.chunk_views():
                if compared < self.n_bits:
                    build = functools.partial(truncate_padded, codes, compared, width)
                    database = self.cache.get(serial, compared, build)
                else:
                    database = codes
                dist, pos = _faiss.knn_hamming_unchecked(q, database, min(int(k), codes.shape[0]))
                parts.append((dist, run.ids[start + pos]))
        return merge_by_distance(parts, k)
