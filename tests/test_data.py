"""Tests of pbeh.data: splits, tasks, streams, the class-incremental splitter, the readers and the protocols."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from hypothesis import given
from hypothesis import strategies as st

from pbeh.data import (
    MIRFLICKR730_4_GROUPS,
    PROTOCOLS,
    WIKIPEDIA5_GROUPS,
    CrossModalData,
    Split,
    Task,
    TaskStream,
    class_incremental_split,
    load_protocol,
    mirflickr730_4,
    read_all_mat,
    read_features_npz,
    read_taskwise_mat,
    read_train_test_mat,
    synthetic_stream,
    wikipedia5,
)
from pbeh.serialization import FormatError

# ------------------------------------------------------------------------------------------------ helpers


def make_split(n=6, image_dim=4, text_dim=3, n_classes=5, seed=0, first_id=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, n_classes)) < 0.4).astype(np.uint8)
    return Split(
        rng.standard_normal((n, image_dim)),
        rng.standard_normal((n, text_dim)),
        labels,
        np.arange(first_id, first_id + n),
    )


def make_task(name="T1", n=10, first_id=0, classes=(0,), **kw):
    train = make_split(n, first_id=first_id, **kw)
    query = make_split(3, first_id=first_id + 1000, **kw)
    return Task(name, train=train, query=query, database=train, classes=classes)


def write_v73(path: Path, arrays: dict[str, np.ndarray], *, header: bool = True) -> None:
    """A MATLAB v7.3-style file: HDF5, each N x D array stored transposed (D x N), a 512-byte text header."""
    with h5py.File(path, "w", userblock_size=512 if header else 0) as fh:
        for key, arr in arrays.items():
            fh.create_dataset(key, data=np.asarray(arr).T)
    if header:
        with open(path, "r+b") as fh:
            fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .".ljust(116))


def latest_task_reference(labels: np.ndarray, groups: list[list[int]]) -> list[int]:
    """Brute force: per item, the largest index of a group holding one of its labels, -1 for none."""
    out = []
    for row in labels:
        best = -1
        for t, group in enumerate(groups):
            if any(row[c] for c in group):
                best = max(best, t)
        out.append(best)
    return out


# ------------------------------------------------------------------------------------------------ Split


def test_split_converts_and_validates_types():
    s = Split(np.zeros((3, 4), np.float64), np.ones((3, 2), np.int32), np.eye(3, dtype=bool), [5, 6, 7])
    assert s.image.dtype == np.float32
    assert s.text.dtype == np.float32
    assert s.labels.dtype == np.uint8
    assert s.ids.dtype == np.int64
    assert s.image.flags.c_contiguous
    assert (len(s), s.image_dim, s.text_dim, s.n_classes) == (3, 4, 2, 3)
    assert s.ids.tolist() == [5, 6, 7]
    assert Split(np.zeros((2, 1)), np.zeros((2, 1)), np.zeros((2, 1))).ids.tolist() == [0, 1]
    assert "n=3" in repr(s)


def test_split_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    s = Split(torch.zeros(2, 3), torch.ones(2, 2), torch.tensor([[1, 0], [0, 1]]), torch.tensor([3, 4]))
    assert s.image.shape == (2, 3)
    assert s.ids.tolist() == [3, 4]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"image": np.zeros(3)}, ValueError, r"image: expected a 2-D"),
        ({"text": np.zeros((3, 0))}, ValueError, r"text: expected at least one feature column"),
        ({"image": np.array([[np.nan, 0], [0, 0], [0, 0]])}, ValueError, r"image: expected finite.*1 row"),
        ({"text": np.full((3, 2), 1e300)}, ValueError, r"text: expected finite"),
        ({"labels": np.full((3, 2), 2)}, ValueError, r"labels: expected multi-hot values in \{0, 1\}, got also \[2\]"),
        ({"labels": np.zeros(3)}, ValueError, r"labels: expected a 2-D"),
        ({"labels": np.zeros((3, 0))}, ValueError, r"labels: expected at least one class"),
        ({"text": np.zeros((4, 2))}, ValueError, r"same number of rows, got 3, 4, 3"),
        ({"ids": [1, 1, 2]}, ValueError, r"ids: expected unique item ids, got 1 duplicate"),
        ({"ids": [1, 2]}, ValueError, r"ids: expected 3 ids"),
        ({"ids": [[1, 2, 3]]}, ValueError, r"ids: expected a 1-D array"),
        ({"ids": [0.5, 1, 2]}, TypeError, r"ids: expected integer item ids"),
        ({"ids": np.array(["a", "b", "c"])}, TypeError, r"ids: expected a numeric array"),
        ({"image": np.array([[object()] * 2] * 3)}, TypeError, r"image: expected a numeric array"),
    ],
)
def test_split_errors(kwargs, error, match):
    base = {"image": np.zeros((3, 2)), "text": np.zeros((3, 2)), "labels": np.eye(3, 2), "ids": None}
    base.update(kwargs)
    with pytest.raises(error, match=match):
        Split(**base)


def test_split_integral_float_ids_accepted():
    assert Split(np.zeros((2, 1)), np.zeros((2, 1)), np.zeros((2, 1)), [3.0, 4.0]).ids.tolist() == [3, 4]


def test_split_subset_positions_and_mask():
    s = make_split(6)
    sub = s.subset([4, 1])
    assert sub.ids.tolist() == [4, 1]
    np.testing.assert_array_equal(sub.image, s.image[[4, 1]])
    np.testing.assert_array_equal(sub.labels, s.labels[[4, 1]])
    mask = np.array([True, False, True, False, False, True])
    assert s.subset(mask).ids.tolist() == [0, 2, 5]
    assert len(s.subset([])) == 0
    with pytest.raises(ValueError, match=r"indices: expected a boolean mask of shape \(6,\)"):
        s.subset(np.ones(5, bool))
    with pytest.raises(IndexError, match=r"indices: expected positions in \[0, 6\)"):
        s.subset([0, 6])
    with pytest.raises(TypeError, match="indices: expected integer positions or a boolean mask"):
        s.subset([0.5])


def test_split_empty_and_concatenate():
    e = Split.empty(4, 3, 5)
    assert len(e) == 0
    assert (e.image_dim, e.text_dim, e.n_classes) == (4, 3, 5)
    a, b = make_split(3), make_split(2, first_id=10, seed=1)
    c = Split.concatenate([a, e, b])
    assert c.ids.tolist() == [0, 1, 2, 10, 11]
    np.testing.assert_array_equal(c.text, np.concatenate([a.text, b.text]))
    with pytest.raises(ValueError, match="parts: expected at least one Split"):
        Split.concatenate([])
    with pytest.raises(TypeError, match=r"parts\[1\]: expected a Split, got int"):
        Split.concatenate([a, 3])
    with pytest.raises(ValueError, match=r"parts\[1\]: expected \(image_dim, text_dim, n_classes\) = \(4, 3, 5\)"):
        Split.concatenate([a, make_split(2, image_dim=7, first_id=20)])
    with pytest.raises(ValueError, match="ids: expected unique item ids"):
        Split.concatenate([a, a])


# ------------------------------------------------------------------------------------------------ Task


def test_task_validation_errors():
    train = make_split(5)
    with pytest.raises(TypeError, match="name: expected a str"):
        Task(1, train, train, train)
    with pytest.raises(TypeError, match="query: expected a Split, got list"):
        Task("T", train, [], train)
    with pytest.raises(ValueError, match=r"task 'T' database: expected \(image_dim"):
        Task("T", train, train, make_split(2, text_dim=9))
    with pytest.raises(ValueError, match="task 'T' train: expected at least one training item"):
        Task("T", Split.empty(4, 3, 5), train, train)
    with pytest.raises(ValueError, match=r"task 'T' classes: expected indices < n_classes=5"):
        Task("T", train, train, train, classes=(5,))
    with pytest.raises(ValueError, match="task 'T' classes: expected distinct"):
        Task("T", train, train, train, classes=(1, 1))
    with pytest.raises(ValueError, match="classes: expected an int >= 0"):
        Task("T", train, train, train, classes=(-1,))
    task = Task("T", train, train, train, classes=[np.int64(2), 0])
    assert task.classes == (2, 0)
    assert all(type(c) is int for c in task.classes)
    assert "T" in repr(task)
    assert "train=5" in repr(task)


def test_split_validation_carves_from_train_only_and_is_seeded():
    task = make_task(n=50)
    rest, val = task.split_validation(0.2, seed=3)
    assert len(val) == 10
    assert len(rest) == 40
    assert set(rest.ids).isdisjoint(val.ids)
    assert set(rest.ids) | set(val.ids) == set(task.train.ids)
    assert set(val.ids).isdisjoint(task.query.ids)
    assert np.all(np.diff(rest.ids) > 0)
    assert np.all(np.diff(val.ids) > 0)
    again = task.split_validation(0.2, seed=3)[1]
    assert val.ids.tolist() == again.ids.tolist()
    others = {tuple(task.split_validation(0.2, seed=s)[1].ids) for s in range(5)}
    assert len(others) > 1
    row = {i: k for k, i in enumerate(task.train.ids)}
    for i, item in enumerate(val.ids):  # rows stay aligned
        np.testing.assert_array_equal(val.image[i], task.train.image[row[item]])


@given(n=st.integers(2, 60), fraction=st.floats(0.01, 0.99), min_items=st.integers(1, 5), seed=st.integers(0, 9))
def test_split_validation_sizes_property(n, fraction, min_items, seed):
    task = make_task(n=n)
    expected = max(min_items, round(fraction * n))
    if expected >= n:
        with pytest.raises(ValueError, match="leaves no training item"):
            task.split_validation(fraction, seed=seed, min_items=min_items)
        return
    rest, val = task.split_validation(fraction, seed=seed, min_items=min_items)
    assert len(val) == expected
    assert len(rest) == n - expected
    assert sorted(np.concatenate([rest.ids, val.ids]).tolist()) == task.train.ids.tolist()


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((0.0,), {}, ValueError, r"fraction: expected a float in \(0, 1\), got 0.0"),
        ((1.0,), {}, ValueError, r"fraction: expected a float in \(0, 1\)"),
        (("a",), {}, TypeError, r"fraction: expected a float"),
        ((0.1,), {"min_items": 0}, ValueError, r"min_items: expected an int >= 1"),
        ((0.1,), {"min_items": 10}, ValueError, r"leaves no training item in task 'T1', which has 10"),
    ],
)
def test_split_validation_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        make_task(n=10).split_validation(*args, **kwargs)


# ------------------------------------------------------------------------------------------------ TaskStream


def test_task_stream_basics_describe_and_joint():
    t1 = make_task("T1", n=8, first_id=0, classes=(0, 1))
    t2 = make_task("T2", n=5, first_id=100, classes=(2,))
    stream = TaskStream([t1, t2], label_names=["a", "b", "c", "d", "e"], name="toy", n_dropped=2)
    assert len(stream) == 2
    assert list(stream) == [t1, t2]
    assert stream[1] is t2
    assert (stream.image_dim, stream.text_dim, stream.n_classes) == (4, 3, 5)
    sliced = stream[1:]
    assert isinstance(sliced, TaskStream)
    assert len(sliced) == 1
    assert sliced.label_names == stream.label_names
    text = stream.describe()
    lines = text.splitlines()
    assert lines[0].startswith("toy: 2 tasks, 5 classes, image 4-d, text 3-d, 2 item(s) dropped")
    assert lines[2].split() == ["T1", "a,", "b", "8", "3", "8"]
    assert lines[3].split() == ["T2", "c", "5", "3", "5"]
    assert lines[4].split() == ["total", "3", "classes", "13", "6", "13"]
    joint = stream.joint()
    assert joint.name == "joint"
    assert joint.classes == (0, 1, 2)
    assert joint.train.ids.tolist() == list(range(8)) + list(range(100, 105))
    assert len(joint.query) == 6
    assert len(joint.database) == 13
    assert "n_tasks=2" in repr(stream)
    assert TaskStream([t1]).label_names == [f"class_{c}" for c in range(5)]


def test_task_stream_errors():
    t1 = make_task()
    with pytest.raises(ValueError, match="tasks: expected at least one Task"):
        TaskStream([])
    with pytest.raises(TypeError, match=r"tasks\[1\]: expected a Task, got str"):
        TaskStream([t1, "x"])
    with pytest.raises(ValueError, match=r"tasks\[1\] \('T2'\): expected \(image_dim"):
        TaskStream([t1, make_task("T2", image_dim=9)])
    with pytest.raises(ValueError, match="label_names: expected 5 names"):
        TaskStream([t1], label_names=["a"])
    with pytest.raises(TypeError, match="name: expected a str"):
        TaskStream([t1], name=3)
    with pytest.raises(ValueError, match="n_dropped: expected an int >= 0"):
        TaskStream([t1], n_dropped=-1)


# ------------------------------------------------------------------------------------------------ splitter

HAND_LABELS = np.array(
    [
        [1, 0, 0, 0],  # 0 -> T1
        [1, 1, 0, 0],  # 1 -> T2 (class 1 is later than class 0)
        [0, 0, 1, 0],  # 2 -> T3
        [1, 0, 1, 0],  # 3 -> T3
        [0, 1, 0, 0],  # 4 -> T2
        [0, 0, 0, 0],  # 5 -> dropped (no label)
        [0, 0, 0, 1],  # 6 -> dropped (class 3 in no group)
        [0, 1, 0, 1],  # 7 -> T2 (class 3 ignored)
        [1, 1, 1, 1],  # 8 -> T3
    ]
)


def hand_split(**kwargs):
    n = len(HAND_LABELS)
    features = np.arange(n * 2, dtype=float).reshape(n, 2)
    kwargs.setdefault("groups", [[0], [1], [2]])
    kwargs.setdefault("ids", np.arange(n) + 100)
    return class_incremental_split(features, features[:, :1] * 10, HAND_LABELS, **kwargs)


def test_latest_task_wins_on_hand_example(caplog):
    with caplog.at_level("INFO", logger="pbeh.data"):
        stream = hand_split(query_size=0, name="hand")
    assert [t.train.ids.tolist() for t in stream] == [[100], [101, 104, 107], [102, 103, 108]]
    assert [t.classes for t in stream] == [(0,), (1,), (2,)]
    assert stream.n_dropped == 2
    assert "dropped 2 of 9 items" in caplog.text
    assert "classes [3] are in no task group" in caplog.text
    t2 = stream[1]
    np.testing.assert_array_equal(t2.train.image, np.arange(18.0).reshape(9, 2)[[1, 4, 7]])
    np.testing.assert_array_equal(t2.train.labels, HAND_LABELS[[1, 4, 7]])  # global label space kept
    assert t2.train.labels.shape[1] == 4
    assert [len(t.query) for t in stream] == [0, 0, 0]


def test_groups_by_name_and_reordered_groups():
    stream = hand_split(groups=[["c"], ["a", "b"]], label_names=["a", "b", "c", "d"], query_size=0)
    # groups in the given order: T1 = class 2, T2 = classes 0 and 1, so class 0/1 items land in T2
    assert [t.train.ids.tolist() for t in stream] == [[102], [100, 101, 103, 104, 107, 108]]
    assert [t.classes for t in stream] == [(2,), (0, 1)]
    assert stream.label_names == ["a", "b", "c", "d"]


@given(
    labels=st.lists(st.lists(st.integers(0, 1), min_size=6, max_size=6), min_size=1, max_size=40),
    assignment=st.lists(st.integers(-1, 2), min_size=6, max_size=6),
)
def test_latest_task_rule_property(labels, assignment):
    labels = np.array(labels, dtype=np.uint8)
    groups = [[c for c in range(6) if assignment[c] == t] for t in range(3)]
    groups = [g for g in groups if g]
    expected = latest_task_reference(labels, groups)
    n = len(labels)
    if not groups or any(t not in expected for t in range(len(groups))):
        with pytest.raises(ValueError, match=r"receives no item"):
            class_incremental_split(np.zeros((n, 2)), np.zeros((n, 1)), labels, groups=groups, query_size=0)
        return
    stream = class_incremental_split(np.zeros((n, 2)), np.zeros((n, 1)), labels, groups=groups, query_size=0)
    got = [-1] * n
    for t, task in enumerate(stream):
        for i in task.train.ids:
            got[i] = t
    assert got == expected
    assert stream.n_dropped == expected.count(-1)


def test_query_split_is_seeded_disjoint_and_sized():
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 6)) < 0.3).astype(np.uint8)
    kw = {"n_tasks": 3, "query_fraction": 0.25}
    image, text = rng.random((300, 5)), rng.random((300, 2))
    s1 = class_incremental_split(image, text, labels, seed=7, **kw)
    s2 = class_incremental_split(image, text, labels, seed=7, **kw)
    s3 = class_incremental_split(image, text, labels, seed=8, **kw)
    assert [t.query.ids.tolist() for t in s1] == [t.query.ids.tolist() for t in s2]
    assert [t.query.ids.tolist() for t in s1] != [t.query.ids.tolist() for t in s3]
    all_ids = []
    for task in s1:
        n_task = len(task.train) + len(task.query)
        assert len(task.query) == max(1, round(0.25 * n_task))
        assert set(task.query.ids).isdisjoint(task.train.ids)
        assert set(task.query.ids).isdisjoint(task.database.ids)
        assert task.database.ids.tolist() == task.train.ids.tolist()
        all_ids += task.train.ids.tolist() + task.query.ids.tolist()
    assert len(all_ids) == len(set(all_ids)) == 300 - s1.n_dropped


def test_query_size_and_database_modes():
    rng = np.random.default_rng(1)
    labels = np.eye(4, dtype=np.uint8)[rng.integers(0, 4, 200)]
    image, text = rng.random((200, 3)), rng.random((200, 2))
    rest = class_incremental_split(
        image, text, labels, n_tasks=2, query_size=10, database="rest", train_fraction=0.5, seed=1
    )
    full = class_incremental_split(image, text, labels, n_tasks=2, query_size=10, database="all", seed=1)
    for task_rest, task_all in zip(rest, full, strict=True):
        assert len(task_rest.query) == 10
        assert set(task_rest.train.ids) < set(task_rest.database.ids)
        assert len(task_rest.train) == round(0.5 * len(task_rest.database))
        assert set(task_rest.query.ids).isdisjoint(task_rest.database.ids)
        assert set(task_all.query.ids) < set(task_all.database.ids)
        assert set(task_all.train.ids) | set(task_all.query.ids) == set(task_all.database.ids)
        assert task_rest.query.ids.tolist() == task_all.query.ids.tolist()  # same seeded query draw


def test_query_mask_precomputed_split():
    rng = np.random.default_rng(2)
    labels = np.eye(4, dtype=np.uint8)[np.arange(40) % 4]
    mask = np.arange(40) >= 30
    stream = class_incremental_split(rng.random((40, 3)), rng.random((40, 2)), labels, n_tasks=2, query_mask=mask)
    for task in stream:
        assert np.all(task.query.ids >= 30)
        assert np.all(task.train.ids < 30)
        assert task.database.ids.tolist() == task.train.ids.tolist()
    assert sum(len(t.query) for t in stream) == 10


def test_n_tasks_groups_given_and_frequency():
    labels = np.zeros((81 * 2, 81), np.uint8)
    labels[np.arange(162), np.arange(162) % 81] = 1
    stream = class_incremental_split(np.zeros((162, 1)), np.zeros((162, 1)), labels, n_tasks=5, query_size=1)
    assert [len(t.classes) for t in stream] == [16, 16, 16, 16, 17]
    assert stream[4].classes == tuple(range(64, 81))
    counts = np.array([5, 1, 9, 9, 3, 7])
    rows = np.repeat(np.arange(6), counts)
    freq = np.eye(6, dtype=np.uint8)[rows]
    by_freq = class_incremental_split(
        np.zeros((len(rows), 1)), np.zeros((len(rows), 1)), freq, n_tasks=3, order="frequency", query_size=0
    )
    assert [t.classes for t in by_freq] == [(2, 3), (5, 0), (4, 1)]  # ties by class index


def test_class_index_labels_accepted():
    stream = class_incremental_split(np.zeros((6, 2)), np.zeros((6, 2)), [0, 1, 2, 0, 1, 2], n_tasks=3, query_size=0)
    assert [t.train.ids.tolist() for t in stream] == [[0, 3], [1, 4], [2, 5]]
    assert stream.n_classes == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"groups": [[0]], "n_tasks": 1}, ValueError, "groups, n_tasks: give one of them, not both"),
        ({"groups": None}, ValueError, r"groups, n_tasks: give one of them \(explicit"),
        ({"groups": None, "n_tasks": 2, "order": "size"}, ValueError, "order: expected 'given' or 'frequency'"),
        ({"groups": None, "n_tasks": 5}, ValueError, "n_tasks: expected at most n_classes=4"),
        ({"groups": None, "n_tasks": 0}, ValueError, "n_tasks: expected an int >= 1"),
        ({"groups": [[0], [0, 1]]}, ValueError, r"groups\[1\]: class 0 is already in groups\[0\]"),
        ({"groups": [[0], []]}, ValueError, r"groups\[1\]: expected at least one class"),
        ({"groups": [[4]]}, ValueError, r"groups\[0\]: class index 4 out of range for 4 classes"),
        ({"groups": ["ab"]}, TypeError, r"groups\[0\]: expected a sequence"),
        ({"groups": [["x"]]}, ValueError, r"unknown class name 'x'; known names: none"),
        ({"database": "db"}, ValueError, "database: expected 'train', 'rest' or 'all', got 'db'"),
        ({"train_fraction": 0.5}, ValueError, "train_fraction: must be 1.0 when database='train'"),
        ({"database": "rest", "train_fraction": 1.5}, ValueError, r"train_fraction: expected a float in \(0, 1\]"),
        ({"query_fraction": 1.0}, ValueError, r"query_fraction: expected a float in \(0, 1\)"),
        ({"query_size": -1}, ValueError, "query_size: expected an int >= 0"),
        ({"query_size": 1}, ValueError, "task T1 has 1 item.*leave none for training"),
        ({"query_mask": np.ones(3)}, ValueError, r"query_mask: expected \(9,\) booleans"),
        ({"query_mask": np.ones(9)}, ValueError, "query_mask: task T1 has no non-query item"),
        ({"ids": np.arange(8)}, ValueError, "ids: expected 9 ids"),
        ({"label_names": ["a"]}, ValueError, "labels: expected 1 label columns, got 4"),
    ],
)
def test_splitter_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        hand_split(**kwargs)


def test_splitter_shape_errors():
    with pytest.raises(ValueError, match=r"same number of rows, got 3, 2, 3"):
        class_incremental_split(np.zeros((3, 1)), np.zeros((2, 1)), np.eye(3), n_tasks=1)
    with pytest.raises(ValueError, match=r"groups: task T1 \(classes \[0\]\) receives no item"):
        class_incremental_split(np.zeros((2, 1)), np.zeros((2, 1)), np.ones((2, 2)), groups=[[0], [1]])
    with pytest.raises(ValueError, match="labels: class indices must be >= 0"):
        class_incremental_split(np.zeros((2, 1)), np.zeros((2, 1)), [-1, 0], n_tasks=1)
    with pytest.raises(ValueError, match="labels: class indices must be integers"):
        class_incremental_split(np.zeros((2, 1)), np.zeros((2, 1)), [0.5, 0], n_tasks=1)


# ------------------------------------------------------------------------------------------------ readers


def taskwise_arrays(n_tasks=3, seed=0, image_dim=6, text_dim=4, n_classes=6):
    """Per task, split: (image, text, labels) with the task's classes and some old ones (latest rule)."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in range(n_tasks):
        for split, n in (("train", 7), ("test", 3), ("database", 11)):
            labels = np.zeros((n, n_classes), np.float64)
            labels[np.arange(n), 2 * t + np.arange(n) % 2] = 1
            labels[0, 0] = 1  # an old class co-occurs
            out[t, split] = (rng.standard_normal((n, image_dim)), rng.standard_normal((n, text_dim)), labels)
    return out


