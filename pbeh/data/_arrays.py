"""Array checks shared by the splits and the readers: numeric arrays, features, multi-hot labels, item ids, and
multi-hot labels from class indices. Each raises a ValueError or TypeError naming the argument."""

from __future__ import annotations

from typing import Any

import numpy as np


def _as_array(values: Any, name: str) -> np.ndarray:
    """numpy array from a numpy array, a torch tensor (detached, on CPU) or a nested sequence."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    return arr


def _features(values: Any, name: str) -> np.ndarray:
    arr = _as_array(values, name)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (n_items, dim) array, got shape {arr.shape}")
    if arr.shape[1] < 1:
        raise ValueError(f"{name}: expected at least one feature column, got shape {arr.shape}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are reported below
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise ValueError(f"{name}: expected finite float32 values, got {bad} row(s) with NaN or inf")
    return arr


def _multi_hot(values: Any, name: str) -> np.ndarray:
    arr = _as_array(values, name)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (n_items, n_classes) multi-hot array, got shape {arr.shape}")
    if arr.shape[1] < 1:
        raise ValueError(f"{name}: expected at least one class column, got shape {arr.shape}")
    if not ((arr == 0) | (arr == 1)).all():
        found = np.unique(arr[(arr != 0) & (arr != 1)])[:5].tolist()
        raise ValueError(f"{name}: expected multi-hot values in {{0, 1}}, got also {found}")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _item_ids(values: Any, n: int, name: str) -> np.ndarray:
    if values is None:
        return np.arange(n, dtype=np.int64)
    arr = _as_array(values, name)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of item ids, got shape {arr.shape}")
    integral_floats = np.issubdtype(arr.dtype, np.floating) and np.array_equal(arr, np.round(arr))
    if (arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer)) and not integral_floats:
        raise TypeError(f"{name}: expected integer item ids, got dtype {arr.dtype}")
    if integral_floats and arr.size and not np.all(np.abs(arr) < 2.0**63):
        raise ValueError(f"{name}: item ids must fit in int64, got {float(arr[np.abs(arr) >= 2.0**63][0])}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) >= 2**63:
        raise ValueError(f"{name}: item ids must fit in int64, got {int(arr.max())}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if len(np.unique(arr)) != len(arr):
        raise ValueError(f"{name}: expected unique item ids, got {len(arr) - len(np.unique(arr))} duplicate(s)")
    return arr


# Class indices above this are not class indices (a damaged file): the multi-hot matrix would not fit in memory.
_MAX_CLASSES = 1 << 20


def _labels_from_any(values: Any, name: str, *, n_classes: int | None = None, index_base: int = 0) -> np.ndarray:
    """Multi-hot (N, C) uint8 from a multi-hot matrix or from class indices (1-D or one column)."""
    arr = _as_array(values, name)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2:
        hot = _multi_hot(arr, name)
        if n_classes is not None and hot.shape[1] != n_classes:
            raise ValueError(f"{name}: expected {n_classes} label columns, got {hot.shape[1]}")
        return hot
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected class indices (N,) or multi-hot labels (N, C), got shape {arr.shape}")
    if not np.array_equal(arr, np.round(arr)):
        raise ValueError(f"{name}: class indices must be integers, got non-integer values")
    index = arr.astype(np.int64) - index_base
    if len(index) and index.min() < 0:
        raise ValueError(f"{name}: class indices must be >= {index_base}, got {int(index.min()) + index_base}")
    if len(index) and n_classes is None and index.max() >= _MAX_CLASSES:
        raise ValueError(
            f"{name}: class index {int(index.max()) + index_base} would make a label matrix of "
            f"{int(index.max()) + 1} classes; pbeh reads at most {_MAX_CLASSES} classes (damaged labels?)"
        )
    width = n_classes if n_classes is not None else (int(index.max()) + 1 if len(index) else 0)
    if len(index) and index.max() >= width:
        raise ValueError(f"{name}: class index {int(index.max()) + index_base} out of range for {width} classes")
    hot = np.zeros((len(index), max(width, 1)), dtype=np.uint8)
    hot[np.arange(len(index)), index] = 1
    return hot
