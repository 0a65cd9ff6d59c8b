"""Saving and loading a TruncatedHammingIndex: streamed writes and block-by-block reads into the index's storage.

File format (``pbeh_kind`` ``"index"``, ``format_version`` 1 or 2): per stored length a ``codes.<n_bits>`` tensor
(``uint8 (n, ceil(n_bits / 8))``, unpadded, big bit order) and an ``ids.<n_bits>`` tensor (``int64 (n,)``, strictly
ascending), plus metadata ``bit_order``, ``segment_n_bits``, ``segment_sizes``, ``score``, ``flip_probability`` and
``next_id``. The layout is unchanged from the first pbeh version; files written since carry a checksum,
``pbeh_checksum`` = ``"<algorithm>:<hex>"`` over the canonical header and the data section. Version 1 files name
``sha256`` (or have no checksum: the first files); version 2 files have the same layout and a checksum that may name
any algorithm of :data:`pbeh.serialization.CHECKSUM_ALGORITHMS` (``xxh3_128``, from the optional xxhash package, is
ten times faster than SHA-256 and faster than reading the file). A save with SHA-256 still writes version 1, so pbeh
versions that predate xxh3_128 read it; one with another algorithm writes version 2, which those versions refuse with
a version error instead of calling the file damaged. Reading a version 2 file's checksum needs its algorithm's
library (:class:`pbeh.serialization.ChecksumUnavailableError` says what to install; ``verify=False`` skips it).

Memory: saving streams every tensor block by block (``pbeh._safetensors_stream.save_safetensors_streaming``);
loading reads each tensor block by block straight into the segments' chunks (``SafetensorsBlockReader``, same
module), so neither builds the file, or a second copy of the arrays, in memory. All arrays are
allocated before the first read, the small ones as views of one shared allocation (:class:`_LoadStorage`: fewer,
larger allocations are paged in with huge pages instead of 4 KiB at a time). Checks are O(n log n)
and use no hash table: ids ascending within a segment (a linear scan), no id in two segments (binary searches of one
segment's ids in another's, block by block).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .._safetensors_stream import SafetensorsBlockReader, save_safetensors_streaming
from ..serialization import CHECKSUM_KEY, FormatError, read_safetensors_metadata, resolve_checksum
from ._flat import _tail_mask
from ._scoring import INT64_MAX, SCORE_POLICIES

__all__ = ["BIT_ORDER", "FORMAT_VERSION", "IndexFile", "read_index_metadata", "save_index"]

FORMAT_VERSION = 1  # written with a SHA-256 checksum
FORMAT_VERSION_ANY_CHECKSUM = 2  # the same layout, with a checksum by any algorithm this pbeh knows
READ_VERSIONS = (FORMAT_VERSION, FORMAT_VERSION_ANY_CHECKSUM)
KIND = "index"
BIT_ORDER = "big"
_BLOCK_BYTES = 1 << 20  # bytes read, hashed and checked per step: about one core's L2 cache, so each pass is cached
_CHECK_ROWS = 1 << 15  # ids per binary-search block of the duplicate check (a few temporaries of 8 bytes each)
_OWN_ALLOCATION_BYTES = 4 << 20  # arrays at least this large get their own allocation (see _LoadStorage)


def _block_rows(row_bytes: int) -> int:
    return max(1, _BLOCK_BYTES // row_bytes)


def save_index(
    path: str | os.PathLike[str], segments: dict[int, Any], header: dict[str, Any], *, checksum: str = "auto"
) -> None:
    """Write ``segments`` ({n_bits: segment}) and ``header`` to ``path``, streamed and atomic, with the checksum
    ``checksum`` (see :func:`pbeh.serialization.resolve_checksum`)."""
    algorithm = resolve_checksum(checksum)
    version = FORMAT_VERSION if algorithm == "sha256" else FORMAT_VERSION_ANY_CHECKSUM
    tensors: dict[str, Any] = {}
    for n_bits, seg in segments.items():
        n_bytes, count = (n_bits + 7) // 8, len(seg)
        block_rows = _block_rows(seg.code_size)

        def codes(seg: Any = seg, n_bytes: int = n_bytes, block_rows: int = block_rows) -> Any:
            return (unpad_rows(block, n_bytes) for block, _ in seg.blocks(block_rows))

        def ids(seg: Any = seg, block_rows: int = block_rows) -> Any:
            return (block_ids for _, block_ids in seg.blocks(block_rows))

        tensors[f"codes.{n_bits}"] = (np.uint8, (count, n_bytes), codes)
        tensors[f"ids.{n_bits}"] = (np.int64, (count,), ids)
    save_safetensors_streaming(path, tensors, kind=KIND, format_version=version, metadata=header, checksum=algorithm)


def unpad_rows(padded: np.ndarray, n_bytes: int) -> np.ndarray:
    """``padded[:, :n_bytes]`` as a C-contiguous array: the stored codes of a block of padded rows.

    numpy copies a column slice one byte at a time; copying each row's first ``n_bytes`` as one opaque item (a
    structured view) is several times faster.
    """
    rows, code_size = padded.shape
    if n_bytes == code_size or not padded.flags.c_contiguous:
        return np.ascontiguousarray(padded[:, :n_bytes])
    row = np.dtype({"names": ["code"], "formats": [f"V{n_bytes}"], "offsets": [0], "itemsize": code_size})
    out = np.empty((rows, n_bytes), dtype=np.uint8)
    out.view(f"V{n_bytes}")[:, 0] = padded.view(row)[:, 0]["code"]
    return out


def pad_rows(staged: np.ndarray, rows: int, n_bytes: int, out: np.ndarray) -> None:
    """Write ``rows`` codes of ``n_bytes`` bytes, stored back to back at the start of the flat uint8 buffer ``staged``,
    into ``out`` (``(rows, code_size)`` uint8, C-contiguous) with zero padding bytes.

    For code sizes of 4 and 8 bytes each row is one overlapping (unaligned) word read from ``staged`` and masked to its
    first ``n_bytes`` bytes, one pass instead of numpy's byte-by-byte column copy; ``staged`` must then hold at least
    ``code_size - n_bytes`` bytes after the codes (their values do not matter).
    """
    code_size = out.shape[1]
    if code_size in (4, 8) and staged.size >= (rows - 1) * n_bytes + code_size:
        word = np.dtype(f"=u{code_size}")
        words = np.ndarray((rows,), dtype=word, buffer=staged, offset=0, strides=(n_bytes,))
        mask = np.frombuffer(b"\xff" * n_bytes + b"\x00" * (code_size - n_bytes), dtype=word)[0]
        np.bitwise_and(words, mask, out=out.view(word).reshape(rows))
    else:
        out[:, :n_bytes] = staged[: rows * n_bytes].reshape(rows, n_bytes)
        out[:, n_bytes:] = 0


def read_index_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The decoded, validated header of a saved index (see :meth:`TruncatedHammingIndex.metadata`)."""
    return _parse_header(path, read_safetensors_metadata(path, kind=KIND))