@pytest.mark.parametrize("scheme", ["mscoco", "nuswide"])
def test_read_taskwise_mat_both_schemes(tmp_path, scheme):
    arrays = taskwise_arrays()
    infix = "" if scheme == "mscoco" else "task_"
    label_suffix = "lab" if scheme == "mscoco" else "label"
    for (t, split), (image, text, labels) in arrays.items():
        stem = f"{split}_{infix}{t}"
        write_v73(tmp_path / f"{stem}_image.mat", {f"{stem}_image": image}, header=scheme == "mscoco")
        write_v73(tmp_path / f"{stem}_text.mat", {f"{stem}_text": text})
        write_v73(tmp_path / f"{stem}_label.mat", {f"{stem}_{label_suffix}": labels})
    with h5py.File(tmp_path / f"train_{infix}0_image.mat") as fh:  # stored transposed, as MATLAB does
        assert fh[f"train_{infix}0_image"].shape == (6, 7)
    stream = read_taskwise_mat(tmp_path)
    assert stream.name == tmp_path.name
    assert len(stream) == 3
    assert (stream.image_dim, stream.text_dim, stream.n_classes) == (6, 4, 6)
    assert [t.classes for t in stream] == [(0, 1), (2, 3), (4, 5)]
    for t, task in enumerate(stream):
        for split, part in (("train", task.train), ("test", task.query), ("database", task.database)):
            image, text, labels = arrays[t, split]
            np.testing.assert_allclose(part.image, image.astype(np.float32))
            np.testing.assert_allclose(part.text, text.astype(np.float32))
            np.testing.assert_array_equal(part.labels, labels)
    all_ids = np.concatenate([np.concatenate([t.train.ids, t.query.ids, t.database.ids]) for t in stream])
    assert len(np.unique(all_ids)) == len(all_ids) == 3 * 21
    explicit = read_taskwise_mat(tmp_path, n_tasks=2, scheme=scheme, label_names=list("abcdef"), name="x")
    assert len(explicit) == 2
    assert explicit.name == "x"
    assert explicit.label_names[0] == "a"
    assert len(load_protocol("taskwise_mat", tmp_path, n_tasks=1)) == 1


