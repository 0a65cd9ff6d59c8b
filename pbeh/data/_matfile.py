"""Low-level access to MATLAB ``.mat`` files: :class:`_MatFile` (v5 through pbeh's checked reader, v7.3 through
h5py, an optional dependency imported only here), cell arrays, and :func:`_orient` (every array ``N x D``).

HDF5 stores MATLAB's column-major arrays transposed: an ``N x D`` MATLAB matrix reads as ``D x N`` through h5py, and
the reader swaps it back to ``N x D``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._matv5 import MatV5File
from ..serialization import FormatError
from ._crossmodal import PathLike


def _import_h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:
        raise ImportError(
            "reading MATLAB v7.3 (HDF5) .mat files needs h5py: pip install pbeh[data] (from a clone of the "
            'repository: pip install ".[data]")'
        ) from exc
    return h5py


def _is_hdf5(path: Path) -> bool:
    """HDF5 signature at offset 0 or 512 (MATLAB v7.3 files keep a 512-byte text header before it)."""
    signature = b"\x89HDF\r\n\x1a\n"
    with open(path, "rb") as fh:
        head = fh.read(520)
    return head[:8] == signature or head[512:520] == signature


# A compressed HDF5 dataset cannot expand beyond about 1000:1 (deflate); anything claiming more is damaged.
_MAX_HDF5_EXPANSION = 1100


class _MatFile:
    """Lazy access to the numeric variables of a v5 or v7.3 ``.mat`` file, in MATLAB's (N x D) orientation."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        self.hdf5 = _is_hdf5(self.path)
        if self.hdf5:
            h5py = _import_h5py()
            try:
                with h5py.File(self.path, "r") as fh:
                    self.keys = [k for k, v in fh.items() if isinstance(v, h5py.Dataset) and not k.startswith("#")]
            except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
                raise FormatError(f"{self.path}: not a readable MATLAB v7.3 (HDF5) .mat file ({exc})") from exc
        else:
            # MATLAB v5 files are parsed by pbeh's checked reader (scipy.io.loadmat can crash on a damaged file).
            self._v5 = MatV5File(self.path)
            self.keys = self._v5.keys

    def find(self, candidates: Sequence[str], *, what: str) -> str:
        """The first key of ``candidates`` present (exact, then case-insensitive), else a FormatError."""
        for key in candidates:
            if key in self.keys:
                return key
        lower = {k.lower(): k for k in self.keys}
        for key in candidates:
            if key.lower() in lower:
                return lower[key.lower()]
        raise FormatError(
            f"{self.path}: missing {what} key (looked for {', '.join(map(repr, candidates))}); "
            f"keys present: {', '.join(map(repr, self.keys)) or 'none'}"
        )

    def read(self, key: str) -> np.ndarray:
        if key not in self.keys:
            raise FormatError(f"{self.path}: missing key {key!r}; keys present: {', '.join(map(repr, self.keys))}")
        arr = self._read_hdf5(key) if self.hdf5 else self._v5.read(key)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise FormatError(f"{self.path}: key {key!r} is not a numeric array (dtype {arr.dtype})")
        return arr

    def _read_hdf5(self, key: str) -> np.ndarray:
        """One dataset of a v7.3 file, its size checked against the file before it is read."""
        h5py = _import_h5py()
        try:
            with h5py.File(self.path, "r") as fh:
                dataset = fh[key]
                if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind not in "biuf":
                    raise FormatError(f"{self.path}: key {key!r} is not a numeric array (dtype {dataset.dtype})")
                n_bytes = int(np.prod(dataset.shape, dtype=np.float64)) * dataset.dtype.itemsize
                limit = _MAX_HDF5_EXPANSION * max(self.path.stat().st_size, 1 << 20)
                if n_bytes > limit:
                    raise FormatError(
                        f"{self.path}: key {key!r} claims shape {dataset.shape} ({n_bytes} bytes), more than "
                        f"{_MAX_HDF5_EXPANSION} times the file's size; the file is damaged"
                    )
                arr = np.asarray(dataset[()])
        except FormatError:
            raise
        except (OSError, KeyError, ValueError, RuntimeError, TypeError, AttributeError) as exc:
            raise FormatError(f"{self.path}: could not read key {key!r} ({type(exc).__name__}: {exc})") from exc
        return arr.T  # MATLAB is column-major: h5py sees the transpose


def _orient(arrays: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Make every 2-D array ``N x D`` with one common N, transposing any stored the other way round.

    The count N is the first dimension of the label array when it fits, else the most common first dimension.
    """
    out = {k: (v.reshape(-1, 1) if v.ndim == 1 else v) for k, v in arrays.items()}
    for key, arr in out.items():
        if arr.ndim != 2:
            raise FormatError(f"{source}: {key!r} has shape {arr.shape}; expected a 2-D (items, dim) array")
    firsts = [a.shape[0] for a in out.values()]
    n = max(set(firsts), key=lambda x: (firsts.count(x), x))
    for key, arr in out.items():
        if arr.shape[0] != n:
            if arr.shape[1] == n:
                out[key] = arr.T
            else:
                shapes = {k: v.shape for k, v in arrays.items()}
                raise FormatError(f"{source}: arrays disagree on the number of items: {shapes}")
    return out


def _read_cell(mat: _MatFile, key: str) -> list[np.ndarray]:
    """The entries of a MATLAB cell array (v5 via pbeh's checked reader, v7.3 via h5py references), in MATLAB order."""
    if mat.hdf5:
        h5py = _import_h5py()
        try:
            with h5py.File(mat.path, "r") as fh:
                refs = np.asarray(fh[key][()])
                if refs.dtype != h5py.ref_dtype and refs.dtype != object:
                    raise FormatError(f"{mat.path}: key {key!r} is not a cell array (dtype {refs.dtype})")
                return [np.asarray(fh[ref][()]).T for ref in refs.T.ravel()]
        except FormatError:
            raise
        except (OSError, KeyError, ValueError, RuntimeError, TypeError, AttributeError) as exc:
            raise FormatError(
                f"{mat.path}: could not read the cell array {key!r} ({type(exc).__name__}: {exc})"
            ) from exc
    cell = mat._v5.read(key, cells=True)
    if cell.dtype != object:
        raise FormatError(f"{mat.path}: key {key!r} is not a cell array (dtype {cell.dtype})")
    return [np.asarray(x) for x in cell.ravel(order="F")]


def _cell_strings(mat: _MatFile, key: str) -> list[str] | None:
    """A cell array of strings (such as ``class_meaning``), or None when it is absent or not strings."""
    if key not in mat.keys:
        return None
    try:
        entries = _read_cell(mat, key)
    except FormatError:
        return None
    out = []
    for entry in entries:
        if entry.dtype.kind == "U":
            out.append(str("".join(entry.ravel().tolist())).strip())
        elif entry.dtype.kind in "ui" and mat.hdf5:  # v7.3 stores chars as uint16 codes
            out.append("".join(chr(int(c)) for c in entry.ravel()).strip())
        else:
            return None
    return out