class IndexFile:
    """A saved index opened for loading: the header is read and checked once (:attr:`meta`, as from
    :func:`read_index_metadata`), then :meth:`read_segments` streams the data of the same open file.

    Use as a context manager. Every problem is a :class:`FormatError`.
    """

    def __init__(self, path: str | os.PathLike[str], *, verify: bool = True) -> None:
        self.path = path
        self._reader = SafetensorsBlockReader(path, kind=KIND, format_version=READ_VERSIONS, verify=verify)
        try:
            metadata = {k: v for k, v in self._reader.header.metadata.items() if k != CHECKSUM_KEY}
            self.meta = _parse_header(path, metadata)
            if (
                verify
                and self.meta["format_version"] >= FORMAT_VERSION_ANY_CHECKSUM
                and CHECKSUM_KEY not in self._reader.header.metadata
            ):
                raise FormatError(f"{str(path)!r} is damaged: a version 2 index always has a checksum, this has none")
        except BaseException:
            self._reader.close()
            raise

    def __enter__(self) -> IndexFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()

    def read_segments(self, make_segment: Callable[[int], Any]) -> dict[int, Any]:
        """Read every segment into a new segment from ``make_segment(n_bits)`` (tensors in any file order)."""
        reader, meta, where = self._reader, self.meta, repr(str(self.path))
        tensors = reader.header.tensors
        expected = {f"{kind}.{n}" for n, _ in meta["segments"] for kind in ("codes", "ids")}
        if set(tensors) != expected:
            raise FormatError(f"{where}: tensors {sorted(tensors)} do not match the header's {sorted(expected)}")
        counts = dict(meta["segments"])
        for n_bits, count in meta["segments"]:  # shapes first: nothing is allocated for a file that lies
            dtype, shape, *_ = tensors[f"ids.{n_bits}"]
            if dtype != np.int64 or shape != (count,):
                raise FormatError(f"{where}: ids.{n_bits} should be int64 ({count},), got {dtype} {shape}")
            dtype, shape, *_ = tensors[f"codes.{n_bits}"]
            n_bytes = (n_bits + 7) // 8
            if dtype != np.uint8 or len(shape) != 2 or shape[1] != n_bytes:
                raise FormatError(
                    f"{where}: codes.{n_bits} are not valid {n_bits}-bit codes: packed: expected uint8 (n, {n_bytes}),"
                    f" got {dtype} {shape}"
                )
            if shape[0] != count:
                raise FormatError(f"{where}: codes.{n_bits} has {shape[0]} rows, the header says {count}")
        segments: dict[int, Any] = {}
        for name in reader.order:  # segments in file order (a Milvus backend creates its collections as it goes)
            if name.startswith("codes."):
                n_bits = int(name.split(".")[1])
                segments[n_bits] = make_segment(n_bits)
        storage = _LoadStorage(segments, counts)
        ids_by_length: dict[int, np.ndarray] = {}
        scratch = np.empty(_block_rows(8), dtype=bool)  # the ids check's comparisons, reused by every block
        for name in reader.order:
            kind, n_bits = name.split(".")[0], int(name.split(".")[1])
            if kind == "codes":
                _read_codes(reader, name, n_bits, storage.chunks[n_bits], where)
            else:
                ids_by_length[n_bits] = _read_ids(reader, name, n_bits, storage.ids[n_bits], scratch, where)
        reader.finish()
        _check_disjoint(ids_by_length, where)
        largest = max((int(ids[-1]) for ids in ids_by_length.values()), default=-1)
        if largest >= meta["next_id"]:
            raise FormatError(f"{where}: next_id {meta['next_id']} is not above the largest id")
        for n_bits, ids in ids_by_length.items():
            segments[n_bits].adopt(storage.chunks[n_bits], ids)
        return segments


