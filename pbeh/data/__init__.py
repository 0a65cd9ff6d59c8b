"""Continual cross-modal data: splits, tasks, task streams, class-incremental splitters and file readers.

Everything downstream of the encoders sees features only: an item is a pair of an image feature vector and a text
feature vector with a multi-hot label row over the *global* label space. This module turns such arrays into a stream
of class-incremental tasks and reads the standard file layouts of the cross-modal hashing literature.

* :class:`Split`: aligned ``image`` / ``text`` / ``labels`` / ``ids`` arrays (one train, query or database set).
* :class:`Task`: ``train``, ``query`` and ``database`` splits plus the global classes the task introduces.
* :class:`TaskStream`: the ordered tasks with the label names and feature widths.
* :func:`class_incremental_split`: classes into groups, each item to the **latest** task any of its labels belongs
  to, a seeded query split per task (or a precomputed one).
* Protocols: :func:`wikipedia5`, :func:`mirflickr730_4`, :func:`synthetic_stream`, and :func:`load_protocol`.
* Readers (:class:`CrossModalData` or a :class:`TaskStream`): :func:`read_taskwise_mat` (the PBEH/CASH per-task
  HDF5 ``.mat`` files), :func:`read_all_mat` (``XAll``/``YAll``/``LAll``), :func:`read_train_test_mat`
  (``I_tr``/``T_tr``/``L_tr`` + ``I_te``/``T_te``/``L_te``) and :func:`read_features_npz`.

MATLAB files of version 5 are read with :mod:`scipy.io`, version 7.3 (HDF5) files with :mod:`h5py`; both are optional
dependencies (``pip install pbeh[data]``) imported only inside the readers. HDF5 stores MATLAB's column-major arrays
transposed: an ``N x D`` MATLAB matrix reads as ``D x N`` through h5py, and the readers swap it back to ``N x D``.
Only numpy is needed otherwise.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._matv5 import MatV5File
from ._npz import CheckedNpz
from ._validation import check_bool, check_fraction, check_int
from .serialization import FormatError

__all__ = [
    "MIRFLICKR730_4_GROUPS",
    "PROTOCOLS",
    "WIKIPEDIA5_GROUPS",
    "CrossModalData",
    "Split",
    "Task",
    "TaskStream",
    "class_incremental_split",
    "load_protocol",
    "mirflickr730_4",
    "read_all_mat",
    "read_features_npz",
    "read_taskwise_mat",
    "read_train_test_mat",
    "synthetic_stream",
    "wikipedia5",
]

_logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: Names accepted by :func:`load_protocol`.
PROTOCOLS = ("synthetic", "wikipedia5", "mirflickr730-4", "taskwise-mat", "all-mat", "train-test-mat", "npz")

#: Wikipedia-5 (BENCHMARKS.md): 5 tasks x 2 classes in class-index order.
WIKIPEDIA5_GROUPS: tuple[tuple[str, ...], ...] = (
    ("art", "biology"),
    ("geography", "history"),
    ("literature", "media"),
    ("music", "royalty"),
    ("sport", "warfare"),
)

#: MIRFLICKR730-4 (BENCHMARKS.md): 4 tasks x 6 classes by descending class frequency over the full MIRFLICKR-25K
#: label file (``LAll``, 20,015 items). Over the 730-item subset alone, ``female`` and ``male`` (and ``portrait`` and
#: ``night``) would change places; ``class_order="subset"`` of :func:`mirflickr730_4` gives that variant.
MIRFLICKR730_4_GROUPS: tuple[tuple[str, ...], ...] = (
    ("indoor", "male", "people", "plant_life", "sky", "structures"),
    ("animals", "clouds", "female", "portrait", "tree", "water"),
    ("car", "flower", "night", "sea", "sunset", "transport"),
    ("baby", "bird", "dog", "food", "lake", "river"),
)


# ----------------------------------------------------------------------------------------------------------------
# validation helpers


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


# ----------------------------------------------------------------------------------------------------------------
# Split, Task, TaskStream


@dataclass(frozen=True, eq=False)
class Split:
    """Aligned cross-modal items: row ``i`` of every array is the same item.

    Arrays are converted on construction (``image``/``text`` to C-contiguous float32, ``labels`` to uint8, ``ids``
    to int64) and validated; treat them as read-only.

    Attributes:
        image: ``(N, D_image)`` float32 image features, finite.
        text: ``(N, D_text)`` float32 text features, finite.
        labels: ``(N, C)`` uint8 multi-hot labels over the global label space.
        ids: ``(N,)`` int64 global item ids, unique (default ``0..N-1``).

    Example:
        >>> import numpy as np
        >>> s = Split(image=np.zeros((3, 4)), text=np.ones((3, 2)), labels=np.eye(3), ids=[7, 8, 9])
        >>> len(s), s.image.dtype, s.labels.dtype, s.n_classes
        (3, dtype('float32'), dtype('uint8'), 3)
        >>> s.subset([2, 0]).ids.tolist()
        [9, 7]
    """

    image: np.ndarray
    text: np.ndarray
    labels: np.ndarray
    ids: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        image = _features(self.image, "image")
        text = _features(self.text, "text")
        labels = _multi_hot(self.labels, "labels")
        n = len(image)
        if len(text) != n or len(labels) != n:
            raise ValueError(
                f"image, text, labels: expected the same number of rows, got {n}, {len(text)}, {len(labels)}"
            )
        ids = _item_ids(self.ids, n, "ids")
        if len(ids) != n:
            raise ValueError(f"ids: expected {n} ids (one per row), got {len(ids)}")
        object.__setattr__(self, "image", image)
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "ids", ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Split(n={len(self)}, image_dim={self.image_dim}, text_dim={self.text_dim}, n_classes={self.n_classes})"

    @property
    def image_dim(self) -> int:
        return int(self.image.shape[1])

    @property
    def text_dim(self) -> int:
        return int(self.text.shape[1])

    @property
    def n_classes(self) -> int:
        return int(self.labels.shape[1])

    def subset(self, indices: Any) -> Split:
        """The rows at ``indices`` (integer positions, in that order, or a boolean mask of length N)."""
        index = _as_array(indices, "indices")
        if index.dtype == np.bool_:
            if index.shape != (len(self),):
                raise ValueError(f"indices: expected a boolean mask of shape ({len(self)},), got {index.shape}")
        elif np.issubdtype(index.dtype, np.integer) or index.size == 0:
            index = index.astype(np.int64).reshape(-1)
            if index.size and (index.min() < -len(self) or index.max() >= len(self)):
                raise IndexError(f"indices: expected positions in [0, {len(self)}), got {index.min()}..{index.max()}")
        else:
            raise TypeError(f"indices: expected integer positions or a boolean mask, got dtype {index.dtype}")
        return Split(self.image[index], self.text[index], self.labels[index], self.ids[index])

    @classmethod
    def empty(cls, image_dim: int, text_dim: int, n_classes: int) -> Split:
        """A split with no items and the given widths."""
        return cls(
            np.zeros((0, image_dim), np.float32),
            np.zeros((0, text_dim), np.float32),
            np.zeros((0, n_classes), np.uint8),
            np.zeros(0, np.int64),
        )

    @classmethod
    def concatenate(cls, parts: Sequence[Split]) -> Split:
        """Rows of all ``parts`` in order; widths must agree and ids stay unique."""
        parts = list(parts)
        if not parts:
            raise ValueError("parts: expected at least one Split, got none")
        for i, part in enumerate(parts):
            if not isinstance(part, Split):
                raise TypeError(f"parts[{i}]: expected a Split, got {type(part).__name__}")
            _check_same_widths(parts[0], part, f"parts[{i}]")
        return cls(
            np.concatenate([p.image for p in parts]),
            np.concatenate([p.text for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.ids for p in parts]),
        )


def _check_same_widths(reference: Split, other: Split, name: str) -> None:
    got = (other.image_dim, other.text_dim, other.n_classes)
    want = (reference.image_dim, reference.text_dim, reference.n_classes)
    if got != want:
        raise ValueError(f"{name}: expected (image_dim, text_dim, n_classes) = {want}, got {got}")


@dataclass(frozen=True, eq=False)
class Task:
    """One continual task: its training items, its query set and its retrieval database.

    Attributes:
        name: a short label such as ``"T1"``.
        train: the items to train on (a validation split is carved from these, never from the queries).
        query: the queries evaluated against ``database``.
        database: the items encoded into the code store after this task.
        classes: the global class indices this task introduces.

    Example:
        >>> import numpy as np
        >>> s = Split(np.zeros((10, 2)), np.zeros((10, 3)), np.ones((10, 1)))
        >>> task = Task("T1", train=s, query=s.subset([0]), database=s, classes=(0,))
        >>> rest, val = task.split_validation(0.2, seed=0)
        >>> len(rest), len(val), set(val.ids) <= set(s.ids)
        (8, 2, True)
    """

    name: str
    train: Split
    query: Split
    database: Split
    classes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"name: expected a str, got {type(self.name).__name__}")
        for split_name in ("train", "query", "database"):
            value = getattr(self, split_name)
            if not isinstance(value, Split):
                raise TypeError(f"{split_name}: expected a Split, got {type(value).__name__}")
        _check_same_widths(self.train, self.query, f"task {self.name!r} query")
        _check_same_widths(self.train, self.database, f"task {self.name!r} database")
        if len(self.train) == 0:
            raise ValueError(f"task {self.name!r} train: expected at least one training item, got 0")
        classes = tuple(check_int(c, "classes", minimum=0) for c in self.classes)
        if any(c >= self.train.n_classes for c in classes):
            raise ValueError(
                f"task {self.name!r} classes: expected indices < n_classes={self.train.n_classes}, got {classes}"
            )
        if len(set(classes)) != len(classes):
            raise ValueError(f"task {self.name!r} classes: expected distinct indices, got {classes}")
        object.__setattr__(self, "classes", classes)

    def __repr__(self) -> str:
        return (
            f"Task({self.name!r}, classes={self.classes}, train={len(self.train)}, query={len(self.query)}, "
            f"database={len(self.database)})"
        )

    def split_validation(self, fraction: float = 0.1, *, seed: int = 0, min_items: int = 1) -> tuple[Split, Split]:
        """Carve a seeded validation set out of the training items (never out of the queries).

        Args:
            fraction: share of the training items to hold out, in (0, 1); rounded, at least ``min_items``.
            seed: the same seed gives the same split.
            min_items: the smallest validation size.

        Returns:
            ``(train_rest, validation)``: disjoint, together exactly the training items, each in the original order.
        """
        fraction = check_fraction(fraction, "fraction")
        min_items = check_int(min_items, "min_items", minimum=1)
        n = len(self.train)
        n_val = max(min_items, round(fraction * n))
        if n_val >= n:
            raise ValueError(
                f"fraction, min_items: a validation set of {n_val} item(s) leaves no training item in task "
                f"{self.name!r}, which has {n}; lower fraction or min_items"
            )
        chosen = np.random.default_rng(seed).permutation(n)[:n_val]
        mask = np.zeros(n, dtype=bool)
        mask[chosen] = True
        return self.train.subset(~mask), self.train.subset(mask)


class TaskStream:
    """An ordered stream of class-incremental tasks over one global label space.

    Args:
        tasks: the tasks in training order; all with the same image, text and label widths.
        label_names: one name per global class (default ``class_0``, ``class_1``, ...).
        name: the stream's name (``"wikipedia5"``, ...).
        n_dropped: how many items the splitter dropped (no label in any task).

    Example:
        >>> stream = synthetic_stream(n_tasks=2, classes_per_task=2, items_per_class=10)
        >>> len(stream), stream.n_classes, stream.image_dim, stream.text_dim
        (2, 4, 64, 32)
        >>> [task.classes for task in stream]
        [(0, 1), (2, 3)]
        >>> len(stream.joint().train) == sum(len(t.train) for t in stream)
        True
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        *,
        label_names: Sequence[str] | None = None,
        name: str = "",
        n_dropped: int = 0,
    ) -> None:
        tasks = list(tasks)
        if not tasks:
            raise ValueError("tasks: expected at least one Task, got none")
        for i, task in enumerate(tasks):
            if not isinstance(task, Task):
                raise TypeError(f"tasks[{i}]: expected a Task, got {type(task).__name__}")
            _check_same_widths(tasks[0].train, task.train, f"tasks[{i}] ({task.name!r})")
        n_classes = tasks[0].train.n_classes
        if label_names is None:
            label_names = [f"class_{c}" for c in range(n_classes)]
        label_names = [str(x) for x in label_names]
        if len(label_names) != n_classes:
            raise ValueError(f"label_names: expected {n_classes} names (one per class), got {len(label_names)}")
        if not isinstance(name, str):
            raise TypeError(f"name: expected a str, got {type(name).__name__}")
        self.tasks: list[Task] = tasks
        self.label_names: list[str] = label_names
        self.name = name
        self.n_dropped = check_int(n_dropped, "n_dropped", minimum=0)

    @property
    def image_dim(self) -> int:
        return self.tasks[0].train.image_dim

    @property
    def text_dim(self) -> int:
        return self.tasks[0].train.text_dim

    @property
    def n_classes(self) -> int:
        return self.tasks[0].train.n_classes

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __getitem__(self, index: int | slice) -> Any:
        """A task by position, or a :class:`TaskStream` of the tasks in a slice."""
        if isinstance(index, slice):
            return TaskStream(self.tasks[index], label_names=self.label_names, name=self.name)
        return self.tasks[index]

    def __repr__(self) -> str:
        return (
            f"TaskStream({self.name!r}, n_tasks={len(self)}, n_classes={self.n_classes}, "
            f"image_dim={self.image_dim}, text_dim={self.text_dim})"
        )

    def describe(self) -> str:
        """A table: per task its classes and its train, query and database sizes."""
        header = (
            f"{self.name or 'stream'}: {len(self)} tasks, {self.n_classes} classes, "
            f"image {self.image_dim}-d, text {self.text_dim}-d"
        )
        if self.n_dropped:
            header += f", {self.n_dropped} item(s) dropped (no label in any task)"
        rows = [("task", "classes", "train", "query", "database")]
        for task in self.tasks:
            names = ", ".join(self.label_names[c] for c in task.classes) or "-"
            rows.append((task.name, names, str(len(task.train)), str(len(task.query)), str(len(task.database))))
        rows.append(
            (
                "total",
                f"{sum(len(t.classes) for t in self.tasks)} classes",
                str(sum(len(t.train) for t in self.tasks)),
                str(sum(len(t.query) for t in self.tasks)),
                str(sum(len(t.database) for t in self.tasks)),
            )
        )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [header]
        for r in rows:
            lines.append(
                "  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1])] + [r[i].rjust(widths[i]) for i in (2, 3, 4)])
            )
        return "\n".join(lines)

    def joint(self) -> Task:
        """All tasks merged into one (the joint-training upper bound): splits concatenated in task order."""
        classes: list[int] = []
        for task in self.tasks:
            classes.extend(c for c in task.classes if c not in classes)
        return Task(
            "joint",
            train=Split.concatenate([t.train for t in self.tasks]),
            query=Split.concatenate([t.query for t in self.tasks]),
            database=Split.concatenate([t.database for t in self.tasks]),
            classes=tuple(sorted(classes)),
        )