def test_read_taskwise_mat_liberal_keys(tmp_path):
    arrays = taskwise_arrays(n_tasks=1)
    for (t, split), (image, text, labels) in arrays.items():
        stem = f"{split}_{t}"
        write_v73(tmp_path / f"{stem}_image.mat", {"features": image})  # single dataset, any name
        write_v73(tmp_path / f"{stem}_text.mat", {f"{stem}_text": text})
        write_v73(tmp_path / f"{stem}_label.mat", {f"{stem}_label": labels, "other": np.zeros((2, 2))})
    stream = read_taskwise_mat(tmp_path)
    np.testing.assert_allclose(stream[0].train.image, arrays[0, "train"][0].astype(np.float32))
    np.testing.assert_array_equal(stream[0].query.labels, arrays[0, "test"][2])


def test_read_taskwise_mat_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        read_taskwise_mat(tmp_path / "missing")
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(FormatError, match=r"no task-wise \.mat files .* found: readme.txt"):
        read_taskwise_mat(tmp_path)
    with pytest.raises(ValueError, match="scheme: expected 'auto', 'mscoco' or 'nuswide', got 'coco'"):
        read_taskwise_mat(tmp_path, scheme="coco")
    with pytest.raises(FormatError, match="no files of the 'nuswide' naming scheme"):
        read_taskwise_mat(tmp_path, scheme="nuswide")
    image, text, labels = taskwise_arrays(n_tasks=1)[0, "train"]
    write_v73(tmp_path / "train_0_image.mat", {"train_0_image": image})
    write_v73(tmp_path / "train_task_0_image.mat", {"train_task_0_image": image})
    with pytest.raises(FormatError, match="files of both naming schemes"):
        read_taskwise_mat(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"train_0_text.mat: missing task-wise file \(mscoco scheme, task 0\)"):
        read_taskwise_mat(tmp_path, scheme="mscoco")
    with pytest.raises(ValueError, match=r"n_tasks: expected at most 1 \(tasks found: \[0\]\), got 2"):
        read_taskwise_mat(tmp_path, scheme="mscoco", n_tasks=2)
    write_v73(tmp_path / "train_0_text.mat", {"a": text, "b": text})
    with pytest.raises(FormatError, match=r"train_0_text.mat: missing key 'train_0_text'; keys present: 'a', 'b'"):
        read_taskwise_mat(tmp_path, scheme="mscoco")
    write_v73(tmp_path / "train_0_text.mat", {"train_0_text": text[:5]})
    write_v73(tmp_path / "train_0_label.mat", {"train_0_lab": labels})
    with pytest.raises(FormatError, match="arrays disagree on the number of items"):
        read_taskwise_mat(tmp_path, scheme="mscoco")
    write_v73(tmp_path / "train_0_text.mat", {"train_0_text": text})
    write_v73(tmp_path / "train_0_label.mat", {"train_0_lab": labels * 2})
    with pytest.raises(FormatError, match=r"task 0 train: labels: expected multi-hot"):
        read_taskwise_mat(tmp_path, scheme="mscoco")


