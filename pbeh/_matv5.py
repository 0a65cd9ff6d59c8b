"""A checked reader of MATLAB v5 ``.mat`` files (numeric, logical and sparse matrices), without scipy.

``scipy.io.loadmat`` parses MATLAB v5 files in C and trusts the file's tags: one changed byte can crash the process
(SIGSEGV) or raise unrelated exceptions (UnboundLocalError, ZeroDivisionError, ...). pbeh reads features and labels
only, so it parses the format itself in pure Python + numpy and checks every tag against the bytes that are actually
there before using it. Nothing a file says is allocated before it has been checked against the file (or, inside a
compressed element, against the data that actually decompresses). Every problem is a :class:`FormatError`.

Layout (MathWorks, "MAT-File Format", version 5): a 128-byte header (text, subsystem offset, version ``0x0100``,
endian indicator ``IM``/``MI``), then data elements. A data element is an 8-byte tag (``uint32`` type, ``uint32``
byte count) followed by its bytes, padded to 8 bytes; a "small" element packs a count below 5 and the type into the
first 4 bytes and its data into the next 4. A variable is a ``miMATRIX`` element (possibly inside a zlib-compressed
``miCOMPRESSED`` element) holding, in order: array flags (class, complex/logical bits, nzmax), dimensions, the name,
then the real part (and the imaginary part of a complex array), or for a sparse array the row indices, column
offsets and values. Arrays are stored column-major.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .serialization import FormatError

__all__ = ["MatV5File", "is_mat_v5"]

_MI_TYPES: dict[int, str] = {
    1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8",
}  # fmt: skip
_MI_MATRIX, _MI_COMPRESSED = 14, 15
_MI_TEXT = {1, 2, 16, 17, 18}  # name bytes may come as int8/uint8 or UTF-8/16/32
# mx class -> numpy dtype of the array MATLAB would hold
_MX_NUMERIC: dict[int, str] = {
    6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8",
}  # fmt: skip
_MX_SPARSE, _MX_CELL, _MX_CHAR = 5, 1, 4
_MAX_CELL_DEPTH = 8
_MX_NAMES = {1: "cell", 2: "struct", 3: "object", 4: "char", 5: "sparse", 16: "function", 17: "opaque"}
_MAX_DIMS = 32
# zlib cannot expand data by more than about 1032:1; a compressed element claiming more is damaged.
_MAX_ZLIB_RATIO = 1100
# The most elements a dense array built from a sparse one may have.
_MAX_SPARSE_DENSE = 1 << 31
_HEADER_BYTES = 128
# A variable's flags, dimensions (at most 32) and name (at most 63 characters) fit in these first bytes.
_HEAD_BYTES = 1024


def is_mat_v5(head: bytes) -> bool:
    """Whether ``head`` (the first 128+ bytes of a file) is a MATLAB v5 header."""
    if len(head) < _HEADER_BYTES:
        return False
    endian = head[126:128]
    if endian == b"IM":
        version = struct.unpack("<H", head[124:126])[0]
    elif endian == b"MI":
        version = struct.unpack(">H", head[124:126])[0]
    else:
        return False
    return version == 0x0100


@dataclass(frozen=True)
class _Variable:
    name: str
    mx_class: int
    dims: tuple[int, ...]
    offset: int  # of the element's tag in the file
    compressed: bool
    n_bytes: int  # bytes of the element's data in the file


class _Cursor:
    """Reads tagged elements from one buffer, checking every count against the bytes left."""

    def __init__(self, buf: bytes | memoryview, order: str, where: str) -> None:
        self.buf, self.order, self.where, self.pos = memoryview(buf), order, where, 0

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.where}: damaged MATLAB file: {what}")

    def tag(self) -> tuple[int, int, int]:
        """(type, byte count, start of data); small elements are recognised."""
        if self.pos + 8 > len(self.buf):
            raise self.fail(f"a data element tag at byte {self.pos} runs past the end ({len(self.buf)} bytes)")
        word, count = struct.unpack(self.order + "II", self.buf[self.pos : self.pos + 8])
        if word >> 16:  # small data element: count in the upper half, data in the next 4 bytes
            mi_type, count = word & 0xFFFF, word >> 16
            if count > 4:
                raise self.fail(f"a small data element at byte {self.pos} claims {count} bytes (at most 4)")
            start = self.pos + 4
            self.pos += 8
            return mi_type, count, start
        start = self.pos + 8
        if count > len(self.buf) - start:
            raise self.fail(f"an element at byte {self.pos} claims {count} bytes, only {len(self.buf) - start} remain")
        self.pos = start + count + (-count % 8)
        return word, count, start

    def element(self, *, allowed: set[int] | None = None, what: str) -> tuple[int, memoryview]:
        mi_type, count, start = self.tag()
        if allowed is not None and mi_type not in allowed:
            raise self.fail(f"{what}: unexpected data type {mi_type}")
        return mi_type, self.buf[start : start + count]

    def numbers(self, what: str) -> np.ndarray:
        mi_type, data = self.element(allowed=set(_MI_TYPES), what=what)
        dtype = np.dtype(self.order + _MI_TYPES[mi_type])
        if len(data) % dtype.itemsize:
            raise self.fail(f"{what}: {len(data)} bytes is not a whole number of {dtype} values")
        values = np.frombuffer(data, dtype=dtype)
        if not values.flags.aligned:  # numpy converts unaligned data slowly: one aligned byte copy first
            aligned = np.empty(len(values), dtype=dtype)
            aligned.view(np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)
            values = aligned
        return values


class MatV5File:
    """The variables of a MATLAB v5 file: names listed at open, arrays read on demand (see the module docstring).

    Args:
        path: the file.

    Raises:
        FormatError: not a v5 file, or a damaged one.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        data = self.path.read_bytes()
        if not is_mat_v5(data[:_HEADER_BYTES]):
            raise FormatError(
                f"{self.where}: not a readable MATLAB .mat file (no v5 header; pbeh reads v5 and v7.3 files)"
            )
        self._order = "<" if data[126:128] == b"IM" else ">"
        self._data = data
        self.variables: dict[str, _Variable] = {}
        cursor = _Cursor(data, self._order, self.where)
        cursor.pos = _HEADER_BYTES
        while cursor.pos < len(data):
            if len(data) - cursor.pos < 8:  # trailing padding
                break
            offset = cursor.pos
            mi_type, count, start = cursor.tag()
            if start != offset + 8:
                raise cursor.fail(f"top-level element at byte {offset} is a small data element")
            if mi_type == _MI_COMPRESSED:
                cursor.pos = start + count  # compressed elements are not padded
                head = self._inflate(offset, start, count, limit=_HEAD_BYTES)
                var = self._describe(head, offset, compressed=True, n_bytes=count)
            elif mi_type == _MI_MATRIX:
                view = memoryview(data)[offset : offset + 8 + min(count, _HEAD_BYTES)]
                var = self._describe(view, offset, compressed=False, n_bytes=count)
            else:
                raise cursor.fail(f"top-level element at byte {offset} has type {mi_type}, expected a matrix")
            if var is not None and var.name and var.name not in self.variables:
                self.variables[var.name] = var

    @property
    def keys(self) -> list[str]:
        return list(self.variables)

    # ------------------------------------------------------------------ parsing
    def _inflate(self, offset: int, start: int, count: int, *, limit: int | None) -> bytes:
        """The decompressed bytes of a compressed element: the first ``limit`` bytes, or all (checked)."""
        source = self._data[start : start + count]
        inflater = zlib.decompressobj()
        try:
            if limit is not None:
                return inflater.decompress(source, limit)
            head = inflater.decompress(source, 8)
            if len(head) < 8:
                raise FormatError(f"{self.where}: damaged MATLAB file: empty compressed element at byte {offset}")
            (claimed,) = struct.unpack(self._order + "I", head[4:8])
            if claimed > _MAX_ZLIB_RATIO * count + 64:
                raise FormatError(
                    f"{self.where}: damaged MATLAB file: a compressed element of {count} bytes at byte {offset} "
                    f"claims {claimed} bytes when decompressed"
                )
            rest = inflater.decompress(inflater.unconsumed_tail, claimed + 8)
        except zlib.error as exc:
            raise FormatError(f"{self.where}: damaged MATLAB file: compressed element at byte {offset}: {exc}") from exc
        return head + rest

    def _describe(self, head: bytes | memoryview, offset: int, *, compressed: bool, n_bytes: int) -> _Variable | None:
        """Name, class and dimensions from the first bytes of a miMATRIX element (the data is not read)."""
        where = f"{self.where} (variable at byte {offset})"
        if len(head) < 8:
            raise FormatError(f"{where}: damaged MATLAB file: a matrix element shorter than its tag")
        mi_type, count = struct.unpack(self._order + "II", bytes(head[:8]))
        if mi_type != _MI_MATRIX:
            raise FormatError(f"{where}: damaged MATLAB file: expected a matrix element, got data type {mi_type}")
        if count == 0:
            return None  # an empty placeholder matrix
        cursor = _Cursor(memoryview(head)[8 : 8 + count], self._order, where)
        flags = cursor.numbers("array flags")
        if len(flags) < 2:
            raise cursor.fail("array flags need two uint32 words")
        mx_class = int(flags[0]) & 0xFF
        dims = cursor.numbers("dimensions")
        if not 1 <= len(dims) <= _MAX_DIMS or np.any(dims < 0):
            raise cursor.fail(f"dimensions {dims[:8].tolist()} (expected 1 to {_MAX_DIMS} non-negative values)")
        name_type, name_bytes = cursor.element(allowed=_MI_TEXT, what="array name")
        name = bytes(name_bytes).decode("utf-8", "replace") if name_type in (1, 2, 16) else ""
        return _Variable(name, mx_class, tuple(int(d) for d in dims), offset, compressed, n_bytes)

    def read(self, name: str, *, cells: bool = False) -> np.ndarray:
        """The array ``name`` in MATLAB's shape and stored dtype, as ``scipy.io.loadmat`` returns it by default:
        sparse arrays become dense, a char array becomes an array of row strings.

        Args:
            name: the variable.
            cells: also read a cell array (an object array of the entries, MATLAB's shape; nested up to 8 levels).

        Raises:
            FormatError: no such variable, a struct/object/function/complex array (or a cell without ``cells``),
                or a damaged file.
        """
        var = self.variables.get(name)
        if var is None:
            raise FormatError(f"{self.where}: missing key {name!r}; keys present: {', '.join(map(repr, self.keys))}")
        readable = set(_MX_NUMERIC) | {_MX_SPARSE, _MX_CHAR} | ({_MX_CELL} if cells else set())
        if var.mx_class not in readable:
            kind = _MX_NAMES.get(var.mx_class, f"class {var.mx_class}")
            raise FormatError(f"{self.where}: key {name!r} is not a numeric array (a MATLAB {kind})")
        if var.compressed:
            element = self._inflate(var.offset, var.offset + 8, var.n_bytes, limit=None)
        else:
            element = memoryview(self._data)[var.offset : var.offset + 8 + var.n_bytes]
        cursor = _Cursor(element, self._order, f"{self.where}: variable {name!r}")
        mi_type, count, start = cursor.tag()
        if mi_type != _MI_MATRIX:
            raise cursor.fail(f"expected a matrix element, got data type {mi_type}")
        return self._matrix(_Cursor(memoryview(element)[start : start + count], self._order, cursor.where), 0)

    def _matrix(self, cursor: _Cursor, depth: int) -> np.ndarray:
        """The body of a miMATRIX element: flags, dimensions, name, then the data of its class."""
        flags = cursor.numbers("array flags")
        if len(flags) < 2:
            raise cursor.fail("array flags need two uint32 words")
        mx_class = int(flags[0]) & 0xFF
        if int(flags[0]) & 0x0800:
            raise FormatError(f"{cursor.where}: a complex array; pbeh reads real arrays")
        raw_dims = cursor.numbers("dimensions")
        if not 1 <= len(raw_dims) <= _MAX_DIMS or np.any(raw_dims < 0):
            raise cursor.fail(f"dimensions {raw_dims[:8].tolist()} (expected 1 to {_MAX_DIMS} non-negative values)")
        dims = tuple(int(d) for d in raw_dims)
        cursor.element(allowed=_MI_TEXT, what="array name")
        n = math.prod(dims)
        if mx_class == _MX_SPARSE:
            return self._sparse(cursor, dims, bool(int(flags[0]) & 0x0200))
        if mx_class == _MX_CELL:
            if depth >= _MAX_CELL_DEPTH:
                raise cursor.fail(f"cell arrays nested deeper than {_MAX_CELL_DEPTH} levels")
            if n > (len(cursor.buf) - cursor.pos) // 8:  # every entry needs at least an 8-byte tag
                raise cursor.fail(f"a cell array of {n} entries in {len(cursor.buf) - cursor.pos} bytes")
            out = np.empty(n, dtype=object)
            for i in range(n):
                mi_type, count, start = cursor.tag()
                if mi_type != _MI_MATRIX:
                    raise cursor.fail(f"cell entry {i}: expected a matrix element, got data type {mi_type}")
                body = _Cursor(cursor.buf[start : start + count], self._order, cursor.where)
                out[i] = self._matrix(body, depth + 1) if count else np.zeros((0, 0))
            return out.reshape(dims, order="F")
        if mx_class == _MX_CHAR:
            return self._chars(cursor, dims)
        if mx_class not in _MX_NUMERIC:
            kind = _MX_NAMES.get(mx_class, f"class {mx_class}")
            raise FormatError(f"{cursor.where}: not a numeric array (a MATLAB {kind})")
        real = cursor.numbers("real part")
        if len(real) != n:
            raise cursor.fail(f"dimensions {dims} need {n} values, the real part holds {len(real)}")
        # column-major: a view in MATLAB's shape, copied once into a Fortran-order array of the stored type, as
        # scipy.io.loadmat returns it (a double matrix MATLAB stored as uint8 stays uint8)
        out = np.empty(dims, dtype=real.dtype.newbyteorder("="), order="F")
        np.copyto(out, real.reshape(dims[::-1]).T)
        return out

    def _chars(self, cursor: _Cursor, dims: tuple[int, ...]) -> np.ndarray:
        """A char array as row strings (a ``(rows,)`` array of ``str``), as scipy's ``chars_as_strings``."""
        mi_type, data = cursor.element(allowed=set(_MI_TYPES) | _MI_TEXT, what="characters")
        if mi_type == 16:
            text = bytes(data).decode("utf-8", "replace")
        elif mi_type == 17:
            text = bytes(data).decode("utf-16-le" if self._order == "<" else "utf-16-be", "replace")
        elif mi_type == 18:
            text = bytes(data).decode("utf-32-le" if self._order == "<" else "utf-32-be", "replace")
        else:
            codes = np.frombuffer(data, dtype=self._order + _MI_TYPES[mi_type]) if len(data) else np.zeros(0, int)
            text = "".join(chr(int(c)) if 0 <= int(c) < 0x110000 else "?" for c in codes)
        n = math.prod(dims)
        if len(text) != n or len(dims) != 2:
            raise cursor.fail(f"a char array of dimensions {dims} holds {len(text)} characters")
        rows, cols = dims
        grid = np.array(list(text), dtype="<U1").reshape((cols, rows)).T if n else np.zeros((rows, cols), "<U1")
        return np.array(["".join(row) for row in grid], dtype=f"<U{max(cols, 1)}")

    def _sparse(self, cursor: _Cursor, dims: tuple[int, ...], is_logical: bool) -> np.ndarray:
        if len(dims) != 2:
            raise cursor.fail(f"a sparse array must be 2-D, got dimensions {dims}")
        n_rows, n_cols = dims
        if n_rows * n_cols > _MAX_SPARSE_DENSE:
            raise cursor.fail(f"a sparse {n_rows} x {n_cols} array is too large to read densely")
        rows = cursor.numbers("sparse row indices").astype(np.int64)
        cols = cursor.numbers("sparse column offsets").astype(np.int64)
        values = cursor.numbers("sparse values")
        if len(cols) != n_cols + 1 or (len(cols) and (cols[0] != 0 or np.any(np.diff(cols) < 0))):
            raise cursor.fail(f"sparse column offsets must be {n_cols + 1} non-decreasing values from 0")
        nnz = int(cols[-1]) if len(cols) else 0
        if nnz > len(rows) or nnz > len(values) or np.any(rows[:nnz] < 0) or np.any(rows[:nnz] >= n_rows):
            raise cursor.fail(f"sparse array with {nnz} non-zeros has too few or out-of-range row indices / values")
        out = np.zeros((n_rows, n_cols), dtype=np.uint8 if is_logical else values.dtype.newbyteorder("="))
        col_of = np.repeat(np.arange(n_cols), np.diff(cols))
        out[rows[:nnz], col_of] = values[:nnz]
        return out
