"""File formats, versions and atomic writes shared by everything pbeh saves.

Every artifact pbeh writes is either a safetensors file whose string metadata describes it, or a directory holding a
``config.json`` next to a ``model.safetensors``. Nothing is ever pickled. Each file records

* ``pbeh_kind``: what the file is (``"index"``, ``"model"``, ``"features"``, ...), so that loading an index from a
  feature cache fails with a clear message instead of a confusing key error;
* ``format_version``: the layout version of that kind; a reader refuses versions it does not know;
* ``pbeh_version``: the library version that wrote it (informational).

Writes are atomic: the bytes go to a temporary file in the destination directory, are flushed to disk, and replace
the destination with :func:`os.replace`. A crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__

__all__ = [
    "FormatError",
    "atomic_path",
    "atomic_write_bytes",
    "check_format_version",
    "load_safetensors",
    "read_json",
    "read_safetensors_metadata",
    "save_safetensors",
    "serialize_safetensors",
    "write_json",
]

PathLike = str | os.PathLike[str]

# safetensors files start with an 8-byte little-endian header length followed by a JSON header. A header larger than
# this is not something pbeh wrote (and reading it could exhaust memory).
_MAX_HEADER_BYTES = 100_000_000


class FormatError(ValueError):
    """A file is missing, truncated, of another kind, or of a format version this pbeh cannot read."""


@contextlib.contextmanager
def atomic_path(path: PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    If the body raises, the temporary file is removed and ``path`` is left untouched.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with atomic_path(d / "x.txt") as tmp:
        ...     _ = tmp.write_text("hello")
        >>> (d / "x.txt").read_text()
        'hello'
    """
    target = Path(path)
    if target.exists() and target.is_dir():
        raise IsADirectoryError(f"path: expected a file path, got the existing directory {str(target)!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def read_json(path: PathLike, *, what: str = "JSON file") -> Any:
    """Read a JSON file, raising :class:`FormatError` that names the file when it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{what} not found: {str(p)!r}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{what} {str(p)!r} is not valid JSON: {exc}") from exc


def _header_metadata(kind: str, format_version: int, metadata: Mapping[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {
        "pbeh_kind": kind,
        "format_version": str(int(format_version)),
        "pbeh_version": __version__,
    }
    for key, value in (metadata or {}).items():
        if key in out:
            raise ValueError(f"metadata: key {key!r} is reserved by pbeh")
        out[str(key)] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return out


_DTYPE_CODES: dict[np.dtype[Any], str] = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "U8",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint16): "U16",
    np.dtype(np.int16): "I16",
    np.dtype(np.uint32): "U32",
    np.dtype(np.int32): "I32",
    np.dtype(np.uint64): "U64",
    np.dtype(np.int64): "I64",
    np.dtype(np.float16): "F16",
    np.dtype(np.float32): "F32",
    np.dtype(np.float64): "F64",
}


def serialize_safetensors(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    """Encode arrays and string metadata in the safetensors format, deterministically.

    The safetensors library writes its header from a hash map, so the same state can give different bytes from one
    save to the next. pbeh writes the (simple, documented) format itself with sorted keys, so saving the same state
    twice gives identical files; reading uses the safetensors library. Layout: 8-byte little-endian header length, a
    JSON header padded with spaces to a multiple of 8 bytes, then the little-endian data of each tensor in key order.
    """
    header: dict[str, Any] = {"__metadata__": {str(k): str(v) for k, v in sorted(metadata.items())}}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        code = _DTYPE_CODES.get(np.dtype(dtype.str.replace(">", "<")))
        if code is None:
            raise TypeError(f"tensors[{name!r}]: dtype {arr.dtype} cannot be stored in safetensors by pbeh")
        data = np.ascontiguousarray(arr, dtype=dtype.newbyteorder("<")).tobytes()
        header[str(name)] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":"), sort_keys=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(chunks)


def save_safetensors(
    path: PathLike,
    tensors: Mapping[str, np.ndarray],
    *,
    kind: str,
    format_version: int,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Save numpy arrays and metadata to a safetensors file, atomically.

    Non-string metadata values are stored as JSON text; :func:`load_safetensors` returns them as strings, so a
    reader decodes what it encoded. The output bytes are a pure function of the arguments (keys are sorted), so
    saving the same state twice gives identical files.
    """
    data = serialize_safetensors(tensors, _header_metadata(kind, format_version, metadata))
    atomic_write_bytes(path, data)


def read_safetensors_metadata(path: PathLike, *, kind: str | None = None) -> dict[str, str]:
    """Read only the metadata of a safetensors file written by pbeh (no tensor data is read).

    Raises:
        FormatError: the file is missing, truncated, not safetensors, not written by pbeh, or of another kind.
    """
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"file not found: {str(p)!r}")
    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise FormatError(f"{str(p)!r} is not a safetensors file (only {size} bytes)")
        (n_header,) = struct.unpack("<Q", head)
        if n_header <= 0 or n_header > _MAX_HEADER_BYTES or 8 + n_header > size:
            raise FormatError(
                f"{str(p)!r} is not a valid safetensors file (header length {n_header}, file size {size}): "
                "truncated or of another format"
            )
        raw = fh.read(n_header)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{str(p)!r} has a corrupt safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise FormatError(f"{str(p)!r} has a corrupt safetensors header")
    meta = header.get("__metadata__") or {}
    if "pbeh_kind" not in meta:
        raise FormatError(f"{str(p)!r} is a safetensors file but was not written by pbeh (no 'pbeh_kind' metadata)")
    if kind is not None and meta["pbeh_kind"] != kind:
        raise FormatError(f"{str(p)!r} holds a pbeh {meta['pbeh_kind']!r}, expected a pbeh {kind!r}")
    # The data section must be exactly as long as the offsets say; anything shorter is a truncated file.
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    expected = 8 + n_header + (max(ends) if ends else 0)
    if size < expected:
        raise FormatError(f"{str(p)!r} is truncated: {size} bytes, the header describes {expected}")
    return {str(k): str(v) for k, v in meta.items()}


def check_format_version(path: PathLike, meta: Mapping[str, str], supported: int) -> None:
    """Raise :class:`FormatError` unless ``meta['format_version']`` equals ``supported``."""
    found = meta.get("format_version")
    if found != str(supported):
        raise FormatError(
            f"{str(path)!r} has format_version {found!r}; this pbeh {__version__} reads format_version "
            f"{supported}. Re-save it with a matching pbeh version."
        )


def load_safetensors(path: PathLike, *, kind: str, format_version: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Load a pbeh safetensors file: its arrays and its metadata, after checking kind and format version."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    meta = read_safetensors_metadata(path, kind=kind)
    check_format_version(path, meta, format_version)
    try:
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise FormatError(f"{str(path)!r} could not be read as safetensors: {exc}") from exc
    return arrays, meta