def xyl_arrays(n=30, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 5)) < 0.4).astype(np.uint8)
    labels[:, 0] |= labels.sum(1) == 0
    return rng.standard_normal((n, 8)), (rng.random((n, 12)) < 0.2).astype(np.uint8), labels


def test_read_all_mat_one_v73_file(tmp_path):
    x, y, lab = xyl_arrays()
    write_v73(tmp_path / "flickr.mat", {"XAll": x, "YAll": y, "LAll": lab})
    data = read_all_mat(tmp_path / "flickr.mat")
    assert isinstance(data, CrossModalData)
    assert len(data) == 30
    np.testing.assert_allclose(data.image, x.astype(np.float32))
    np.testing.assert_array_equal(data.text, y)
    np.testing.assert_array_equal(data.labels, lab)
    assert data.label_names is None
    assert data.query_mask is None
    stream = data.split(n_tasks=2, seed=0)
    assert len(stream) == 2
    assert stream.n_classes == 5


def test_read_all_mat_separate_v5_files_and_label_names(tmp_path):
    x, y, lab = xyl_arrays()
    scipy.io.savemat(tmp_path / "set-xall.mat", {"XAll": x})
    scipy.io.savemat(tmp_path / "set-yall.mat", {"yall": y})  # keys are case-insensitive
    write_v73(tmp_path / "set-lall.mat", {"LAll": lab}, header=False)  # v5 and v7.3 mixed
    (tmp_path / "label_names.txt").write_text("a\nb\nc\nd\ne\n")
    data = read_all_mat(tmp_path)
    np.testing.assert_allclose(data.image, x.astype(np.float32))
    np.testing.assert_array_equal(data.text, y)
    np.testing.assert_array_equal(data.labels, lab)
    assert data.label_names == ["a", "b", "c", "d", "e"]
    stream = load_protocol("all-mat", tmp_path, groups=[["a", "b"], ["c", "d", "e"]], query_size=2)
    assert stream.name == tmp_path.name
    assert [t.classes for t in stream] == [(0, 1), (2, 3, 4)]


