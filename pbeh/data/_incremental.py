"""Class-incremental splitting: :func:`class_incremental_split` cuts the classes into groups, one per task, puts
each item in the **latest** task any of its labels belongs to, and draws a seeded query split per task (or takes a
precomputed one)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._validation import check_fraction, check_int
from ._arrays import _as_array, _features, _item_ids, _labels_from_any
from ._split import Split, Task, TaskStream

_logger = logging.getLogger(__name__)


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