class _LoadStorage:
    """The arrays a file is read into: per segment its padded chunks (``chunk_rows`` rows each, the last shorter)
    and its ids, allocated before anything is read.

    An array of at least :data:`_OWN_ALLOCATION_BYTES` gets its own allocation; the smaller ones are views of one
    shared allocation. numpy asks Linux for transparent huge pages for allocations of 4 MiB and more, so a file of
    many small arrays (e.g. a million codes at three lengths: six arrays of 1.3-2.7 MB) is then paged in 2 MiB at a
    time instead of 4 KiB: measured here, touching 14 MB of fresh memory took 13.9 ms as six arrays of 1.3-2.7 MB and
    0.6 ms as two arrays. The shared allocation is freed when no segment holds a view of it any more (a segment changed
    after loading copies the arrays it changes), so it keeps at most the small arrays of the file alive.
    """

    def __init__(self, segments: dict[int, Any], counts: dict[int, int]) -> None:
        sizes: list[int] = []
        for n_bits, seg in segments.items():
            count, chunk_rows = counts[n_bits], seg.chunk_rows
            sizes += [min(chunk_rows, count - first) * seg.code_size for first in range(0, count, chunk_rows)]
            sizes.append(count * 8)
        shared_bytes = sum(_aligned(size) for size in sizes if size < _OWN_ALLOCATION_BYTES)
        shared = np.empty(shared_bytes, dtype=np.uint8)
        buffers, offset = [], 0
        for size in sizes:
            if size >= _OWN_ALLOCATION_BYTES:
                buffers.append(np.empty(size, dtype=np.uint8))
            else:
                buffers.append(shared[offset : offset + size])
                offset += _aligned(size)
        self.chunks: dict[int, list[np.ndarray]] = {}
        self.ids: dict[int, np.ndarray] = {}
        taken = iter(buffers)
        for n_bits, seg in segments.items():
            count, chunk_rows = counts[n_bits], seg.chunk_rows
            self.chunks[n_bits] = [
                next(taken).reshape(min(chunk_rows, count - first), seg.code_size)
                for first in range(0, count, chunk_rows)
            ]
            self.ids[n_bits] = next(taken).view(np.int64)