def test_read_all_mat_transposed_in_v5_is_fixed(tmp_path):
    x, y, lab = xyl_arrays()
    scipy.io.savemat(tmp_path / "all.mat", {"XAll": x.T, "YAll": y, "LAll": lab})  # features stored D x N
    np.testing.assert_allclose(read_all_mat(tmp_path / "all.mat").image, x.astype(np.float32))


def test_read_all_mat_errors(tmp_path):
    _x, y, lab = xyl_arrays()
    scipy.io.savemat(tmp_path / "lall.mat", {"LAll": lab})
    scipy.io.savemat(tmp_path / "yall.mat", {"YAll": y})
    with pytest.raises(FormatError, match=r"missing image key \(looked for 'XAll', 'IAll'\); keys present: "
                       r"lall.mat: LAll; yall.mat: YAll"):  # fmt: skip
        read_all_mat(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        read_all_mat(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.mat files"):
        read_all_mat(empty)
    scipy.io.savemat(tmp_path / "raw.mat", {"IAll": np.zeros((3, 2, 2, 30)), "YAll": y, "LAll": lab})
    with pytest.raises(FormatError, match=r"'image' has shape \(3, 2, 2, 30\); expected a 2-D"):
        read_all_mat(tmp_path / "raw.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(FormatError, match=r"junk.mat: not a readable MATLAB .mat file"):
        read_all_mat(tmp_path / "junk.mat")


def test_read_train_test_mat_class_indices_v5(tmp_path):
    rng = np.random.default_rng(0)
    i_tr, t_tr, i_te, t_te = rng.random((12, 5)), rng.random((12, 3)), rng.random((4, 5)), rng.random((4, 3))
    l_tr = (np.arange(12) % 4 + 1).reshape(-1, 1).astype(np.uint8)  # MATLAB classes 1..4
    l_te = np.array([[4], [3], [2], [1]], np.uint8)
    path = tmp_path / "wiki.mat"
    scipy.io.savemat(path, {"I_tr": i_tr, "T_tr": t_tr, "L_tr": l_tr, "I_te": i_te, "T_te": t_te, "L_te": l_te})
    (tmp_path / "class_names.txt").write_text("w\nx\ny\nz\n")
    data = read_train_test_mat(path)
    np.testing.assert_allclose(data.image, np.concatenate([i_tr, i_te]).astype(np.float32))
    np.testing.assert_allclose(data.text, np.concatenate([t_tr, t_te]).astype(np.float32))
    expected = np.eye(4, dtype=np.uint8)[np.concatenate([l_tr[:, 0], l_te[:, 0]]) - 1]
    np.testing.assert_array_equal(data.labels, expected)
    assert data.query_mask.tolist() == [False] * 12 + [True] * 4
    assert data.label_names == ["w", "x", "y", "z"]
    zero_based = read_train_test_mat(path, index_base=0, label_names=list("abcde"))
    assert zero_based.labels.shape == (16, 5)
    assert zero_based.labels[:, 0].sum() == 0
    stream = load_protocol("train-test-mat", path, n_tasks=2)
    assert [sorted(t.query.ids.tolist()) for t in stream] == [[14, 15], [12, 13]]
    assert all(np.all(t.train.ids < 12) for t in stream)
    assert stream.name == "wiki"
    with pytest.raises(ValueError, match="index_base: expected 'auto', 0 or 1, got 2"):
        read_train_test_mat(path, index_base=2)


def test_read_train_test_mat_multi_hot_v73_and_train_only(tmp_path):
    rng = np.random.default_rng(1)
    image, text = rng.random((10, 4)), rng.random((10, 2))
    labels = (rng.random((10, 3)) < 0.5).astype(np.float64)
    write_v73(tmp_path / "a.mat", {"I_tr": image, "T_tr": text, "L_train": labels})
    data = read_train_test_mat(tmp_path / "a.mat")
    np.testing.assert_allclose(data.image, image.astype(np.float32))
    np.testing.assert_array_equal(data.labels, labels)
    assert data.query_mask is None
    assert data.label_names is None
    with pytest.raises(ValueError, match="label_names: expected 3 names"):
        CrossModalData(data.image, data.text, data.labels, label_names=["a"])


def test_read_train_test_mat_errors(tmp_path):
    scipy.io.savemat(tmp_path / "b.mat", {"I_tr": np.zeros((3, 2)), "L_tr": np.ones((3, 1))})
    with pytest.raises(FormatError, match=r"b.mat: missing train text key \(looked for 'T_tr', 'T_train'\); "
                       r"keys present: 'I_tr', 'L_tr'"):  # fmt: skip
        read_train_test_mat(tmp_path / "b.mat")
    scipy.io.savemat(
        tmp_path / "c.mat",
        {"I_tr": np.zeros((3, 2)), "T_tr": np.zeros((3, 2)), "L_tr": np.ones((3, 1)), "I_te": np.zeros((1, 2))},
    )
    with pytest.raises(FormatError, match="missing test text key"):
        read_train_test_mat(tmp_path / "c.mat")
    scipy.io.savemat(tmp_path / "d.mat", {"I_tr": np.zeros((3, 2)), "T_tr": np.zeros((3, 2)), "L_tr": ["abc"] * 3})
    with pytest.raises(FormatError, match="key 'L_tr' is not a numeric array"):
        read_train_test_mat(tmp_path / "d.mat")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_train_test_mat(tmp_path / "none.mat")


def test_read_features_npz(tmp_path):
    rng = np.random.default_rng(0)
    image, text = rng.random((5, 4)).astype(np.float32), rng.random((5, 3)).astype(np.float32)
    labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1]], np.uint8)
    np.savez(tmp_path / "f.npz", image=image, text=text, labels=labels, label_names=np.array(["p", "q"]),
             item_ids=np.array([f"im{i}.jpg" for i in range(5)]))  # fmt: skip
    data = read_features_npz(tmp_path / "f.npz")
    np.testing.assert_array_equal(data.image, image)
    np.testing.assert_array_equal(data.labels, labels)
    assert data.label_names == ["p", "q"]
    assert data.item_names[3] == "im3.jpg"
    assert data.ids.tolist() == [0, 1, 2, 3, 4]
    np.savez(tmp_path / "g.npz", image=image, text=text, labels=labels, item_ids=np.arange(5) * 10)
    assert read_features_npz(tmp_path / "g.npz").ids.tolist() == [0, 10, 20, 30, 40]
    stream = load_protocol("npz", tmp_path / "g.npz", groups=[[0], [1]], query_size=1)
    assert set(stream.joint().train.ids) | set(stream.joint().query.ids) <= {0, 10, 20, 30, 40}