# ----------------------------------------------------------------------------------------------------------------
# class-incremental splitting


def _resolve_groups(
    groups: Sequence[Sequence[int | str]], n_classes: int, label_names: Sequence[str] | None
) -> list[list[int]]:
    position = {name: i for i, name in enumerate(label_names)} if label_names is not None else {}
    resolved: list[list[int]] = []
    seen: dict[int, int] = {}
    for g, group in enumerate(groups):
        if isinstance(group, (str, bytes)) or not isinstance(group, Sequence | np.ndarray):
            raise TypeError(f"groups[{g}]: expected a sequence of class indices or names, got {group!r}")
        if len(group) == 0:
            raise ValueError(f"groups[{g}]: expected at least one class, got an empty group")
        out = []
        for c in group:
            if isinstance(c, str):
                if c not in position:
                    known = ", ".join(label_names) if label_names is not None else "none (label_names not given)"
                    raise ValueError(f"groups[{g}]: unknown class name {c!r}; known names: {known}")
                c = position[c]
            c = check_int(c, f"groups[{g}]", minimum=0)
            if c >= n_classes:
                raise ValueError(f"groups[{g}]: class index {c} out of range for {n_classes} classes")
            if c in seen:
                raise ValueError(f"groups[{g}]: class {c} is already in groups[{seen[c]}]; groups must be disjoint")
            seen[c] = g
            out.append(c)
        resolved.append(out)
    return resolved


