"""Tests of the bring-your-own-data readers: 1-based class ids, a chosen npz label key, a directory holding one npz,
and the multi-view ``.mat`` layout (cell ``X`` + ``gt``/``y``), v5 and v7.3."""

from __future__ import annotations

import numpy as np
import pytest

from pbeh.data import class_incremental_split, load_protocol, read_all_mat, read_features_npz
from pbeh.serialization import FormatError

scipy_io = pytest.importorskip("scipy.io")
h5py = pytest.importorskip("h5py")


def _items(n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)), rng.normal(size=(n, 3))


# ------------------------------------------------------------------------------------------ 1-based class indices
def test_one_based_class_ids_are_refused_with_the_fix_in_the_message():
    image, text = _items()
    labels = np.arange(40) % 10 + 1  # 1..10, as MATLAB writes them
    with pytest.raises(ValueError, match=r"labels: class indices start at 1 .*index_base=1"):
        class_incremental_split(image, text, labels, n_tasks=5, query_size=1)


def test_one_based_class_ids_convert_with_index_base_1():
    image, text = _items()
    labels = np.arange(40) % 10 + 1
    stream = class_incremental_split(image, text, labels, n_tasks=5, query_size=1, index_base=1)
    assert stream.n_classes == 10
    assert [task.classes for task in stream] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    zero_based = class_incremental_split(image, text, labels - 1, n_tasks=5, query_size=1)
    for a, b in zip(stream, zero_based, strict=True):
        np.testing.assert_array_equal(a.train.labels, b.train.labels)
        np.testing.assert_array_equal(a.query.ids, b.query.ids)
    auto = class_incremental_split(image, text, labels, n_tasks=5, query_size=1, index_base="auto")
    assert [task.classes for task in auto] == [task.classes for task in stream]


def test_index_base_0_keeps_an_empty_class_0_on_request_and_bad_values_are_refused():
    image, text = _items()
    labels = np.arange(40) % 3 + 1
    stream = class_incremental_split(image, text, labels, groups=[[1], [2, 3]], query_size=1, index_base=0)
    assert stream.n_classes == 4
    with pytest.raises(ValueError, match=r"index_base: expected None, 0, 1 or 'auto', got 2"):
        class_incremental_split(image, text, labels, n_tasks=2, index_base=2)
    with pytest.raises(ValueError, match=r"index_base: expected None, 0, 1 or 'auto', got True"):
        class_incremental_split(image, text, labels, n_tasks=2, index_base=True)
    # multi-hot labels have no index base
    multi = np.eye(3, dtype=np.uint8)[np.arange(40) % 3]
    assert class_incremental_split(image, text, multi, n_tasks=3, query_size=1).n_classes == 3


# ------------------------------------------------------------------------------------------ npz
def test_npz_label_key_chooses_the_label_set(tmp_path):
    image, text = _items()
    fine = np.arange(40) % 8
    coarse = fine // 4
    path = tmp_path / "two_label_sets.npz"
    np.savez(path, image=image, text=text, fine=fine, coarse=coarse, coarse_names=np.array(["animal", "vehicle"]))
    fine_data = read_features_npz(path, label_key="fine")
    coarse_data = read_features_npz(path, label_key="coarse")
    assert fine_data.labels.shape == (40, 8)
    assert coarse_data.labels.shape == (40, 2)
    np.testing.assert_array_equal(coarse_data.labels.argmax(1), coarse)
    assert coarse_data.label_names == ["animal", "vehicle"]
    assert fine_data.label_names is None
    with pytest.raises(FormatError, match=r"missing key 'labels' \(choose the labels with label_key=...\)"):
        read_features_npz(path)
    stream = load_protocol("npz", path, n_tasks=2, query_size=2, label_key="coarse")
    assert [t.classes for t in stream] == [(0,), (1,)]


def test_npz_one_based_labels_are_refused_or_converted(tmp_path):
    image, text = _items()
    path = tmp_path / "f.npz"
    np.savez(path, image=image, text=text, labels=np.arange(40) % 4 + 1)
    with pytest.raises(ValueError, match="index_base=1"):
        read_features_npz(path)
    assert read_features_npz(path, index_base=1).labels.shape == (40, 4)


