"""Feature files: the item-id and feature-array checks, :func:`save_features` and :func:`load_features` (the format
is described in :mod:`pbeh.encoders`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .._validation import check_choice
from ..serialization import FormatError, load_safetensors, save_safetensors
from ._loading import _check_name

PathLike = str | os.PathLike[str]

FEATURES_KIND = "features"
FEATURES_FORMAT_VERSION = 1
MODALITIES = ("image", "text")


def _check_ids(ids: Any) -> np.ndarray:
    if hasattr(ids, "detach") and hasattr(ids, "cpu"):
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, (str, bytes)):
        raise TypeError("ids: expected a sequence of int item ids, got a str")
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"ids: expected a 1-D sequence of int item ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"ids: expected int item ids, got dtype {arr.dtype} "
            "(map string keys to int64, e.g. with their row number in the dataset)"
        )
    if arr.size and np.issubdtype(arr.dtype, np.unsignedinteger) and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError("ids: expected ids that fit in int64")
    arr = arr.astype(np.int64)
    if arr.size:
        uniq, counts = np.unique(arr, return_counts=True)
        if np.any(counts > 1):
            dup = uniq[counts > 1][:5].tolist()
            raise ValueError(f"ids: expected unique ids, got {int(np.sum(counts > 1))} duplicated (e.g. {dup})")
    return arr


def _check_features(features: Any, n: int | None = None, dim: int | None = None, what: str = "features") -> np.ndarray:
    if hasattr(features, "detach") and hasattr(features, "cpu"):
        features = features.detach().cpu().float().numpy()
    arr = np.asarray(features)
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array (n_items, dim), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{what}: expected a float array, got dtype {arr.dtype}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{what}: expected {n} rows (one per id), got {arr.shape[0]}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{what}: expected width {dim} (the cached features' dim), got {arr.shape[1]}")
    if arr.shape[1] < 1:
        raise ValueError(f"{what}: expected at least one feature per item, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: expected finite values, got NaN or inf")
    return arr


def save_features(path: PathLike, features: Any, ids: Any, *, encoder_name: str, modality: str) -> None:
    """Save features with their int64 item ids and the encoder's name to a safetensors file, atomically.

    Args:
        path: destination file (``.safetensors``).
        features: ``(n, dim)`` float array (stored as float32).
        ids: ``n`` unique int item ids.
        encoder_name: the encoder's :attr:`~CLIPEncoder.name`.
        modality: ``"image"`` or ``"text"``.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "f.safetensors"
        >>> save_features(p, np.eye(2, 3), [7, 3], encoder_name="toy", modality="text")
        >>> feats, ids, meta = load_features(p)
        >>> feats.shape, ids.tolist(), meta["encoder_name"], meta["modality"]
        ((2, 3), [7, 3], 'toy', 'text')
    """
    ids_arr = _check_ids(ids)
    feats = _check_features(features, n=len(ids_arr))
    encoder_name = _check_name(encoder_name, "encoder_name")
    modality = check_choice(modality, "modality", MODALITIES)
    save_safetensors(
        path,
        {"features": feats, "ids": ids_arr},
        kind=FEATURES_KIND,
        format_version=FEATURES_FORMAT_VERSION,
        metadata={"encoder_name": encoder_name, "modality": modality, "dim": feats.shape[1], "n_items": len(ids_arr)},
    )


def load_features(path: PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Load a feature file written by :func:`save_features`.

    Returns:
        ``(features float32 (n, dim), ids int64 (n,), meta)``; ``meta`` holds ``encoder_name``, ``modality``, ``dim``,
        ``n_items``, ``format_version`` and ``pbeh_version``.

    Raises:
        FormatError: missing, truncated, another kind of pbeh file, another format version, or inconsistent content.
    """
    arrays, raw = load_safetensors(path, kind=FEATURES_KIND, format_version=FEATURES_FORMAT_VERSION)
    try:
        feats, ids = arrays["features"], arrays["ids"]
        meta: dict[str, Any] = {
            "encoder_name": raw["encoder_name"],
            "modality": raw["modality"],
            "dim": int(raw["dim"]),
            "n_items": int(raw["n_items"]),
            "format_version": int(raw["format_version"]),
            "pbeh_version": raw.get("pbeh_version"),
        }
    except (KeyError, ValueError) as exc:
        raise FormatError(f"{str(path)!r} is not a complete pbeh feature file: missing or bad {exc}") from exc
    if (
        feats.dtype != np.float32
        or ids.dtype != np.int64
        or feats.ndim != 2
        or ids.shape != (feats.shape[0],)
        or feats.shape != (meta["n_items"], meta["dim"])
    ):
        raise FormatError(
            f"{str(path)!r}: inconsistent feature file (features {feats.dtype} {feats.shape}, ids {ids.dtype} "
            f"{ids.shape}, metadata n_items={meta['n_items']} dim={meta['dim']})"
        )
    if len(np.unique(ids)) != len(ids):
        raise FormatError(f"{str(path)!r}: duplicated ids in a feature file")
    return feats, ids, meta
