"""Readers of whole-dataset ``.mat`` layouts into :class:`CrossModalData`: :func:`read_train_test_mat`
(``I_tr``/``T_tr``/``L_tr`` + ``I_te``/``T_te``/``L_te``) and :func:`read_all_mat` (``XAll``/``YAll``/``LAll``, or
the multi-view layout: a cell ``X`` of views plus labels)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..serialization import FormatError
from ._arrays import _labels_from_any, _multi_hot
from ._crossmodal import CrossModalData, PathLike, _file_contents_checked
from ._matfile import _cell_strings, _MatFile, _orient, _read_cell

_logger = logging.getLogger(__name__)


def _read_label_names(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _index_base(values: np.ndarray, index_base: int | str, source: str) -> int:
    if index_base == "auto":
        return 1 if values.size and values.min() >= 1 else 0
    if index_base in (0, 1) and not isinstance(index_base, bool):
        return int(index_base)
    raise ValueError(f"index_base: expected 'auto', 0 or 1, got {index_base!r} (reading {source})")


@_file_contents_checked
def read_train_test_mat(
    path: PathLike, *, index_base: int | str = "auto", label_names: Sequence[str] | None = None
) -> CrossModalData:
    """Read the ``I_tr``/``T_tr``/``L_tr`` (+ ``I_te``/``T_te``/``L_te``) layout, as in Wikipedia's ``wiki_data.mat``.

    Train rows come first, then test rows (``query_mask`` marks the test rows). Labels are either multi-hot or class
    indices (a single column); ``index_base="auto"`` reads indices starting at 1 as MATLAB's 1-based classes.
    ``L_train``/``L_test`` are accepted in place of ``L_tr``/``L_te``. Class names default to a ``class_names.txt``
    beside the file.
    """
    mat = _MatFile(path)
    source = str(mat.path)
    parts = {
        "image": mat.read(mat.find(["I_tr", "I_train"], what="train image")),
        "text": mat.read(mat.find(["T_tr", "T_train"], what="train text")),
        "labels": mat.read(mat.find(["L_tr", "L_train"], what="train label")),
    }
    test_keys = [k for k in ("I_te", "T_te", "L_te", "I_test", "T_test", "L_test") if k in mat.keys]
    has_test = bool(test_keys)
    if has_test:
        parts["test_image"] = mat.read(mat.find(["I_te", "I_test"], what="test image"))
        parts["test_text"] = mat.read(mat.find(["T_te", "T_test"], what="test text"))
        parts["test_labels"] = mat.read(mat.find(["L_te", "L_test"], what="test label"))
    train = _orient({k: parts[k] for k in ("image", "text", "labels")}, source)
    pieces = [train]
    if has_test:
        test = _orient({k[5:]: parts[k] for k in ("test_image", "test_text", "test_labels")}, source)
        pieces.append(test)
    labels_raw = [p["labels"] for p in pieces]
    if all(lab.shape[1] == 1 for lab in labels_raw):
        all_idx = np.concatenate([lab[:, 0] for lab in labels_raw])
        base = _index_base(all_idx, index_base, source)
        n_classes = len(label_names) if label_names is not None else None
        if n_classes is None:
            names_file = mat.path.parent / "class_names.txt"
            if names_file.is_file():
                label_names = _read_label_names(names_file)
                n_classes = len(label_names)
        labels = _labels_from_any(all_idx, f"{source} labels", n_classes=n_classes, index_base=base)
    else:
        labels = _multi_hot(np.concatenate(labels_raw), f"{source} labels")
        if label_names is None and (mat.path.parent / "class_names.txt").is_file():
            label_names = _read_label_names(mat.path.parent / "class_names.txt")
    n_train = len(train["image"])
    n_total = len(labels)
    try:
        image = np.concatenate([p["image"] for p in pieces])
        text = np.concatenate([p["text"] for p in pieces])
    except ValueError as exc:
        raise FormatError(f"{source}: train and test features differ in width ({exc})") from exc
    mask = np.arange(n_total) >= n_train if has_test else None
    return CrossModalData(
        image,
        text,
        labels,
        label_names=list(label_names) if label_names is not None else None,
        query_mask=mask,
        source=source,
    )


@_file_contents_checked
def read_all_mat(
    path: PathLike,
    *,
    image_key: str | None = None,
    text_key: str | None = None,
    label_key: str | None = None,
    label_names: Sequence[str] | None = None,
    image_view: int = 0,
    text_view: int = 1,
    index_base: int | str = "auto",
) -> CrossModalData:
    """Read the MIRFLICKR / NUS-WIDE ``XAll``/``YAll``/``LAll`` layout (one file, or a directory of ``.mat`` files),
    or the multi-view layout: a cell array ``X`` of per-view ``(N, D_v)`` feature matrices plus labels ``gt`` or
    ``y`` (as in ``Wikipedia_multiview.mat`` and other multi-view sets).

    ``path`` is a ``.mat`` file holding all three arrays, or a directory whose ``.mat`` files (v5 or v7.3) hold them
    between them (e.g. ``*-xall.mat``, ``*-yall.mat``, ``*-lall.mat``). Keys are matched case-insensitively; the image
    key may also be ``IAll`` when it holds 2-D features. Class names default to a ``label_names.txt`` beside the data.

    Multi-view files (chosen when the file has a cell ``X`` and no ``XAll``/``IAll``): ``image_view`` and
    ``text_view`` are the 0-based positions of the two views in ``X`` (check them: a file's ``view_meaning`` can be
    wrong; in ``Wikipedia_multiview.mat`` view 0 is the 128-d SIFT image side and view 1 the 10-d LDA text side,
    though its ``view_meaning`` says ``word, SIFT``). Labels are ``gt``/``y`` (or ``label_key``): class indices
    (``index_base`` as in :func:`read_train_test_mat`: ``"auto"`` reads indices starting at 1 as MATLAB's 1-based
    classes) or multi-hot. Class names come from a ``class_meaning`` cell when present, else a ``class_names.txt``
    or ``label_names.txt`` beside the file.
    """
    root = Path(path)
    if root.is_dir():
        files = sorted(root.glob("*.mat"))
        if not files:
            raise FileNotFoundError(f"{root}: no .mat files in this directory")
    elif root.is_file():
        files = [root]
    else:
        raise FileNotFoundError(f"{root}: no such file or directory")
    mats = [_MatFile(f) for f in files]
    if image_key is None and text_key is None:
        multi = [m for m in mats if "X" in m.keys and not any(k.lower() in ("xall", "iall") for k in m.keys)]
        if len(mats) == 1 and multi:
            return _read_multiview(
                multi[0], label_key, label_names, image_view=image_view, text_view=text_view, index_base=index_base
            )
    wanted = {
        "image": [image_key] if image_key else ["XAll", "IAll"],
        "text": [text_key] if text_key else ["YAll", "TAll"],
        "labels": [label_key] if label_key else ["LAll"],
    }
    arrays: dict[str, np.ndarray] = {}
    for what, candidates in wanted.items():
        for mat in mats:
            try:
                key = mat.find(candidates, what=what)
            except FormatError:
                continue
            arrays[what] = mat.read(key)
            break
        else:
            present = "; ".join(f"{m.path.name}: {', '.join(m.keys) or 'none'}" for m in mats)
            raise FormatError(
                f"{root}: missing {what} key (looked for {', '.join(map(repr, candidates))}); keys present: {present}"
            )
    arrays = _orient(arrays, str(root))
    if label_names is None:
        names_file = (root if root.is_dir() else root.parent) / "label_names.txt"
        if names_file.is_file():
            label_names = _read_label_names(names_file)
            if len(label_names) != arrays["labels"].shape[1]:
                label_names = None
    return CrossModalData(
        arrays["image"],
        arrays["text"],
        _multi_hot(arrays["labels"], f"{root} labels"),
        label_names=list(label_names) if label_names is not None else None,
        source=str(root),
    )


def _read_multiview(
    mat: _MatFile,
    label_key: str | None,
    label_names: Sequence[str] | None,
    *,
    image_view: int,
    text_view: int,
    index_base: int | str,
) -> CrossModalData:
    source = str(mat.path)
    views = _read_cell(mat, "X")
    for name, view in (("image_view", image_view), ("text_view", text_view)):
        if isinstance(view, bool) or not isinstance(view, int) or not 0 <= view < len(views):
            raise ValueError(
                f"{name}: expected a view position in 0..{len(views) - 1} ({source} has {len(views)} "
                f"views in X), got {view!r}"
            )
    if image_view == text_view:
        raise ValueError(f"image_view, text_view: expected two different views, got {image_view} for both")
    raw_labels = mat.read(mat.find([label_key] if label_key else ["gt", "y", "Y", "labels"], what="label"))
    for name, view in (("image", views[image_view]), ("text", views[text_view])):
        if view.dtype == object or not np.issubdtype(view.dtype, np.number) or view.ndim != 2:
            raise FormatError(f"{source}: view {name} of X is not a 2-D numeric matrix ({view.dtype}, {view.shape})")
    if raw_labels.ndim == 2 and 1 in raw_labels.shape:
        raw_labels = raw_labels.reshape(-1, 1)  # a vector of class indices fixes the item count
    n_items = raw_labels.shape[0]
    oriented = {}
    for name, view in (("image", views[image_view]), ("text", views[text_view])):
        oriented[name] = view.T if view.shape[0] != n_items and view.shape[1] == n_items else view
    arrays = _orient({**oriented, "labels": raw_labels}, source)
    labels = arrays["labels"]
    meaning = _cell_strings(mat, "view_meaning")
    if meaning is not None and len(meaning) == len(views):
        _logger.info("%s: views %s; image = view %d, text = view %d", source, meaning, image_view, text_view)
    if label_names is None:
        label_names = _cell_strings(mat, "class_meaning")
    if label_names is None:
        for name in ("class_names.txt", "label_names.txt"):
            if (mat.path.parent / name).is_file():
                label_names = _read_label_names(mat.path.parent / name)
                break
    if labels.shape[1] == 1:
        idx = labels[:, 0]
        base = _index_base(idx, index_base, source)
        n_classes = int(idx.max()) + 1 - base if len(idx) else 1
        if label_names is not None and len(label_names) >= n_classes:
            n_classes = len(label_names)
        hot = _labels_from_any(idx, f"{source} labels", n_classes=n_classes, index_base=base)
    else:
        hot = _multi_hot(labels, f"{source} labels")
    if label_names is not None and len(label_names) != hot.shape[1]:
        label_names = None
    return CrossModalData(
        arrays["image"],
        arrays["text"],
        hot,
        label_names=list(label_names) if label_names is not None else None,
        source=source,
    )