def test_npz_path_may_be_a_directory_holding_exactly_one_file(tmp_path):
    image, text = _items()
    np.savez(tmp_path / "only.npz", image=image, text=text, labels=np.eye(4)[np.arange(40) % 4])
    assert len(read_features_npz(tmp_path)) == 40
    assert len(load_protocol("npz", tmp_path, n_tasks=2, query_size=2)) == 2
    np.savez(tmp_path / "second.npz", image=image, text=text, labels=np.eye(4)[np.arange(40) % 4])
    with pytest.raises(FileNotFoundError, match=r"exactly one, got the directory .* with 2 \.npz files: only.npz"):
        read_features_npz(tmp_path)
    with pytest.raises(TypeError, match="label_key"):
        read_features_npz(tmp_path / "only.npz", label_key="")


# ------------------------------------------------------------------------------------------ multi-view .mat
def _multiview_v5(path, image, text, y, key="y"):
    cell = np.empty((2, 1), dtype=object)
    cell[0, 0], cell[1, 0] = image, text
    meaning = np.empty((2, 1), dtype=object)
    meaning[0, 0], meaning[1, 0] = "img", "txt"
    names = np.empty((4, 1), dtype=object)
    for i, n in enumerate(["a", "b", "c", "d"]):
        names[i, 0] = n
    scipy_io.savemat(
        path, {"X": cell, key: y.reshape(-1, 1).astype(float), "view_meaning": meaning, "class_meaning": names}
    )


def test_multiview_v5_cell_layout(tmp_path):
    image, text = _items()
    y = np.arange(40) % 4 + 1
    path = tmp_path / "mv.mat"
    _multiview_v5(path, image, text, y)
    data = read_all_mat(path)
    np.testing.assert_allclose(data.image, image.astype(np.float32))
    np.testing.assert_allclose(data.text, text.astype(np.float32))
    np.testing.assert_array_equal(data.labels.argmax(1), y - 1)
    assert data.label_names == ["a", "b", "c", "d"]
    swapped = read_all_mat(path, image_view=1, text_view=0)
    np.testing.assert_allclose(swapped.image, text.astype(np.float32))
    with pytest.raises(ValueError, match=r"image_view: expected a view position in 0..1 .* got 2"):
        read_all_mat(path, image_view=2)
    with pytest.raises(ValueError, match="two different views"):
        read_all_mat(path, image_view=1, text_view=1)
    stream = load_protocol("all-mat", path, n_tasks=2, query_size=2)
    assert [t.classes for t in stream] == [(0, 1), (2, 3)]


def test_multiview_gt_key_and_transposed_views(tmp_path):
    image, text = _items()
    y = np.arange(40) % 4
    path = tmp_path / "gt.mat"
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = image.T, text.T  # stored (D, N): oriented by the label count
    scipy_io.savemat(path, {"X": cell, "gt": y.reshape(1, -1)})
    data = read_all_mat(path, index_base=0)
    np.testing.assert_allclose(data.image, image.astype(np.float32))
    np.testing.assert_array_equal(data.labels.argmax(1), y)


def test_multiview_v73_hdf5_cell_layout(tmp_path):
    image, text = _items()
    y = np.arange(40) % 4 + 1
    path = tmp_path / "mv73.mat"
    with h5py.File(path, "w") as fh:  # MATLAB v7.3: column-major, so every matrix is stored transposed
        refs = fh.create_group("#refs#")
        a = refs.create_dataset("a", data=image.T)
        b = refs.create_dataset("b", data=text.T)
        cell = fh.create_dataset("X", shape=(1, 2), dtype=h5py.ref_dtype)
        cell[0, 0], cell[0, 1] = a.ref, b.ref
        fh.create_dataset("y", data=y.reshape(1, -1).astype(float))
    data = read_all_mat(path)
    np.testing.assert_allclose(data.image, image.astype(np.float32))
    np.testing.assert_allclose(data.text, text.astype(np.float32))
    np.testing.assert_array_equal(data.labels.argmax(1), y - 1)


def test_wikipedia_multiview_file_matches_the_train_test_file(shared_data):
    from pbeh.data import read_train_test_mat

    multi = read_all_mat(shared_data / "wikipedia" / "Wikipedia_multiview.mat")
    pair = read_train_test_mat(shared_data / "wikipedia" / "wiki_data.mat")
    assert multi.image.shape == (2866, 128)
    assert multi.text.shape == (2866, 10)
    assert multi.label_names == pair.label_names
    np.testing.assert_array_equal(multi.labels.sum(0), pair.labels.sum(0))
    # same items (order may differ): compare sorted rows
    np.testing.assert_allclose(np.sort(multi.image, axis=0), np.sort(pair.image, axis=0))
