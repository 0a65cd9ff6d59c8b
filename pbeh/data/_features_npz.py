"""The ``.npz`` feature-file reader :func:`read_features_npz` (``image``, ``text``, labels, optional names and item
ids; nothing is unpickled)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .._npz import CheckedNpz
from ..serialization import FormatError
from ._arrays import _labels_from_any
from ._crossmodal import CrossModalData, PathLike, _file_contents_checked
from ._incremental import _class_index_base

_logger = logging.getLogger(__name__)


@_file_contents_checked
def read_features_npz(
    path: PathLike, *, label_key: str = "labels", index_base: int | str | None = None
) -> CrossModalData:
    """Read an ``.npz`` feature file: ``image``, ``text``, labels and optionally ``label_names``, ``item_ids``.

    Integer ``item_ids`` become the item ids; string ``item_ids`` (such as file names) become ``item_names`` and
    the ids are the row positions. Nothing is unpickled.

    Args:
        path: the ``.npz`` file, or a directory holding exactly one ``.npz`` file.
        label_key: the array holding the labels (multi-hot ``(N, C)`` or class indices ``(N,)``), for files with
            more than one label set (say ``fine_labels`` beside ``coarse_labels``). Class names are read from
            ``<label_key>_names`` when present, else from ``label_names`` when its length fits.
        index_base: numbering of class indices, as in :func:`class_incremental_split` (``None`` refuses indices
            that start at 1; ``1`` converts them; ``0`` keeps them; ``"auto"`` guesses from the smallest).

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "feats.npz")
        >>> np.savez(f, image=np.zeros((4, 3)), text=np.ones((4, 2)), fine=[0, 1, 2, 3], coarse=[0, 0, 1, 1])
        >>> read_features_npz(f, label_key="coarse").labels.shape
        (4, 2)
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.npz"))
        if len(found) != 1:
            raise FileNotFoundError(
                f"path: expected an .npz file or a directory holding exactly one, got the directory {str(path)!r} "
                f"with {len(found)} .npz files{': ' + ', '.join(f.name for f in found[:5]) if found else ''}"
            )
        path = found[0]
    if not isinstance(label_key, str) or not label_key:
        raise TypeError(f"label_key: expected the name of an array in the file, got {label_key!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    archive = CheckedNpz(path)  # sizes checked before allocating; no pickle; every problem a FormatError
    with archive:
        keys = list(archive.files)
        for key in ("image", "text", label_key):
            if key not in keys:
                hint = " (choose the labels with label_key=...)" if key == label_key else ""
                raise FormatError(f"{path}: missing key {key!r}{hint}; keys present: {', '.join(map(repr, keys))}")
        image, text, labels = archive["image"], archive["text"], archive[label_key]
        names_key = f"{label_key}_names" if f"{label_key}_names" in keys else "label_names"
        names = archive[names_key] if names_key in keys else None
        item_ids = archive["item_ids"] if "item_ids" in keys else None
    ids = names_of_items = None
    if item_ids is not None:
        if np.issubdtype(item_ids.dtype, np.integer):
            ids = item_ids
        else:
            names_of_items = [str(x) for x in item_ids.tolist()]
    labels = _labels_from_any(labels, f"{path} {label_key}", index_base=_class_index_base(labels, index_base))
    label_names = [str(x) for x in names.tolist()] if names is not None else None
    if label_names is not None and len(label_names) != labels.shape[1]:
        _logger.info(
            "%s: %d class names for %d classes of %r; names ignored", path, len(label_names), labels.shape[1], label_key
        )
        label_names = None
    return CrossModalData(
        image,
        text,
        labels,
        ids,
        label_names=label_names,
        item_names=names_of_items,
        source=str(path),
    )