def _consecutive_groups(order: np.ndarray, n_tasks: int) -> list[list[int]]:
    """Split ``order`` into ``n_tasks`` consecutive groups; the larger groups (by one) come last (16/16/16/16/17)."""
    base, extra = divmod(len(order), n_tasks)
    sizes = [base] * (n_tasks - extra) + [base + 1] * extra
    bounds = np.cumsum([0, *sizes])
    return [order[bounds[t] : bounds[t + 1]].tolist() for t in range(n_tasks)]


def _class_index_base(labels: Any, index_base: int | str | None) -> int:
    """The index base of ``labels`` for :func:`class_incremental_split` (0 for multi-hot labels)."""
    if (index_base is not None and index_base not in (0, 1, "auto")) or isinstance(index_base, bool):
        raise ValueError(f"index_base: expected None, 0, 1 or 'auto', got {index_base!r}")
    arr = _as_array(labels, "labels")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.size == 0:
        return 0
    smallest = arr.min()
    if index_base == "auto":
        if smallest >= 1:
            _logger.info("labels: class indices start at %s; read as 1-based (class 1 becomes class 0)", smallest)
            return 1
        return 0
    if index_base is None:
        if smallest >= 1:
            raise ValueError(
                f"labels: class indices start at {smallest:g} (range {smallest:g}..{arr.max():g}), so class 0 would "
                "be empty and every task group shifted by one. If the ids are 1-based (as MATLAB writes them), pass "
                "index_base=1 to convert them; if class 0 really has no item, pass index_base=0"
            )
        return 0
    return int(index_base)


