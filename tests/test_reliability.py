"""Regression tests for issue 13: damaged files, aliased buffers, half-done saves and failed tasks.

One test (or more) per finding of the reliability trial; the fuzz suite lives in ``test_fuzz.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import stat
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
import torch

from pbeh import serialization
from pbeh._matv5 import MatV5File
from pbeh.codes import Codes
from pbeh.data import Split, Task, TaskStream, read_all_mat, read_train_test_mat, synthetic_stream
from pbeh.encoders import FeatureCache, load_features
from pbeh.extension import FixedSchedule
from pbeh.metrics import ContinualMatrix
from pbeh.model import CONFIG_NAME, CrossModalHashModel
from pbeh.serialization import FormatError, load_safetensors, save_safetensors
from pbeh.trainer import ContinualTrainer, TrainerConfig, checkpoint_state_dir


# ---------------------------------------------------------------------------------------------------- helpers
def small_stream(seed: int = 0) -> TaskStream:
    return synthetic_stream(n_tasks=3, classes_per_task=2, image_dim=16, text_dim=8, items_per_class=15, seed=seed)


def small_trainer(stream: TaskStream, **kwargs) -> ContinualTrainer:
    config = kwargs.pop("config", TrainerConfig(epochs=1, batch_size=32, eval_k=None, lr=1e-3))
    return ContinualTrainer.for_stream(
        stream,
        n_bits=8,
        hidden_dims=(16,),
        config=config,
        extension_policy=FixedSchedule(bits_per_task=2),
        **kwargs,
    )


def small_model() -> CrossModalHashModel:
    model = CrossModalHashModel(8, 8, n_bits=4, hidden_dims=(8,), pool_kwargs={"num_heads": 2})
    model.add_task(n_prompts=2)
    return model


def replace_task(task: Task, **splits) -> Task:
    return dataclasses.replace(task, **splits)


# ---------------------------------------------------------------------------------------------------- 1. .mat files
def wiki_like_mat(path: Path, *, compress: bool = False) -> None:
    scipy.io.savemat(
        path,
        {"I_tr": np.zeros((30, 16)), "T_tr": np.zeros((30, 10)), "L_tr": np.ones((30, 1), np.uint8)},
        do_compression=compress,
    )


def test_mat_byte_176_reproducer_raises_format_error_instead_of_segfault(tmp_path):
    path = tmp_path / "wiki_data.mat"
    wiki_like_mat(path)
    data = bytearray(path.read_bytes())
    assert data[176] == 9  # the data-type tag of the first array (miDOUBLE), as in the trial
    data[176] = 0
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="damaged MATLAB file"):
        read_train_test_mat(path)
    with pytest.raises(FormatError):
        read_all_mat(path)


def test_mat_every_single_byte_change_of_the_header_area_is_handled(tmp_path):
    """Each of the first 400 bytes set to 0 and to 0xFF: a FormatError or a correct read, never anything else."""
    path = tmp_path / "w.mat"
    wiki_like_mat(path)
    good = path.read_bytes()
    bad = tmp_path / "bad.mat"
    for position in range(128, 400):
        for value in (0, 0xFF, good[position] ^ 0x10):
            data = bytearray(good)
            data[position] = value
            bad.write_bytes(bytes(data))
            with contextlib.suppress(FormatError):  # FormatError is the only exception allowed out
                read_train_test_mat(bad)


def reference_arrays(rng: np.random.Generator) -> dict[str, object]:
    return {
        "f64": rng.normal(size=(7, 5)),
        "f32": rng.normal(size=(3, 4)).astype(np.float32),
        "u8": rng.integers(0, 255, size=(6, 2), dtype=np.uint8),
        "i16": rng.integers(-300, 300, size=(2, 3, 4), dtype=np.int16),
        "i64": np.array([[2**40, -5, 0]], np.int64),
        "u32": rng.integers(0, 2**31, size=(4, 1), dtype=np.uint32),
        "logical": rng.random((5, 3)) > 0.5,
        "empty": np.zeros((0, 3)),
        "ints_as_double": rng.integers(0, 3, size=(9, 4)).astype(np.float64),  # savemat keeps float64
        "sparse": scipy.sparse.random(9, 6, density=0.3, random_state=int(rng.integers(1000)), format="csc"),
        "chars": np.array(["abc", "xyz"]),
        "a_name_of_thirty_one_characters": np.eye(3),
    }


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mat_v5_reader_matches_scipy_loadmat(tmp_path, compress, seed):
    """The checked v5 reader against the brute-force reference (scipy.io.loadmat on the same, undamaged file)."""
    arrays = reference_arrays(np.random.default_rng(seed))
    path = tmp_path / "ref.mat"
    scipy.io.savemat(path, arrays, do_compression=compress)
    ours = MatV5File(path)
    reference = scipy.io.loadmat(path)
    assert sorted(ours.keys) == sorted(k for k in reference if not k.startswith("__"))
    for key in ours.keys:
        expected = reference[key]
        if scipy.sparse.issparse(expected):
            expected = expected.toarray()
        got = ours.read(key)
        assert got.dtype == expected.dtype, key
        assert got.shape == expected.shape, key
        np.testing.assert_array_equal(got, expected)


def test_mat_v5_reader_cells_structs_and_complex(tmp_path):
    path = tmp_path / "c.mat"
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = np.ones((2, 3)), np.arange(4.0).reshape(4, 1)
    scipy.io.savemat(path, {"cell": cell, "st": {"f": np.ones(2)}, "z": np.array([[1 + 2j]])})
    m = MatV5File(path)
    with pytest.raises(FormatError, match="not a numeric array \\(a MATLAB cell\\)"):
        m.read("cell")
    got = m.read("cell", cells=True)
    assert got.shape == (1, 2)
    np.testing.assert_array_equal(got[0, 1], np.arange(4.0).reshape(4, 1))
    with pytest.raises(FormatError, match="struct"):
        m.read("st")
    with pytest.raises(FormatError, match="complex"):
        m.read("z")


def test_mat_compressed_element_claiming_a_huge_size_is_refused_before_inflating(tmp_path):
    path = tmp_path / "z.mat"
    wiki_like_mat(path, compress=True)
    data = bytearray(path.read_bytes())
    assert struct.unpack("<I", data[128:132])[0] == 15  # miCOMPRESSED
    data[132:136] = struct.pack("<I", 2**31)  # the compressed element now claims 2 GB of compressed bytes
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="claims"):
        read_train_test_mat(path)


def test_real_wikipedia_mat_reads_as_with_scipy():
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikipedia" / "wiki_data.mat"
    if not path.is_file():
        pytest.skip("../shared/data is absent")
    ours, reference = MatV5File(path), scipy.io.loadmat(path)
    for key in ours.keys:
        np.testing.assert_array_equal(ours.read(key), reference[key])


# ---------------------------------------------------------------------------------------------------- 2. saves
def test_save_pretrained_interrupted_between_files_leaves_the_old_model(tmp_path, monkeypatch):
    old, new = small_model(), small_model()
    new.extend(2)
    target = tmp_path / "m"
    old.save_pretrained(target)
    (target / "README.txt").write_text("kept")
    x = torch.randn(5, 8)
    expected = old.encode(x, "image")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed between model.safetensors and config.json")

    monkeypatch.setattr("pbeh.model.write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        new.save_pretrained(target)
    monkeypatch.undo()
    assert CrossModalHashModel.from_pretrained(target).encode(x, "image") == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging directory left behind
    new.save_pretrained(target)
    assert CrossModalHashModel.from_pretrained(target).n_bits == 6
    assert (target / "README.txt").read_text() == "kept"  # other files in the directory are carried over


@pytest.mark.parametrize("exchange", [True, False])
def test_directory_swap_has_no_window_where_load_fails(tmp_path, monkeypatch, exchange):
    """Kill the swap right after the old directory moved away: load(dir) must still find a complete state."""
    stream = small_stream()
    trainer = small_trainer(stream)
    trainer.fit_task(stream[0])
    target = tmp_path / "state"
    trainer.save(target)
    first = ContinualTrainer.load(target)
    trainer.fit_task(stream[1])
    if not exchange:
        monkeypatch.setattr(serialization, "_exchange", lambda a, b: False)
    real_rename = os.rename
    calls = []

    def rename_then_die(src, dst):
        calls.append((src, dst))
        real_rename(src, dst)
        if Path(src) == target:  # the old state has just moved to .state.old; the new one is not in place yet
            raise KeyboardInterrupt("killed mid-swap")

    monkeypatch.setattr(os, "rename", rename_then_die)
    if exchange:
        trainer.save(target)  # atomic exchange: os.rename is not used for the swap at all
        assert not any(Path(src) == target for src, _ in calls)
        assert ContinualTrainer.load(target).n_tasks_done == 2
        return
    with pytest.raises(KeyboardInterrupt):
        trainer.save(target)
    monkeypatch.undo()
    assert not target.exists()
    during = ContinualTrainer.load(target)  # falls back to the complete previous state
    assert during.n_tasks_done == first.n_tasks_done == 1
    trainer.save(target)  # the next save completes and cleans up
    assert ContinualTrainer.load(target).n_tasks_done == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


# ---------------------------------------------------------------------------------------------------- 3. aliasing
def test_codes_from_packed_copies_numpy_buffers():
    buf = np.zeros((2, 2), dtype=np.uint8)
    buf[1, 0] = 0b1111_0000
    codes = Codes.from_packed(buf, 12)
    assert buf.flags.writeable  # the caller's array is not made read-only
    buf[:] = 0xFF  # padding bits included
    assert codes.packed.tolist() == [[0, 0], [0xF0, 0]]
    other = Codes.from_bool(np.zeros((1, 12), bool))
    assert codes.hamming(other).tolist() == [[0], [4]]  # not 8: the padding the caller wrote is not in the codes


def test_codes_from_packed_copies_torch_storage():
    tensor = torch.zeros(2, 1, dtype=torch.uint8)
    codes = Codes.from_packed(tensor, 8)
    tensor.fill_(0x0F)
    assert codes.packed.tolist() == [[0], [0]]
    assert not np.shares_memory(codes.packed, tensor.numpy())


def test_codes_stay_read_only():
    codes = Codes.from_packed(np.zeros((1, 1), np.uint8), 8)
    with pytest.raises(ValueError, match="read-only"):
        codes.packed[0, 0] = 1


# ---------------------------------------------------------------------------------------------------- 4. fit_task
@pytest.fixture(scope="module")
def two_task_reference():
    stream = small_stream()
    trainer = small_trainer(stream)
    trainer.fit_task(stream[0])
    trainer.fit_task(stream[1])
    return stream, trainer


def test_failed_fit_task_is_rolled_back_and_the_next_one_works(two_task_reference, monkeypatch):
    stream, reference = two_task_reference
    trainer = small_trainer(stream)
    trainer.fit_task(stream[0])

    def diverge(*args, **kwargs):
        raise FloatingPointError("loss diverged")

    with monkeypatch.context() as m:
        m.setattr(ContinualTrainer, "_store", diverge)  # fails after the pool, extension and training happened
        with pytest.raises(FloatingPointError):
            trainer.fit_task(stream[1])
    assert trainer.n_tasks_done == 1
    assert trainer.model.n_tasks == 1
    assert len(trainer.image_index) == len(stream[0].database)
    report = trainer.fit_task(stream[1])  # before the fix: "expected prompt pool 1 for task 1, the model created 2"
    assert report.task == 1
    assert trainer.model.width_history == reference.model.width_history
    for index, ref in ((trainer.image_index, reference.image_index), (trainer.text_index, reference.text_index)):
        ids = stream[1].database.ids
        assert index.get_codes(ids) == ref.get_codes(ids)


def test_bad_tasks_are_refused_before_training(two_task_reference, monkeypatch, caplog):
    stream, _ = two_task_reference
    trainer = small_trainer(stream)
    trainer.fit_task(stream[0])
    task = stream[1]
    monkeypatch.setattr(ContinualTrainer, "_train_task", lambda *a, **k: pytest.fail("trained a bad task"))
    db = task.database
    negative = Split(db.image, db.text, db.labels, db.ids - 10_000)
    with pytest.raises(ValueError, match="database ids must be non-negative"):
        trainer.fit_task(replace_task(task, database=negative))
    wider = lambda s: Split(s.image, s.text, np.pad(s.labels, ((0, 0), (0, 1))), s.ids)  # noqa: E731
    with pytest.raises(ValueError, match="train labels have 7 classes, earlier tasks have 6"):
        trainer.fit_task(replace_task(task, train=wider(task.train), query=wider(task.query), database=wider(db)))
    empty = Split.empty(16, 8, task.train.n_classes)
    with pytest.raises(ValueError, match="the query split is empty"):
        trainer.fit_task(replace_task(task, query=empty))
    with pytest.raises(ValueError, match="the database split is empty"):
        trainer.fit_task(replace_task(task, database=empty))
    assert trainer.n_tasks_done == 1
    assert trainer.model.n_tasks == 1
    zero = Split(task.train.image, task.train.text, np.zeros_like(task.train.labels), task.train.ids)
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="pbeh.training.trainer"):
        trainer.fit_task(replace_task(task, train=zero))
    assert "every train label is zero" in caplog.text


def test_nan_features_are_refused_by_split():
    with pytest.raises(ValueError, match="expected finite float32 values, got 1 row"):
        Split(np.array([[np.nan, 0.0]]), np.zeros((1, 2)), np.ones((1, 1)))
    with pytest.raises(ValueError, match="item ids must fit in int64"):
        Split(np.zeros((1, 2)), np.zeros((1, 2)), np.ones((1, 1)), np.array([1e20]))


def test_from_signs_nan_message_points_at_the_cause():
    with pytest.raises(ValueError, match="values: contains NaN at row 1"):
        Codes.from_signs(np.array([[0.0, 1.0], [np.nan, 1.0]]))


def test_loaded_trainer_continues_with_fit_task_and_fit(tmp_path):
    stream = small_stream()
    run = tmp_path / "run"
    trainer = small_trainer(stream, checkpoint_dir=run)
    trainer.fit(TaskStream(list(stream)[:2]))
    # issue 12's trial: load a task checkpoint and train a new task (IndexError in _evaluate_rows before)
    loaded = ContinualTrainer.load(run / "task_001")
    report = loaded.fit_task(stream[2])
    assert report.task == 2
    assert np.isnan(report.map_i2t[0])
    assert np.isfinite(report.map_i2t[2])
    # the run root works too, and keeps checkpointing into it
    from_root = ContinualTrainer.load(run)
    assert from_root.checkpoint_dir == run
    assert checkpoint_state_dir(run) == run / "task_001"
    reports = from_root.fit(stream)
    assert len(reports) == 3
    assert np.isfinite(reports[2].map_i2t).all()
    assert json.loads((run / "latest.json").read_text())["directory"] == "task_002"


def test_latest_json_cannot_point_outside_the_run(tmp_path):
    stream = small_stream()
    run = tmp_path / "run"
    small_trainer(stream, checkpoint_dir=run).fit_task(stream[0])
    outside = tmp_path / "elsewhere"
    ContinualTrainer.load(run / "task_000").save(outside)
    for bad in ("../elsewhere", str(outside), "task_000/../../elsewhere", 5):
        (run / "latest.json").write_text(json.dumps({"directory": bad, "tasks_done": 1}))
        with pytest.raises(FormatError, match="directory"):
            ContinualTrainer.load(run)
        with pytest.raises(FormatError):
            small_trainer(stream, checkpoint_dir=run).fit(stream)
    (run / "latest.json").write_text("[1, 2]")
    with pytest.raises(FormatError, match="expected a JSON dict"):
        ContinualTrainer.load(run)


def test_damaged_trainer_json_raises_format_error(tmp_path):
    stream = small_stream()
    trainer = small_trainer(stream)
    trainer.fit_task(stream[0])
    trainer.save(tmp_path / "s")
    good = json.loads((tmp_path / "s" / "trainer.json").read_text())
    for change in ({"stored": [{"name": 3, "n_bits": 8}]}, {"stored": "x"}, {"reports": []}, {"config": None},
                   {"pending_extension": -1}, {"matrix": []}, {"index_score": 7}):  # fmt: skip
        (tmp_path / "s" / "trainer.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(FormatError):
            ContinualTrainer.load(tmp_path / "s")


def test_resume_with_other_options_is_refused(tmp_path):
    stream = small_stream()
    run = tmp_path / "run"
    small_trainer(stream, checkpoint_dir=run).fit_task(stream[0])
    config = TrainerConfig(epochs=3, batch_size=32, eval_k=None, lr=1e-3)
    other = small_trainer(stream, checkpoint_dir=run, config=config)
    with pytest.raises(ValueError, match=r"other options \(epochs: checkpoint 1, now 3\)"):
        other.fit(stream)
    fewer_bits = ContinualTrainer.for_stream(
        stream, n_bits=16, hidden_dims=(16,), config=TrainerConfig(epochs=1, batch_size=32, eval_k=None, lr=1e-3),
        extension_policy=FixedSchedule(bits_per_task=2), checkpoint_dir=run,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"n_bits: checkpoint 8, now 16.*resume=False"):
        fewer_bits.fit(stream)
    assert len(small_trainer(stream, checkpoint_dir=run).fit(stream)) == 3  # same options: resumes


# ---------------------------------------------------------------------------------------------------- 5. metadata
def write_raw_safetensors(path: Path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F32", "shape": [10**12, 10**12], "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 10**15]},
        {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 0]},
        {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [2, -2], "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": "2", "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": [2.0, 2], "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": [2, 2], "data_offsets": [0]},
        {"dtype": ["F32"], "shape": [2, 2], "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": [1] * 40, "data_offsets": [0, 4]},
        [1, 2],
    ],
)
def test_hostile_safetensors_headers_raise_format_error(tmp_path, entry):
    path = tmp_path / "h.safetensors"
    write_raw_safetensors(path, {"__metadata__": {"pbeh_kind": "index", "format_version": "1"}, "t": entry}, b"\0" * 16)
    with pytest.raises(FormatError):
        load_safetensors(path, kind="index", format_version=1)


def test_hostile_safetensors_metadata_and_json(tmp_path):
    path = tmp_path / "h.safetensors"
    for header in ({"__metadata__": {"pbeh_kind": 5}}, {"__metadata__": []}, {"__metadata__": {"x": "y"}}):
        write_raw_safetensors(path, header)
        with pytest.raises(FormatError):
            load_safetensors(path, kind="index", format_version=1)
    deep = b"[" * 100_000 + b"]" * 100_000
    path.write_bytes(struct.pack("<Q", len(deep)) + deep)
    with pytest.raises(FormatError, match="corrupt safetensors header"):
        load_safetensors(path, kind="index", format_version=1)


def test_flipped_bit_is_caught_by_the_checksum_and_old_files_still_load(tmp_path):
    path = tmp_path / "x.safetensors"
    save_safetensors(path, {"codes": np.arange(16, dtype=np.uint8).reshape(4, 4)}, kind="index", format_version=1)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x04  # one code bit
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="does not match its checksum"):
        load_safetensors(path, kind="index", format_version=1)
    # a file without a checksum (written by pbeh before checksums) is still read
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    header = json.loads(bytes(data[8 : 8 + n]))
    del header["__metadata__"][serialization.CHECKSUM_KEY]
    write_raw_safetensors(path, header, bytes(data[8 + n :]))
    arrays, meta = load_safetensors(path, kind="index", format_version=1)
    assert arrays["codes"].shape == (4, 4)
    assert "pbeh_checksum" not in meta


def test_config_json_cannot_ask_for_a_huge_model(tmp_path):
    small_model().save_pretrained(tmp_path / "m")
    good = json.loads((tmp_path / "m" / CONFIG_NAME).read_text())
    for change, match in (
        ({"dim": 8000}, "describes at least"),
        ({"hidden_dims": [200000, 200000]}, "describes at least"),
        ({"pool_sizes": [10**9]}, "describes at least"),
        ({"image_dim": 10**7}, "describes at least"),
        ({"width_history": [4, 10**9], "n_bits": 10**9}, "describes at least"),
        ({"hidden_dims": [0]}, "ints >= 1"),
        ({"dim": "8"}, "'dim' must be int"),
        ({"pool_sizes": list(range(10_000))}, "list of 1 to"),
    ):
        (tmp_path / "m" / CONFIG_NAME).write_text(json.dumps({**good, **change}))
        with pytest.raises(FormatError, match=match):
            CrossModalHashModel.from_pretrained(tmp_path / "m")


def test_matrix_file_cannot_ask_for_a_huge_matrix(tmp_path):
    matrix = ContinualMatrix(2)
    data = matrix.to_dict()
    data["n_tasks"] = 10**6
    with pytest.raises(FormatError, match="n_tasks is 1000000 but the matrices hold 2 rows"):
        ContinualMatrix.from_dict(data)


def test_class_index_of_3e9_is_refused(tmp_path):
    path = tmp_path / "l.mat"
    labels = np.array([[1.0], [2.0], [3e9]])
    scipy.io.savemat(path, {"I_tr": np.zeros((3, 2)), "T_tr": np.zeros((3, 2)), "L_tr": labels})
    with pytest.raises(ValueError, match="at most 1048576 classes"):
        read_train_test_mat(path)


# ---------------------------------------------------------------------------------------------------- also
def test_two_feature_caches_on_one_file_keep_each_others_appends(tmp_path):
    path = tmp_path / "f.safetensors"

    def encode(items):
        return np.array([[float(i), 1.0] for i in items])

    a, b = FeatureCache(path, modality="text"), FeatureCache(path, modality="text")
    a.get_or_encode([1, 2], [1, 2], encode, encoder_name="toy")
    b.get_or_encode([3], [3], encode, encoder_name="toy")  # b was opened before a wrote
    a.get_or_encode([4], [4], encode, encoder_name="toy")
    _, ids, _ = load_features(path)
    assert sorted(ids.tolist()) == [1, 2, 3, 4]
    assert len(FeatureCache(path, modality="text")) == 4


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        serialization.atomic_write_bytes(tmp_path / "a.bin", b"x")
        os.umask(0o077)
        serialization.atomic_write_bytes(tmp_path / "b.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o600


def test_long_file_names_can_be_saved(tmp_path):
    name = "n" * 240 + ".safetensors"  # 252 characters
    save_safetensors(tmp_path / name, {"x": np.zeros(3)}, kind="index", format_version=1)
    assert load_safetensors(tmp_path / name, kind="index", format_version=1)[0]["x"].shape == (3,)
    model_dir = tmp_path / ("d" * 250)
    small_model().save_pretrained(model_dir)
    assert CrossModalHashModel.from_pretrained(model_dir).n_bits == 4


def test_bfloat16_model_save_names_the_fix(tmp_path):
    model = small_model().to(torch.bfloat16)
    with pytest.raises(TypeError, match=r"dtype torch.bfloat16.*model.float\(\)"):
        model.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_nan_or_inf_features_at_predict_time_name_the_rows():
    model = small_model()
    x = torch.randn(4, 8)
    x[2, 1] = float("inf")
    expected = r"features: 1 row\(s\) of the image features contain NaN or inf \(first: row 2\)"
    with pytest.raises(ValueError, match=expected):
        model.encode(x, "image")


def test_trainer_state_naming_ids_its_indexes_lack_is_refused(tmp_path):
    """Found by bench/fuzz.py: a re-checksummed trainer_state with another id loaded, then failed with KeyError."""
    stream = small_stream()
    trainer = small_trainer(stream)
    trainer.fit_task(stream[0])
    trainer.save(tmp_path / "s")
    path = tmp_path / "s" / "trainer_state.safetensors"
    arrays, _ = load_safetensors(path, kind="trainer_state", format_version=1)
    arrays["stored.0.ids"] = arrays["stored.0.ids"] + 8000
    save_safetensors(path, arrays, kind="trainer_state", format_version=1)
    with pytest.raises(FormatError, match=r"names ids .* that its indexes lack"):
        ContinualTrainer.load(tmp_path / "s")


def test_damaged_checksum_key_is_not_taken_for_a_file_without_checksum(tmp_path):
    """Found by bench/fuzz.py: bytes of the key 'pbeh_checksum' and of the data damaged -> loaded silently."""
    path = tmp_path / "x.safetensors"
    save_safetensors(path, {"codes": np.arange(16, dtype=np.uint8).reshape(4, 4)}, kind="index", format_version=1)
    data = bytearray(path.read_bytes())
    at = data.index(b"pbeh_checksum")
    data[at + 12] ^= 0x01  # 'pbeh_checksum' -> 'pbeh_checksul'
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="checksum entry is unreadable"):
        load_safetensors(path, kind="index", format_version=1)
