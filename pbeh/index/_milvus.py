"""Milvus backend: each code-length segment in its own Milvus collection (``BINARY_VECTOR``, ``HAMMING``, ``BIN_FLAT``).

The same code reaches Milvus Lite (a local file, ``uri="./codes.db"``: tests and small users) and a Milvus server or
cluster (``uri="http://host:19530"``, ``token="user:password"``). Needs the optional extra ``pbeh[milvus]``
(``pymilvus`` 2.5 and ``milvus-lite`` 2.5.1; Milvus Lite 3.x has no binary vectors).

Layout: collection ``<prefix>_<n_bits>`` holds the codes of one length (primary key ``id`` INT64, vector ``code``
BINARY_VECTOR of ``8 * ceil(n_bits / 8)`` bits, padding bits zero, so the Hamming distance is the distance on the
real bits). A query shorter than the stored codes is compared on a truncated copy, collection
``<prefix>_<n_bits>_as_<bits>``, built on the first such query and kept in sync by every add and remove (the Milvus
counterpart of the flat index's truncation cache; :meth:`TruncatedHammingIndex.clear_cache` drops these copies).

Exactness: ``BIN_FLAT`` is an exact scan, so the top ``k`` by distance is exact; ties at the ``k``-th distance are
resolved by a range search for that distance (``range_filter <= d < radius``) that returns the tied items, of which the
smallest ids are kept. Results then equal the flat index's exactly (tested), as long as at most 16,384 items tie at the
cut-off (Milvus's limit per search; beyond it a warning is logged). ``k`` is at most 16,384.

The process keeps a sorted copy of every segment's ids (8 bytes per code) for duplicate checks and lookups; it is read
back from the collections when an index is created on a backend that already holds them. Score policy and
``flip_probability`` are arguments of the index, not stored in Milvus; ``next_id`` restarts at the largest stored id +
1.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re
import sys
import types
from collections.abc import Iterator
from typing import Any

import numpy as np

from .._validation import check_positive_int
from ._backends import Backend
from ._flat import TruncationCache, truncate_padded

__all__ = ["MilvusBackend"]

_logger = logging.getLogger(__name__)

MAX_TOPK = 16_384  # Milvus's limit on k and on rows returned by one query
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}")


def _import_pymilvus() -> Any:
    """Import pymilvus; milvus-lite 2.5.1 imports ``pkg_resources``, gone from setuptools >= 81: shim it if absent."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        shim = types.ModuleType("pkg_resources")

        class DistributionNotFound(Exception):  # the name milvus-lite imports
            pass

        def get_distribution(name: str) -> Any:
            try:
                return types.SimpleNamespace(version=importlib.metadata.version(name))
            except importlib.metadata.PackageNotFoundError as exc:
                raise DistributionNotFound(name) from exc

        shim.DistributionNotFound = DistributionNotFound  # type: ignore[attr-defined]
        shim.get_distribution = get_distribution  # type: ignore[attr-defined]
        sys.modules.setdefault("pkg_resources", shim)
    try:
        return importlib.import_module("pymilvus")
    except ImportError as exc:
        raise ImportError(
            "MilvusBackend needs pymilvus (and milvus-lite for local files): pip install 'pbeh[milvus]'"
        ) from exc


