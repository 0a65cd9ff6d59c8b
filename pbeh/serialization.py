"""File formats, versions, checksums and atomic writes shared by everything pbeh saves.

Every artifact pbeh writes is either a safetensors file whose string metadata describes it, or a directory holding a
``config.json`` next to a ``model.safetensors``. Nothing is ever pickled. Each safetensors file records

* ``pbeh_kind``: what the file is (``"index"``, ``"model"``, ``"features"``, ...), so that loading an index from a
  feature cache fails with a clear message instead of a confusing key error;
* ``format_version``: the layout version of that kind; a reader refuses versions it does not know;
* ``pbeh_version``: the library version that wrote it (informational);
* ``pbeh_checksum``: ``"<algorithm>:<hex>"`` over the header and the tensor bytes, verified on load (files without
  one, written by earlier pbeh versions, are still read). The algorithm is ``sha256`` (the standard library) or, for
  index files, ``xxh3_128`` (the optional ``xxhash`` package, ``pip install "pbeh[fast-checksum]"``; about ten times
  faster): see :data:`CHECKSUM_ALGORITHMS`.

Every safetensors file is read through one checked header reader (:func:`read_safetensors_header`): the header
length, the JSON, every dtype, shape and data offset is checked against the file's actual size *before* anything is
allocated, so a damaged or hostile file raises :class:`FormatError` and can never ask for more memory than its own
size.

Writes are atomic: the bytes go to a temporary file in the destination directory, are flushed to disk, and replace
the destination with :func:`os.replace`. A crash leaves either the old file or the new one, never half of one. Files
get the permissions the process umask gives a new file (``0o666 & ~umask``). A multi-file save (a model directory,
a trainer state) is assembled in a staging directory and swapped in as one step with :func:`replace_directory`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__

__all__ = [
    "CHECKSUM_ALGORITHMS",
    "ChecksumUnavailableError",
    "FormatError",
    "atomic_path",
    "atomic_write_bytes",
    "check_format_version",
    "checksum_available",
    "json_field",
    "load_safetensors",
    "read_json",
    "read_safetensors_header",
    "read_safetensors_metadata",
    "replace_directory",
    "resolve_checksum",
    "resolve_directory",
    "save_safetensors",
    "serialize_safetensors",
    "sibling_path",
    "write_json",
]

PathLike = str | os.PathLike[str]

# safetensors files start with an 8-byte little-endian header length followed by a JSON header. A header larger than
# this is not something pbeh wrote (and reading it could exhaust memory).
_MAX_HEADER_BYTES = 100_000_000
# No array pbeh writes has more dimensions than this.
_MAX_NDIM = 8
# A JSON file larger than this is not something pbeh wrote.
_MAX_JSON_BYTES = 1 << 30
CHECKSUM_KEY = "pbeh_checksum"
_RESERVED_KEYS = ("pbeh_kind", "format_version", "pbeh_version", CHECKSUM_KEY)


class FormatError(ValueError):
    """A file is missing, truncated, damaged, of another kind, or of a format version this pbeh cannot read."""


class ChecksumUnavailableError(FormatError):
    """A file's checksum names an algorithm whose library is not installed here (the message says what to install;
    readers with a ``verify`` option skip the check with ``verify=False``)."""


# ------------------------------------------------------------------------------------------------ checksums
#: The algorithms ``pbeh_checksum`` may name: name -> (hex digits of the digest, Python module, pip extra). xxh3_128
#: (xxHash) is not cryptographic, and need not be: the checksum detects damage, and anyone able to alter a file can
#: recompute any unkeyed checksum, SHA-256 included.
CHECKSUM_ALGORITHMS: dict[str, tuple[int, str, str]] = {
    "sha256": (64, "hashlib", ""),
    "xxh3_128": (32, "xxhash", "fast-checksum"),
}


def checksum_available(algorithm: str) -> bool:
    """Whether the library computing ``algorithm`` (a key of :data:`CHECKSUM_ALGORITHMS`) can be imported."""
    if not isinstance(algorithm, str) or algorithm not in CHECKSUM_ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {sorted(CHECKSUM_ALGORITHMS)}, got {algorithm!r}")
    try:
        _new_digest(algorithm)
    except ImportError:
        return False
    return True


def resolve_checksum(checksum: str) -> str:
    """The algorithm a writer uses for the option ``checksum``: ``"auto"`` (``xxh3_128`` when the xxhash package is
    installed, else ``sha256``) or a key of :data:`CHECKSUM_ALGORITHMS`, which must then be available."""
    if checksum == "auto":
        return "xxh3_128" if checksum_available("xxh3_128") else "sha256"
    if not isinstance(checksum, str) or checksum not in CHECKSUM_ALGORITHMS:
        raise ValueError(f"checksum: expected 'auto' or one of {sorted(CHECKSUM_ALGORITHMS)}, got {checksum!r}")
    if not checksum_available(checksum):
        module, extra = CHECKSUM_ALGORITHMS[checksum][1:]
        raise ImportError(f"checksum={checksum!r} needs the {module} package: pip install 'pbeh[{extra}]'")
    return checksum


def _new_digest(algorithm: str) -> Any:
    """A fresh hash object (``update``, ``hexdigest``) for a key of :data:`CHECKSUM_ALGORITHMS`."""
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "xxh3_128":
        import xxhash  # optional: pbeh[fast-checksum]

        return xxhash.xxh3_128()
    raise ValueError(f"algorithm: expected one of {sorted(CHECKSUM_ALGORITHMS)}, got {algorithm!r}")


def _looks_like_checksum(value: str) -> bool:
    return any(
        len(value) == len(name) + 1 + hex_digits and value[:3] == name[:3]
        for name, (hex_digits, _, _) in CHECKSUM_ALGORITHMS.items()
    )


def _stored_checksum(path: PathLike, metadata: Mapping[str, str]) -> tuple[str, str] | None:
    """The ``(algorithm, hex digest)`` a file's metadata records, or None for a file written without a checksum.

    Raises:
        FormatError: a damaged checksum entry (its key, an unknown algorithm name, a digest of the wrong length or
            not lower-case hex).
        ChecksumUnavailableError: the algorithm's library is not installed.
    """
    where = repr(str(path))
    stored = metadata.get(CHECKSUM_KEY)
    if stored is None:
        if any(key.startswith("pbeh_c") or _looks_like_checksum(value) for key, value in metadata.items()):
            # A checksum whose key was damaged: files written without one have neither such a key nor such a value.
            raise FormatError(f"{where} is damaged: its checksum entry is unreadable")
        return None
    algorithm, _, digest = stored.partition(":")
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise FormatError(
            f"{where}: its checksum names the algorithm {algorithm[:20]!r}, which this pbeh {__version__} does not "
            f"know (it knows {', '.join(CHECKSUM_ALGORITHMS)}): the file is damaged or was written by a newer pbeh; "
            "a reader with a verify option loads it unchecked with verify=False"
        )
    hex_digits, module, extra = CHECKSUM_ALGORITHMS[algorithm]
    if len(digest) != hex_digits or not all(c in "0123456789abcdef" for c in digest):
        raise FormatError(
            f"{where} is damaged: its checksum entry is malformed (expected {algorithm!r}, ':' and {hex_digits} "
            f"lower-case hex digits, got {len(digest)} characters after ':')"
        )
    if not checksum_available(algorithm):
        raise ChecksumUnavailableError(
            f"{where} is checksummed with {algorithm}, which needs the {module} package: pip install "
            f"'pbeh[{extra}]' (or {module}) to verify it; a trusted index file loads unchecked with "
            "TruncatedHammingIndex.load(path, verify=False)"
        )
    return algorithm, digest


# ------------------------------------------------------------------------------------------------ names and modes
def _name_max(directory: Path) -> int:
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # pragma: no cover - platforms without pathconf
        return 255


def _fit_name(name: str, extra: int, directory: Path) -> str:
    """``name`` shortened (with a digest of the full name, so distinct names stay distinct) so that ``extra`` more
    bytes still fit in one file name of ``directory``'s file system."""
    room = _name_max(directory) - extra
    if len(name.encode("utf-8")) <= room:
        return name
    digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    keep = name.encode("utf-8", "surrogateescape")[: max(0, room - 11)].decode("utf-8", "ignore")
    return f"{keep}~{digest}"


