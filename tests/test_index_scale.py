"""Tests of the index's growth, bounded memory, streamed files and IVF segments (issue 10), and copy-on-add (13).

Every search is compared with the brute-force reference of test_index.py; memory is measured with tracemalloc (numpy
reports its allocations there), never time.
"""

from __future__ import annotations

import itertools
import json
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_index import P, brute_force, check_against_reference, random_codes, tie_heavy_codes

from pbeh._safetensors_stream import save_safetensors_streaming
from pbeh.codes import Codes
from pbeh.index import SCORE_POLICIES, FlatBackend, IVFBackend, TruncatedHammingIndex, score_distances
from pbeh.serialization import FormatError, save_safetensors

SMALL_CHUNKS = FlatBackend(chunk_bytes=1024)  # 128 rows of 8 bytes: many chunks with few codes


def same_results(a, b) -> None:
    for field in ("ids", "distances", "scores", "n_bits_compared"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


# ---------------------------------------------------------------------------------------------------- growth
@st.composite
def operation_sequences(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    lengths = draw(st.lists(st.integers(1, 70), min_size=1, max_size=3))
    ops = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["auto", "increasing", "random", "remove"]))
        n_bits = lengths[int(rng.integers(len(lengths)))]
        n = int(rng.integers(0, 300))
        ops.append((kind, n_bits, n, int(rng.integers(0, 2**31))))
    tie_heavy = draw(st.booleans())
    q_bits = draw(st.sampled_from([*lengths, draw(st.integers(1, 80))]))
    return ops, tie_heavy, q_bits, draw(st.integers(1, 40)), seed