def test_read_features_npz_errors(tmp_path):
    np.savez(tmp_path / "h.npz", image=np.zeros((2, 2)), labels=np.eye(2))
    with pytest.raises(FormatError, match=r"h.npz: missing key 'text'; keys present: 'image', 'labels'"):
        read_features_npz(tmp_path / "h.npz")
    np.savez(tmp_path / "p.npz", image=np.zeros((2, 2)), text=np.zeros((2, 2)), labels=np.eye(2),
             label_names=np.array([{"a": 1}, None], dtype=object))  # fmt: skip
    with pytest.raises(FormatError, match="needs pickle to load, which pbeh refuses"):
        read_features_npz(tmp_path / "p.npz")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(FormatError, match=r"bad.npz: not a readable .npz file"):
        read_features_npz(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_features_npz(tmp_path / "none.npz")


def test_missing_optional_dependencies_give_clear_import_errors(tmp_path, monkeypatch):
    write_v73(tmp_path / "v73.mat", {"XAll": np.zeros((2, 2)), "YAll": np.zeros((2, 2)), "LAll": np.eye(2)})
    scipy.io.savemat(tmp_path / "v5.mat", {"XAll": np.zeros((2, 2)), "YAll": np.zeros((2, 2)), "LAll": np.eye(2)})
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r"needs h5py: pip install pbeh\[data\]"):
        read_all_mat(tmp_path / "v73.mat")
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    assert len(read_all_mat(tmp_path / "v5.mat")) == 2  # v5 is parsed by pbeh itself: no optional dependency