def class_incremental_split(
    image: Any,
    text: Any,
    labels: Any,
    *,
    groups: Sequence[Sequence[int | str]] | None = None,
    n_tasks: int | None = None,
    order: str = "given",
    query_fraction: float = 0.2,
    query_size: int | None = None,
    query_mask: Any = None,
    database: str = "train",
    train_fraction: float = 1.0,
    seed: int = 0,
    ids: Any = None,
    label_names: Sequence[str] | None = None,
    name: str = "",
    index_base: int | str | None = None,
) -> TaskStream:
    """Split paired items into a class-incremental :class:`TaskStream`.

    The classes are cut into groups, one per task: either ``groups`` (explicit class indices, or class names when
    ``label_names`` is given) or ``n_tasks`` consecutive groups of the classes in ``order``. Each item goes to the
    **latest** task any of its labels belongs to; items with no label in any group are dropped (counted in
    ``TaskStream.n_dropped`` and logged).

    Within each task the queries are either a seeded random ``query_fraction`` (or ``query_size`` items) of the
    task's items, or, with ``query_mask``, a precomputed split (the task's items where the mask is true, e.g. an
    official test set). The non-query items are the candidates for training and the database.

    Args:
        image: ``(N, D_image)`` image features.
        text: ``(N, D_text)`` text features.
        labels: ``(N, C)`` multi-hot labels, or ``(N,)`` 0-based class indices.
        groups: the class groups, one per task, disjoint; classes in no group are ignored for assignment (their
            label columns stay).
        n_tasks: the number of consecutive groups (when ``groups`` is not given); sizes differ by at most one, the
            larger ones last.
        order: class order for ``n_tasks``: ``"given"`` (class index order) or ``"frequency"`` (descending item
            count, ties by class index).
        query_fraction: share of each task's items used as queries, in (0, 1).
        query_size: a fixed number of queries per task instead of ``query_fraction``.
        query_mask: ``(N,)`` booleans marking precomputed query items (overrides the two above).
        database: ``"train"``: database = train = the non-query items; ``"rest"``: database = all non-query items
            and train a seeded ``train_fraction`` of them; ``"all"``: database = every item of the task, queries
            included (train = the non-query items, or a ``train_fraction`` of them).
        train_fraction: share of the non-query items used for training when ``database`` is ``"rest"`` or
            ``"all"``, in (0, 1].
        seed: seeds the query and train sampling (each task draws from its own stream derived from ``seed``).
        ids: ``(N,)`` unique int64 global item ids (default ``0..N-1``).
        label_names: ``C`` class names.
        name: the stream's name.
        index_base: how ``(N,)`` class indices are numbered. ``None`` (default): 0-based, and indices that start at
            1 (no class 0, as MATLAB files write them) are refused with a message, since reading them as 0-based
            would create an empty class 0 and shift every task group; ``1``: convert 1-based indices to 0-based;
            ``0``: take them as 0-based even without a class 0; ``"auto"``: 1-based when the smallest index is 1.
            Ignored for multi-hot labels.

    Returns:
        The :class:`TaskStream`; ``task.classes`` is the task's group in the given order.

    Example:
        >>> import numpy as np
        >>> labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 0], [0, 0, 0]])
        >>> stream = class_incremental_split(
        ...     np.eye(6), np.eye(6), labels, groups=[[0], [1], [2]], query_size=0, database="all")
        >>> [task.train.ids.tolist() for task in stream], stream.n_dropped
        ([[0], [1, 4], [2, 3]], 1)
    """
    image_arr = _features(image, "image")
    text_arr = _features(text, "text")
    labels_arr = _labels_from_any(
        labels,
        "labels",
        n_classes=len(label_names) if label_names is not None else None,
        index_base=_class_index_base(labels, index_base),
    )
    n_items, n_classes = labels_arr.shape
    if len(image_arr) != n_items or len(text_arr) != n_items:
        raise ValueError(
            f"image, text, labels: expected the same number of rows, got {len(image_arr)}, {len(text_arr)}, {n_items}"
        )
    ids_arr = _item_ids(ids, n_items, "ids")
    if len(ids_arr) != n_items:
        raise ValueError(f"ids: expected {n_items} ids (one per row), got {len(ids_arr)}")
    if label_names is not None and len(label_names) != n_classes:
        raise ValueError(f"label_names: expected {n_classes} names (one per class), got {len(label_names)}")

    if groups is not None:
        if n_tasks is not None:
            raise ValueError("groups, n_tasks: give one of them, not both")
        group_list = _resolve_groups(groups, n_classes, label_names)
    elif n_tasks is not None:
        n_tasks = check_int(n_tasks, "n_tasks", minimum=1)
        if n_tasks > n_classes:
            raise ValueError(f"n_tasks: expected at most n_classes={n_classes} tasks, got {n_tasks}")
        if order == "given":
            class_order = np.arange(n_classes)
        elif order == "frequency":
            class_order = np.argsort(-labels_arr.sum(axis=0, dtype=np.int64), kind="stable")
        else:
            raise ValueError(f"order: expected 'given' or 'frequency', got {order!r}")
        group_list = _consecutive_groups(class_order, n_tasks)
    else:
        raise ValueError("groups, n_tasks: give one of them (explicit class groups or a number of tasks)")

    if database not in ("train", "rest", "all"):
        raise ValueError(f"database: expected 'train', 'rest' or 'all', got {database!r}")
    train_fraction = check_fraction(train_fraction, "train_fraction", allow_one=True)
    if database == "train" and train_fraction != 1.0:
        raise ValueError(
            f"train_fraction: must be 1.0 when database='train' (database = train), got {train_fraction}; "
            "use database='rest' to train on a subset of the database"
        )
    if query_mask is not None:
        mask = _as_array(query_mask, "query_mask")
        if mask.shape != (n_items,) or not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"query_mask: expected ({n_items},) booleans, got shape {mask.shape}, dtype {mask.dtype}")
        mask = mask.astype(bool)
    else:
        mask = None
        if query_size is not None:
            query_size = check_int(query_size, "query_size", minimum=0)
        else:
            query_fraction = check_fraction(query_fraction, "query_fraction")

    # latest task wins: the task of an item is the largest task index among its labels' groups
    task_of_class = np.full(n_classes, -1, dtype=np.int64)
    for t, group in enumerate(group_list):
        task_of_class[group] = t
    item_task = np.where(labels_arr.astype(bool), task_of_class[None, :], -1).max(axis=1, initial=-1)
    n_dropped = int((item_task < 0).sum())
    if n_dropped:
        _logger.info("%s: dropped %d of %d items with no label in any task", name or "split", n_dropped, n_items)
    uncovered = np.flatnonzero(task_of_class < 0)
    if len(uncovered):
        _logger.info("%s: classes %s are in no task group", name or "split", uncovered.tolist())

    tasks = []
    for t, group in enumerate(group_list):
        members = np.flatnonzero(item_task == t)
        rng = np.random.default_rng([seed, t])
        task_name = f"T{t + 1}"
        if len(members) == 0:
            raise ValueError(f"groups: task {task_name} (classes {group}) receives no item")
        if mask is not None:
            is_query = mask[members]
        else:
            n_query = query_size if query_size is not None else max(1, round(query_fraction * len(members)))
            if n_query >= len(members):
                raise ValueError(
                    f"query_fraction/query_size: task {task_name} has {len(members)} item(s); {n_query} "
                    "queries would leave none for training"
                )
            is_query = np.zeros(len(members), dtype=bool)
            is_query[rng.permutation(len(members))[:n_query]] = True
        rest = members[~is_query]
        queries = members[is_query]
        if len(rest) == 0:
            raise ValueError(f"query_mask: task {task_name} has no non-query item to train on")
        if train_fraction < 1.0:
            n_train = max(1, round(train_fraction * len(rest)))
            train = np.sort(rng.permutation(rest)[:n_train])
        else:
            train = rest
        db = {"train": train, "rest": rest, "all": members}[database]

        def take(rows: np.ndarray) -> Split:
            return Split(image_arr[rows], text_arr[rows], labels_arr[rows], ids_arr[rows])

        tasks.append(Task(task_name, take(train), take(queries), take(db), tuple(group)))
    return TaskStream(tasks, label_names=label_names, name=name, n_dropped=n_dropped)


