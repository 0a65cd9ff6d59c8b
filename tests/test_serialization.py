from __future__ import annotations

import numpy as np
import pytest

from pbeh.serialization import (
    FormatError,
    atomic_path,
    load_safetensors,
    read_json,
    read_safetensors_metadata,
    save_safetensors,
    write_json,
)


def test_save_load_round_trip_is_byte_identical(tmp_path):
    arrays = {"b": np.arange(6, dtype=np.int64).reshape(2, 3), "a": np.ones((2, 2), dtype=np.uint8)}
    p1, p2 = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    save_safetensors(p1, arrays, kind="thing", format_version=3, metadata={"lengths": [16, 17], "note": "x"})
    loaded, meta = load_safetensors(p1, kind="thing", format_version=3)
    assert meta["pbeh_kind"] == "thing"
    assert meta["format_version"] == "3"
    assert meta["lengths"] == "[16, 17]"
    assert meta["note"] == "x"
    save_safetensors(p2, loaded, kind="thing", format_version=3, metadata={"lengths": [16, 17], "note": "x"})
    assert p1.read_bytes() == p2.read_bytes()
    np.testing.assert_array_equal(loaded["b"], arrays["b"])


def test_errors_name_the_problem(tmp_path):
    p = tmp_path / "x.safetensors"
    with pytest.raises(FormatError, match="file not found"):
        read_safetensors_metadata(p)
    save_safetensors(p, {"a": np.zeros(100, dtype=np.float32)}, kind="index", format_version=1)
    with pytest.raises(FormatError, match="holds a pbeh 'index', expected a pbeh 'model'"):
        load_safetensors(p, kind="model", format_version=1)
    with pytest.raises(FormatError, match=r"format_version '1'.*reads format_version 2"):
        load_safetensors(p, kind="index", format_version=2)
    data = p.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    with pytest.raises(FormatError, match="truncated"):
        load_safetensors(tmp_path / "cut.safetensors", kind="index", format_version=1)
    (tmp_path / "tiny").write_bytes(b"abc")
    with pytest.raises(FormatError, match="only 3 bytes"):
        read_safetensors_metadata(tmp_path / "tiny")
    (tmp_path / "junk").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"not json at all!")
    with pytest.raises(FormatError, match="corrupt safetensors header"):
        read_safetensors_metadata(tmp_path / "junk")
    from safetensors.numpy import save_file

    save_file({"a": np.zeros(2, dtype=np.float32)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(FormatError, match="not written by pbeh"):
        read_safetensors_metadata(tmp_path / "foreign.safetensors")


def test_reserved_metadata_keys_are_refused(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_safetensors(tmp_path / "a", {}, kind="x", format_version=1, metadata={"pbeh_kind": "y"})


def test_atomic_path_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "state.json"
    write_json(target, {"v": 1})

    def crash_mid_write() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        crash_mid_write()
    assert read_json(target) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary file left behind


def test_read_json_errors(tmp_path):
    with pytest.raises(FormatError, match="config not found"):
        read_json(tmp_path / "missing.json", what="config")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(FormatError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_atomic_path_refuses_directory(tmp_path):
    with pytest.raises(IsADirectoryError, match="existing directory"), atomic_path(tmp_path):
        pass


def test_own_encoder_is_read_by_the_safetensors_library(tmp_path):
    from safetensors.numpy import load_file

    arrays = {
        "flags": np.array([True, False, True]),
        "big_endian": np.arange(5, dtype=">i4"),
        "f16": np.linspace(0, 1, 7, dtype=np.float16).reshape(7, 1),
        "empty": np.zeros((0, 4), dtype=np.uint8),
    }
    path = tmp_path / "mixed.safetensors"
    save_safetensors(path, arrays, kind="mixed", format_version=1)
    loaded = load_file(str(path))
    assert set(loaded) == set(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value)
        assert loaded[key].shape == value.shape


def test_unsupported_dtype_is_refused(tmp_path):
    with pytest.raises(TypeError, match=r"tensors\['c'\]: dtype complex64 cannot be stored"):
        save_safetensors(tmp_path / "c", {"c": np.zeros(2, dtype=np.complex64)}, kind="x", format_version=1)
    assert not (tmp_path / "c").exists()