# ------------------------------------------------------------------------------------------------ synthetic


def test_synthetic_stream_is_deterministic_and_seeded():
    a, b, c = synthetic_stream(seed=5), synthetic_stream(seed=5), synthetic_stream(seed=6)
    for ta, tb in zip(a, b, strict=True):
        for part in ("train", "query", "database"):
            sa, sb = getattr(ta, part), getattr(tb, part)
            assert sa.ids.tolist() == sb.ids.tolist()
            np.testing.assert_array_equal(sa.image, sb.image)
            np.testing.assert_array_equal(sa.text, sb.text)
            np.testing.assert_array_equal(sa.labels, sb.labels)
    assert not np.array_equal(a[0].train.image[:5], c[0].train.image[:5])


def test_synthetic_stream_shape_and_label_structure():
    stream = synthetic_stream(n_tasks=3, classes_per_task=2, image_dim=20, text_dim=9, items_per_class=40)
    assert (len(stream), stream.n_classes, stream.image_dim, stream.text_dim) == (3, 6, 20, 9)
    assert [t.classes for t in stream] == [(0, 1), (2, 3), (4, 5)]
    joint = stream.joint()
    assert len(joint.train) + len(joint.query) == 6 * 40
    assert stream.n_dropped == 0
    assert joint.train.labels.sum(1).max() == 2  # multi-label
    # labels co-occur across tasks: later tasks hold items carrying earlier classes
    assert any(task.train.labels[:, : 2 * t].any() for t, task in enumerate(stream) if t > 0)
    for t, task in enumerate(stream):  # and no item carries a class of a later task (latest rule)
        assert not task.train.labels[:, 2 * (t + 1) :].any()
        assert set(task.query.ids).isdisjoint(task.train.ids)
    single = synthetic_stream(multi_label=False, items_per_class=10)
    assert single.joint().train.labels.sum(1).max() == 1


def _mean_ap(query, database, query_labels, database_labels):
    """Brute-force cosine mAP@all, relevance = a shared label."""
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    d = database / np.linalg.norm(database, axis=1, keepdims=True)
    relevant = (query_labels.astype(int) @ database_labels.T.astype(int)) > 0
    aps = []
    for i, scores in enumerate(q @ d.T):
        hits = relevant[i, np.argsort(-scores, kind="stable")]
        positions = np.flatnonzero(hits) + 1
        aps.append((np.arange(1, len(positions) + 1) / positions).mean() if len(positions) else 0.0)
    return float(np.mean(aps))


