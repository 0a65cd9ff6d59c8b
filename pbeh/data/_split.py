"""The data structures of a continual stream: :class:`Split` (aligned image / text / labels / ids arrays),
:class:`Task` (train, query and database splits plus the classes it introduces) and :class:`TaskStream` (the ordered
tasks with the label names and feature widths)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._validation import check_fraction, check_int
from ._arrays import _as_array, _features, _item_ids, _multi_hot


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
        >>> from pbeh.data import synthetic_stream
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