# ----------------------------------------------------------------------------------------------------------------
# MATLAB and npz readers


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


@dataclass(frozen=True, eq=False)
class CrossModalData:
    """Paired features read from a file, before any task split.

    Attributes:
        image: ``(N, D_image)`` float32.
        text: ``(N, D_text)`` float32.
        labels: ``(N, C)`` uint8 multi-hot.
        ids: ``(N,)`` int64 item ids.
        label_names: class names, or None.
        item_names: per-item names (such as image file names), or None.
        query_mask: ``(N,)`` bool marking an official test/query split, or None.
        source: where the data came from.
    """

    image: np.ndarray
    text: np.ndarray
    labels: np.ndarray
    ids: np.ndarray = field(default=None)  # type: ignore[assignment]
    label_names: list[str] | None = None
    item_names: list[str] | None = None
    query_mask: np.ndarray | None = None
    source: str = ""

    def __post_init__(self) -> None:
        split = Split(self.image, self.text, self.labels, self.ids)  # validates and converts
        object.__setattr__(self, "image", split.image)
        object.__setattr__(self, "text", split.text)
        object.__setattr__(self, "labels", split.labels)
        object.__setattr__(self, "ids", split.ids)
        if self.label_names is not None and len(self.label_names) != split.n_classes:
            raise ValueError(f"label_names: expected {split.n_classes} names, got {len(self.label_names)}")
        if self.item_names is not None and len(self.item_names) != len(split):
            raise ValueError(f"item_names: expected {len(split)} names, got {len(self.item_names)}")
        if self.query_mask is not None:
            mask = np.asarray(self.query_mask)
            if mask.shape != (len(split),):
                raise ValueError(f"query_mask: expected shape ({len(split)},), got {mask.shape}")
            object.__setattr__(self, "query_mask", mask.astype(bool))

    def __len__(self) -> int:
        return len(self.ids)

    def split(self, **kwargs: Any) -> TaskStream:
        """:func:`class_incremental_split` of these items; the file's query mask and label names are used unless
        given in ``kwargs``."""
        kwargs.setdefault("ids", self.ids)
        kwargs.setdefault("label_names", self.label_names)
        if self.query_mask is not None and "query_mask" not in kwargs:
            if "query_fraction" in kwargs or "query_size" in kwargs:
                _logger.info("%s: query_fraction/query_size given, the file's test split is ignored", self.source)
            else:
                kwargs["query_mask"] = self.query_mask
        return class_incremental_split(self.image, self.text, self.labels, **kwargs)