def test_synthetic_stream_cross_modal_retrieval_is_learnable_not_trivial():
    joint = synthetic_stream(seed=0).joint()
    x, y = joint.train.text.astype(np.float64), joint.train.image.astype(np.float64)
    w = np.linalg.solve(x.T @ x + np.eye(x.shape[1]), x.T @ y)  # ridge text -> image
    learned = _mean_ap(joint.query.text @ w, joint.database.image, joint.query.labels, joint.database.labels)
    chance = ((joint.query.labels.astype(int) @ joint.database.labels.T.astype(int)) > 0).mean()
    assert chance < 0.25
    assert learned > chance + 0.4  # learnable
    assert learned < 0.95  # but not trivial


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_tasks": 0}, ValueError, "n_tasks: expected an int >= 1"),
        ({"items_per_class": 1}, ValueError, "items_per_class: expected an int >= 2"),
        ({"image_dim": 2.5}, TypeError, "image_dim: expected an int"),
        ({"multi_label": 1}, TypeError, "multi_label: expected a bool"),
        ({"co_label_probability": 1.5}, ValueError, r"co_label_probability: expected a probability in \[0, 1\]"),
        ({"noise": -1.0}, ValueError, "noise: expected a float >= 0"),
    ],
)
def test_synthetic_stream_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        synthetic_stream(**kwargs)


# ------------------------------------------------------------------------------------------------ load_protocol


def test_load_protocol_dispatch_and_errors(monkeypatch):
    assert len(load_protocol("synthetic", n_tasks=2, items_per_class=5)) == 2
    assert set(PROTOCOLS) >= {"synthetic", "wikipedia5", "mirflickr730-4"}
    with pytest.raises(ValueError, match=r"name: expected one of synthetic, wikipedia5, mirflickr730-4, .*got 'cifar'"):
        load_protocol("cifar")
    with pytest.raises(TypeError, match="name: expected a protocol name"):
        load_protocol(3)
    monkeypatch.delenv("PBEH_DATA", raising=False)
    with pytest.raises(ValueError, match="data_dir: protocol 'npz' reads files; pass data_dir or set PBEH_DATA"):
        load_protocol("npz")
    with pytest.raises(ValueError, match="data_dir: wikipedia5 needs the data directory"):
        load_protocol("wikipedia5")


def test_protocols_report_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"wikipedia5 expects wiki_data.mat in"):
        wikipedia5(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"mirflickr730-4 expects features.npz in"):
        mirflickr730_4(tmp_path)


# ------------------------------------------------------------------------------------------------ real data


@pytest.mark.data
def test_wikipedia5_on_real_data(shared_data, monkeypatch):
    stream = wikipedia5(shared_data)
    raw = scipy.io.loadmat(shared_data / "wikipedia" / "wiki_data.mat")
    l_tr, l_te = raw["L_tr"][:, 0].astype(int) - 1, raw["L_te"][:, 0].astype(int) - 1
    assert len(stream) == 5
    assert stream.n_classes == 10
    assert (stream.image_dim, stream.text_dim) == (128, 10)
    assert stream.label_names == [name for group in WIKIPEDIA5_GROUPS for name in group]
    assert [tuple(stream.label_names[c] for c in t.classes) for t in stream] == list(WIKIPEDIA5_GROUPS)
    for t, task in enumerate(stream):
        assert len(task.train) == np.isin(l_tr, [2 * t, 2 * t + 1]).sum()
        assert len(task.query) == np.isin(l_te, [2 * t, 2 * t + 1]).sum()
        assert task.database.ids.tolist() == task.train.ids.tolist()
        assert np.all(task.train.ids < 2173)
        assert np.all(task.query.ids >= 2173)
        np.testing.assert_allclose(task.train.image, raw["I_tr"][task.train.ids].astype(np.float32))
        np.testing.assert_array_equal(task.query.labels.argmax(1), l_te[task.query.ids - 2173])
    assert [len(t.train) for t in stream] == [410, 492, 380, 330, 561]
    assert [len(t.query) for t in stream] == [122, 181, 123, 92, 175]
    # L_tr agrees with the multi-hot L_train stored beside it
    np.testing.assert_array_equal(np.eye(10, dtype=np.uint8)[l_tr], raw["L_train"])
    monkeypatch.setenv("PBEH_DATA", str(shared_data))
    assert len(load_protocol("wikipedia5")) == 5
    assert len(wikipedia5(shared_data / "wikipedia" / "wiki_data.mat")) == 5


@pytest.mark.data
def test_mirflickr730_4_on_real_data(shared_data):
    stream = mirflickr730_4(shared_data, seed=0)
    names = stream.label_names
    assert [tuple(names[c] for c in t.classes) for t in stream] == list(MIRFLICKR730_4_GROUPS)
    # the groups are the descending class frequency over the full MIRFLICKR-25K label file
    lall = scipy.io.loadmat(shared_data / "mirflickr25k" / "mirflickr25k-lall.mat")["LAll"]
    by_freq = np.argsort(-lall.sum(0).astype(int), kind="stable")
    assert [sorted(names[c] for c in by_freq[6 * t : 6 * t + 6]) for t in range(4)] == [
        sorted(g) for g in MIRFLICKR730_4_GROUPS
    ]
    raw = np.load(shared_data / "mirflickr730" / "features.npz")
    groups = [list(t.classes) for t in stream]
    expected = latest_task_reference(raw["labels"], groups)
    assert stream.n_dropped == 0
    seen = []
    for t, task in enumerate(stream):
        members = [i for i, e in enumerate(expected) if e == t]
        assert sorted(task.train.ids.tolist() + task.query.ids.tolist()) == members
        assert len(task.query) == round(0.2 * len(members))
        assert set(task.query.ids).isdisjoint(task.train.ids)
        assert task.database.ids.tolist() == task.train.ids.tolist()
        np.testing.assert_array_equal(task.query.image, raw["image"][task.query.ids])
        seen += members
    assert sorted(seen) == list(range(730))
    assert [len(t.train) + len(t.query) for t in stream] == [101, 247, 296, 86]
    same = mirflickr730_4(shared_data, seed=0)
    other = mirflickr730_4(shared_data, seed=1)
    assert [t.query.ids.tolist() for t in same] == [t.query.ids.tolist() for t in stream]
    assert [t.query.ids.tolist() for t in other] != [t.query.ids.tolist() for t in stream]
    subset = mirflickr730_4(shared_data / "mirflickr730", class_order="subset")
    assert "female" in {names[c] for c in subset[0].classes}  # frequencies over the 730 items differ
    with pytest.raises(ValueError, match="class_order: expected 'mirflickr25k' or 'subset', got 'x'"):
        mirflickr730_4(shared_data, class_order="x")
