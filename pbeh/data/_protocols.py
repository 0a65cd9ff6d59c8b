"""The benchmark protocols as :class:`TaskStream` builders: :func:`wikipedia5`, :func:`mirflickr730_4`,
:func:`synthetic_stream` (no download), and :func:`load_protocol` (by protocol or file-format name)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import check_bool, check_int
from ..serialization import FormatError
from ._crossmodal import CrossModalData, PathLike
from ._features_npz import read_features_npz
from ._incremental import class_incremental_split
from ._mat import read_all_mat, read_train_test_mat
from ._split import TaskStream
from ._taskwise import read_taskwise_mat

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