def _read_label_names(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _index_base(values: np.ndarray, index_base: int | str, source: str) -> int:
    if index_base == "auto":
        return 1 if values.size and values.min() >= 1 else 0
    if index_base in (0, 1) and not isinstance(index_base, bool):
        return int(index_base)
    raise ValueError(f"index_base: expected 'auto', 0 or 1, got {index_base!r} (reading {source})")


def _file_contents_checked(reader: Callable[..., Any]) -> Callable[..., Any]:
    """Report a ValueError raised while validating a file's contents as a :class:`FormatError` naming the file.

    FormatError is a ValueError, so callers catching ValueError keep working; the message is kept as it was.
    """

    @functools.wraps(reader)
    def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return reader(path, *args, **kwargs)
        except FormatError:
            raise
        except ValueError as exc:
            text = str(exc)
            raise FormatError(text if str(path) in text else f"{path}: {text}") from exc

    return wrapper


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


_TASKWISE_PATTERNS = {
    "mscoco": re.compile(r"^(train|test|database)_(\d+)_(image|text|label)\.mat$"),
    "nuswide": re.compile(r"^(train|test|database)_task_(\d+)_(image|text|label)\.mat$"),
}


def _taskwise_key(mat: _MatFile, stem: str, kind: str, scheme: str) -> str:
    """The array key of one task-wise file: the reference key, else an equivalent one, else the only dataset."""
    candidates = [stem]
    if kind == "label":
        base = stem[: -len("_label")]
        candidates = [f"{base}_lab", f"{base}_label"] if scheme == "mscoco" else [f"{base}_label", f"{base}_lab"]
    for key in candidates:
        if key in mat.keys:
            return key
    if kind == "label":
        ending = [k for k in mat.keys if k.endswith(("_lab", "_label", "_labels"))]
        if len(ending) == 1:
            return ending[0]
    if len(mat.keys) == 1:
        return mat.keys[0]
    raise FormatError(
        f"{mat.path}: missing key {candidates[0]!r}; keys present: {', '.join(map(repr, mat.keys)) or 'none'}"
    )


@_file_contents_checked
def read_taskwise_mat(
    directory: PathLike,
    *,
    n_tasks: int | None = None,
    scheme: str = "auto",
    label_names: Sequence[str] | None = None,
    name: str = "",
) -> TaskStream:
    """Read the PBEH / PIC-CMH / CASH per-task HDF5 ``.mat`` layout into a :class:`TaskStream`.

    One file per task, split and kind, each holding one array stored transposed (read as ``D x N``, swapped to
    ``N x D``). Splits are ``train``, ``test`` (the queries) and ``database``; kinds ``image``, ``text``, ``label``.

    * ``scheme="mscoco"``: ``train_{t}_image.mat`` with key ``train_{t}_image``; labels in
      ``train_{t}_label.mat`` under ``train_{t}_lab``.
    * ``scheme="nuswide"``: ``train_task_{t}_image.mat`` with key ``train_task_{t}_image``; label key
      ``train_task_{t}_label``.
    * ``scheme="auto"``: whichever naming the directory uses.

    Keys are matched liberally (the other label ending, or the single dataset of the file). Task numbers are
    taken in ascending order (the reference counts from 0); ``n_tasks`` keeps the first ones. Item ids are positions
    in reading order (per task: train, test, database), so an item present in two files gets two ids. A task's
    ``classes`` are the classes present in its training labels and in no earlier task's training labels.
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory")
    names = sorted(p.name for p in root.iterdir())
    if scheme == "auto":
        matching = [s for s, pattern in _TASKWISE_PATTERNS.items() if any(pattern.match(n) for n in names)]
        if not matching:
            shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
            raise FormatError(
                f"{root}: no task-wise .mat files (expected e.g. train_0_image.mat or train_task_0_image.mat); "
                f"found: {shown or 'nothing'}"
            )
        if len(matching) > 1:
            raise FormatError(f"{root}: files of both naming schemes found; pass scheme='mscoco' or 'nuswide'")
        scheme = matching[0]
    elif scheme not in _TASKWISE_PATTERNS:
        raise ValueError(f"scheme: expected 'auto', 'mscoco' or 'nuswide', got {scheme!r}")
    pattern = _TASKWISE_PATTERNS[scheme]
    task_numbers = sorted({int(m.group(2)) for n in names if (m := pattern.match(n))})
    if not task_numbers:
        raise FormatError(f"{root}: no files of the {scheme!r} naming scheme")
    if n_tasks is not None:
        n_tasks = check_int(n_tasks, "n_tasks", minimum=1)
        if n_tasks > len(task_numbers):
            raise ValueError(
                f"n_tasks: expected at most {len(task_numbers)} (tasks found: {task_numbers}), got {n_tasks}"
            )
        task_numbers = task_numbers[:n_tasks]
    infix = "" if scheme == "mscoco" else "task_"

    next_id = 0
    seen_classes: set[int] = set()
    tasks = []
    for position, t in enumerate(task_numbers):
        splits = {}
        for split in ("train", "test", "database"):
            arrays = {}
            for kind in ("image", "text", "label"):
                stem = f"{split}_{infix}{t}_{kind}"
                file = root / f"{stem}.mat"
                if not file.is_file():
                    raise FileNotFoundError(f"{file}: missing task-wise file ({scheme} scheme, task {t})")
                mat = _MatFile(file)
                arrays[kind] = mat.read(_taskwise_key(mat, stem, kind, scheme))
            arrays = _orient(arrays, f"{root} task {t} {split}")
            n = len(arrays["image"])
            try:
                splits[split] = Split(arrays["image"], arrays["text"], arrays["label"], np.arange(next_id, next_id + n))
            except (ValueError, TypeError) as exc:
                raise FormatError(f"{root}: task {t} {split}: {exc}") from exc
            next_id += n
        present = np.flatnonzero(splits["train"].labels.any(axis=0)).tolist()
        new = tuple(c for c in present if c not in seen_classes)
        seen_classes.update(new)
        tasks.append(
            Task(
                f"T{position + 1}",
                train=splits["train"],
                query=splits["test"],
                database=splits["database"],
                classes=new,
            )
        )
    return TaskStream(tasks, label_names=label_names, name=name or root.name)


# ----------------------------------------------------------------------------------------------------------------
# protocols


def _locate(data_dir: PathLike | None, relative: str, what: str) -> Path:
    """Find ``relative`` (e.g. ``wikipedia/wiki_data.mat``) under ``data_dir``, its parent layout, or PBEH_DATA."""
    if data_dir is None:
        env = os.environ.get("PBEH_DATA")
        if not env:
            raise ValueError(f"data_dir: {what} needs the data directory; pass data_dir or set PBEH_DATA")
        data_dir = env
    base = Path(data_dir)
    subdir, filename = relative.split("/")
    for candidate in (base, base / filename, base / relative):
        if candidate.is_file() and candidate.name == filename:
            return candidate
    raise FileNotFoundError(f"data_dir: {what} expects {filename} in {base} or {base / subdir}; not found")


def wikipedia5(data_dir: PathLike | None = None) -> TaskStream:
    """Wikipedia-5: 5 tasks x 2 classes in class-index order; train = database = the task's official train items,
    query = its official test items (``wiki_data.mat``, labels 1..10 -> classes 0..9, names from
    ``class_names.txt``).

    Args:
        data_dir: the shared data directory (holding ``wikipedia/``), the ``wikipedia`` directory itself, or None
            for the ``PBEH_DATA`` environment variable.
    """
    path = _locate(data_dir, "wikipedia/wiki_data.mat", "wikipedia5")
    data = read_train_test_mat(path, index_base=1)
    if data.label_names is None:
        data = CrossModalData(
            data.image,
            data.text,
            data.labels,
            data.ids,
            label_names=[n for group in WIKIPEDIA5_GROUPS for n in group],
            query_mask=data.query_mask,
            source=data.source,
        )
    return data.split(n_tasks=5, order="given", database="train", name="wikipedia5")


def mirflickr730_4(
    data_dir: PathLike | None = None, *, seed: int = 0, query_fraction: float = 0.2, class_order: str = "mirflickr25k"
) -> TaskStream:
    """MIRFLICKR730-4: 4 tasks x 6 classes by descending class frequency, per task a seeded 20 % query split, the
    rest database = train (``mirflickr730/features.npz``).

    Args:
        data_dir: the shared data directory (holding ``mirflickr730/``), that directory itself, or None for
            ``PBEH_DATA``.
        seed: seeds the query split.
        query_fraction: share of each task's items used as queries.
        class_order: ``"mirflickr25k"`` (the BENCHMARKS.md groups, :data:`MIRFLICKR730_4_GROUPS`: frequencies over
            the full MIRFLICKR-25K) or ``"subset"`` (frequencies over the 730 items themselves).
    """
    path = _locate(data_dir, "mirflickr730/features.npz", "mirflickr730-4")
    data = read_features_npz(path)
    if class_order == "mirflickr25k":
        if data.label_names is None:
            raise FormatError(f"{path}: label_names are needed to place the MIRFLICKR730-4 groups")
        grouping: dict[str, Any] = {"groups": [list(g) for g in MIRFLICKR730_4_GROUPS]}
    elif class_order == "subset":
        grouping = {"n_tasks": 4, "order": "frequency"}
    else:
        raise ValueError(f"class_order: expected 'mirflickr25k' or 'subset', got {class_order!r}")
    return data.split(**grouping, query_fraction=query_fraction, seed=seed, database="train", name="mirflickr730-4")


def synthetic_stream(
    *,
    n_tasks: int = 4,
    classes_per_task: int = 3,
    image_dim: int = 64,
    text_dim: int = 32,
    items_per_class: int = 60,
    multi_label: bool = True,
    co_label_probability: float = 0.3,
    latent_dim: int = 16,
    noise: float = 0.5,
    query_fraction: float = 0.2,
    seed: int = 0,
) -> TaskStream:
    """A seeded synthetic multi-label cross-modal stream that needs no download.

    Each class has a prototype in a shared ``latent_dim`` space. An item has one primary class (``items_per_class``
    per class) and, when ``multi_label``, with probability ``co_label_probability`` one extra label drawn from all
    other classes, so labels co-occur across tasks and the latest-task rule moves items. Its latent point is the
    mean of its classes' prototypes plus noise; fixed random linear maps take it to the image and text spaces
    (different widths), each with its own noise, so cross-modal retrieval is learnable but not trivial. The stream is
    then split class-incrementally (consecutive classes per task, a seeded ``query_fraction`` of queries per task,
    database = train).

    Example:
        >>> a = synthetic_stream(seed=3)
        >>> b = synthetic_stream(seed=3)
        >>> bool((a[0].train.image == b[0].train.image).all()), len(a), a.n_classes
        (True, 4, 12)
    """
    n_tasks = check_int(n_tasks, "n_tasks", minimum=1)
    classes_per_task = check_int(classes_per_task, "classes_per_task", minimum=1)
    image_dim = check_int(image_dim, "image_dim", minimum=1)
    text_dim = check_int(text_dim, "text_dim", minimum=1)
    items_per_class = check_int(items_per_class, "items_per_class", minimum=2)
    latent_dim = check_int(latent_dim, "latent_dim", minimum=1)
    multi_label = check_bool(multi_label, "multi_label")
    if not 0 <= co_label_probability <= 1:
        raise ValueError(f"co_label_probability: expected a probability in [0, 1], got {co_label_probability}")
    if not noise >= 0:
        raise ValueError(f"noise: expected a float >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    n_classes = n_tasks * classes_per_task
    prototypes = rng.standard_normal((n_classes, latent_dim))
    to_image = rng.standard_normal((latent_dim, image_dim)) / np.sqrt(latent_dim)
    to_text = rng.standard_normal((latent_dim, text_dim)) / np.sqrt(latent_dim)

    primary = np.repeat(np.arange(n_classes), items_per_class)
    n_items = len(primary)
    labels = np.zeros((n_items, n_classes), dtype=np.uint8)
    labels[np.arange(n_items), primary] = 1
    if multi_label and n_classes > 1:
        extra = rng.random(n_items) < co_label_probability
        other = (primary + rng.integers(1, n_classes, size=n_items)) % n_classes  # uniform over the other classes
        labels[np.flatnonzero(extra), other[extra]] = 1
    latent = labels @ prototypes / labels.sum(axis=1, keepdims=True)
    latent = latent + noise * rng.standard_normal(latent.shape)
    image = latent @ to_image + noise * rng.standard_normal((n_items, image_dim))
    text = latent @ to_text + noise * rng.standard_normal((n_items, text_dim))
    order = rng.permutation(n_items)
    return class_incremental_split(
        image[order],
        text[order],
        labels[order],
        n_tasks=n_tasks,
        order="given",
        query_fraction=query_fraction,
        database="train",
        seed=seed,
        label_names=[f"class_{c}" for c in range(n_classes)],
        name="synthetic",
    )


def load_protocol(name: str, data_dir: PathLike | None = None, **kwargs: Any) -> TaskStream:
    """Build a :class:`TaskStream` by protocol or file-format name.

    Args:
        name: one of :data:`PROTOCOLS`: ``"synthetic"`` (:func:`synthetic_stream`; ``data_dir`` is ignored),
            ``"wikipedia5"``, ``"mirflickr730-4"``, ``"taskwise-mat"`` (:func:`read_taskwise_mat`), or a file
            format split by :func:`class_incremental_split`: ``"all-mat"`` (:func:`read_all_mat`),
            ``"train-test-mat"`` (:func:`read_train_test_mat`; its test items are the queries) and ``"npz"``
            (:func:`read_features_npz`). Underscores count as hyphens; case is ignored.
        data_dir: the data directory or file (None: the ``PBEH_DATA`` environment variable).
        **kwargs: passed on to the protocol function, to the file reader (its own options: ``label_key``,
            ``index_base``, ``image_view``, ...), or to :func:`class_incremental_split`.

    Example:
        >>> len(load_protocol("synthetic", n_tasks=2, items_per_class=10))
        2
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a protocol name (str), got {type(name).__name__}")
    key = name.lower().replace("_", "-")
    if key == "synthetic":
        return synthetic_stream(**kwargs)
    if key == "wikipedia5":
        return wikipedia5(data_dir, **kwargs)
    if key == "mirflickr730-4":
        return mirflickr730_4(data_dir, **kwargs)
    if key not in PROTOCOLS:
        raise ValueError(f"name: expected one of {', '.join(PROTOCOLS)}, got {name!r}")
    if data_dir is None:
        data_dir = os.environ.get("PBEH_DATA")
        if not data_dir:
            raise ValueError(f"data_dir: protocol {name!r} reads files; pass data_dir or set PBEH_DATA")
    if key == "taskwise-mat":
        return read_taskwise_mat(data_dir, **kwargs)
    kwargs.setdefault("name", Path(data_dir).stem)
    # options of the file readers; the rest go to class_incremental_split
    reader_options = {
        "all-mat": ("image_key", "text_key", "label_key", "image_view", "text_view", "index_base"),
        "train-test-mat": ("index_base",),
        "npz": ("label_key", "index_base"),
    }[key]
    reader_kwargs = {k: kwargs.pop(k) for k in reader_options if k in kwargs}
    if key == "all-mat":
        data = read_all_mat(data_dir, **reader_kwargs)
    elif key == "train-test-mat":
        data = read_train_test_mat(data_dir, **reader_kwargs)
    else:  # "npz"
        data = read_features_npz(data_dir, **reader_kwargs)
    return data.split(**kwargs)
