"""The index file's checksum algorithms (issue 10): xxh3_128 (optional xxhash) and SHA-256 (the fallback).

Every streamed digest is compared with a one-pass reference computed here from the file's bytes; the damaged or
hostile checksum entries (an unknown algorithm, a digest of the wrong length, a damaged key, a missing entry) must give
pbeh's documented FormatError, and a file whose algorithm is not installed a ChecksumUnavailableError saying what to
install, never a silent skip.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_index import random_codes

from pbeh.index import FlatBackend, TruncatedHammingIndex
from pbeh.serialization import (
    CHECKSUM_KEY,
    ChecksumUnavailableError,
    FormatError,
    checksum_available,
    resolve_checksum,
)

HAS_XXHASH = checksum_available("xxh3_128")
needs_xxhash = pytest.mark.skipif(not HAS_XXHASH, reason="xxh3_128 needs pbeh[fast-checksum] (xxhash)")


def _index(seed: int = 0) -> TruncatedHammingIndex:
    """Codes at five lengths; ids are multiples of 3 (so changing an id's lowest bit keeps every structural check)."""
    rng = np.random.default_rng(seed)
    index = TruncatedHammingIndex(backend=FlatBackend(chunk_bytes=1024))
    first = 0
    for n_bits in (12, 33, 48, 64, 130):
        n = int(rng.integers(50, 400))
        index.add(random_codes(rng, n, n_bits), ids=3 * np.arange(first, first + n))
        first += n
    return index


def _split(path: Path) -> tuple[dict[str, Any], bytes]:
    data = path.read_bytes()
    (n_header,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n_header]), data[8 + n_header :]


def _join(path: Path, header: dict[str, Any], payload: bytes) -> None:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + payload)


def _one_pass_reference(header: dict[str, Any], payload: bytes, algorithm: str) -> str:
    """The checksum computed the plain way: the canonical header (compact, key-sorted JSON without the checksum
    entry) and the whole data section, hashed in one call."""
    meta = {k: v for k, v in header["__metadata__"].items() if k != CHECKSUM_KEY}
    canonical = json.dumps({**header, "__metadata__": meta}, sort_keys=True, separators=(",", ":")).encode()
    if algorithm == "sha256":
        return "sha256:" + hashlib.sha256(canonical + payload).hexdigest()
    import xxhash

    return "xxh3_128:" + xxhash.xxh3_128(canonical + payload).hexdigest()


