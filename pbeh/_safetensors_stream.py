"""Streamed safetensors files: write and read an index's tensors block by block, never the whole file in memory.

:func:`save_safetensors_streaming` writes a file with the same bytes the in-memory writer
(:func:`pbeh.serialization.save_safetensors`) gives, hashing each block as it goes and asking the kernel to start
writing every few MiB so that the atomic save's final fsync waits only for the tail. :class:`SafetensorsBlockReader`
reads one checked header (:func:`pbeh.serialization.read_safetensors_header`) and then any tensor's rows in blocks,
hashing them while they are cached, and compares the checksum at the end. The file format, versions, checksums and
atomic writes themselves are :mod:`pbeh.serialization`'s.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from .serialization import (
    _DTYPE_CODES,
    CHECKSUM_ALGORITHMS,
    CHECKSUM_KEY,
    FormatError,
    PathLike,
    _canonical_header,
    _header_metadata,
    _new_digest,
    _stored_checksum,
    atomic_path,
    check_format_version,
    read_safetensors_header,
    resolve_checksum,
)

__all__ = ["SafetensorsBlockReader", "TensorStream", "save_safetensors_streaming"]

#: A streamed save asks the kernel to start writing its file to disk every this many bytes (see _start_writeback).
_WRITEBACK_BYTES = 8 << 20
_sync_file_range: Any = None  # libc's sync_file_range once looked up; False where the platform has none


def _start_writeback(fd: int, start: int, stop: int) -> None:
    """Start writing bytes ``start:stop`` of ``fd`` to disk without waiting (Linux ``sync_file_range`` with
    ``SYNC_FILE_RANGE_WRITE``; a no-op elsewhere). Only a hint: the fsync of :func:`atomic_path` still makes the file
    durable, but then waits for the last few MiB instead of the whole file (measured for a 64 MB file on this machine's
    ext4: fsync 39 -> 12 ms)."""
    global _sync_file_range
    if _sync_file_range is None:
        try:
            _sync_file_range = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).sync_file_range
            _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        except (OSError, AttributeError):
            _sync_file_range = False
    if _sync_file_range:
        _sync_file_range(fd, start, stop - start, 2)  # SYNC_FILE_RANGE_WRITE; an error only loses the hint


# ------------------------------------------------------------------------------------------------ streamed safetensors
#: A tensor to stream: its dtype, its shape and a function returning its data as consecutive row blocks.
TensorStream = tuple[Any, tuple[int, ...], Callable[[], Iterable[np.ndarray]]]


def save_safetensors_streaming(
    path: PathLike,
    tensors: Mapping[str, TensorStream],
    *,
    kind: str,
    format_version: int,
    metadata: Mapping[str, Any] | None = None,
    checksum: str = "sha256",
) -> None:
    """Write the same bytes as :func:`save_safetensors`, atomically, without holding the file in memory.

    Each tensor is given as ``(dtype, shape, blocks)``: ``blocks()`` yields its data as consecutive blocks of rows
    (any number of rows each, the other dimensions as in ``shape``). The header is written with a placeholder
    checksum of the same length, the data is hashed as it is written, and the real checksum replaces the placeholder
    at the end, so memory stays at one block whatever the file size. ``checksum`` chooses the algorithm (see
    :func:`resolve_checksum`; with ``"sha256"`` the bytes equal :func:`save_safetensors`'s).

    Raises:
        ValueError: a tensor's blocks do not add up to its shape, or an unknown ``checksum``.
        ImportError: the library of ``checksum`` is not installed.
        TypeError: a dtype pbeh does not store.
    """
    algorithm = resolve_checksum(checksum)
    meta = _header_metadata(kind, format_version, metadata)
    header: dict[str, Any] = {"__metadata__": {str(k): str(v) for k, v in sorted(meta.items())}}
    offset = 0
    layout: list[tuple[str, np.dtype[Any], tuple[int, ...], int]] = []
    for name in sorted(tensors):
        dtype_like, shape, _ = tensors[name]
        native = np.dtype(dtype_like).newbyteorder("=")
        code = _DTYPE_CODES.get(native)
        if code is None:
            raise TypeError(f"tensors[{name!r}]: dtype {native} cannot be stored in safetensors by pbeh")
        shape = tuple(int(d) for d in shape)
        n_bytes = math.prod(shape) * native.itemsize
        header[str(name)] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + n_bytes]}
        layout.append((name, native.newbyteorder("<"), shape, n_bytes))
        offset += n_bytes
    digest = _new_digest(algorithm)
    digest.update(_canonical_header(header))

    def encode(checksum: str) -> bytes:
        body = dict(header)
        body["__metadata__"] = dict(sorted({**header["__metadata__"], CHECKSUM_KEY: checksum}.items()))
        raw = json.dumps(body, separators=(",", ":"), sort_keys=False).encode("utf-8")
        return raw + b" " * (-len(raw) % 8)

    placeholder = encode(f"{algorithm}:" + "0" * CHECKSUM_ALGORITHMS[algorithm][0])
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(placeholder)) + placeholder)
        position = synced = 8 + len(placeholder)  # bytes written / handed to _start_writeback so far
        for name, little, shape, n_bytes in layout:
            written = 0
            for block in tensors[name][2]():
                arr = np.ascontiguousarray(block, dtype=little)
                if arr.shape[1:] != shape[1:]:
                    raise ValueError(f"tensors[{name!r}]: a block of shape {arr.shape} does not fit shape {shape}")
                view = arr.data.cast("B")
                digest.update(view)
                fh.write(view)
                written += arr.nbytes
                position += arr.nbytes
                if position - synced >= _WRITEBACK_BYTES:
                    fh.flush()
                    _start_writeback(fh.fileno(), synced, position)
                    synced = position
            if written != n_bytes:
                raise ValueError(f"tensors[{name!r}]: the blocks hold {written} bytes, shape {shape} needs {n_bytes}")
        final = encode(f"{algorithm}:{digest.hexdigest()}")
        if len(final) != len(placeholder):  # pragma: no cover - the checksum has a fixed length
            raise RuntimeError("the header changed length when its checksum was filled in")
        fh.seek(8)
        fh.write(final)


class SafetensorsBlockReader:
    """Read a pbeh safetensors file block by block, in file order, verifying its checksum at the end.

    Memory stays at one block. Use as a context manager; call :meth:`read_rows` for consecutive blocks of each
    tensor in the order of :attr:`order` (data offsets), then :meth:`finish`, which checks that every byte was read
    and that the checksum matches (files without one are accepted). ``verify=False`` skips the checksum (SHA-256
    costs about as much as reading a file from the page cache, xxh3_128 a tenth of that); the header checks remain.
    ``format_version`` is the version read, or a tuple of them.

    Raises:
        FormatError: from the checked header (:func:`read_safetensors_header`), the format version, a damaged
            checksum entry, a read error, or a checksum mismatch.
        ChecksumUnavailableError: (a FormatError) ``verify`` and the file's checksum algorithm is not installed.
    """

    def __init__(
        self, path: PathLike, *, kind: str, format_version: int | tuple[int, ...], verify: bool = True
    ) -> None:
        self.header = read_safetensors_header(path, kind=kind)
        check_format_version(path, self.header.metadata, format_version)
        self.order = [name for name, _ in sorted(self.header.tensors.items(), key=lambda item: item[1][2])]
        recorded = _stored_checksum(path, self.header.metadata) if verify else None
        self._algorithm = recorded[0] if recorded is not None else ""
        self._stored = ":".join(recorded) if recorded is not None else None
        self._digest = _new_digest(recorded[0]) if recorded is not None else None
        if self._digest is not None:
            self._digest.update(_canonical_header(self.header.raw))
        self._position = 0
        try:
            self._fh = open(self.header.path, "rb")  # noqa: SIM115 - closed by close() / __exit__
        except OSError as exc:
            raise FormatError(f"{str(path)!r} could not be read: {exc}") from exc
        self._fh.seek(8 + self.header.header_length)

    def __enter__(self) -> SafetensorsBlockReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._fh.close()

    def read_rows(self, name: str, out: np.ndarray) -> np.ndarray:
        """Fill ``out`` (native dtype of the tensor, C-contiguous, rows x the tensor's row shape) with the next rows.

        Rows of a tensor must be read consecutively, tensors in :attr:`order`.
        """
        dtype, shape, begin, end = self.header.tensors[name]
        if out.dtype != dtype.newbyteorder("=") or out.shape[1:] != shape[1:] or not out.flags.c_contiguous:
            raise ValueError(
                f"out: expected a C-contiguous {dtype} block of rows {shape[1:]}, got {out.dtype} {out.shape}"
            )
        if not begin <= self._position <= end or self._position + out.nbytes > end:
            raise ValueError(f"tensors[{name!r}]: blocks must be read consecutively, in file order")
        view = out.data.cast("B")
        try:
            got = self._fh.readinto(view)
        except OSError as exc:
            raise FormatError(f"{str(self.header.path)!r} could not be read: {exc}") from exc
        if got != out.nbytes:
            raise FormatError(f"{str(self.header.path)!r} changed while it was read (short read in {name!r})")
        if self._digest is not None:
            self._digest.update(view)
        self._position += out.nbytes
        if not np.little_endian and out.dtype.itemsize > 1:  # pragma: no cover - the file is little-endian
            out.byteswap(inplace=True)
        return out

    def finish(self) -> None:
        """Check that the whole data section was read and that it matches the stored checksum."""
        data_size = max((end for *_, end in self.header.tensors.values()), default=0)
        if self._position != data_size:
            raise ValueError(f"{self._position} of {data_size} data bytes were read; read every tensor first")
        if self._digest is not None:
            actual = f"{self._algorithm}:{self._digest.hexdigest()}"
            if actual != self._stored:
                raise FormatError(
                    f"{str(self.header.path)!r} is damaged: its content does not match its checksum (stored "
                    f"{str(self._stored)[:23]}..., computed {actual[:23]}...)"
                )