def _aligned(size: int) -> int:
    return -(-size // 64) * 64  # each view starts on a cache line (and so on an 8-byte boundary for the ids)


def _read_codes(reader: SafetensorsBlockReader, name: str, n_bits: int, chunks: list[np.ndarray], where: str) -> None:
    """Read ``codes.<n_bits>`` into ``chunks`` (padded rows), checking the padding bits.

    Codes stored at their padded width are read straight into the chunks; shorter ones are read block by block into
    one staging buffer and padded from there (:func:`pad_rows`).
    """
    n_bytes = (n_bits + 7) // 8
    code_size = chunks[0].shape[1] if chunks else n_bytes
    mask = (~_tail_mask(n_bits)) & 0xFF
    block_rows = _block_rows(code_size)
    staged = None
    if n_bytes != code_size:
        staged = np.empty(min(block_rows, max(c.shape[0] for c in chunks)) * n_bytes + code_size, dtype=np.uint8)
    first = 0
    for chunk in chunks:
        rows = chunk.shape[0]
        for start in range(0, rows, block_rows):
            stop = min(rows, start + block_rows)
            if staged is None:
                part = reader.read_rows(name, chunk[start:stop])
            else:
                part = reader.read_rows(name, staged[: (stop - start) * n_bytes].reshape(stop - start, n_bytes))
            if mask and np.any(part[:, n_bytes - 1] & mask):
                bad = first + start + int(np.flatnonzero(part[:, n_bytes - 1] & mask)[0])
                raise FormatError(
                    f"{where}: codes.{n_bits} are not valid {n_bits}-bit codes: packed: padding bits of row {bad} "
                    "are not zero"
                )
            if staged is not None:
                pad_rows(staged, stop - start, n_bytes, chunk[start:stop])
        first += rows


def _read_ids(
    reader: SafetensorsBlockReader, name: str, n_bits: int, ids: np.ndarray, scratch: np.ndarray, where: str
) -> np.ndarray:
    """Read ``ids.<n_bits>`` into ``ids``, checking block by block (while the block is cached) that they are
    non-negative and strictly increasing; ``scratch`` is a bool buffer of at least one block."""
    count = ids.shape[0]
    if count == 0:
        raise FormatError(f"{where}: ids.{n_bits} must be non-empty, non-negative and strictly increasing")
    step = _block_rows(8)
    for start in range(0, count, step):
        block = reader.read_rows(name, ids[start : start + step])
        below = ids[start - 1] if start else -1  # the first id must be >= 0
        after = scratch[: block.shape[0] - 1]
        if block[0] <= below or np.less_equal(block[1:], block[:-1], out=after).any():
            raise FormatError(f"{where}: ids.{n_bits} must be non-empty, non-negative and strictly increasing")
    return ids


def _check_disjoint(ids_by_length: dict[int, np.ndarray], where: str) -> None:
    """No id in two segments: binary searches of each segment's ids in every other's, block by block."""
    lengths = sorted(ids_by_length)
    for i, a in enumerate(lengths):
        for b in lengths[i + 1 :]:
            small, large = sorted((ids_by_length[a], ids_by_length[b]), key=len)
            if small[-1] < large[0] or large[-1] < small[0]:  # disjoint ranges (e.g. lengths added one after another)
                continue
            for start in range(0, small.size, _CHECK_ROWS):
                part = small[start : start + _CHECK_ROWS]
                pos = np.minimum(np.searchsorted(large, part), large.size - 1)
                if np.any(large[pos] == part):
                    raise FormatError(f"{where}: an id is stored in several segments")


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
    except (ValueError, RecursionError) as exc:
        raise fail(f"malformed metadata ({exc})") from exc
    if bit_order != BIT_ORDER:
        raise fail(f"bit_order {bit_order!r}, expected {BIT_ORDER!r}")
    ints = (n_bits, sizes)
    if not all(isinstance(v, list) and all(type(x) is int and x > 0 for x in v) for v in ints):
        raise fail("segment_n_bits and segment_sizes must be lists of positive ints")
    if len(n_bits) != len(sizes) or len(set(n_bits)) != len(n_bits):
        raise fail("segment_n_bits must be distinct and as long as segment_sizes")
    if any(n > 1 << 20 for n in n_bits):
        raise fail(f"a code length above {1 << 20} bits in segment_n_bits")
    if score not in SCORE_POLICIES:
        raise fail(f"unknown score policy {score!r}")
    if type(flip_probability) not in (int, float) or not 0 < flip_probability < 0.5:
        raise fail(f"flip_probability {flip_probability!r} outside (0, 0.5)")
    if type(next_id) is not int or not 0 <= next_id <= INT64_MAX + 1:
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