def _hide_xxhash(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import xxhash`` fail, as on a machine without the extra."""
    monkeypatch.setitem(sys.modules, "xxhash", None)


@pytest.mark.parametrize("checksum", ["sha256", pytest.param("xxh3_128", marks=needs_xxhash)])
def test_the_streamed_checksum_equals_a_one_pass_digest_of_the_file(tmp_path: Path, monkeypatch, checksum):
    from pbeh.index import _files

    index = _index(1)
    for block_bytes in (7, 1000, 1 << 20):  # the writer hashes block by block
        monkeypatch.setattr(_files, "_BLOCK_BYTES", block_bytes)
        path = tmp_path / f"{block_bytes}.safetensors"
        index.save(path, checksum=checksum)
        header, payload = _split(path)
        assert header["__metadata__"][CHECKSUM_KEY] == _one_pass_reference(header, payload, checksum)
        assert header["__metadata__"]["format_version"] == ("1" if checksum == "sha256" else "2")
        assert path.read_bytes() == (tmp_path / "7.safetensors").read_bytes()  # the block size changes nothing
        loaded = TruncatedHammingIndex.load(path)
        assert loaded.segments == index.segments
        np.testing.assert_array_equal(loaded.get_ids(), index.get_ids())


@needs_xxhash
def test_the_two_algorithms_store_the_same_content(tmp_path: Path):
    index = _index(2)
    index.save(tmp_path / "sha.safetensors", checksum="sha256")
    index.save(tmp_path / "xxh.safetensors", checksum="xxh3_128")
    (h1, p1), (h2, p2) = _split(tmp_path / "sha.safetensors"), _split(tmp_path / "xxh.safetensors")
    assert p1 == p2
    m1, m2 = h1.pop("__metadata__"), h2.pop("__metadata__")
    assert h1 == h2
    for m in (m1, m2):
        del m[CHECKSUM_KEY], m["format_version"]
    assert m1 == m2


def test_auto_is_xxh3_128_with_xxhash_and_sha256_without(tmp_path: Path, monkeypatch):
    index = _index(3)
    assert resolve_checksum("auto") == ("xxh3_128" if HAS_XXHASH else "sha256")
    _hide_xxhash(monkeypatch)
    assert not checksum_available("xxh3_128")
    assert resolve_checksum("auto") == "sha256"
    index.save(tmp_path / "i.safetensors")
    header, payload = _split(tmp_path / "i.safetensors")
    assert header["__metadata__"][CHECKSUM_KEY] == _one_pass_reference(header, payload, "sha256")
    assert TruncatedHammingIndex.metadata(tmp_path / "i.safetensors")["format_version"] == 1
    assert TruncatedHammingIndex.load(tmp_path / "i.safetensors").segments == index.segments


def test_checksum_option_is_validated(tmp_path: Path, monkeypatch):
    index = _index(4)
    for bad in ("SHA256", "md5", "", None, 3):
        with pytest.raises(ValueError, match=r"checksum: expected 'auto' or one of \['sha256', 'xxh3_128'\]"):
            index.save(tmp_path / "i.safetensors", checksum=bad)
    _hide_xxhash(monkeypatch)
    with pytest.raises(ImportError, match=r"checksum='xxh3_128' needs the xxhash package: pip install 'pbeh\[fast"):
        index.save(tmp_path / "i.safetensors", checksum="xxh3_128")
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_file_whose_algorithm_is_not_installed_says_what_to_install(tmp_path: Path, monkeypatch):
    index = _index(5)
    path = tmp_path / "i.safetensors"
    if HAS_XXHASH:
        index.save(path, checksum="xxh3_128")
    else:  # the header of such a file (the digest is never computed: the library is missing)
        index.save(path, checksum="sha256")
        header, payload = _split(path)
        header["__metadata__"].update({CHECKSUM_KEY: "xxh3_128:" + "0" * 32, "format_version": "2"})
        _join(path, header, payload)
    _hide_xxhash(monkeypatch)
    with pytest.raises(ChecksumUnavailableError, match=r"xxh3_128, which needs the xxhash package: pip install "
                       r"'pbeh\[fast-checksum\]' .* verify=False"):  # fmt: skip
        TruncatedHammingIndex.load(path)
    assert issubclass(ChecksumUnavailableError, FormatError)
    loaded = TruncatedHammingIndex.load(path, verify=False)  # the documented way past it, for a trusted file
    assert loaded.segments == index.segments
    np.testing.assert_array_equal(loaded.get_ids(), index.get_ids())
    assert TruncatedHammingIndex.metadata(path)["format_version"] == 2  # the header alone needs no checksum


@pytest.mark.parametrize("checksum", ["sha256", pytest.param("xxh3_128", marks=needs_xxhash)])
def test_damage_anywhere_is_caught_by_either_algorithm(tmp_path: Path, checksum):
    index = _index(6)
    path = tmp_path / "i.safetensors"
    index.save(path, checksum=checksum)
    good = path.read_bytes()
    header, payload = _split(path)
    start = len(good) - len(payload)
    # damage the checksum alone can see: the top bit of a code byte (never a padding bit), the lowest bit of an id
    for name in ("codes.12", "codes.48", "codes.130", "ids.33", "ids.130"):
        begin, end = header[name]["data_offsets"]
        for at in (begin, end - 1) if name.startswith("codes") else (begin, begin + 8 * 5):
            data = bytearray(good)
            data[start + at] ^= 0x01 if name.startswith("ids") else 0x80
            path.write_bytes(bytes(data))
            assert TruncatedHammingIndex.load(path, verify=False).segments == index.segments  # structurally valid
            with pytest.raises(FormatError, match="does not match its checksum"):
                TruncatedHammingIndex.load(path)
    # a header value changed without recomputing the checksum (the checksum covers the header too)
    changed = json.loads(json.dumps(header))
    changed["__metadata__"]["next_id"] = str(int(header["__metadata__"]["next_id"]) + 5)
    _join(path, changed, payload)
    with pytest.raises(FormatError, match="does not match its checksum"):
        TruncatedHammingIndex.load(path)


@pytest.mark.parametrize("checksum", ["sha256", pytest.param("xxh3_128", marks=needs_xxhash)])
@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("md5:" + "0" * 32, r"names the algorithm 'md5', which this pbeh .* does not know .* verify=False"),
        ("xxh3_64:" + "0" * 16, r"names the algorithm 'xxh3_64', which this pbeh .* does not know"),
        ("", r"names the algorithm '', which this pbeh .* does not know"),
        ("sha256" + "0" * 65, r"names the algorithm 'sha2560000"),
        ("xxh3_128:" + "0" * 31, r"checksum entry is malformed \(expected 'xxh3_128', ':' and 32 lower-case hex"),
        ("xxh3_128:" + "0" * 64, r"checksum entry is malformed .* got 64 characters"),
        ("sha256:" + "0" * 32, r"checksum entry is malformed \(expected 'sha256', ':' and 64"),
        ("sha256:" + "A" * 64, r"checksum entry is malformed"),
        ("xxh3_128:" + "g" * 32, r"checksum entry is malformed"),
    ],
)
def test_hostile_checksum_entries_are_refused(tmp_path: Path, checksum, entry, message):
    path = tmp_path / "i.safetensors"
    _index(7).save(path, checksum=checksum)
    header, payload = _split(path)
    header["__metadata__"][CHECKSUM_KEY] = entry
    _join(path, header, payload)
    with pytest.raises(FormatError, match=message) as caught:
        TruncatedHammingIndex.load(path)
    assert type(caught.value) is FormatError  # damage, not a missing library
    assert TruncatedHammingIndex.load(path, verify=False).segments == _index(7).segments


@pytest.mark.parametrize("checksum", ["sha256", pytest.param("xxh3_128", marks=needs_xxhash)])
def test_a_damaged_checksum_key_is_not_taken_for_a_file_without_checksum(tmp_path: Path, checksum):
    path = tmp_path / "i.safetensors"
    _index(8).save(path, checksum=checksum)
    data = bytearray(path.read_bytes())
    at = data.index(b"pbeh_checksum")
    data[at + 12] ^= 0x01  # 'pbeh_checksum' -> 'pbeh_checksul'
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="checksum entry is unreadable"):
        TruncatedHammingIndex.load(path)


@needs_xxhash
def test_a_version_2_file_without_checksum_is_damaged(tmp_path: Path):
    path = tmp_path / "i.safetensors"
    index = _index(9)
    index.save(path, checksum="xxh3_128")
    header, payload = _split(path)
    del header["__metadata__"][CHECKSUM_KEY]
    _join(path, header, payload)
    with pytest.raises(FormatError, match="a version 2 index always has a checksum, this has none"):
        TruncatedHammingIndex.load(path)
    assert TruncatedHammingIndex.load(path, verify=False).segments == index.segments
    header["__metadata__"]["format_version"] = "1"  # as a version 1 file (written before checksums) it loads
    _join(path, header, payload)
    assert TruncatedHammingIndex.load(path).segments == index.segments


def test_a_version_1_sha256_file_written_before_this_change_still_verifies(tmp_path: Path):
    # Written by hand as pbeh wrote every index before xxh3_128: format_version 1, SHA-256 of canonical header + data.
    codes = np.array([[0x12, 0x30], [0xAB, 0xC0], [0xFF, 0xF0]], np.uint8)  # 12-bit codes, padding bits zero
    ids = np.array([0, 4, 9], np.int64)
    meta = {
        "pbeh_kind": "index", "format_version": "1", "pbeh_version": "0.1.0", "bit_order": "big",
        "segment_n_bits": "[12]", "segment_sizes": "[3]", "score": "zscore", "flip_probability": "0.2",
        "next_id": "10",
    }  # fmt: skip
    header: dict[str, Any] = {
        "__metadata__": meta,
        "codes.12": {"dtype": "U8", "shape": [3, 2], "data_offsets": [0, 6]},
        "ids.12": {"dtype": "I64", "shape": [3], "data_offsets": [6, 30]},
    }
    payload = codes.tobytes() + ids.tobytes()
    meta[CHECKSUM_KEY] = _one_pass_reference(header, payload, "sha256")
    path = tmp_path / "v1.safetensors"
    _join(path, header, payload)
    loaded = TruncatedHammingIndex.load(path)
    np.testing.assert_array_equal(loaded.get_ids(), ids)
    np.testing.assert_array_equal(loaded.get_codes(ids).packed, codes)
    header["__metadata__"]["next_id"] = "11"  # stale checksum
    _join(path, header, payload)
    with pytest.raises(FormatError, match="does not match its checksum"):
        TruncatedHammingIndex.load(path)