class MilvusBackend(Backend):
    """Segments in Milvus collections, one per code length (see :mod:`pbeh.index._milvus`).

    Args:
        uri: a Milvus Lite file (``"./codes.db"``) or a server/cluster address (``"http://host:19530"``).
        token: credentials for a server (``"user:password"`` or an API key); empty for Milvus Lite.
        db_name: the Milvus database (server only); empty for the default.
        collection_prefix: collections are named ``<prefix>_<n_bits>``; letters, digits and ``_``.
        batch_size: rows per insert and per read-back query (at most 16,384).
    """

    name = "milvus"

    def __init__(
        self,
        uri: str = "./pbeh_milvus.db",
        *,
        token: str = "",
        db_name: str = "",
        collection_prefix: str = "pbeh",
        batch_size: int = 10_000,
    ) -> None:
        if not isinstance(uri, str) or not uri:
            raise ValueError(f"uri: expected a Milvus Lite file path or a server URI, got {uri!r}")
        if not isinstance(token, str) or not isinstance(db_name, str):
            raise TypeError(f"token, db_name: expected strings, got {type(token).__name__}, {type(db_name).__name__}")
        if not isinstance(collection_prefix, str) or not _NAME.fullmatch(collection_prefix):
            raise ValueError(
                f"collection_prefix: expected letters, digits and '_' (not starting with a digit), got "
                f"{collection_prefix!r}"
            )
        self.uri, self.token, self.db_name, self.prefix = uri, token, db_name, collection_prefix
        self.batch_size = check_positive_int(batch_size, "batch_size")
        if self.batch_size > MAX_TOPK:
            raise ValueError(f"batch_size: expected at most {MAX_TOPK}, got {batch_size}")
        self._client: Any = None

    def __repr__(self) -> str:
        return f"MilvusBackend(uri={self.uri!r}, collection_prefix={self.prefix!r})"

    @property
    def client(self) -> Any:
        """The ``pymilvus.MilvusClient`` (connected on first use)."""
        if self._client is None:
            pymilvus = _import_pymilvus()
            kwargs = {"uri": self.uri, "token": self.token}
            if self.db_name:
                kwargs["db_name"] = self.db_name
            self._client = pymilvus.MilvusClient(**kwargs)
        return self._client

    def close(self) -> None:
        """Close the connection (a later call reconnects)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def orm_collection(self, name: str) -> Any:
        """The ``pymilvus.Collection`` of ``name`` on the client's connection (for column-wise inserts), or None."""
        alias = getattr(self.client, "_using", None)
        if alias is None:  # pragma: no cover - depends on the pymilvus version
            return None
        return _import_pymilvus().Collection(name, using=alias)

    def collection(self, n_bits: int, compared: int | None = None) -> str:
        return f"{self.prefix}_{n_bits}" if compared is None else f"{self.prefix}_{n_bits}_as_{compared}"

    def create_collection(self, name: str, n_bits: int) -> None:
        pymilvus = _import_pymilvus()
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("code", pymilvus.DataType.BINARY_VECTOR, dim=8 * ((n_bits + 7) // 8))
        params = self.client.prepare_index_params()
        params.add_index(field_name="code", index_type="BIN_FLAT", metric_type="HAMMING")
        self.client.create_collection(name, schema=schema, index_params=params, consistency_level="Strong")

    def new_segment(self, n_bits: int, cache: TruncationCache) -> MilvusSegment:
        name = self.collection(n_bits)
        if self.client.has_collection(name):
            raise ValueError(f"backend: collection {name!r} already exists in {self.uri!r}")
        self.create_collection(name, n_bits)
        return MilvusSegment(self, n_bits, np.zeros(0, dtype=np.int64), [])

    def open_segments(self, cache: TruncationCache) -> dict[int, MilvusSegment]:
        names = set(self.client.list_collections())
        main = re.compile(re.escape(self.prefix) + r"_([0-9]+)")
        view = re.compile(re.escape(self.prefix) + r"_([0-9]+)_as_([0-9]+)")
        segments: dict[int, MilvusSegment] = {}
        for name in sorted(names):
            match = main.fullmatch(name)
            if match:
                n_bits = int(match.group(1))
                views = sorted(int(m.group(2)) for m in map(view.fullmatch, names) if m and int(m.group(1)) == n_bits)
                segment = MilvusSegment(self, n_bits, self._read_ids(name), views)
                if len(segment):
                    segments[n_bits] = segment
        return segments

    def _read_ids(self, name: str) -> np.ndarray:
        self.client.load_collection(name)
        iterator = self.client.query_iterator(name, batch_size=self.batch_size, filter="id >= 0", output_fields=["id"])
        parts = []
        while True:
            rows = iterator.next()
            if not rows:
                break
            parts.append(np.array([row["id"] for row in rows], dtype=np.int64))
        iterator.close()
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    def drop_segment(self, segment: Any) -> None:
        for compared in [*segment.views, None]:
            self.client.drop_collection(self.collection(segment.n_bits, compared))


class MilvusSegment:
    """The codes of one length in a Milvus collection, with a sorted copy of their ids in the process."""

    kind = "milvus"

    def __init__(self, backend: MilvusBackend, n_bits: int, ids: np.ndarray, views: list[int]) -> None:
        self.backend = backend
        self.n_bits = n_bits
        self.n_bytes = (n_bits + 7) // 8
        self.code_size = self.n_bytes
        self.chunk_rows = backend.batch_size
        self._ids = ids
        self.views = list(views)  # compared lengths with a truncated copy

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    @property
    def client(self) -> Any:
        return self.backend.client

    def ids(self) -> np.ndarray:
        return self._ids.copy()

    def contains(self, ids: np.ndarray) -> np.ndarray:
        if not len(self):
            return np.zeros(len(ids), dtype=bool)
        pos = np.minimum(np.searchsorted(self._ids, ids), len(self) - 1)
        return self._ids[pos] == ids

    # ------------------------------------------------------------------ reading
    def get_padded(self, ids: np.ndarray) -> np.ndarray:
        """Codes of ``ids`` (all stored), in the order given."""
        out = np.zeros((len(ids), self.code_size), dtype=np.uint8)
        unique = np.unique(ids)
        name = self.backend.collection(self.n_bits)
        for start in range(0, len(unique), self.backend.batch_size):
            batch = unique[start : start + self.backend.batch_size]
            rows = self.client.query(
                name, filter=f"id in [{','.join(map(str, batch.tolist()))}]", output_fields=["code"], limit=len(batch)
            )
            got_ids = np.array([row["id"] for row in rows], dtype=np.int64)
            codes = np.frombuffer(b"".join(_vector_bytes(row["code"]) for row in rows), dtype=np.uint8)
            codes = codes.reshape(len(rows), self.code_size)
            if len(got_ids) != len(batch):
                raise RuntimeError(f"Milvus returned {len(got_ids)} of {len(batch)} requested codes from {name!r}")
            order = np.argsort(got_ids)
            got_ids, codes = got_ids[order], codes[order]
            pos = np.minimum(np.searchsorted(got_ids, ids), len(got_ids) - 1)
            hit = got_ids[pos] == ids
            out[hit] = codes[pos[hit]]
        return out

    def blocks(self, block_rows: int = 1 << 18) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(codes, ids) in ascending id order, read back in batches."""
        step = min(block_rows, self.backend.batch_size)
        for start in range(0, len(self), step):
            ids = self._ids[start : start + step]
            yield self.get_padded(ids), ids

    # ------------------------------------------------------------------ changes
    def _insert(self, name: str, codes: np.ndarray, ids: np.ndarray) -> None:
        """Insert in batches, column-wise: pymilvus's row-wise path appends each binary vector to a growing bytes
        object (quadratic in the batch), its column-wise path joins them once (about 2x the rows/s here)."""
        collection = self.backend.orm_collection(name)
        for start in range(0, len(ids), self.backend.batch_size):
            stop = min(len(ids), start + self.backend.batch_size)
            batch_ids = ids[start:stop].tolist()
            vectors = [codes[j].tobytes() for j in range(start, stop)]
            if collection is not None:
                collection.insert([batch_ids, vectors])
            else:  # pragma: no cover - a pymilvus without the client's connection alias
                self.client.insert(name, [{"id": i, "code": v} for i, v in zip(batch_ids, vectors, strict=True)])

    def add(self, padded: np.ndarray, ids: np.ndarray) -> None:
        """Insert codes (``uint8 (n, ceil(n_bits / 8))``) under ascending new ``ids`` into the segment and its views."""
        if not len(ids):
            return
        codes = np.ascontiguousarray(padded[:, : self.n_bytes])
        self._insert(self.backend.collection(self.n_bits), codes, ids)
        for compared in self.views:
            truncated = truncate_padded(codes, compared, (compared + 7) // 8)
            self._insert(self.backend.collection(self.n_bits, compared), truncated, ids)
        if len(self) and ids[0] > self._ids[-1]:
            self._ids = np.concatenate([self._ids, ids])
        else:
            self._ids = np.sort(np.concatenate([self._ids, ids]), kind="stable")

    def adopt(self, chunks: list[np.ndarray], ids: np.ndarray) -> None:
        """Insert loaded storage (chunks of ``chunk_rows`` rows, ascending ids)."""
        first = 0
        for chunk in chunks:
            self.add(chunk, ids[first : first + chunk.shape[0]])
            first += chunk.shape[0]

    def remove(self, ids: np.ndarray) -> int:
        present = ids[self.contains(ids)]
        if not len(present):
            return 0
        for compared in [*self.views, None]:
            name = self.backend.collection(self.n_bits, compared)
            for start in range(0, len(present), self.backend.batch_size):
                self.client.delete(name, ids=present[start : start + self.backend.batch_size].tolist())
        keep = np.ones(len(self), dtype=bool)
        keep[np.searchsorted(self._ids, present)] = False
        self._ids = self._ids[keep]
        return len(present)

    def drop_cache(self) -> None:
        for compared in self.views:
            self.client.drop_collection(self.backend.collection(self.n_bits, compared))
        self.views = []

    def _view(self, compared: int) -> str:
        """The collection holding the codes truncated to ``compared`` bits (built on first use)."""
        name = self.backend.collection(self.n_bits, compared)
        if compared not in self.views:
            if self.client.has_collection(name):
                self.client.drop_collection(name)
            self.backend.create_collection(name, compared)
            for codes, ids in self.blocks():
                self._insert(name, truncate_padded(codes, compared, (compared + 7) // 8), ids)
            self.views.append(compared)
            _logger.info(
                "built the %d-bit copy of the %d-bit Milvus segment (%d codes)", compared, self.n_bits, len(self)
            )
        return name

    # ------------------------------------------------------------------ search
    def search(
        self, queries: np.ndarray, compared: int, k: int, *, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` by (distance, id) on the first ``compared`` bits."""
        kk = min(k, len(self))
        if kk > MAX_TOPK:
            raise ValueError(f"k: Milvus returns at most {MAX_TOPK} results per query, got k={k}")
        name = self.backend.collection(self.n_bits) if compared >= self.n_bits else self._view(compared)
        n_bytes = (compared + 7) // 8
        data = [bytes(row) for row in np.ascontiguousarray(queries[:, :n_bytes])]
        dist, ids = self._search(name, data, kk, {})
        if kk < len(self):
            self._resolve_cutoff_ties(name, data, dist, ids)
        key = np.lexsort((ids, dist), axis=-1)
        return np.take_along_axis(dist, key, axis=1), np.take_along_axis(ids, key, axis=1)

    def _search(self, name: str, data: list[bytes], limit: int, params: dict) -> tuple[np.ndarray, np.ndarray]:
        hits = self.client.search(
            name,
            data=data,
            limit=limit,
            anns_field="code",
            output_fields=[],
            search_params={"metric_type": "HAMMING", "params": params},
        )
        dist = np.full((len(data), limit), np.iinfo(np.int32).max, dtype=np.int32)
        ids = np.full((len(data), limit), -1, dtype=np.int64)
        for i, row in enumerate(hits):
            m = min(limit, len(row))
            dist[i, :m] = [round(hit["distance"]) for hit in row[:m]]
            ids[i, :m] = [int(hit["id"]) for hit in row[:m]]
        return dist, ids

    def _resolve_cutoff_ties(self, name: str, data: list[bytes], dist: np.ndarray, ids: np.ndarray) -> None:
        """Replace each row's items at its k-th distance with the smallest ids at that distance (in place)."""
        cutoff = dist.max(axis=1)
        for d in np.unique(cutoff).tolist():
            rows = np.flatnonzero(cutoff == d)
            tied_dist, tied_ids = self._search(
                name, [data[r] for r in rows], MAX_TOPK, {"radius": d + 1, "range_filter": d}
            )
            for r, found_dist, found in zip(rows.tolist(), tied_dist, tied_ids, strict=True):
                at_cutoff = dist[r] == d
                candidates = np.sort(found[(found >= 0) & (found_dist == d)])
                if len(candidates) >= MAX_TOPK:
                    _logger.warning(
                        "more than %d codes tie at the cut-off distance %d: ties may not be by id", MAX_TOPK, d
                    )
                if len(candidates) >= at_cutoff.sum():
                    ids[r, at_cutoff] = candidates[: at_cutoff.sum()]


def _vector_bytes(value: Any) -> bytes:
    """Milvus returns a binary vector as bytes or as a one-element list of bytes."""
    if isinstance(value, (list, tuple)):
        value = value[0]
    return bytes(value)
