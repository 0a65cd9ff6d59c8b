"""A checked reader of ``.npz`` archives: sizes are checked against the archive before any array is allocated.

``numpy.load`` trusts the ``.npy`` header inside each member: a damaged header asking for a ``(10**6, 10**6)`` array
allocates (or fails with MemoryError) before noticing the member is far too short, and a damaged zip directory
surfaces as ``BadZipFile``, ``zlib.error``, ``EOFError`` or ``OSError``. :class:`CheckedNpz` reads the same files
(no pickle, ever) and reports every problem as :class:`~pbeh.serialization.FormatError`.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .serialization import FormatError

__all__ = ["CheckedNpz"]

# deflate cannot expand data by more than about 1032:1; a member claiming more is damaged
_MAX_RATIO = 1100


class CheckedNpz:
    """The arrays of an ``.npz`` file, read one at a time with their sizes checked (a context manager).

    Attributes:
        files: the array names (member names without ``.npy``).

    Raises:
        FormatError: not a zip archive, or (on access) a member that is damaged, too large for its compressed size,
            of another size than its header says, or an object array (which would need pickle).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
            raise FormatError(f"{self.path}: not a readable .npz file ({type(exc).__name__}: {exc})") from exc
        self._members = {i.filename.removesuffix(".npy"): i for i in infos if i.filename.endswith(".npy")}
        self.files = list(self._members)

    def __enter__(self) -> CheckedNpz:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    def __contains__(self, key: str) -> bool:
        return key in self._members

    def __getitem__(self, key: str) -> np.ndarray:
        info = self._members.get(key)
        if info is None:
            raise KeyError(key)
        where = f"{self.path}: array {key!r}"
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > _MAX_RATIO * info.compress_size + 4096:
            raise FormatError(f"{where} claims {info.file_size} bytes from {info.compress_size} compressed bytes")
        try:
            with self._zip.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version in ((2, 0), (3, 0)):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                else:
                    raise FormatError(f"{where}: unknown .npy format version {version}")
                if dtype.hasobject:
                    raise FormatError(f"{where}: an object array needs pickle to load, which pbeh refuses")
                header_bytes = fh.tell()
                n_bytes = math.prod(shape) * dtype.itemsize
                if header_bytes + n_bytes != info.file_size:
                    raise FormatError(
                        f"{where}: its header describes {dtype} {shape} ({n_bytes} bytes) but the member holds "
                        f"{info.file_size - header_bytes} bytes"
                    )
                data = fh.read(n_bytes)
        except FormatError:
            raise
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, TypeError, SyntaxError,
                NotImplementedError, KeyError, RuntimeError) as exc:  # fmt: skip
            raise FormatError(f"{where}: damaged ({type(exc).__name__}: {exc})") from exc
        if len(data) != n_bytes:
            raise FormatError(f"{where}: truncated ({len(data)} of {n_bytes} bytes)")
        flat = np.frombuffer(data, dtype=dtype) if n_bytes else np.zeros(0, dtype=dtype)
        if fortran:
            return flat.reshape(shape[::-1]).T.copy(order="F")
        return flat.reshape(shape).copy()