def sibling_path(target: PathLike, tag: str) -> Path:
    """The hidden sibling ``.<name>.<tag>`` of ``target`` (shortened when the full name would be too long)."""
    target = Path(target)
    suffix = f".{tag}"
    return target.parent / f".{_fit_name(target.name, 1 + len(suffix), target.parent)}{suffix}"


def _umask() -> int:
    """The process umask, read without changing it where the platform allows."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # pragma: no cover - platforms without /proc
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------------ atomic files
@contextlib.contextmanager
def atomic_path(path: PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    If the body raises, the temporary file is removed and ``path`` is left untouched. The new file gets the mode
    the umask gives a newly created file. A file name up to the file system's limit can be written (the temporary
    name is shortened to fit).

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
    # mkstemp adds 8 random characters and the suffix to the prefix ".<name>."
    prefix = f".{_fit_name(target.name, 2 + 8 + len(suffix), target.parent)}."
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
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


def read_json(path: PathLike, *, what: str = "JSON file", expect: type | None = None) -> Any:
    """Read a JSON file, raising :class:`FormatError` that names the file when it is missing or malformed.

    Args:
        path: the file.
        what: how messages name it (``"model config"``).
        expect: when given (``dict`` or ``list``), the top-level value must be of this type.
    """
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{what} not found: {str(p)!r}")
    size = p.stat().st_size
    if size > _MAX_JSON_BYTES:
        raise FormatError(f"{what} {str(p)!r} is {size} bytes; pbeh writes no JSON file over {_MAX_JSON_BYTES}")
    try:
        obj = json.loads(p.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise FormatError(f"{what} {str(p)!r} is not valid JSON: {exc}") from exc
    if expect is not None and not isinstance(obj, expect):
        raise FormatError(f"{what} {str(p)!r}: expected a JSON {expect.__name__}, got {type(obj).__name__}")
    return obj


_MISSING = object()


def json_field(
    obj: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    *,
    source: str,
    default: Any = _MISSING,
    minimum: int | None = None,
    maximum: int | None = None,
) -> Any:
    """``obj[key]`` checked to be of ``kind`` (and, for ints, within ``[minimum, maximum]``), else FormatError.

    Bools are not ints here, and ints are accepted where a float is asked for.

    Example:
        >>> json_field({"n": 3}, "n", int, source="x.json", maximum=10)
        3
        >>> json_field({"n": "3"}, "n", int, source="x.json")
        Traceback (most recent call last):
        ...
        pbeh.serialization.FormatError: x.json: 'n' must be int, got str '3'
    """
    if not isinstance(obj, Mapping):
        raise FormatError(f"{source}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        if default is not _MISSING:
            return default
        raise FormatError(f"{source}: missing key {key!r}")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        names = " or ".join(k.__name__ for k in kinds)
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise FormatError(f"{source}: {key!r} must be {names}, got {type(value).__name__} {shown}")
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if is_int and ((minimum is not None and value < minimum) or (maximum is not None and value > maximum)):
        raise FormatError(f"{source}: {key!r} must be an int in [{minimum}, {maximum}], got {value}")
    return value


# ------------------------------------------------------------------------------------------------ directories
def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux's ``renameat2(RENAME_EXCHANGE)``; False where unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


def replace_directory(staged: PathLike, target: PathLike) -> None:
    """Move the complete directory ``staged`` to ``target``, replacing an existing ``target`` as one step.

    Where the platform can exchange two directories atomically (Linux), ``target`` is never missing: a reader sees
    the old state or the new one. Elsewhere the old directory is first renamed to ``.<name>.old``, and
    :func:`resolve_directory` (used by every pbeh directory reader) falls back to it for the instant ``target`` is
    missing, or after a crash in that instant. ``staged`` must be on the same file system (a sibling).
    """
    staged, target = Path(staged), Path(target)
    old = sibling_path(target, "old")
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"directory: expected a directory path, got the existing file {str(target)!r}")
    if target.is_dir() and _exchange(staged, target):
        _fsync_directory(target.parent)
        shutil.rmtree(staged, ignore_errors=True)  # it now holds the previous state
    else:
        if target.is_dir():
            if old.exists():
                shutil.rmtree(old)
            os.rename(target, old)
        os.rename(staged, target)
        _fsync_directory(target.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def resolve_directory(target: PathLike) -> Path:
    """``target``, or its ``.<name>.old`` sibling while a :func:`replace_directory` swap has ``target`` missing."""
    target = Path(target)
    if target.is_dir():
        return target
    old = sibling_path(target, "old")
    if old.is_dir() and not target.exists():
        return old
    return target


def staging_directory(target: PathLike) -> Path:
    """A fresh, empty staging directory ``.<name>.partial`` beside ``target`` (a leftover one is removed)."""
    staged = sibling_path(target, "partial")
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(parents=True)
    return staged


# ------------------------------------------------------------------------------------------------ safetensors
def _header_metadata(kind: str, format_version: int, metadata: Mapping[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {
        "pbeh_kind": kind,
        "format_version": str(int(format_version)),
        "pbeh_version": __version__,
    }
    for key, value in (metadata or {}).items():
        if key in out or key in _RESERVED_KEYS:
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
_CODE_DTYPES = {code: dtype.newbyteorder("<") for dtype, code in _DTYPE_CODES.items()}


def _canonical_header(header: Mapping[str, Any]) -> bytes:
    """The header as compact, key-sorted JSON without the checksum: what the checksum covers besides the data."""
    meta = {k: v for k, v in header.get("__metadata__", {}).items() if k != CHECKSUM_KEY}
    body = {**{k: v for k, v in header.items() if k != "__metadata__"}, "__metadata__": meta}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _checksum(header: Mapping[str, Any], data: bytes | memoryview, algorithm: str = "sha256") -> str:
    """The checksum entry of a file in one pass: ``"<algorithm>:<hex>"`` over the canonical header and the data."""
    digest = _new_digest(algorithm)
    digest.update(_canonical_header(header))
    digest.update(data)
    return f"{algorithm}:{digest.hexdigest()}"


def serialize_safetensors(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    """Encode arrays and string metadata in the safetensors format, deterministically, with a checksum.

    The safetensors library writes its header from a hash map, so the same state can give different bytes from one
    save to the next. pbeh writes the (simple, documented) format itself with sorted keys, so saving the same state
    twice gives identical files. Layout: 8-byte little-endian header length, a JSON header padded with spaces to a
    multiple of 8 bytes, then the little-endian data of each tensor in key order. The metadata gains
    ``pbeh_checksum``, the SHA-256 of the canonical header and the data.
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
    payload = b"".join(chunks)
    meta = dict(header["__metadata__"])
    meta[CHECKSUM_KEY] = _checksum(header, payload)
    header["__metadata__"] = dict(sorted(meta.items()))
    raw = json.dumps(header, separators=(",", ":"), sort_keys=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + payload


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


class SafetensorsHeader:
    """The checked header of a safetensors file: its metadata and, per tensor, dtype, shape and byte range.

    Attributes:
        path: the file.
        header_length: bytes of the JSON header (the data section starts at ``8 + header_length``).
        metadata: the ``__metadata__`` strings.
        tensors: name -> (numpy dtype, shape, begin, end) with byte offsets into the data section.
        raw: the parsed header (for the checksum).
    """

    __slots__ = ("header_length", "metadata", "path", "raw", "tensors")

    def __init__(
        self,
        path: Path,
        header_length: int,
        metadata: dict[str, str],
        tensors: dict[str, tuple[np.dtype[Any], tuple[int, ...], int, int]],
        raw: dict[str, Any],
    ) -> None:
        self.path = path
        self.header_length = header_length
        self.metadata = metadata
        self.tensors = tensors
        self.raw = raw


def read_safetensors_header(path: PathLike, *, kind: str | None = None) -> SafetensorsHeader:
    """Read and check a safetensors header without reading tensor data.

    Checks, before anything is allocated: the header length against the file size, the header is a JSON object,
    ``__metadata__`` maps strings to strings and names a pbeh kind (``kind`` when given), every tensor has a known
    dtype, a shape of at most 8 non-negative ints, and byte offsets that match its shape and dtype, tile the data
    section in order without gaps or overlaps, and end exactly at the end of the file.

    Raises:
        FormatError: any of the above fails (the message names the file and what is wrong).
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
        if n_header <= 1 or n_header > _MAX_HEADER_BYTES or 8 + n_header > size:
            raise FormatError(
                f"{str(p)!r} is not a valid safetensors file (header length {n_header}, file size {size}): "
                "truncated or of another format"
            )
        raw_bytes = fh.read(n_header)
    if len(raw_bytes) != n_header:
        raise FormatError(f"{str(p)!r} is truncated: the header needs {n_header} bytes")
    try:
        header = json.loads(raw_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"{str(p)!r} has a corrupt safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise FormatError(f"{str(p)!r} has a corrupt safetensors header (not a JSON object)")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise FormatError(f"{str(p)!r} has a corrupt safetensors header ('__metadata__' must map strings to strings)")
    if "pbeh_kind" not in meta:
        raise FormatError(f"{str(p)!r} is a safetensors file but was not written by pbeh (no 'pbeh_kind' metadata)")
    if kind is not None and meta["pbeh_kind"] != kind:
        raise FormatError(f"{str(p)!r} holds a pbeh {meta['pbeh_kind']!r}, expected a pbeh {kind!r}")
    data_size = size - 8 - n_header
    tensors: dict[str, tuple[np.dtype[Any], tuple[int, ...], int, int]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        where = f"{str(p)!r}: tensor {name[:60]!r}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise FormatError(f"{where}: expected keys dtype, shape, data_offsets")
        dtype = _CODE_DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        if dtype is None:
            raise FormatError(
                f"{where}: dtype {str(entry['dtype'])[:20]!r} is not one pbeh reads ({', '.join(_CODE_DTYPES)})"
            )
        shape, offsets = entry["shape"], entry["data_offsets"]
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_NDIM
            or not all(type(d) is int and 0 <= d <= data_size for d in shape)
        ):
            raise FormatError(f"{where}: shape must be at most {_MAX_NDIM} non-negative ints, got {str(shape)[:60]}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise FormatError(f"{where}: data_offsets must be two ints, got {str(offsets)[:60]}")
        begin, end = offsets
        n_bytes = math.prod(shape) * dtype.itemsize
        if 0 <= begin <= end and end - begin == n_bytes and end > data_size:
            raise FormatError(f"{str(p)!r} is truncated: {size} bytes, tensor {name[:60]!r} needs {8 + n_header + end}")
        if not 0 <= begin <= end <= data_size or end - begin != n_bytes:
            raise FormatError(
                f"{where}: data_offsets {offsets} do not hold a {entry['dtype']} array of shape {shape} "
                f"({n_bytes} bytes) inside the {data_size}-byte data section (truncated or damaged file)"
            )
        tensors[name] = (dtype, tuple(shape), begin, end)
    position = 0
    for name, (_, _, begin, end) in sorted(tensors.items(), key=lambda item: (item[1][2], item[1][3])):
        if begin != position:
            raise FormatError(
                f"{str(p)!r}: tensor {name[:60]!r} starts at byte {begin}, expected {position} "
                "(tensors must tile the data section)"
            )
        position = end
    if position != data_size:
        raise FormatError(
            f"{str(p)!r} is truncated or has trailing bytes: {size} bytes, the header describes "
            f"{8 + n_header + position}"
        )
    return SafetensorsHeader(p, n_header, dict(meta), tensors, header)


def read_safetensors_metadata(path: PathLike, *, kind: str | None = None) -> dict[str, str]:
    """Read only the metadata of a safetensors file written by pbeh (no tensor data is read).

    Raises:
        FormatError: the file is missing, truncated, not safetensors, not written by pbeh, or of another kind.
    """
    return {k: v for k, v in read_safetensors_header(path, kind=kind).metadata.items() if k != CHECKSUM_KEY}


def check_format_version(path: PathLike, meta: Mapping[str, str], supported: int | tuple[int, ...]) -> None:
    """Raise :class:`FormatError` unless ``meta['format_version']`` is ``supported`` (or one of them)."""
    versions = supported if isinstance(supported, tuple) else (supported,)
    found = meta.get("format_version")
    if found not in {str(v) for v in versions}:
        raise FormatError(
            f"{str(path)!r} has format_version {found!r}; this pbeh {__version__} reads format_version "
            f"{' or '.join(str(v) for v in versions)}. Re-save it with a matching pbeh version."
        )


def load_safetensors(path: PathLike, *, kind: str, format_version: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Load a pbeh safetensors file: its arrays and its metadata, after checking header, kind, version and checksum.

    The arrays are native-endian, writable and own their memory. The checksum is verified when the file has one.

    Raises:
        FormatError: see :func:`read_safetensors_header`; also a checksum that does not match the content.
    """
    header = read_safetensors_header(path, kind=kind)
    check_format_version(path, header.metadata, format_version)
    try:
        with open(header.path, "rb") as fh:
            fh.seek(8 + header.header_length)
            data = fh.read()
    except OSError as exc:
        raise FormatError(f"{str(path)!r} could not be read: {exc}") from exc
    expected_size = max((end for *_, end in header.tensors.values()), default=0)
    if len(data) != expected_size:
        raise FormatError(f"{str(path)!r} changed while it was read ({len(data)} data bytes, expected {expected_size})")
    recorded = _stored_checksum(path, header.metadata)
    if recorded is not None:
        stored, actual = ":".join(recorded), _checksum(header.raw, data, recorded[0])
        if stored != actual:
            raise FormatError(
                f"{str(path)!r} is damaged: its content does not match its checksum (stored {stored[:23]}..., "
                f"computed {actual[:23]}...)"
            )
    arrays: dict[str, np.ndarray] = {}
    for name, (dtype, shape, begin, end) in header.tensors.items():
        if end == begin:
            arrays[name] = np.zeros(shape, dtype=dtype.newbyteorder("="))
            continue
        arr = np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin).reshape(shape)
        arrays[name] = arr != 0 if dtype == np.bool_ else arr.astype(dtype.newbyteorder("="), copy=True)
    meta = {k: v for k, v in header.metadata.items() if k != CHECKSUM_KEY}
    return arrays, meta