@settings(max_examples=40, deadline=None)
@given(operation_sequences())
def test_many_batches_small_chunks_and_runs_match_brute_force(scenario):
    ops, tie_heavy, q_bits, k, seed = scenario
    rng = np.random.default_rng(seed)
    index = TruncatedHammingIndex(flip_probability=P, backend=SMALL_CHUNKS, cache_bytes=4096)
    stored: dict[int, tuple[int, np.ndarray]] = {}  # id -> (n_bits, bool bits)
    top = 10_000
    for kind, n_bits, n, _ in ops:
        if kind == "remove":
            if stored:
                victims = rng.choice(sorted(stored), size=min(len(stored), n // 3 + 1), replace=False)
                assert index.remove(victims) == len(victims)
                for v in victims.tolist():
                    del stored[v]
            continue
        codes = tie_heavy_codes(rng, n, n_bits) if tie_heavy else random_codes(rng, n, n_bits)
        if kind == "auto":
            ids = None
        elif kind == "increasing":
            top = max(top, index.next_id)
            ids = np.sort(rng.choice(np.arange(top, top + 5 * n + 1), size=n, replace=False))
            top += 5 * n + 1
        else:
            candidates = np.setdiff1d(np.arange(index.next_id + 3000), np.array(sorted(stored), dtype=np.int64))
            ids = rng.choice(candidates, size=n, replace=False)  # shuffled, often below stored ids
        got = index.add(codes, ids)
        bools = codes.to_bool()
        for i, id_ in enumerate(got.tolist()):
            stored[id_] = (n_bits, bools[i])
    batches = []
    for n_bits in sorted({b for b, _ in stored.values()}):
        members = sorted(i for i, (b, _) in stored.items() if b == n_bits)
        batches.append((Codes.from_bool(np.array([stored[i][1] for i in members])), np.array(members)))
    assert index.segments == [(len(c[0].to_bool()[0]), len(c[1])) for c in batches]
    query = tie_heavy_codes(rng, 3, q_bits) if tie_heavy else random_codes(rng, 3, q_bits)
    for score in SCORE_POLICIES:
        check_against_reference(index.search(query, k, score=score), brute_force(batches, query, k, score), k, score)
    assert index.cached_bytes <= 4096
    # runs stay logarithmic in the segment size
    for seg in index._segments.values():
        assert len(seg.runs) <= max(1, int(np.log2(len(seg))) + 1)
    for codes, ids in batches:
        assert index.get_codes(ids) == codes


def test_increasing_batches_append_to_one_run_without_regrowing_sealed_chunks():
    rng = np.random.default_rng(0)
    index = TruncatedHammingIndex(backend=SMALL_CHUNKS)
    for _ in range(40):
        index.add(random_codes(rng, 50, 64))
    seg = index._segments[64]
    assert len(seg.runs) == 1
    run = seg.runs[0]
    assert [c.shape[0] for c in run.chunks[:-1]] == [128] * (len(run.chunks) - 1)  # sealed chunks are full
    assert len(run.chunks) == -(-2000 // 128)
    sealed = run.chunks[0]
    index.add(random_codes(rng, 10, 64))
    assert seg.runs[0].chunks[0] is sealed  # appending never copies a sealed chunk


def test_out_of_order_ids_merge_into_few_runs():
    rng = np.random.default_rng(1)
    index = TruncatedHammingIndex(backend=SMALL_CHUNKS)
    ids = rng.permutation(100_000)[:4096]
    for start in range(0, 4096, 64):
        index.add(random_codes(rng, 64, 32), ids[start : start + 64])
    seg = index._segments[32]
    assert len(seg.runs) <= 7  # log2(4096 / 64) + 1
    np.testing.assert_array_equal(index.get_ids(), np.sort(ids))


def test_duplicate_ids_are_found_across_runs_and_in_the_batch():
    index = TruncatedHammingIndex()
    index.add(random_codes(np.random.default_rng(2), 3, 16), ids=[10, 20, 30])
    index.add(random_codes(np.random.default_rng(3), 2, 16), ids=[5, 6])  # a second run
    with pytest.raises(ValueError, match=r"already in the index, e.g. \[20\]"):
        index.add(random_codes(np.random.default_rng(4), 2, 16), ids=[20, 7])
    with pytest.raises(ValueError, match=r"duplicate ids in the batch, e.g. \[8\]"):
        index.add(random_codes(np.random.default_rng(4), 3, 16), ids=[8, 9, 8])
    assert len(index) == 5


# ---------------------------------------------------------------------------------------------------- copy-on-add
def test_a_reused_packing_buffer_does_not_change_stored_codes():
    # Issue 13, item 3: the same buffer, filled with 0x00, 0x0F, 0xF0 and added each time.
    index = TruncatedHammingIndex()
    buf = torch.zeros(2, 8, dtype=torch.uint8)
    for value in (0x00, 0x0F, 0xF0):
        buf.fill_(value)
        index.add(Codes.from_packed(buf, 64))
    assert index.get_codes(index.get_ids()).packed[:, 0].tolist() == [0, 0, 15, 15, 240, 240]
    array = np.zeros((2, 8), dtype=np.uint8)
    for value in (0x00, 0x0F, 0xF0):
        array[:] = value
        index.add(Codes.from_packed(array, 64), ids=index.get_ids()[-2:] + 100)
    assert index.get_codes(index.get_ids()).packed[:, 0].tolist() == [0, 0, 15, 15, 240, 240] * 2


def test_returned_ids_are_not_the_callers_array():
    index = TruncatedHammingIndex()
    ids = np.array([3, 1, 2], dtype=np.int64)
    got = index.add(random_codes(np.random.default_rng(5), 3, 8), ids)
    got[0] = 99
    ids[0] = 77
    np.testing.assert_array_equal(index.get_ids(), [1, 2, 3])


# ---------------------------------------------------------------------------------------------------- cache bound
@pytest.mark.parametrize("cache_bytes", [0, 1500, 1 << 20])
def test_truncation_cache_respects_its_bound_and_never_changes_results(cache_bytes):
    rng = np.random.default_rng(6)
    index = TruncatedHammingIndex(backend=SMALL_CHUNKS, cache_bytes=cache_bytes)
    stored = [(random_codes(rng, 700, 64), None), (random_codes(rng, 300, 48), None)]
    stored = [(codes, index.add(codes, ids)) for codes, ids in stored]
    for q_bits in (20, 40, 20, 12, 56):
        query = random_codes(rng, 4, q_bits)
        check_against_reference(index.search(query, 25), brute_force(stored, query, 25, "zscore"), 25, "zscore")
        assert index.cached_bytes <= cache_bytes
    if cache_bytes == 1 << 20:
        assert index.cached_bytes > 0
    index.clear_cache()
    assert index.cached_bytes == 0


def test_cache_bytes_is_validated():
    with pytest.raises(ValueError, match="cache_bytes"):
        TruncatedHammingIndex(cache_bytes=-1)
    with pytest.raises(TypeError, match="cache_bytes"):
        TruncatedHammingIndex(cache_bytes=1.5)
    with pytest.raises(ValueError, match="backend: expected 'flat', 'ivf'"):
        TruncatedHammingIndex(backend="faiss")
    with pytest.raises(ValueError, match="chunk_bytes"):
        FlatBackend(chunk_bytes=10)
    with pytest.raises(ValueError, match="nprobe"):
        IVFBackend(nprobe=0)
    with pytest.raises(ValueError, match="nprobe"):
        TruncatedHammingIndex().search(random_codes(np.random.default_rng(0), 1, 8), 1, nprobe=0)


# ---------------------------------------------------------------------------------------------------- files
def _mixed_index(rng, backend=SMALL_CHUNKS) -> TruncatedHammingIndex:
    index = TruncatedHammingIndex(score="llr", flip_probability=0.15, backend=backend)
    index.add(random_codes(rng, 400, 21), ids=rng.permutation(10_000)[:400])
    index.add(random_codes(rng, 300, 64), ids=np.arange(20_000, 20_300))
    index.add(random_codes(rng, 200, 64), ids=rng.permutation(10_000)[400:600] + 30_000)  # a second run
    index.add(random_codes(rng, 30, 130))
    return index


def _save_in_memory(index: TruncatedHammingIndex, path: Path) -> None:
    """The index's file as the plain in-memory safetensors writer builds it (the reference for the streamed save)."""
    tensors = {}
    for n_bits, _ in index.segments:
        ids = index.get_ids(n_bits=n_bits)
        tensors[f"codes.{n_bits}"] = index.get_codes(ids).packed
        tensors[f"ids.{n_bits}"] = ids
    save_safetensors(path, tensors, kind="index", format_version=1, metadata=index._header())


def test_streamed_save_writes_the_bytes_of_the_in_memory_writer(tmp_path: Path):
    # With SHA-256; xxh3_128 files are checked against a one-pass digest in test_index_checksum.py.
    index = _mixed_index(np.random.default_rng(7))
    index.save(tmp_path / "streamed.safetensors", checksum="sha256")
    _save_in_memory(index, tmp_path / "memory.safetensors")
    assert (tmp_path / "streamed.safetensors").read_bytes() == (tmp_path / "memory.safetensors").read_bytes()


@pytest.mark.parametrize("platform_has_it", [True, False])
def test_writeback_hints_cover_the_file_and_change_no_byte(tmp_path: Path, monkeypatch, platform_has_it):
    # A streamed save asks the kernel to start writing every _WRITEBACK_BYTES; with a tiny step every block is hinted.
    # The hints must tile the data written after the header, in order, and the file must be byte for byte the one
    # the in-memory writer gives (also where the platform has no sync_file_range).
    from pbeh import _safetensors_stream as stream

    calls: list[tuple[int, int]] = []
    real = stream._start_writeback

    def spy(fd: int, start: int, stop: int) -> None:
        calls.append((start, stop))
        real(fd, start, stop)

    monkeypatch.setattr(stream, "_WRITEBACK_BYTES", 1)
    monkeypatch.setattr(stream, "_start_writeback", spy)
    if not platform_has_it:
        monkeypatch.setattr(stream, "_sync_file_range", False)
    index = _mixed_index(np.random.default_rng(11))
    index.save(tmp_path / "streamed.safetensors", checksum="sha256")
    _save_in_memory(index, tmp_path / "memory.safetensors")
    data = (tmp_path / "memory.safetensors").read_bytes()
    assert (tmp_path / "streamed.safetensors").read_bytes() == data
    (header_bytes,) = struct.unpack("<Q", data[:8])
    assert calls
    assert calls[0][0] == 8 + header_bytes
    assert calls[-1][1] == len(data)
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in itertools.pairwise(calls))


@pytest.mark.parametrize("n_bits", [1, 3, 8, 12, 17, 24, 28, 33, 40, 41, 48, 56, 57, 64, 72, 130, 160, 260, 520])
def test_pad_and_unpad_rows_equal_plain_numpy_slicing(n_bits):
    from pbeh import _faiss
    from pbeh.index._files import pad_rows, unpad_rows

    rng = np.random.default_rng(n_bits)
    n_bytes = (n_bits + 7) // 8
    code_size = _faiss.padded_code_size(n_bytes)
    for rows in (1, 2, 7, 300):
        packed = random_codes(rng, rows, n_bits).packed
        staged = rng.integers(0, 256, rows * n_bytes + code_size, dtype=np.uint8)  # garbage after the codes
        staged[: rows * n_bytes] = packed.reshape(-1)
        out = rng.integers(0, 256, (rows, code_size), dtype=np.uint8)  # garbage to be overwritten
        pad_rows(staged, rows, n_bytes, out)
        expected = np.zeros((rows, code_size), np.uint8)
        expected[:, :n_bytes] = packed
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(unpad_rows(expected, n_bytes), packed)
        assert unpad_rows(expected, n_bytes).flags.c_contiguous
        wider = np.zeros((rows, 2 * code_size), np.uint8)
        wider[:, :code_size] = expected
        np.testing.assert_array_equal(unpad_rows(wider[:, :code_size], n_bytes), packed)  # a non-contiguous block


@pytest.mark.parametrize("checksum", ["sha256", "xxh3_128"])
@pytest.mark.parametrize("block_bytes", [1, 24, 1000])
def test_loading_in_small_blocks_equals_the_plain_reader(tmp_path: Path, monkeypatch, block_bytes, checksum):
    # The block reader pads, checks and hashes block by block; the plain reader (load_safetensors) reads and hashes
    # the whole file at once. Both must see the same codes and ids, whatever the block size and checksum.
    from pbeh.index import _files
    from pbeh.serialization import checksum_available, load_safetensors

    if not checksum_available(checksum):
        pytest.skip(f"{checksum} needs pbeh[fast-checksum]")
    rng = np.random.default_rng(block_bytes)
    index = TruncatedHammingIndex(backend=SMALL_CHUNKS)
    for n_bits in (5, 12, 24, 28, 33, 48, 56, 64, 72, 130):
        index.add(random_codes(rng, int(rng.integers(1, 300)), n_bits))
    path = tmp_path / "i.safetensors"
    index.save(path, checksum=checksum)
    monkeypatch.setattr(_files, "_BLOCK_BYTES", block_bytes)
    loaded = TruncatedHammingIndex.load(path, backend=FlatBackend(chunk_bytes=1024))
    version = TruncatedHammingIndex.metadata(path)["format_version"]
    assert version == (1 if checksum == "sha256" else 2)
    arrays, _ = load_safetensors(path, kind="index", format_version=version)
    for n_bits, _ in index.segments:
        ids = arrays[f"ids.{n_bits}"]
        np.testing.assert_array_equal(loaded.get_ids(n_bits=n_bits), ids)
        np.testing.assert_array_equal(loaded.get_codes(ids, n_bits=n_bits).packed, arrays[f"codes.{n_bits}"])
    loaded.save(tmp_path / "again.safetensors", checksum=checksum)  # small blocks on the way out too
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()
    query = random_codes(rng, 3, 64)
    same_results(index.search(query, 50), loaded.search(query, 50))


@pytest.mark.parametrize("own_bytes", [1, 700, 1 << 40])
def test_loaded_arrays_share_one_allocation_below_the_threshold_and_never_overlap(
    tmp_path: Path, monkeypatch, own_bytes
):
    # Arrays under _OWN_ALLOCATION_BYTES are views of one shared allocation, larger ones own theirs (own_bytes: every
    # array alone / a mix / all shared). Whatever the split, no two arrays may overlap, the values must equal the
    # plain reader's, and changing one segment after loading must leave the others' codes untouched.
    from pbeh.index import _files
    from pbeh.serialization import load_safetensors

    monkeypatch.setattr(_files, "_OWN_ALLOCATION_BYTES", own_bytes)
    rng = np.random.default_rng(own_bytes % 1000)
    index = TruncatedHammingIndex(backend=SMALL_CHUNKS)
    for n_bits in (7, 32, 48, 64, 130):
        index.add(random_codes(rng, int(rng.integers(1, 400)), n_bits))
    path = tmp_path / "i.safetensors"
    index.save(path, checksum="sha256")
    loaded = TruncatedHammingIndex.load(path, backend=SMALL_CHUNKS)
    arrays = [a for seg in loaded._segments.values() for run in seg.runs for a in (*run.chunks, run.ids)]
    for i, a in enumerate(arrays):
        assert not any(np.shares_memory(a, b) for b in arrays[i + 1 :])
        assert a.ctypes.data % 8 == 0
    small = [a for a in arrays if a.nbytes < own_bytes]
    assert len({id(a.base) for a in small}) <= 1  # all views of the one shared allocation
    assert all(a.base is None or a.base.nbytes == a.nbytes for a in arrays if a.nbytes >= own_bytes)
    reference, _ = load_safetensors(path, kind="index", format_version=1)
    for n_bits, _ in index.segments:
        ids = reference[f"ids.{n_bits}"]
        np.testing.assert_array_equal(loaded.get_ids(n_bits=n_bits), ids)
        np.testing.assert_array_equal(loaded.get_codes(ids).packed, reference[f"codes.{n_bits}"])
    changed = loaded.get_ids(n_bits=48)
    loaded.remove(changed[::2])
    loaded.add(random_codes(rng, 50, 48))
    loaded.add(random_codes(rng, 50, 64))
    for n_bits in (7, 32, 130):
        ids = reference[f"ids.{n_bits}"]
        np.testing.assert_array_equal(loaded.get_codes(ids).packed, reference[f"codes.{n_bits}"])
    np.testing.assert_array_equal(loaded.get_codes(changed[1::2]).packed, reference["codes.48"][1::2])
    ids64 = reference["ids.64"]
    np.testing.assert_array_equal(loaded.get_codes(ids64).packed, reference["codes.64"])


@pytest.mark.parametrize(
    "ids", [[0, 1, 2, 3, 2, 5], [0, 1, 2, 2, 4, 5], [0, 1, 2, 1, 4, 5], [-1, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 4]]
)
def test_unsorted_ids_are_refused_at_block_boundaries_too(tmp_path: Path, monkeypatch, ids):
    from pbeh.index import _files

    monkeypatch.setattr(_files, "_BLOCK_BYTES", 24)  # three ids per block: [0:3], [3:6]
    meta = dict(
        bit_order="big", segment_n_bits=[16], segment_sizes=[6], score="zscore", flip_probability=0.2, next_id=9
    )
    tensors = {"codes.16": np.zeros((6, 2), np.uint8), "ids.16": np.array(ids, np.int64)}
    save_safetensors(tmp_path / "bad.safetensors", tensors, kind="index", format_version=1, metadata=meta)
    with pytest.raises(FormatError, match=r"ids\.16 must be non-empty, non-negative and strictly increasing"):
        TruncatedHammingIndex.load(tmp_path / "bad.safetensors")


def test_tensors_in_any_file_order_load(tmp_path: Path):
    # safetensors fixes no order for the data of its tensors: ids stored before their codes are read as well.
    codes = Codes.from_bool(np.eye(3, 16, dtype=bool))
    meta = {
        "pbeh_kind": "index", "format_version": "1", "pbeh_version": "0.1.0", "bit_order": "big",
        "segment_n_bits": "[16]", "segment_sizes": "[3]", "score": "zscore", "flip_probability": "0.2", "next_id": "5",
    }  # fmt: skip
    header = {
        "__metadata__": meta,
        "ids.16": {"dtype": "I64", "shape": [3], "data_offsets": [0, 24]},
        "codes.16": {"dtype": "U8", "shape": [3, 2], "data_offsets": [24, 30]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "ids_first.safetensors"
    path.write_bytes(
        struct.pack("<Q", len(raw)) + raw + np.array([1, 2, 4], np.int64).tobytes() + codes.packed.tobytes()
    )
    loaded = TruncatedHammingIndex.load(path)
    assert loaded.get_codes([1, 2, 4]) == codes
    assert loaded.next_id == 5


def test_round_trip_through_small_chunks_keeps_every_result(tmp_path: Path):
    rng = np.random.default_rng(8)
    index = _mixed_index(rng)
    index.save(tmp_path / "a.safetensors")
    loaded = TruncatedHammingIndex.load(tmp_path / "a.safetensors", backend=FlatBackend(chunk_bytes=2048))
    loaded.save(tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    for q_bits in (8, 21, 64, 200):
        query = random_codes(rng, 5, q_bits)
        for score in SCORE_POLICIES:
            same_results(index.search(query, 40, score=score), loaded.search(query, 40, score=score))


def test_streaming_writer_checks_the_blocks(tmp_path: Path):
    def blocks():
        yield np.zeros((2, 3), np.uint8)

    with pytest.raises(ValueError, match="the blocks hold 6 bytes"):
        save_safetensors_streaming(
            tmp_path / "x.safetensors", {"a": (np.uint8, (3, 3), blocks)}, kind="index", format_version=1
        )
    with pytest.raises(ValueError, match="does not fit shape"):
        save_safetensors_streaming(
            tmp_path / "x.safetensors", {"a": (np.uint8, (2, 4), blocks)}, kind="index", format_version=1
        )
    assert not list(tmp_path.iterdir())  # nothing half-written is left


def test_a_flipped_code_bit_is_refused_by_the_checksum(tmp_path: Path):
    index = _mixed_index(np.random.default_rng(9))
    path = tmp_path / "i.safetensors"
    index.save(path)
    data = bytearray(path.read_bytes())
    (n_header,) = struct.unpack("<Q", data[:8])
    data[8 + n_header + 5] ^= 0x40  # a bit of the first codes tensor
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="does not match its checksum"):
        TruncatedHammingIndex.load(path)


def test_a_version_1_file_without_checksum_still_loads(tmp_path: Path):
    # The layout of the first pbeh version: no pbeh_checksum in the metadata.
    codes = Codes.from_bool(np.eye(3, 12, dtype=bool))
    meta = {
        "pbeh_kind": "index", "format_version": "1", "pbeh_version": "0.1.0", "bit_order": "big",
        "segment_n_bits": "[12]", "segment_sizes": "[3]", "score": "zscore",
        "flip_probability": "0.2", "next_id": "3",
    }  # fmt: skip
    ids = np.array([0, 1, 2], np.int64)
    header = {
        "__metadata__": dict(sorted(meta.items())),
        "codes.12": {"dtype": "U8", "shape": [3, 2], "data_offsets": [0, 6]},
        "ids.12": {"dtype": "I64", "shape": [3], "data_offsets": [6, 30]},
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "v1.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + codes.packed.tobytes() + ids.tobytes())
    loaded = TruncatedHammingIndex.load(path)
    assert loaded.get_codes([0, 1, 2]) == codes
    assert loaded.next_id == 3


def _arrays_bytes(index: TruncatedHammingIndex) -> int:
    return sum(len(seg) * (seg.code_size + 8) for seg in index._segments.values())


def test_save_and_load_stay_near_the_arrays_in_memory(tmp_path: Path):
    rng = np.random.default_rng(10)
    index = TruncatedHammingIndex()
    for _start in range(0, 400_000, 100_000):
        index.add(Codes.from_packed(rng.integers(0, 256, (100_000, 8), dtype=np.uint8), 64))
    index.add(Codes.from_packed(rng.integers(0, 256, (100_000, 4), dtype=np.uint8) & 0xF0, 28))
    arrays = _arrays_bytes(index)
    path = tmp_path / "big.safetensors"
    tracemalloc.start()
    index.save(path)
    _, save_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert save_peak <= 0.2 * arrays  # blocks only: the file is never built in memory
    tracemalloc.start()
    loaded = TruncatedHammingIndex.load(path)
    _, load_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert load_peak <= 1.2 * _arrays_bytes(loaded)
    np.testing.assert_array_equal(loaded.get_ids(), index.get_ids())
    query = Codes.from_packed(rng.integers(0, 256, (3, 8), dtype=np.uint8), 64)
    same_results(index.search(query, 10), loaded.search(query, 10))


# ---------------------------------------------------------------------------------------------------- IVF
def _clustered(rng, n, n_bits=64, n_centres=20, p=0.1) -> Codes:
    centres = rng.random((n_centres, n_bits)) < 0.5
    bits = centres[rng.integers(0, n_centres, n)] ^ (rng.random((n, n_bits)) < p)
    return Codes.from_bool(bits)


def same_up_to_boundary_ties(approx, exact, flat: TruncatedHammingIndex, queries: Codes) -> None:
    """Equal scores everywhere; equal ids above each row's last score; at that score, genuinely tied items.

    faiss's IVF heap keeps ties at the k-th distance in list order, not id order, so only the cut-off tie group may
    hold other (equally good) ids.
    """
    np.testing.assert_array_equal(approx.scores, exact.scores)
    np.testing.assert_array_equal(approx.distances, exact.distances)
    np.testing.assert_array_equal(approx.n_bits_compared, exact.n_bits_compared)
    for i in range(len(queries)):
        last = exact.scores[i, -1]
        above = exact.scores[i] > last
        assert approx.ids[i, above].tolist() == exact.ids[i, above].tolist()
        for j in np.flatnonzero(~above & (approx.ids[i] >= 0)).tolist():
            id_, n_bits = int(approx.ids[i, j]), int(approx.n_bits_compared[i, j])
            stored = flat.get_codes([id_], n_bits=n_bits)
            assert int(queries[i : i + 1].truncate(n_bits).hamming(stored)[0, 0]) == approx.distances[i, j]


def test_ivf_visiting_every_list_equals_the_flat_index():
    rng = np.random.default_rng(11)
    backend = IVFBackend(nlist=8, min_size=100, nprobe=2)
    ivf, flat = TruncatedHammingIndex(backend=backend), TruncatedHammingIndex()
    for index in (ivf, flat):
        index.add(_clustered(np.random.default_rng(1), 600), ids=np.random.default_rng(2).permutation(5000)[:600])
        index.add(random_codes(np.random.default_rng(3), 50, 32))  # a small segment stays flat
    queries = _clustered(rng, 7)
    for score in SCORE_POLICIES:
        exact = flat.search(queries, 15, score=score)
        same_up_to_boundary_ties(ivf.search(queries, 15, score=score, nprobe=8), exact, flat, queries)
    assert ivf._segments[64].trained
    assert not ivf._segments[32].trained
    # kept in sync after training: adds and removes
    for index in (ivf, flat):
        index.add(_clustered(np.random.default_rng(4), 100))
        index.remove(index.get_ids(n_bits=64)[::3])
    same_up_to_boundary_ties(ivf.search(queries, 15, nprobe=8), flat.search(queries, 15), flat, queries)
    # shorter queries compare prefixes: exact flat scan
    short = random_codes(rng, 3, 40)
    same_results(ivf.search(short, 15, nprobe=1), flat.search(short, 15))
    # few lists visited: every result is a real stored item, sorted by score, ids by ascending order within ties
    approx = ivf.search(queries, 15, nprobe=1)
    assert np.isin(approx.ids[approx.ids >= 0], flat.get_ids()).all()
    assert (np.diff(approx.scores, axis=1)[np.isfinite(approx.scores[:, 1:])] <= 0).all()


def test_merge_with_missing_ivf_candidates_equals_a_plain_merge_of_the_segment_answers():
    """An IVF segment visiting one of many lists returns fewer than k items (id -1); the cross-length merge must rank
    the real candidates of every segment exactly like a plain per-query sort by (score descending, id ascending)."""
    rng = np.random.default_rng(13)
    index = TruncatedHammingIndex(backend=IVFBackend(nlist=32, min_size=100, nprobe=1))
    index.add(_clustered(np.random.default_rng(5), 300), ids=np.random.default_rng(6).permutation(10_000)[:300])
    index.add(random_codes(np.random.default_rng(7), 40, 32))  # flat: under min_size
    index.add(random_codes(np.random.default_rng(8), 30, 48))
    queries = _clustered(rng, 6)
    k = 120  # more than the two flat segments hold: the rows end with fill values
    for score in SCORE_POLICIES:
        result = index.search(queries, k, score=score)
        assert (result.ids == -1).any()  # the IVF segment returned fewer than k items
        for i in range(len(queries)):
            candidates = []
            for n_bits, seg in index._segments.items():
                dist, ids = seg.search(queries[i : i + 1].truncate(n_bits).packed, n_bits, k, nprobe=1)
                for d, id_ in zip(dist[0].tolist(), ids[0].tolist(), strict=True):
                    if id_ >= 0:
                        value = float(score_distances([d], [n_bits], score, flip_probability=0.2)[0])
                        candidates.append((-value, id_, d, n_bits))
            candidates.sort()
            candidates = candidates[:k]
            width = len(candidates)
            assert result.ids[i, :width].tolist() == [c[1] for c in candidates]
            assert result.distances[i, :width].tolist() == [c[2] for c in candidates]
            assert result.scores[i, :width].tolist() == [-c[0] for c in candidates]
            assert result.n_bits_compared[i, :width].tolist() == [c[3] for c in candidates]
            assert (result.ids[i, width:] == -1).all()
            assert (result.distances[i, width:] == -1).all()
            assert (result.scores[i, width:] == -np.inf).all()
            assert (result.n_bits_compared[i, width:] == 0).all()
            one = index.search(queries[i : i + 1], k, score=score)  # one query: merged in Python lists
            for field in ("ids", "distances", "scores", "n_bits_compared"):
                np.testing.assert_array_equal(getattr(one, field)[0], getattr(result, field)[i], err_msg=field)


def test_ivf_index_saves_the_same_file_and_loads_into_any_backend(tmp_path: Path):
    rng = np.random.default_rng(12)
    ivf = TruncatedHammingIndex(backend=IVFBackend(nlist=4, min_size=10))
    ivf.add(_clustered(rng, 300))
    ivf.search(_clustered(rng, 2), 5)  # trains
    ivf.save(tmp_path / "ivf.safetensors")
    flat = TruncatedHammingIndex.load(tmp_path / "ivf.safetensors")
    flat.save(tmp_path / "flat.safetensors")
    assert (tmp_path / "ivf.safetensors").read_bytes() == (tmp_path / "flat.safetensors").read_bytes()
    again = TruncatedHammingIndex.load(tmp_path / "flat.safetensors", backend="ivf")
    assert again.segments == ivf.segments


def test_verify_false_skips_only_the_checksum(tmp_path: Path):
    index = _mixed_index(np.random.default_rng(13))
    path = tmp_path / "i.safetensors"
    index.save(path)
    data = bytearray(path.read_bytes())
    (n_header,) = struct.unpack("<Q", data[:8])
    data[8 + n_header + 5] ^= 0x40
    path.write_bytes(bytes(data))
    loaded = TruncatedHammingIndex.load(path, verify=False)  # the flipped bit is not detected
    assert loaded.segments == index.segments
    with pytest.raises(TypeError, match="verify"):
        TruncatedHammingIndex.load(path, verify="no")
    # structural checks still run without the checksum
    tensors = {"codes.12": np.full((3, 2), 255, np.uint8), "ids.12": np.array([0, 1, 2], np.int64)}
    meta = dict(
        bit_order="big", segment_n_bits=[12], segment_sizes=[3], score="zscore", flip_probability=0.2, next_id=3
    )
    save_safetensors(tmp_path / "bad.safetensors", tensors, kind="index", format_version=1, metadata=meta)
    with pytest.raises(FormatError, match="padding bits"):
        TruncatedHammingIndex.load(tmp_path / "bad.safetensors", verify=False)
