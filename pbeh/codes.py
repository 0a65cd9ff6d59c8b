"""Binary hash codes: a packed, validated value type.

Bit order (fixed across pbeh): bit ``j`` of a code is bit ``7 - j % 8`` of byte ``j // 8``, which is numpy's
``packbits(bitorder="big")``. The prefix of length ``L`` is therefore the first ``ceil(L / 8)`` bytes with the tail of
the last byte masked to zero. Padding bits are always zero, so an XOR-popcount over padded bytes equals the Hamming
distance on the real bits.

A bit value of 1 stands for the sign +1 and 0 for -1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ._validation import check_positive_int, to_numpy

__all__ = ["Codes", "hamming_distances", "popcount"]

_POPCOUNT_TABLE = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(x: np.ndarray) -> np.ndarray:
    """Number of set bits of every element of a uint8 array (same shape, uint8)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _POPCOUNT_TABLE[x]


def _n_bytes(n_bits: int) -> int:
    return (n_bits + 7) // 8


def _tail_mask(n_bits: int) -> int:
    """Mask of the real bits in the last byte of an ``n_bits`` code (0xFF when n_bits is a multiple of 8)."""
    r = n_bits % 8
    return 0xFF if r == 0 else (0xFF << (8 - r)) & 0xFF


class Codes:
    """A batch of ``n`` binary codes of one length ``n_bits``, stored packed.

    Attributes:
        packed: ``uint8`` array of shape ``(n, ceil(n_bits / 8))``, numpy big bit order, padding bits zero.
        n_bits: the code length in bits.

    Example:
        >>> c = Codes.from_signs([[0.3, -1.0, 2.0], [-0.1, 0.5, 0.0]])
        >>> c.n_bits, len(c)
        (3, 2)
        >>> c.to_bool().astype(int).tolist()
        [[1, 0, 1], [0, 1, 1]]
        >>> c.hamming(c).tolist()
        [[0, 2], [2, 0]]
    """

    __slots__ = ("_packed", "n_bits")
    __hash__ = None  # type: ignore[assignment]  # mutable-looking array payload: not hashable

    def __init__(self, packed: np.ndarray, n_bits: int, *, _owned: bool = False) -> None:
        n_bits = check_positive_int(n_bits, "n_bits")
        arr = to_numpy(packed, "packed")
        if arr.dtype != np.uint8:
            raise TypeError(f"packed: expected dtype uint8, got {arr.dtype}")
        if arr.ndim != 2:
            raise ValueError(f"packed: expected a 2-D array (n, {_n_bytes(n_bits)}), got shape {arr.shape}")
        if arr.shape[1] != _n_bytes(n_bits):
            raise ValueError(
                f"packed: {n_bits}-bit codes need {_n_bytes(n_bits)} bytes per row, got {arr.shape[1]} "
                f"(shape {arr.shape})"
            )
        if not _owned:
            # Copy first, then validate the copy: the codes never share memory with the caller's array or tensor,
            # so writing to that buffer later cannot change these codes (or their padding bits).
            arr = np.array(arr, dtype=np.uint8, order="C", copy=True)
        mask = _tail_mask(n_bits)
        if mask != 0xFF and arr.shape[0] and np.any(arr[:, -1] & (~mask & 0xFF)):
            bad = int(np.flatnonzero(arr[:, -1] & (~mask & 0xFF))[0])
            raise ValueError(
                f"packed: padding bits beyond bit {n_bits} must be zero (row {bad} has byte "
                f"{int(arr[bad, -1]):#04x}, allowed mask {mask:#04x})"
            )
        arr = np.ascontiguousarray(arr)
        arr.setflags(write=False)
        self._packed = arr
        self.n_bits = n_bits

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_packed(cls, packed: np.ndarray, n_bits: int) -> Codes:
        """Codes from packed bytes (validated: dtype, shape, byte width against ``n_bits``, zero padding).

        The bytes are copied before they are validated: the codes never alias ``packed`` (or a tensor's storage),
        and ``packed`` stays writable.
        """
        return cls(packed, n_bits)

    @classmethod
    def from_bool(cls, bits: Any) -> Codes:
        """Pack a boolean (or 0/1) array of shape ``(n, n_bits)``."""
        arr = to_numpy(bits, "bits")
        if arr.ndim != 2:
            raise ValueError(f"bits: expected a 2-D array (n, n_bits), got shape {arr.shape}")
        if arr.shape[1] < 1:
            raise ValueError(f"bits: expected at least one bit per code, got shape {arr.shape}")
        if arr.dtype != np.bool_:
            if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
                raise TypeError(f"bits: expected a bool or 0/1 array, got dtype {arr.dtype}")
            if arr.size and not np.all((arr == 0) | (arr == 1)):
                raise ValueError("bits: expected only 0 and 1 (or booleans); use Codes.from_signs for real values")
            arr = arr.astype(bool)
        return cls(np.packbits(arr, axis=1, bitorder="big"), arr.shape[1], _owned=True)

    @classmethod
    def from_signs(cls, values: Any) -> Codes:
        """Binarise real values (or ±1) of shape ``(n, n_bits)`` by their sign.

        Rule: a value ``>= 0`` gives bit 1 (+1), a value ``< 0`` gives bit 0 (-1). Zero maps to +1, so the codes are
        always strictly binary (unlike ``torch.sign``, which returns 0 for 0). NaN is rejected.
        Accepts numpy arrays and torch tensors.
        """
        arr = to_numpy(values, "values")
        if arr.ndim != 2:
            raise ValueError(f"values: expected a 2-D array (n, n_bits), got shape {arr.shape}")
        if arr.shape[1] < 1:
            raise ValueError(f"values: expected at least one value per code, got shape {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"values: expected a real-valued array, got dtype {arr.dtype}")
        if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
            row, col = (int(v) for v in np.argwhere(np.isnan(arr))[0])
            raise ValueError(
                f"values: contains NaN at row {row}, column {col} ({int(np.isnan(arr).any(axis=1).sum())} row(s) in "
                "all); codes need a sign for every value. For model outputs: the inputs hold NaN or inf, or the "
                "training loss diverged"
            )
        return cls(np.packbits(arr >= 0, axis=1, bitorder="big"), arr.shape[1], _owned=True)

    @classmethod
    def empty(cls, n_bits: int) -> Codes:
        """Zero codes of length ``n_bits``."""
        n_bits = check_positive_int(n_bits, "n_bits")
        return cls(np.zeros((0, _n_bytes(n_bits)), dtype=np.uint8), n_bits, _owned=True)

    @classmethod
    def concatenate(cls, parts: Iterable[Codes]) -> Codes:
        """Stack batches of the same length."""
        items = list(parts)
        if not items:
            raise ValueError("parts: expected at least one Codes to concatenate, got none")
        for i, c in enumerate(items):
            if not isinstance(c, Codes):
                raise TypeError(f"parts[{i}]: expected Codes, got {type(c).__name__}")
            if c.n_bits != items[0].n_bits:
                raise ValueError(
                    f"parts[{i}]: all codes must have the same n_bits, got {c.n_bits} and {items[0].n_bits}; "
                    "truncate them to a common length first"
                )
        return cls(np.concatenate([c.packed for c in items], axis=0), items[0].n_bits, _owned=True)

    # ------------------------------------------------------------------ views
    @property
    def packed(self) -> np.ndarray:
        """The packed bytes, read-only ``uint8 (n, ceil(n_bits / 8))``."""
        return self._packed

    @property
    def n_bytes(self) -> int:
        """Bytes per code."""
        return self._packed.shape[1]

    def to_bool(self) -> np.ndarray:
        """Unpack to a boolean array of shape ``(n, n_bits)``."""
        return np.unpackbits(self._packed, axis=1, count=self.n_bits, bitorder="big").astype(bool)

    def to_signs(self, dtype: Any = np.float32) -> np.ndarray:
        """Unpack to ±1 values of shape ``(n, n_bits)``."""
        return np.where(self.to_bool(), 1, -1).astype(dtype)

    def truncate(self, n_bits: int) -> Codes:
        """The first ``n_bits`` bits of every code (``n_bits`` must not exceed the current length)."""
        n_bits = check_positive_int(n_bits, "n_bits")
        if n_bits > self.n_bits:
            raise ValueError(f"n_bits: cannot truncate {self.n_bits}-bit codes to {n_bits} bits (longer)")
        if n_bits == self.n_bits:
            return self
        out = self._packed[:, : _n_bytes(n_bits)].copy()
        if out.shape[0]:
            out[:, -1] &= _tail_mask(n_bits)
        return Codes(out, n_bits, _owned=True)

    def __len__(self) -> int:
        return self._packed.shape[0]

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> Codes:
        """Select rows; always returns :class:`Codes` (an int index gives a batch of one)."""
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"index: {index} out of range for {n} codes")
            return Codes(self._packed[[int(index)]], self.n_bits, _owned=True)
        if isinstance(index, tuple):
            raise TypeError("index: Codes are indexed by rows only (int, slice, int array or bool mask)")
        return Codes(self._packed[index], self.n_bits, _owned=True)

    def __iter__(self):  # pragma: no cover - convenience
        for i in range(len(self)):
            yield self[i]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Codes):
            return NotImplemented
        return self.n_bits == other.n_bits and np.array_equal(self._packed, other._packed)

    def __repr__(self) -> str:
        return f"Codes(n={len(self)}, n_bits={self.n_bits})"

    # ------------------------------------------------------------------ distances
    def hamming(self, other: Codes, *, chunk_size: int = 4096) -> np.ndarray:
        """Pairwise Hamming distances ``(len(self), len(other))`` on the common prefix.

        Codes of different lengths are compared on their first ``min(self.n_bits, other.n_bits)`` bits.
        This is the exact numpy reference (about 0.1 G comparisons/s); the index uses faiss.
        """
        return hamming_distances(self, other, chunk_size=chunk_size)


def hamming_distances(a: Codes, b: Codes, *, chunk_size: int = 4096) -> np.ndarray:
    """Pairwise Hamming distances between ``a`` and ``b`` on their common prefix, as ``int32 (len(a), len(b))``."""
    if not isinstance(a, Codes) or not isinstance(b, Codes):
        raise TypeError(
            f"a, b: expected Codes, got {type(a).__name__} and {type(b).__name__}; wrap arrays with Codes.from_*"
        )
    n_bits = min(a.n_bits, b.n_bits)
    pa, pb = a.truncate(n_bits).packed, b.truncate(n_bits).packed
    out = np.empty((len(a), len(b)), dtype=np.int32)
    # Bound the temporary (rows x len(b) x bytes) XOR block to about 64 MB.
    budget_rows = max(1, (64 << 20) // max(1, len(b) * pa.shape[1]))
    step = max(1, min(int(chunk_size), budget_rows))
    for start in range(0, len(a), step):
        block = pa[start : start + step, None, :] ^ pb[None, :, :]
        out[start : start + step] = popcount(block).sum(axis=2, dtype=np.int32)
    return out
